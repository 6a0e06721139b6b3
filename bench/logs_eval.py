"""Log RAG evaluation on real incidents provoked on the running stack.

    python bench/logs_eval.py [--out bench/results/logs_eval.json] [--hybrid]

Starts `visionguard up` (Triton, control plane, gateway) on a scratch runtime dir and a seeded
model, keeps background traffic on streams cam-1 and cam-2, then provokes, one after another:

  slow-model       cam-3 sends frames while 20 clients flood /v1/detect for 12 s: the one
                   model instance on two cores queues them, so cam-3's requests get slow
                   (the stack marks events over 250 ms slow: ten times an unloaded frame)
  undecodable      a burst of 20 POSTs of random bytes as image/jpeg (gateway answers 422)
  triton-stopped   tritonserver is killed (SIGKILL) while 6 clients post images; `up` stops
                   the stack when a child dies, and is started again (as an operator would)
  drift-alert      `visionguard drift check` after a burst of drifted (inverted, noisy) frames
  failed-promotion `visionguard models promote <N>` of a broken candidate (its registered
                   ONNX artifact is not a model)

With a trained checkpoint (default: the bootstrap detector) it is registered as the champion
first, as `up` serves it and drift checks need its evaluation data's lineage.

Each incident keeps what identifies it on the wire: its time window and the X-Trace-Id of every
request it sent. Its ground truth is read back from the indexed logs: events of those traces,
plus events inside the window that carry the incident's marker (its error code, its command's
audit entries, "slow" for requests over the threshold). Each incident then gets an SRE's question
through `POST /v1/logs/query` (the operator token, role sre), and:

  recall@5        |top-5 events in the ground truth| / min(5, |ground truth|)
  trace recall@5  |incident trace ids among the top-5 events' traces| / min(5, |incident traces|)
  cause named     the answer's cause matches what was provoked

An incident whose command does not exist or fails before provoking anything is reported as
"not run: <reason>". Prints a table and writes JSON (index size, query latency, answers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_ports, ultralytics_assets  # noqa: E402

console = Console(soft_wrap=True)
# "Slow" for this stack: the bootstrap champion (256 px) answers a frame in about 25 ms unloaded
# on two cores, so 250 ms is ten times that (the index marks events over VG_LOGS_SLOW_MS).
SLOW_MS = 250.0


@dataclass
class Incident:
    name: str
    question: str = ""
    cause: str = ""  # regex the answer's cause must match
    marker: str = ""  # regex over an event's content: the incident's own events in its window
    start: float = 0.0
    end: float = 0.0
    traces: list[str] = field(default_factory=list)
    not_run: str = ""
    notes: str = ""
    result: dict = field(default_factory=dict)


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.runtime = work / "runtime"
        http, grpc, metrics, gateway, control = free_ports(5)
        self.env = {**os.environ,
                    "VG_MODEL_REPOSITORY": str(work / "model_repository"),
                    "VG_RUNTIME_DIR": str(self.runtime),
                    "VG_TRITON_HTTP_PORT": str(http), "VG_TRITON_GRPC_PORT": str(grpc),
                    "VG_TRITON_METRICS_PORT": str(metrics), "VG_GATEWAY_PORT": str(gateway),
                    "VG_CONTROL_PORT": str(control), "VG_MLFLOW_UI_PORT": "0",
                    "VG_GATEWAY_TRITON_TIMEOUT_S": "3", "VG_LOGS_SLOW_MS": str(SLOW_MS)}
        self.gateway = f"http://127.0.0.1:{gateway}"
        self.control = f"http://127.0.0.1:{control}"
        self.proc: subprocess.Popen | None = None
        self.token = ""
        self.champion = ""
        self.eval_data: Path | None = None

    def settings(self, **overrides):
        from conftest import settings_from

        s = settings_from(self.env)
        return replace(s, control_port=int(self.env["VG_CONTROL_PORT"]), **overrides)

    def prepare(self, checkpoint: Path | None) -> None:
        """A registered champion (what `up` serves) when a trained checkpoint is at hand, else
        a seeded model exported straight into the repository (no registry: no drift check,
        no promotion)."""
        if checkpoint and checkpoint.is_file():
            from control_plane.releases.registry import Registry
            from control_plane.datasets.synthetic_data import generate_dataset

            with console.status(f"registering {checkpoint} as the champion..."):
                self.eval_data = generate_dataset(self.work / "eval" / "data", n_train=0,
                                                  n_val=40, imgsz=256, seed=7)
                registry = Registry(self.settings())
                self.champion = registry.register(checkpoint, actor="logs-eval",
                                                  eval_data=self.eval_data).version
                # The lineage drift checks rebuild the reference window from.
                registry.tag_version(self.champion, seed=7, n_val=40, imgsz=256,
                                     eval_dataset_hash=synthetic_data_hash(self.eval_data))
            return
        from export.pipeline import export_to_repository

        with console.status("exporting a seeded yolov8n as detector version 1..."):
            export_to_repository("yolov8n.yaml", Path(self.env["VG_MODEL_REPOSITORY"]),
                                 version=1, seed=0)

    def start(self) -> None:
        self.log = self.work / f"up-{time.time():.0f}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "control_plane", "up"],
                                         env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"visionguard up failed:\n{self.log.read_text()}")
            time.sleep(0.5)
        m = re.search(r"operator token, roles release\+sre: (\S+?)\)", self.log.read_text())
        if not m:
            raise RuntimeError("no operator token in up's output")
        self.token = m[1]
        self.env["VG_TOKEN"] = self.token
        self.env["VG_CONTROL_URL"] = self.control

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def triton_pid(self) -> int:
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if "tritonserver" in " ".join(child.cmdline()[:1]):
                return child.pid
        raise RuntimeError("no tritonserver process under visionguard up")

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "control_plane", *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def synthetic_data_hash(data_yaml: Path) -> str:
    from control_plane.datasets.synthetic_data import dataset_hash

    return dataset_hash(data_yaml.parent, "val")


def post_image(client: httpx.Client, url: str, body: bytes) -> tuple[int, str, float]:
    t = time.perf_counter()
    try:
        r = client.post(url, content=body, headers={"content-type": "image/jpeg"})
    except httpx.HTTPError:
        return 0, "", (time.perf_counter() - t) * 1000
    return r.status_code, r.headers.get("x-trace-id", ""), (time.perf_counter() - t) * 1000


class Background:
    """Normal traffic: cam-1 and cam-2 send a frame each every half second."""

    def __init__(self, stack: Stack, jpg: bytes) -> None:
        self.stack, self.jpg = stack, jpg
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        frame = 0
        with httpx.Client(timeout=30) as c:
            while not self.stop_event.is_set():
                frame += 1
                for cam in ("cam-1", "cam-2"):
                    code, _, ms = post_image(
                        c, f"{self.stack.gateway}/v1/streams/{cam}/frames?frame={frame}",
                        self.jpg)
                    if code == 200:
                        self.latencies.append(ms)
                self.stop_event.wait(0.5)


def hhmm(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%H:%M")


# -- incidents ---------------------------------------------------------------------------------


def slow_model(stack: Stack, jpg: bytes, slow_ms: float) -> Incident:
    inc = Incident("slow-model", cause=r"slow|overload",
                   marker=r"stream_id=cam-3\b.*\bslow\b|\bslow\b.*stream_id=cam-3\b")
    inc.start = time.time()
    stop = threading.Event()

    def flood() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                post_image(c, f"{stack.gateway}/v1/detect", jpg)

    pool = ThreadPoolExecutor(20)
    for _ in range(20):
        pool.submit(flood)
    time.sleep(1.0)
    cam3 = []
    with httpx.Client(timeout=30) as c:
        deadline = time.monotonic() + 12
        frame = 0
        while time.monotonic() < deadline:
            frame += 1
            code, trace, ms = post_image(
                c, f"{stack.gateway}/v1/streams/cam-3/frames?frame={frame}", jpg)
            cam3.append((code, trace, ms))
    stop.set()
    pool.shutdown(wait=True)
    inc.end = time.time()
    inc.traces = [t for code, t, ms in cam3 if t and ms >= slow_ms]
    lat = sorted(ms for _, _, ms in cam3)
    inc.notes = (f"cam-3: {len(cam3)} frames, p50 {lat[len(lat) // 2]:.0f} ms, max "
                 f"{lat[-1]:.0f} ms; {len(inc.traces)} over {slow_ms:.0f} ms")
    inc.question = f"why were stream cam-3's requests slow at {hhmm(inc.start + 6)}?"
    if not inc.traces:
        inc.not_run = f"the flood did not slow cam-3 past {slow_ms:.0f} ms ({inc.notes})"
    return inc


def undecodable(stack: Stack) -> Incident:
    inc = Incident("undecodable-burst", cause=r"undecodable",
                   marker=r"undecodable_image")
    rng = np.random.default_rng(0)
    inc.start = time.time()
    with httpx.Client(timeout=30) as c:
        for _ in range(20):
            code, trace, _ = post_image(c, f"{stack.gateway}/v1/detect",
                                        rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
            if trace:
                inc.traces.append(trace)
            time.sleep(0.05)
    inc.end = time.time()
    inc.question = f"why did /v1/detect answer 422 to clients at {hhmm(inc.start)}?"
    return inc


def triton_stopped(stack: Stack, jpg: bytes) -> Incident:
    """Kill tritonserver while requests are in flight; `up` then stops the stack (it stops
    everything when a child dies) and is started again, as an operator would."""
    inc = Incident("triton-stopped", cause=r"Triton unavailable",
                   marker=r"triton_unavailable|Triton is unavailable|triton_error")
    pid = stack.triton_pid()
    results: list[tuple[int, str, float]] = []

    killed = threading.Event()

    def client(i: int) -> None:  # keeps posting until 3 s after the kill (the gateway is gone)
        with httpx.Client(timeout=30) as c:
            while not killed.is_set() or time.time() < inc.end + 3:
                results.append(post_image(c, f"{stack.gateway}/v1/detect", jpg))
                if results[-1][0] == 0:
                    time.sleep(0.05)  # refused: the gateway is stopping

    inc.start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    inc.end = time.time()
    killed.set()
    for t in threads:
        t.join()
    stack.proc.wait(timeout=120)
    inc.end = time.time()
    inc.traces = [t for code, t, _ in results if t and code >= 500]
    codes: dict[int, int] = {}
    for code, _, _ in results:
        codes[code] = codes.get(code, 0) + 1
    inc.notes = (f"status codes (0: connection refused): {dict(sorted(codes.items()))}; up "
                 f"exited {stack.proc.returncode}")
    inc.question = f"why did requests fail at {hhmm(inc.start)}?"
    stack.start()  # the operator brings the stack back
    return inc


def drift_alert(stack: Stack, jpg: bytes) -> Incident:
    inc = Incident("drift-alert", cause=r"drift", marker=r"\bdrift")
    import cv2

    img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    rng = np.random.default_rng(1)
    inc.start = time.time()
    with httpx.Client(timeout=30) as c:
        for i in range(40):
            noisy = np.clip(255 - img.astype(np.int16) + rng.normal(0, 60, img.shape), 0, 255)
            ok, buf = cv2.imencode(".jpg", noisy.astype(np.uint8))
            code, trace, _ = post_image(c, f"{stack.gateway}/v1/streams/cam-9/frames?frame={i+1}",
                                        buf.tobytes())
    r = stack.cli("drift", "check", "--json", timeout=300)
    inc.end = time.time()
    inc.notes = (r.stdout + r.stderr).strip()[-300:]
    if r.returncode != 0 or "drift" not in r.stdout.lower():
        inc.not_run = f"`visionguard drift check` exited {r.returncode}: {inc.notes[-160:]}"
    elif re.search(r'"drift"\s*:\s*false|no_drift|insufficient', r.stdout):
        inc.not_run = f"drift check ran but raised no alert: {inc.notes[-160:]}"
    inc.question = "was there a drift alert, and on what?"
    return inc


def failed_promotion(stack: Stack) -> Incident:
    """Register a candidate whose ONNX artifact is not a model (good metadata, broken file),
    then `visionguard models promote` it: the load step must reject it."""
    inc = Incident("failed-promotion", cause=r"promotion|gate|rejected|load",
                   marker=r"audit|promot|candidate")
    if not stack.champion:
        inc.not_run = "no registered champion (no trained checkpoint given)"
        return inc
    from control_plane.releases.registry import REGISTRY_EXPERIMENT, Registry
    from control_plane.mlflow_store import experiment_id
    from control_plane.training.train import register_version

    reg = Registry(stack.settings())
    champion = reg.get(stack.champion)
    broken = stack.work / "broken" / "model.onnx"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"\x08\x07 this is not an ONNX file")
    exp = experiment_id(reg.client, reg.store, REGISTRY_EXPERIMENT)
    run = reg.client.create_run(exp, run_name="broken-candidate")
    reg.client.log_artifact(run.info.run_id, str(broken), "model")
    source = f"{reg.client.get_run(run.info.run_id).info.artifact_uri}/model"
    version, _ = register_version(reg.client, reg.name, source=source, run_id=run.info.run_id,
                                  tags={**champion.tags, "candidate": "broken"})
    reg.client.set_terminated(run.info.run_id)
    inc.start = time.time()
    promo = stack.cli("models", "promote", str(version))
    inc.end = time.time()
    inc.notes = f"promote {version} exited {promo.returncode}: " + " ".join(
        (promo.stdout + promo.stderr).split())[-240:]
    if promo.returncode == 0:
        inc.not_run = f"the broken candidate was promoted: {inc.notes}"
    inc.question = "what happened in the last failed promotion?"
    return inc


# -- scoring -----------------------------------------------------------------------------------


def ground_truth(inc: Incident, docs: list) -> set[str]:
    marker = re.compile(inc.marker, re.I) if inc.marker else None
    traces = set(inc.traces)
    relevant = set()
    for d in docs:
        epoch = d.meta.get("epoch", 0.0)
        if d.meta.get("trace_id") in traces:
            relevant.add(d.id)
        elif marker and inc.start - 1 <= epoch <= inc.end + 2 and marker.search(d.content or ""):
            relevant.add(d.id)
    return relevant


def score(inc: Incident, answer: dict, relevant: set[str], ids_of: dict) -> dict:
    top = answer["citations"][:5]
    top_ids = [ids_of.get((c["source"], c["line"])) for c in top]
    hits = sum(1 for i in top_ids if i in relevant)
    recall = hits / min(5, len(relevant)) if relevant else float("nan")
    inc_traces = set(inc.traces)
    top_traces = {c["trace_id"] for c in top if c["trace_id"]}
    trace_recall = (len(top_traces & inc_traces) / min(5, len(inc_traces))
                    if inc_traces else None)
    cause = answer.get("cause") or ""
    return {"recall@5": recall, "trace_recall@5": trace_recall, "relevant": len(relevant),
            "cause": cause, "cause_named": bool(re.search(inc.cause, cause, re.I)),
            "took_ms": answer["took_ms"]}


def markdown(result: dict) -> str:
    """The result table as Markdown (bench/results/logs_eval.md)."""
    s = result["summary"]
    hybrid = any("hybrid" in i for i in result["incidents"])
    head = ["incident", "question", "incident events", "recall@5", "trace recall@5",
            "cause named", "answer's cause", "query ms"] + (
        ["hybrid recall@5", "hybrid cause named"] if hybrid else [])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in result["incidents"]:
        if i.get("not_run"):
            rows.append(f"| {i['name']} | {i['question'] or '-'} | not run: {i['not_run']} |"
                        + " |" * (len(head) - 3))
            continue
        b = i["bm25"]
        cells = [i["name"], i["question"], str(b["relevant"]), f"{b['recall@5']:.2f}",
                 "-" if b["trace_recall@5"] is None else f"{b['trace_recall@5']:.2f}",
                 "yes" if b["cause_named"] else "no", b["cause"].replace("|", "/")[:120],
                 f"{b['took_ms']:.0f}"]
        if hybrid:
            h = i["hybrid"]
            cells += [f"{h['recall@5']:.2f}", "yes" if h["cause_named"] else "no"]
        rows.append("| " + " | ".join(cells) + " |")
    index = s["index"]
    rows.append("")
    rows.append(f"Mean recall@5 {s['mean_recall@5']:.2f} over {s['incidents_run']} incidents "
                f"run of {s['incidents']}; causes named {s['causes_named']}. Index: "
                f"{index['documents']} events ({index['by_kind']}), {index['file_bytes'] / 1e6:.1f}"
                f" MB on disk; query latency through the API median {s['query_ms_median']} ms, "
                f"max {s['query_ms_max']} ms" + (f"; hybrid embedding of the index took "
                                                 f"{index['hybrid_embed_s']} s"
                                                 if "hybrid_embed_s" in index else "") + ".")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logs_eval.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--skip", default="", help="comma-separated incidents to skip")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="trained detector to register as the champion (default: the bootstrap "
                         "detector under VG_RUNTIME_DIR); without one, no drift/promotion")
    ap.add_argument("--hybrid", action="store_true",
                    help="also answer with hybrid retrieval (embeds the index locally)")
    ap.add_argument("--table-from", type=Path, default=None,
                    help="only print a result JSON's table as Markdown (no stack)")
    args = ap.parse_args()
    if args.table_from:
        print(markdown(json.loads(args.table_from.read_text())), end="")
        return
    # SIGTERM unwinds like Ctrl-C, so the stack started here is stopped (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = args.work or Path(tempfile.mkdtemp(prefix="logs-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    jpg = (ultralytics_assets() / "bus.jpg").read_bytes()
    skip = set(filter(None, args.skip.split(",")))

    from control_plane.settings import Settings

    slow_ms = SLOW_MS
    checkpoint = args.checkpoint or Settings().bootstrap_dir / "train" / "weights" / "best.pt"
    stack = Stack(work)
    incidents: list[Incident] = []
    t_all = time.time()
    try:
        stack.prepare(checkpoint if checkpoint.is_file() else None)
        stack.start()
        with httpx.Client(timeout=30) as c:
            warm = [post_image(c, f"{stack.gateway}/v1/streams/cam-0/frames?frame={i + 1}",
                               jpg)[2] for i in range(10)]
        baseline = statistics.median(warm[3:])
        console.print(f"stack up at {stack.gateway} (champion {stack.champion or 'none'}); "
                      f"unloaded frame p50 {baseline:.0f} ms, slow threshold {slow_ms:.0f} ms")
        background = Background(stack, jpg)
        background.thread.start()
        time.sleep(5)
        plan = [("slow-model", lambda: slow_model(stack, jpg, slow_ms)),
                ("undecodable-burst", lambda: undecodable(stack)),
                ("drift-alert", lambda: drift_alert(stack, jpg)),
                ("failed-promotion", lambda: failed_promotion(stack)),
                ("triton-stopped", lambda: triton_stopped(stack, jpg))]
        for name, run in plan:
            if name in skip:
                incidents.append(Incident(name, not_run="skipped (--skip)"))
                continue
            console.print(f"provoking {name}...")
            try:
                inc = run()
            except Exception as exc:  # an incident that cannot be provoked is reported
                inc = Incident(name, not_run=f"{type(exc).__name__}: {exc}")
            console.print(f"  {inc.notes} " + (f"NOT RUN: {inc.not_run}" if inc.not_run else ""),
                          markup=False)
            incidents.append(inc)
            time.sleep(3)
        background.stop_event.set()
        background.thread.join()
        time.sleep(3)  # the last lines and spans reach their files

        # Ask through the control plane, as an SRE would.
        auth = {"authorization": f"Bearer {stack.token}"}
        with httpx.Client(base_url=stack.control, headers=auth, timeout=300) as api:
            t = time.perf_counter()
            stats = api.get("/v1/logs/index").json()
            first_index_s = time.perf_counter() - t
            from control_plane.logs.index import LogIndex
            from control_plane.settings import Settings

            settings = Settings(runtime_dir=stack.runtime,
                                logs_index_dir_override=str(work / "reader-index"),
                                logs_slow_ms=slow_ms)
            reader = LogIndex.open(settings)  # the same files, read here to score against
            reader.update(save=False)
            docs = reader.all_documents()
            ids_of = {(d.meta["source"], d.meta["line"]): d.id for d in docs}
            latencies = []
            for inc in incidents:
                if inc.not_run:
                    continue
                relevant = ground_truth(inc, docs)
                for _ in range(3):  # latency: three askings of each question
                    t = time.perf_counter()
                    r = api.post("/v1/logs/query", json={"question": inc.question,
                                                         "top_k": 10})
                    r.raise_for_status()
                    latencies.append((time.perf_counter() - t) * 1000)
                answer = r.json()
                inc.result = {"bm25": score(inc, answer, relevant, ids_of),
                              "answer": answer["answer"], "trace_ids": answer["trace_ids"][:5],
                              "citations": answer["citations"][:5]}
            if args.hybrid:
                from control_plane.logs.query import LogQuery, ask, open_search

                hs = open_search(Settings(runtime_dir=stack.runtime,
                                          logs_index_dir_override=str(work / "hybrid-index"),
                                          logs_slow_ms=slow_ms), mode="hybrid")
                t = time.perf_counter()
                hs.index.update(save=False)
                embed_s = time.perf_counter() - t
                for inc in incidents:
                    if inc.not_run:
                        continue
                    answer = ask(hs, LogQuery(question=inc.question, mode="hybrid"))
                    inc.result["hybrid"] = score(inc, answer, ground_truth(inc, docs), ids_of)
                stats["hybrid_embed_s"] = round(embed_s, 1)
            stats = {**api.get("/v1/logs/index").json(),
                     "first_query_index_s": round(first_index_s, 2),
                     **({"hybrid_embed_s": stats["hybrid_embed_s"]} if args.hybrid else {})}
    finally:
        stack.stop()

    table = Table(title="log RAG on provoked incidents (recall@5: incident events among the "
                        "top 5; cause: named in the answer)")
    for col in ("incident", "question", "events", "recall@5", "trace recall@5", "cause named",
                "answer's cause", "ms") + (("hybrid recall@5", "hybrid cause") if args.hybrid
                                           else ()):
        table.add_column(col)
    for inc in incidents:
        if inc.not_run:
            table.add_row(inc.name, inc.question or "-", "-", f"not run: {inc.not_run}", "", "",
                          "", "")
            continue
        b = inc.result["bm25"]
        row = [inc.name, inc.question, str(b["relevant"]), f"{b['recall@5']:.2f}",
               "-" if b["trace_recall@5"] is None else f"{b['trace_recall@5']:.2f}",
               "yes" if b["cause_named"] else "no", b["cause"], f"{b['took_ms']:.0f}"]
        if args.hybrid:
            h = inc.result["hybrid"]
            row += [f"{h['recall@5']:.2f}", "yes" if h["cause_named"] else "no"]
        table.add_row(*row)
    console.print(table)
    run_incidents = [i for i in incidents if not i.not_run]
    summary = {
        "mean_recall@5": statistics.mean(i.result["bm25"]["recall@5"] for i in run_incidents)
        if run_incidents else None,
        "causes_named": sum(i.result["bm25"]["cause_named"] for i in run_incidents),
        "incidents_run": len(run_incidents), "incidents": len(incidents),
        "query_ms_median": round(statistics.median(latencies), 1) if latencies else None,
        "query_ms_max": round(max(latencies), 1) if latencies else None,
        "unloaded_frame_ms": round(baseline, 1), "slow_ms": slow_ms,
        "index": stats, "wall_s": round(time.time() - t_all, 1),
    }
    console.print(json.dumps(summary, indent=1))
    for inc in run_incidents:
        console.print(f"\n[bold]{inc.name}[/]: {inc.question}")
        console.print(inc.result["answer"], markup=False, highlight=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"summary": summary,
              "incidents": [{"name": i.name, "question": i.question,
                             "not_run": i.not_run or None, "window": [i.start, i.end],
                             "traces": i.traces, "notes": i.notes, **i.result}
                            for i in incidents]}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    args.out.with_suffix(".md").write_text(markdown(json.loads(json.dumps(result, default=str))))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
