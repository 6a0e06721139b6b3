"""Log RAG at volume (issue 19): five incidents in hours of traffic, and the store at 1,000,000.

    python bench/logs_volume.py [--hours 2] [--rate 50] [--sizes 100000,1000000]
                                [--out bench/results/logs_volume.json]

The stack cannot serve 50 requests/s for two hours on this machine, so the logs are written
here, line by line in the services' own formats (the gateway's JSON request lines as
tracker_service.telemetry.JsonFormatter writes them, spans through its `span_record`, Triton's
glog text, the control plane's log and audit trail), with timestamps compressed: two hours of
event time are written in seconds. Every request leaves one log line and seven spans (root,
decode, preprocess, queue, infer, postprocess, and track or Triton's InferRequest), as in the
issue. Background noise: 0.1 % of requests answered 413, 0.02 % 429, 0.05 % slow, a routing
line a minute, a "no data drift" check every five minutes.

Part 1, recall: `--hours` of traffic at `--rate` requests/s with the default settings (routine
requests sampled 20 a minute per route), indexed every five minutes of event time as the
control plane's background indexer would, with five incidents spread over it:

  triton-stopped     Triton killed: 108 requests answered 503 (the issue's run), the stack
                     restarted by the supervisor
  slow-model         stream cam-3's frames queue for 2-3 s behind a flood of /v1/detect
  undecodable-burst  20 POSTs of bytes that are not an image (422)
  drift-alert        the drift check raises an alert on three features
  failed-promotion   a candidate whose ONNX file is not a model is rejected at the load step

After all of it, each incident's question is asked (`ask`, BM25, as the API does) and scored:
recall@5 = incident lines among the top-5 citations / min(5, incident lines); cause named =
the answer's cause matches what was provoked.

Part 2, size: for each of `--sizes`, the same traffic with every routine request kept
(VG_LOGS_ROUTINE_SAMPLES_PER_MINUTE=-1) until that many events are indexed: index throughput
(events written per second of indexing) and query latency (p50/p95 of `ask`, 12 questions x 5).

Prints tables and writes JSON and Markdown (bench/results/logs_volume.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control_plane.logs.index import LogIndex  # noqa: E402
from control_plane.logs.query import LogQuery, LogSearch, ask  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from tracker_service.telemetry import rfc3339, span_record  # noqa: E402

console = Console(soft_wrap=True)
STREAMS = [f"cam-{i}" for i in range(1, 9)]
FRAMES = "/v1/streams/{stream_id}/frames"
DETECT = "/v1/detect"
INDEX_EVERY_S = 300.0


@dataclass
class Incident:
    name: str
    at: float                 # offset into the traffic, seconds
    question: str = ""
    cause: str = ""           # regex the answer's cause must match
    lines: set = field(default_factory=set)  # (source, line) of every line it wrote
    traces: list = field(default_factory=list)
    result: dict = field(default_factory=dict)


class Writer:
    """The runtime dir's files, appended as the services write them; remembers line numbers."""

    def __init__(self, runtime: Path) -> None:
        (runtime / "logs").mkdir(parents=True, exist_ok=True)
        (runtime / "traces").mkdir(parents=True, exist_ok=True)
        self.paths = {"gateway.log": runtime / "logs" / "gateway.log",
                      "control-plane.log": runtime / "logs" / "control-plane.log",
                      "triton.log": runtime / "logs" / "triton.log",
                      "spans.jsonl": runtime / "traces" / "spans.jsonl",
                      "audit.jsonl": runtime / "audit.jsonl"}
        self.files = {k: open(p, "a", encoding="utf-8") for k, p in self.paths.items()}
        self.count = {k: 0 for k in self.paths}
        self.lines = 0
        self.capture: set | None = None

    def write(self, name: str, text: str) -> None:
        self.files[name].write(text + "\n")
        self.count[name] += 1
        self.lines += 1
        if self.capture is not None:
            self.capture.add((name, self.count[name]))

    def json(self, name: str, obj: dict) -> None:
        self.write(name, json.dumps(obj, default=str, ensure_ascii=False))

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class Traffic:
    def __init__(self, writer: Writer, t0: float, rng: random.Random) -> None:
        self.w, self.t0, self.rng = writer, t0, rng
        self.n = 0

    def ids(self) -> tuple[str, str]:
        self.n += 1
        return f"{self.rng.getrandbits(128):032x}", f"{self.rng.getrandbits(64):016x}"

    def log(self, name: str, t: float, level: str, service: str, logger: str, message: str,
            trace_id: str = "", span_id: str = "", **extra) -> None:
        self.w.json(name, {"ts": rfc3339(self.t0 + t), "level": level, "service": service,
                           "logger": logger, "message": message, "trace_id": trace_id,
                           "span_id": span_id, **extra})

    def request(self, t: float, route: str, stream: str | None, status: int = 200,
                ms: float | None = None, stages: dict | None = None,
                error: tuple[str, str] | None = None) -> str:
        """One request: its seven spans and its log line, as the gateway leaves them."""
        trace_id, root = self.ids()
        rng = self.rng
        ms = ms if ms is not None else rng.uniform(25, 60)
        stages = stages or {}
        start = self.t0 + t
        path = route.replace("{stream_id}", stream or "")
        attrs = {"http.request.method": "POST", "http.route": route, "url.path": path,
                 "http.response.status_code": status}
        spans = [span_record(name=f"POST {route}", service="gateway", trace_id=trace_id,
                             span_id=root, parent_span_id="", start_ns=int(start * 1e9),
                             end_ns=int((start + ms / 1000) * 1e9),
                             status="ERROR" if status >= 500 else "UNSET", attributes=attrs)]
        cursor = start
        parts = [("decode", 0.10), ("preprocess", 0.05), ("queue", 0.10), ("infer", 0.60),
                 ("postprocess", 0.05)]
        infer_id = ""
        for name, share in parts:
            d = stages.get(name, ms * share)
            sid = f"{rng.getrandbits(64):016x}"
            failed = error is not None and name == error[0]
            a = {"triton.model": "detector", "triton.requested_version": "1"} \
                if name == "infer" else {}
            if failed:
                a["error"] = error[1]
            spans.append(span_record(name=name, service="gateway", trace_id=trace_id,
                                     span_id=sid, parent_span_id=root,
                                     start_ns=int(cursor * 1e9),
                                     end_ns=int((cursor + d / 1000) * 1e9),
                                     status="ERROR" if failed and status >= 500 else "UNSET",
                                     attributes=a))
            if name == "infer":
                infer_id = sid
            cursor += d / 1000
        if route == FRAMES:
            spans.append(span_record(name="track", service="gateway", trace_id=trace_id,
                                     span_id=f"{rng.getrandbits(64):016x}", parent_span_id=root,
                                     start_ns=int(cursor * 1e9), end_ns=int((cursor + 0.001) * 1e9),
                                     status="UNSET", attributes={"stream.id": stream,
                                                                 "tracker": "bytetrack"}))
        else:
            d = stages.get("infer", ms * 0.6) * 0.9
            spans.append(span_record(name="InferRequest", service="triton", trace_id=trace_id,
                                     span_id=f"{rng.getrandbits(64):016x}",
                                     parent_span_id=infer_id, start_ns=int(start * 1e9),
                                     end_ns=int((start + d / 1000) * 1e9), status="UNSET",
                                     attributes={"triton.model_name": "detector"}))
        for s in spans:
            self.w.json("spans.jsonl", s)
        level = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
        extra = {"event": "request", "method": "POST", "route": route, "status": status,
                 "duration_ms": round(ms, 3)}
        if stream:
            extra["stream_id"] = stream
        if status < 400:
            extra.update(model="detector", model_version="1", detections=rng.randint(0, 9))
        if error:
            extra.update(error_code=error[2], error=error[3])
        self.log("gateway.log", t + ms / 1000, level, "gateway", "visionguard.gateway.requests",
                 f"POST {route} {status} {ms:.1f}ms", trace_id, root, **extra)
        return trace_id

    def routine(self, t: float) -> None:
        rng = self.rng
        r = rng.random()
        route, stream = (DETECT, None) if rng.random() < 0.4 else (FRAMES, rng.choice(STREAMS))
        if r < 0.001:
            self.request(t, route, stream, 413, 2.0, error=(
                "decode", "payload over 8 MiB", "payload_too_large", "request body too large"))
        elif r < 0.0012:
            self.request(t, route, stream, 429, 1.0, error=(
                "queue", "too many pending", "overloaded", "too many requests pending"))
        elif r < 0.0017:
            ms = rng.uniform(1100, 1900)
            self.request(t, route, stream, 200, ms, stages={"queue": ms * 0.7})
        else:
            self.request(t, route, stream)


def incidents_plan(span_s: float) -> list[Incident]:
    return [Incident("triton-stopped", span_s * 0.17, cause=r"Triton unavailable"),
            Incident("slow-model", span_s * 0.37, cause=r"slow|overload"),
            Incident("undecodable-burst", span_s * 0.57, cause=r"undecodable"),
            Incident("drift-alert", span_s * 0.75, cause=r"drift"),
            Incident("failed-promotion", span_s * 0.92, cause=r"promotion|rejected|load")]


def hhmm(tr: Traffic, t: float) -> str:
    return datetime.fromtimestamp(tr.t0 + t, tz=timezone.utc).strftime("%H:%M")


def provoke(inc: Incident, tr: Traffic, rate: float) -> float:
    """Write the incident's lines at inc.at; returns how many seconds of traffic it took."""
    w, t = tr.w, inc.at
    w.capture = inc.lines
    took = 0.0
    if inc.name == "triton-stopped":
        for i in range(108):  # the 108 requests answered 503
            route, stream = (DETECT, None) if i % 3 else (FRAMES, STREAMS[i % 8])
            inc.traces.append(tr.request(t + i / rate, route, stream, 503, 3.0, error=(
                "infer", "StatusCode.UNAVAILABLE: failed to connect to all addresses",
                "triton_unavailable", "Triton unavailable: failed to connect to all addresses")))
        tr.log("control-plane.log", t + 2.3, "ERROR", "control-plane",
               "control_plane.stack.supervisor",
               "tritonserver exited with signal 9 (SIGKILL); stopping the stack",
               event="process_exit", process="tritonserver", returncode=-9)
        w.capture = None  # the restart is lifecycle, not the incident's cause
        tr.log("control-plane.log", t + 15, "INFO", "control-plane",
               "control_plane.stack.supervisor", "tritonserver started (pid 4242)",
               event="process_start", process="tritonserver")
        w.write("triton.log", datetime.fromtimestamp(tr.t0 + t + 19, tz=timezone.utc).strftime(
            "I%m%d %H:%M:%S.%f 4242 model_lifecycle.cc:818] successfully loaded 'detector' "
            "version 1"))
        took = 20.0
        inc.question = f"why did requests fail at {hhmm(tr, t)}?"
    elif inc.name == "slow-model":
        for i in range(int(12 * rate)):
            ti = t + i / rate
            if i % 10 == 0:  # cam-3's frames, queued behind the flood
                ms = tr.rng.uniform(2000, 3000)
                inc.traces.append(tr.request(ti, FRAMES, "cam-3", 200, ms,
                                             stages={"queue": ms * 0.8}))
            else:
                w.capture = None
                tr.request(ti, DETECT, None, 200, tr.rng.uniform(300, 800))
                w.capture = inc.lines
        took = 12.0
        inc.question = f"why were stream cam-3's requests slow at {hhmm(tr, t + 6)}?"
    elif inc.name == "undecodable-burst":
        for i in range(20):
            inc.traces.append(tr.request(t + i * 0.05, DETECT, None, 422, 1.2, error=(
                "decode", "cannot identify image file", "undecodable_image",
                "cannot decode image bytes")))
        took = 1.0
        inc.question = f"why did /v1/detect answer 422 to clients at {hhmm(tr, t)}?"
    elif inc.name == "drift-alert":
        tr.log("control-plane.log", t, "WARNING", "control-plane", "control_plane.drift.monitor",
               "drift alert: data drift detected on brightness, contrast, edge_density (MMD "
               "p=0.001, distance 0.31; 200 live vs 200 reference samples)",
               event="drift_check", model="detector", version="1", drift=True, n_live=200,
               n_reference=200, drifted_features=["brightness", "contrast", "edge_density"],
               mmd_p_value=0.001, mmd_distance=0.31)
        inc.question = "was there a drift alert, and on what?"
    elif inc.name == "failed-promotion":
        def audit(dt: float, **entry) -> None:
            w.json("audit.jsonl", {"ts": rfc3339(tr.t0 + t + dt), "actor": "cli:alice",
                                   "model": "detector", "version": "7", **entry})
        audit(0, action="promote", outcome="started")
        audit(1, action="step:contract", outcome="passed", step="contract")
        audit(4, action="step:load", outcome="failed", step="load",
              reason="Triton could not load version 7: failed to load 'detector' version 7: "
                     "Invalid argument: model.onnx is not an ONNX model")
        audit(5, action="reject", outcome="rejected", step="load",
              reason="Triton could not load version 7: model.onnx is not an ONNX model")
        w.write("triton.log", datetime.fromtimestamp(tr.t0 + t + 3.9, tz=timezone.utc).strftime(
            "E%m%d %H:%M:%S.%f 4242 model_lifecycle.cc:642] failed to load 'detector' version "
            "7: Invalid argument: model.onnx is not an ONNX model"))
        tr.log("control-plane.log", t + 5, "ERROR", "control-plane",
               "control_plane.releases.promoter",
               "promotion of detector version 7 rejected at step load", event="audit",
               action="reject", model="detector", version="7")
        took = 6.0
        inc.question = "what happened in the last failed promotion?"
    w.capture = None
    return took


def generate(runtime: Path, seconds: float, rate: float, seed: int, t0: float,
             on_chunk=None) -> tuple[list[Incident], Writer, Traffic]:
    """`seconds` of traffic at `rate` with the five incidents; `on_chunk()` every
    INDEX_EVERY_S of event time (the background indexer)."""
    w = Writer(runtime)
    tr = Traffic(w, t0, random.Random(seed))
    plan = incidents_plan(seconds)
    pending = list(plan)
    t, step, next_index, next_minute, next_drift = 0.0, 1.0 / rate, INDEX_EVERY_S, 0.0, 150.0
    while t < seconds:
        if pending and t >= pending[0].at:
            t += provoke(pending.pop(0), tr, rate)
            continue
        if t >= next_minute:
            tr.log("control-plane.log", t, "INFO", "control-plane", "control_plane.releases",
                   "routing unchanged: champion 1, no challenger", event="routing")
            next_minute += 60
        if t >= next_drift:
            tr.log("control-plane.log", t, "INFO", "control-plane", "control_plane.drift.monitor",
                   "no data drift", event="drift_check", model="detector", version="1",
                   drift=False, n_live=200, n_reference=200, drifted_features=[])
            next_drift += 300
        tr.routine(t)
        t += step
        if t >= next_index:
            w.flush()
            if on_chunk:
                on_chunk()
            next_index += INDEX_EVERY_S
    w.flush()
    if on_chunk:
        on_chunk()
    return plan, w, tr


def score(inc: Incident, answer: dict) -> dict:
    top = answer["citations"][:5]
    hits = sum(1 for c in top if (c["source"], c["line"]) in inc.lines)
    cause = answer.get("cause") or ""
    return {"recall@5": hits / min(5, len(inc.lines)), "incident_lines": len(inc.lines),
            "cause": cause, "cause_named": bool(re.search(inc.cause, cause, re.I)),
            "took_ms": answer["took_ms"], "question": inc.question}


GENERIC = ["what failed in the last hour?", "slow requests on cam-5", "triton errors",
           "requests answered 413", "what happened at {mid}?", "promotion", "decode errors",
           "why were requests rejected with 429?"]


def run(work: Path, seconds: float, rate: float, settings_overrides: dict, target: int | None,
        label: str, repeats: int = 5) -> dict:
    runtime = work / label
    settings = Settings(runtime_dir=runtime, logs_index_dir_override=str(runtime / "index"),
                        logs_index_interval_s=0, **settings_overrides)
    runtime.mkdir(parents=True, exist_ok=True)
    index = LogIndex.open(settings)
    stats = {"index_s": 0.0, "added": 0, "read": 0, "aggregated": 0, "updates": 0}
    t0 = time.time() - seconds - 300  # the traffic ends five minutes ago

    def on_chunk() -> None:
        started = time.perf_counter()
        r = index.update()
        stats["index_s"] += time.perf_counter() - started
        stats["added"] += r.added
        stats["read"] += r.read
        stats["aggregated"] += r.aggregated
        stats["updates"] += 1
        if r.paused:
            raise RuntimeError(f"indexing paused: {r.paused}")

    gen_started = time.perf_counter()
    plan, writer, traffic = generate(runtime, seconds, rate, seed=7, t0=t0, on_chunk=on_chunk)
    writer.close()
    wall = time.perf_counter() - gen_started
    search = LogSearch(index, settings)
    now = datetime.now(timezone.utc)
    for inc in plan:
        answer = ask(search, LogQuery(question=inc.question, now=now))
        inc.result = {**score(inc, answer), "answer": answer["answer"],
                      "citations": answer["citations"][:5]}
    mid = hhmm(traffic, seconds / 2)
    questions = [i.question for i in plan] + [q.format(mid=mid) for q in GENERIC]
    latencies = []
    for _ in range(repeats):
        for q in questions:
            started = time.perf_counter()
            ask(search, LogQuery(question=q, now=now))
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    st = index.stats()
    return {
        "label": label, "traffic_s": seconds, "rate": rate, "requests": traffic.n,
        "lines": writer.lines, "events_indexed": index.count(),
        "target_events": target, "by_keep": st["by_keep"],
        "index_s": round(stats["index_s"], 1), "updates": stats["updates"],
        "lines_per_s": round(stats["read"] / stats["index_s"]) if stats["index_s"] else None,
        "events_per_s": round(stats["added"] / stats["index_s"]) if stats["index_s"] else None,
        "routine_counted_only": stats["aggregated"],
        "file_mb": round(st["file_bytes"] / 1e6, 1),
        "query_ms_p50": round(statistics.median(latencies), 1),
        "query_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "queries": len(latencies), "wall_s": round(wall, 1),
        "incidents": [{"name": i.name, **i.result} for i in plan],
        "coverage": st["coverage"],
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = re.search(r"Model name:\s*(.+)", out)
        cpus = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M)
        return f"{model[1].strip() if model else '?'}, {cpus[1] if cpus else '?'} CPUs"
    except OSError:
        return "?"


def markdown(result: dict) -> str:
    rows = ["| incident | question | incident lines | recall@5 | cause named | answer's cause |",
            "|---|---|---|---|---|---|"]
    for i in result["recall"]["incidents"]:
        rows.append(f"| {i['name']} | {i['question']} | {i['incident_lines']} | "
                    f"{i['recall@5']:.2f} | {'yes' if i['cause_named'] else 'no'} | "
                    f"{i['cause'].replace('|', '/')[:100]} |")
    r = result["recall"]
    rows += ["", f"{r['traffic_s'] / 3600:.1f} h of traffic at {r['rate']:g} requests/s: "
                 f"{r['requests']:,} requests, {r['lines']:,} lines; {r['events_indexed']:,} "
                 f"events kept ({r['by_keep']}), {r['routine_counted_only']:,} routine events "
                 f"counted only; indexed in {r['index_s']} s over {r['updates']} updates "
                 f"({r['lines_per_s']:,} lines/s read); index {r['file_mb']} MB.", "",
             "| events indexed | index events/s | lines read/s | query p50 ms | query p95 ms | "
             "mean recall@5 | causes named | index MB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in [r] + result["sizes"]:
        recall = statistics.mean(i["recall@5"] for i in s["incidents"])
        named = sum(i["cause_named"] for i in s["incidents"])
        rows.append(f"| {s['events_indexed']:,} ({s['label']}) | {s['events_per_s']:,} | "
                    f"{s['lines_per_s']:,} | {s['query_ms_p50']} | {s['query_ms_p95']} | "
                    f"{recall:.2f} | {named}/5 | {s['file_mb']} |")
    rows += ["", f"CPU: {result['cpu']}. Query latency: `ask()` in-process (BM25, extractive "
                 f"answer), {result['sizes'][0]['queries'] if result['sizes'] else r['queries']}"
                 " questions per size."]
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--sizes", default="100000,1000000",
                    help="comma-separated event counts for the latency part ('' skips it)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logs_volume.json")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="logs-volume-"))
    console.print(f"work dir {work}; CPU {cpu_name()}")
    console.print(f"part 1: {args.hours} h at {args.rate:g} requests/s, default retention...")
    recall = run(work, args.hours * 3600, args.rate, {}, None, f"{args.hours:g}h")
    sizes = []
    for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
        seconds = n / 8 / args.rate  # eight lines a request, every event kept
        console.print(f"part 2: {n:,} events ({seconds / 60:.0f} min of traffic, all kept)...")
        sizes.append(run(work, seconds, args.rate, {"logs_routine_samples_per_minute": -1},
                         n, f"{n // 1000}k all kept"))
    table = Table(title=f"log RAG at volume: {args.hours:g} h at {args.rate:g} requests/s, "
                        "questions asked after all of it")
    for col in ("incident", "question", "incident lines", "recall@5", "cause named",
                "answer's cause"):
        table.add_column(col)
    for i in recall["incidents"]:
        table.add_row(i["name"], i["question"], str(i["incident_lines"]), f"{i['recall@5']:.2f}",
                      "yes" if i["cause_named"] else "no", i["cause"][:90])
    console.print(table)
    sizes_table = Table(title="index throughput and query latency")
    for col in ("events indexed", "index events/s", "lines read/s", "query p50 ms",
                "query p95 ms", "mean recall@5", "index MB"):
        sizes_table.add_column(col)
    for s in [recall] + sizes:
        sizes_table.add_row(f"{s['events_indexed']:,} ({s['label']})", f"{s['events_per_s']:,}",
                            f"{s['lines_per_s']:,}", str(s["query_ms_p50"]),
                            str(s["query_ms_p95"]),
                            f"{statistics.mean(i['recall@5'] for i in s['incidents']):.2f}",
                            str(s["file_mb"]))
    console.print(sizes_table)
    result = {"cpu": cpu_name(), "recall": recall, "sizes": sizes,
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    args.out.with_suffix(".md").write_text(markdown(result))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
