"""The log index: JSON log lines, Triton's text log, spans and the audit log as Haystack Documents.

Sources under `runtime_dir` (what `visionguard up` and the services write):

    logs/<service>.log     one JSON object per line (ts, level, service, logger, message, trace_id,
                           span_id, context fields); `triton.log` is Triton's own glog text;
                           anything else (a traceback, uvicorn's text) is indexed as plain text
    traces/spans.jsonl     one span per line (name, service, trace_id, span_id, start, end, ...)
    audit.jsonl            the control plane's audit trail (promotion steps), service control-plane

Indexing is incremental: per file, the byte offset (and inode) read so far is kept with the index,
so a run reads only new complete lines; a file that shrank or was replaced is read again from the
start. Memory is bounded: at most `logs_max_documents` events are kept, the oldest evicted. The
store and the offsets are written together in one file, atomically (temp file + rename), so a
crash leaves the previous index, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from haystack import Document
from haystack.document_stores.in_memory import InMemoryDocumentStore
from haystack.document_stores.types import DuplicatePolicy
from haystack.telemetry import _telemetry

from control_plane.settings import Settings

# Haystack sends usage telemetry to posthog.com by default: logs tooling must not phone home
# (and these machines cannot reach it). Off, whatever HAYSTACK_TELEMETRY_ENABLED says.
_telemetry.telemetry = None

log = logging.getLogger(__name__)

FORMAT = 1
SEVERITY = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
LEVEL_ALIASES = {"WARN": "WARNING", "ERR": "ERROR", "FATAL": "CRITICAL", "TRACE": "DEBUG",
                 "EXCEPTION": "ERROR", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
# Words and ids: "cam-3", "model_v2.onnx" -> "model", "v2.onnx"; error codes split at "_" so that
# "triton_unavailable" matches a question about "Triton unavailable".
TOKEN_REGEX = r"(?u)[^\W_]+(?:[-.][^\W_]+)*"
MAX_LINE_CHARS = 4000
BATCH_LINES = 2000
# Keys of a JSON log line that are not context fields.
BASE_KEYS = {"ts", "level", "service", "logger", "message", "trace_id", "span_id"}
# Context fields kept as metadata (filterable) when they are scalars.
META_KEYS = ("event", "stream_id", "model", "model_version", "route", "status", "duration_ms",
             "error_code", "method", "version", "candidate", "step", "result", "who", "action",
             "actor", "outcome", "reason")

RELEASE_ACTIONS = {"promote": "promotion", "reject": "promotion rejected",
                   "canary": "canary promotion", "rollback": "rollback of a promotion",
                   "abort": "canary aborted", "register": "model registration"}
TRITON_LINE = re.compile(
    r"^(?P<lvl>[IWEF])(?P<mm>\d{2})(?P<dd>\d{2}) (?P<time>\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s+"
    r"(?P<tid>\d+)\s+(?P<src>[^\]]+)\]\s?(?P<msg>.*)$")
PLAIN_LEVEL = re.compile(r"^\s*(?P<lvl>DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b[:\s]")
ERRORISH = re.compile(r"Traceback|Error\b|Exception\b|error:", re.I)
FAILED_WORDS = {"failed", "fail", "rejected", "error", "aborted", "rolled_back", "false"}


def normalize_level(value: Any) -> str:
    text = str(value or "INFO").strip().upper()
    text = LEVEL_ALIASES.get(text, text)
    return text if text in SEVERITY else "INFO"


def parse_time(value: Any) -> datetime | None:
    """RFC3339 (with Z or an offset) to an aware UTC datetime; None if it is not one."""
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _meta(value: Any) -> Any:
    """A scalar as metadata; long strings (a Triton error, a traceback) cut to 240 chars."""
    if isinstance(value, str) and len(value) > 240:
        return value[:237] + "..."
    return value


def _flat(prefix: str, value: Any, out: list[str]) -> None:
    """Nested objects as `a.b=value` words for the text an event is searched by."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value[:20]):
            _flat(f"{prefix}[{i}]", v, out)
    else:
        out.append(f"{prefix}={value}")


@dataclass
class FileState:
    """How far one source file has been read, and the context its next plain lines inherit."""

    inode: int = 0
    offset: int = 0
    line: int = 0
    ts: str = ""
    trace_id: str = ""

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Source:
    path: Path
    service: str
    kind: str  # json-log | triton | span | audit


@dataclass
class UpdateResult:
    added: int = 0
    evicted: int = 0
    embedded: int = 0
    files: int = 0
    seconds: float = 0.0


@dataclass
class LineParser:
    """Turns one line of a source into a Document (or None for a blank line)."""

    slow_ms: float
    year: int = field(default_factory=lambda: datetime.now(timezone.utc).year)

    def parse(self, source: Source, state: FileState, line: str, offset: int) -> Document | None:
        text = line.rstrip("\r\n")
        if not text.strip():
            return None
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + " ...(truncated)"
        doc = None
        if source.kind == "triton":
            doc = self._triton(source, text)
        elif text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                doc = {"span": self._span, "audit": self._audit}.get(source.kind, self._log)(
                    source, obj)
        if doc is None:
            doc = self._plain(source, state, text)
        meta = doc.meta
        meta["source"] = source.path.name
        meta["line"] = state.line
        if not meta.get("ts"):  # inherit the time of the previous line (a traceback's lines)
            meta["ts"] = state.ts or iso(datetime.now(timezone.utc))
        meta["epoch"] = parse_time(meta["ts"]).timestamp()
        meta["severity"] = SEVERITY[meta["level"]]
        state.ts = meta["ts"]
        if meta.get("trace_id"):
            state.trace_id = meta["trace_id"]
        digest = hashlib.sha1(f"{source.path.name}\0{state.inode}\0{offset}\0{text}".encode())
        return replace(doc, id=digest.hexdigest()[:24])

    def _slow(self, duration: Any) -> str:
        try:
            return " slow" if float(duration) >= self.slow_ms else ""
        except (TypeError, ValueError):
            return ""

    def _log(self, source: Source, obj: dict) -> Document:
        level = normalize_level(obj.get("level"))
        service = str(obj.get("service") or source.service)
        ts = parse_time(obj.get("ts") or obj.get("time") or obj.get("timestamp"))
        meta: dict[str, Any] = {"kind": "log", "service": service, "level": level,
                                "ts": iso(ts) if ts else "",
                                "trace_id": str(obj.get("trace_id") or ""),
                                "span_id": str(obj.get("span_id") or ""),
                                "logger": str(obj.get("logger") or "")}
        words: list[str] = []
        for key, value in obj.items():
            if key in BASE_KEYS:
                continue
            _flat(key, value, words)
            if key in META_KEYS and _scalar(value):
                meta[key] = _meta(value)
        message = str(obj.get("message") or obj.get("msg") or "")
        content = f"{level} {service} {meta['logger']}: {message}"
        if words:
            content += " | " + " ".join(words)
        content += self._slow(obj.get("duration_ms"))
        return Document(content=content, meta=meta)

    def _span(self, source: Source, obj: dict) -> Document:
        attrs = obj.get("attributes") if isinstance(obj.get("attributes"), dict) else {}
        status = str(obj.get("status") or "UNSET").upper()
        start, end = parse_time(obj.get("start")), parse_time(obj.get("end"))
        duration = obj.get("duration_ms")
        if duration is None and start and end:
            duration = round((end - start).total_seconds() * 1000, 3)
        service = str(obj.get("service") or source.service)
        meta: dict[str, Any] = {
            "kind": "span", "service": service, "level": "ERROR" if status == "ERROR" else "INFO",
            "ts": iso(start or end) if (start or end) else "", "name": str(obj.get("name") or ""),
            "trace_id": str(obj.get("trace_id") or ""), "span_id": str(obj.get("span_id") or ""),
            "parent_span_id": str(obj.get("parent_span_id") or ""), "status": status}
        if isinstance(duration, (int, float)):
            meta["duration_ms"] = float(duration)
        for key, value in attrs.items():
            short = key.removeprefix("visionguard.").removeprefix("vg.")
            short = {"http.route": "route", "stream.id": "stream_id",
                     "http.status_code": "http_status",
                     "http.response.status_code": "http_status"}.get(short, short)
            if short in META_KEYS + ("http_status",) and _scalar(value):
                meta.setdefault(short, _meta(value))
        words: list[str] = []
        _flat("", attrs, words)
        content = (f"span {meta['name']} {service} status={status} "
                   f"duration_ms={meta.get('duration_ms', '?')}")
        if words:
            content += " | " + " ".join(words)
        content += self._slow(meta.get("duration_ms"))
        return Document(content=content, meta=meta)

    def _audit(self, source: Source, obj: dict) -> Document:
        ts = None
        for key in ("ts", "time", "timestamp", "when", "at"):
            ts = ts or parse_time(obj.get(key))
        words: list[str] = []
        _flat("", {k: v for k, v in obj.items() if k not in ("ts", "time", "timestamp")}, words)
        failed = any(w.split("=", 1)[1].strip().lower() in FAILED_WORDS for w in words
                     if w.split("=", 1)[0].rsplit(".", 1)[-1] in
                     ("result", "status", "outcome", "passed", "ok", "state"))
        level = normalize_level(obj.get("level")) if obj.get("level") else (
            "ERROR" if failed else "INFO")
        meta: dict[str, Any] = {"kind": "audit", "service": "control-plane", "level": level,
                                "ts": iso(ts) if ts else "",
                                "trace_id": str(obj.get("trace_id") or ""),
                                "span_id": str(obj.get("span_id") or "")}
        for key in META_KEYS:
            if _scalar(obj.get(key)):
                meta[key] = _meta(obj[key])
        message = str(obj.get("message") or " ".join(
            str(obj[k]) for k in ("action", "version", "outcome", "reason") if obj.get(k)))
        # The release vocabulary an SRE asks in: a "reject" entry is a failed promotion.
        action = str(obj.get("action", ""))
        family = RELEASE_ACTIONS.get(action) or (
            f"promotion step {action[5:]}" if action.startswith("step:") else None)
        if family:
            message = f"{family}: {message}"
        content = f"{level} control-plane audit: {message} | " + " ".join(words)
        return Document(content=content, meta=meta)

    def _triton(self, source: Source, text: str) -> Document | None:
        m = TRITON_LINE.match(text)
        if not m:
            return None
        level = normalize_level(m["lvl"])
        try:
            ts = datetime.fromisoformat(f"{self.year}-{m['mm']}-{m['dd']}T{m['time'][:15]}"
                                        ).replace(tzinfo=timezone.utc)
        except ValueError:
            return None
        meta = {"kind": "log", "service": source.service, "level": level, "ts": iso(ts),
                "trace_id": "", "span_id": "", "logger": m["src"].split(":")[0]}
        return Document(content=f"{level} {source.service} {m['src']}: {m['msg']}", meta=meta)

    def _plain(self, source: Source, state: FileState, text: str) -> Document:
        m = PLAIN_LEVEL.match(text)
        if m:
            level = normalize_level(m["lvl"])
        else:
            level = "ERROR" if ERRORISH.search(text) else "INFO"
        meta = {"kind": "text", "service": source.service, "level": level, "ts": "",
                "trace_id": state.trace_id if not m else "", "span_id": ""}
        return Document(content=f"{level} {source.service}: {text}", meta=meta)


SUFFIXES = ("ations", "ation", "ions", "ion", "ings", "ing", "able", "ed", "er", "es", "s", "e")


def stem(token: str) -> str:
    """A light suffix stemmer for English words ("promotion", "promoted" -> "promot"), so that
    a question's words meet the logs' ones; ids and numbers ("cam-3", "503") stay as they are."""
    if not token.isalpha() or len(token) <= 4:
        return token
    for suffix in SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 4:
            token = token[: -len(suffix)]
            break
    if len(token) > 4 and token[-1] == token[-2] and token[-1] not in "aeiouls":
        token = token[:-1]  # "stopped" -> "stopp" -> "stop"
    return token


# English function words. Log lines seldom contain them, so in BM25 they would be rare, hence
# heavy, terms: "why did ... to clients" matched error messages for their "to", not the events
# asked about. Dropped from questions and events alike.
STOPWORDS = frozenset("""
a about above after again all am an and any are as at be been before being below between both
but by can could did do does doing done during each few for from had has have having he her
here hers him his how i if in into is it its just me more most my no nor not now of off on once
only or other our out over own same she should so some such than that the their them then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your happen happened happening anything something went going
get got tell show last recent recently
""".split())


class LogDocumentStore(InMemoryDocumentStore):
    """Haystack's in-memory store, with BM25 over stemmed tokens without function words."""

    def _tokenize_bm25(self, text: str) -> list[str]:
        return [stem(t) for t in super()._tokenize_bm25(text) if t not in STOPWORDS]


def new_store() -> InMemoryDocumentStore:
    return LogDocumentStore(bm25_tokenization_regex=TOKEN_REGEX, bm25_algorithm="BM25Plus",
                            embedding_similarity_function="cosine", shared=False,
                            return_embedding=False)


class LogIndex:
    """A bounded, persisted, incrementally updated store of log events and spans.

    `embed` (documents -> documents with embeddings) is given when embedding retrieval is on;
    then new events are embedded as they are indexed, and events indexed without are back-filled.
    """

    def __init__(self, settings: Settings,
                 embed: Callable[[list[Document]], list[Document]] | None = None,
                 embedding_model: str = "") -> None:
        self.settings = settings
        self.path = settings.logs_index_dir / "index.json"
        self.max_documents = max(1, settings.logs_max_documents)
        self.embed = embed
        self.embedding_model = embedding_model
        self.store = new_store()
        self.files: dict[str, FileState] = {}
        self.parser = LineParser(slow_ms=settings.logs_slow_ms)
        self.lock = threading.RLock()
        self.updated_at: float | None = None

    # -- persistence -------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: Settings, **kwargs) -> "LogIndex":
        """The index saved under settings.logs_index_dir, or an empty one.

        A file that cannot be read is moved aside (`index.json.unreadable`) and the index is
        rebuilt from the logs, which are the source of truth.
        """
        index = cls(settings, **kwargs)
        if index.path.exists():
            try:
                data = json.loads(index.path.read_text())
                if data.get("format") != FORMAT:
                    raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
                index.files = {k: FileState(**v) for k, v in data["files"].items()}
                docs = [Document.from_dict(d) for d in data["documents"]]
                saved_model = data.get("embedding_model", "")
                if index.embed is None:
                    index.embedding_model = saved_model  # kept for when embeddings are on again
                elif saved_model != index.embedding_model:
                    # another model's vectors mean nothing to this one
                    docs = [replace(d, embedding=None) for d in docs]
                index.store.write_documents(docs, policy=DuplicatePolicy.OVERWRITE)
            except (ValueError, KeyError, TypeError) as exc:
                aside = index.path.with_suffix(".json.unreadable")
                log.warning("log index %s unreadable (%s); moved to %s and rebuilt",
                            index.path, exc, aside)
                os.replace(index.path, aside)
                index.store, index.files = new_store(), {}
        return index

    def save(self) -> int:
        """Write the store and the offsets in one file, atomically; returns its size in bytes."""
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {"format": FORMAT, "embedding_model": self.embedding_model,
                    "files": {k: v.to_dict() for k, v in self.files.items()},
                    "documents": [d.to_dict(flatten=False) for d in self.all_documents()]}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, separators=(",", ":"))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return self.path.stat().st_size

    # -- reading the sources -----------------------------------------------------------------

    def sources(self) -> list[Source]:
        rt = self.settings.runtime_dir
        found = []
        logs = rt / "logs"
        if logs.is_dir():
            for p in sorted(logs.glob("*.log")) + sorted(logs.glob("*.jsonl")):
                kind = "triton" if p.stem == "triton" else "json-log"
                found.append(Source(p, p.stem, kind))
        spans = self.settings.traces_file
        if spans.is_file():
            found.append(Source(spans, "traces", "span"))
        audit = self.settings.audit_file
        if audit.is_file():
            found.append(Source(audit, "control-plane", "audit"))
        return found

    def update(self, save: bool = True) -> UpdateResult:
        """Index the lines written since the last update; evict the oldest beyond the bound."""
        started = time.perf_counter()
        result = UpdateResult()
        with self.lock:
            for source in self.sources():
                result.files += 1
                self._read(source, result)
            if self.embed is not None:
                missing = [d for d in self.all_documents() if d.embedding is None]
                if missing:
                    self._write(missing, result, count=False)
            result.seconds = time.perf_counter() - started
            if save and (result.added or result.evicted or result.embedded):
                self.save()
            self.updated_at = time.time()
        return result

    def _read(self, source: Source, result: UpdateResult) -> None:
        key = str(source.path)
        try:
            st = source.path.stat()
        except FileNotFoundError:
            return
        state = self.files.get(key)
        if state is not None and state.inode != st.st_ino:
            # Rolled over (spans.jsonl -> spans.jsonl.1): finish the old file first.
            rolled = source.path.with_name(source.path.name + ".1")
            if rolled.exists() and rolled.stat().st_ino == state.inode:
                self._read_from(Source(rolled, source.service, source.kind), state, result)
        if state is None or state.inode != st.st_ino or st.st_size < state.offset:
            state = FileState(inode=st.st_ino)  # new, replaced or truncated: from the start
        self._read_from(source, state, result)
        self.files[key] = state

    def _read_from(self, source: Source, state: FileState, result: UpdateResult) -> None:
        st = source.path.stat()
        if st.st_size == state.offset:
            return
        self.parser.year = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc).year
        batch: list[Document] = []
        with open(source.path, "rb") as f:
            f.seek(state.offset)
            while True:
                offset = f.tell()
                raw = f.readline()
                if not raw or not raw.endswith(b"\n"):
                    break  # EOF, or a line still being written: read it next time
                state.offset = f.tell()
                state.line += 1
                doc = self.parser.parse(source, state, raw.decode("utf-8", "replace"), offset)
                if doc is not None:
                    batch.append(doc)
                if len(batch) >= BATCH_LINES:
                    self._write(batch, result)
                    batch = []
        if batch:
            self._write(batch, result)

    def _write(self, docs: list[Document], result: UpdateResult, count: bool = True) -> None:
        if self.embed is not None:
            docs = self.embed(docs)
            result.embedded += len(docs)
        self.store.write_documents(docs, policy=DuplicatePolicy.OVERWRITE)
        if count:
            result.added += len(docs)
        result.evicted += self._evict()

    def _evict(self) -> int:
        excess = self.store.count_documents() - self.max_documents
        if excess <= 0:
            return 0
        oldest = sorted(self.all_documents(), key=lambda d: (d.meta.get("epoch", 0.0), d.id))
        self.store.delete_documents([d.id for d in oldest[:excess]])
        return excess

    # -- reading the index -------------------------------------------------------------------

    def all_documents(self) -> list[Document]:
        return list(self.store.storage.values())

    def count(self) -> int:
        return self.store.count_documents()

    def values(self, key: str) -> set[str]:
        """Distinct values of a metadata field (stream ids, services) to recognise in questions."""
        return {str(d.meta[key]) for d in self.store.storage.values() if d.meta.get(key)}

    def latest_epoch(self) -> float | None:
        epochs = [d.meta.get("epoch", 0.0) for d in self.store.storage.values()]
        return max(epochs) if epochs else None

    def stats(self) -> dict[str, Any]:
        docs = self.all_documents()
        by_kind: dict[str, int] = {}
        for d in docs:
            by_kind[d.meta.get("kind", "?")] = by_kind.get(d.meta.get("kind", "?"), 0) + 1
        return {
            "documents": len(docs), "max_documents": self.max_documents, "by_kind": by_kind,
            "embedded": sum(1 for d in docs if d.embedding is not None),
            "embedding_model": self.embedding_model or None,
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "path": str(self.path),
            "sources": {Path(k).name: {"offset": v.offset, "lines": v.line}
                        for k, v in self.files.items()},
        }

