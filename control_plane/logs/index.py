"""The log index: JSON log lines, Triton's text log, spans and the audit log as searchable events.

Sources under `runtime_dir` (what `visionguard up` and the services write):

    logs/<service>.log     one JSON object per line (ts, level, service, logger, message, trace_id,
                           span_id, context fields); `triton.log` is Triton's own glog text;
                           anything else (a traceback, uvicorn's text) is indexed as plain text
    traces/spans.jsonl     one span per line (name, service, trace_id, span_id, start, end, ...)
    audit.jsonl            the control plane's audit trail (promotion steps), service control-plane

Incremental: per file, the byte offset (and inode) read so far is kept in `index.sqlite`, so an
update reads only new complete lines; a file that shrank or was replaced is read again from the
start. Events go to a `LogStore` (store.py: SQLite FTS5 here, OpenSearch in a cluster) in
batches; the offsets are committed after them, so a crash re-reads a few lines whose events the
store already has (their ids are content hashes: no duplicates).

What is kept (issue 19: at ~50 requests/s, routine requests and their seven spans each filled a
50,000-event bound in 15 minutes and pushed an outage out of the index):

  - always, for the retention time: errors, warnings, slow requests and spans, audit entries,
    every event that is not part of a request (lifecycle, drift alerts, Triton's log), and
    every event of a trace that has one of those;
  - routine requests (answered under 400, not slow) and their spans: counted per minute, route,
    model version and source (`rollups`: requests, 5xx, 4xx, slow, total and max ms), and of
    their traces `logs_routine_samples_per_minute` a minute per route kept whole as samples.
    A routine trace waits GRACE_S of event time (spans arrive after their request's log line)
    before it is sampled or counted only.

Retention: events older than `logs_retention_days` before the newest event read are deleted;
over `logs_max_mb` the oldest samples go first, then the oldest events of any kind. Measured
against the newest event, not the wall clock, so a stopped stack keeps its last week and a
replay of old logs is not deleted as it is read.

Bad input: a line that is not JSON is plain text; a line over MAX_LINE_BYTES is cut (its head
is indexed, the rest skipped without reading it into memory); a line dated more than a day
ahead of the clock is filed at the time of the line before it. A truncated or corrupt index is
moved aside (`index.sqlite.unreadable`) and rebuilt from the logs, which are the source of truth.
A full disk (free space under `logs_min_free_mb`, or SQLITE_FULL) pauses indexing: the update
is rolled back, `paused` says why, and answering goes on from what is indexed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from haystack import Document
from haystack.telemetry import _telemetry

from control_plane.logs.store import (FORMAT, Database, LogStore, SQLiteLogStore, is_corrupt,
                                      is_full, run_script)
from control_plane.settings import Settings

# Haystack sends usage telemetry to posthog.com by default: logs tooling must not phone home
# (and these machines cannot reach it). Off, whatever HAYSTACK_TELEMETRY_ENABLED says.
_telemetry.telemetry = None

log = logging.getLogger(__name__)

SEVERITY = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
LEVEL_ALIASES = {"WARN": "WARNING", "ERR": "ERROR", "FATAL": "CRITICAL", "TRACE": "DEBUG",
                 "EXCEPTION": "ERROR", "I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
MAX_CONTENT_CHARS = 4000
# A line longer than this is cut: its head is indexed, the rest skipped in chunks.
MAX_LINE_BYTES = 1 << 20
BATCH_LINES = 5000
GRACE_S = 60.0
# How long a trace's decision is remembered for its late events (spans come seconds late).
DECISION_S = 600.0
FUTURE_S = 86400.0
EMBED_BACKFILL = 5000
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
# The fields a JSON line's head still shows when the line was cut (or is not valid JSON).
JSON_HEAD = {k: re.compile(rf'"{k}"\s*:\s*"([^"]{{0,200}})"')
             for k in ("ts", "level", "service", "trace_id", "message")}
HTTP_METHODS = ("GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD ")


def normalize_level(value: Any) -> str:
    text = str(value or "INFO").strip().upper()
    text = LEVEL_ALIASES.get(text, text)
    return text if text in SEVERITY else "INFO"


def parse_time(value: Any) -> datetime | None:
    """RFC3339 (with Z or an offset) to an aware UTC datetime; None if it is not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)  # 3.11: "Z" and offsets
    except ValueError:
        parsed = None
    if parsed is None:
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
    added: int = 0       # events written to the store
    read: int = 0        # lines parsed
    aggregated: int = 0  # routine events counted in the rollups only (not kept)
    evicted: int = 0     # events deleted by retention (time or size)
    embedded: int = 0
    files: int = 0
    seconds: float = 0.0
    paused: str | None = None   # why indexing did not run (disk full, store unreachable)
    rebuilt: bool = False       # the index was unreadable and was rebuilt from the logs


@dataclass
class LineParser:
    """Turns one line of a source into a Document (or None for a blank line)."""

    slow_ms: float
    year: int = field(default_factory=lambda: datetime.now(timezone.utc).year)

    def parse(self, source: Source, state: FileState, line: str, offset: int) -> Document | None:
        text = line.rstrip("\r\n")
        if not text.strip():
            return None
        doc = None
        if source.kind == "triton":
            doc = self._triton(source, text[:MAX_CONTENT_CHARS])
        elif text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                doc = {"span": self._span, "audit": self._audit}.get(source.kind, self._log)(
                    source, obj)
        if doc is None:
            doc = self._plain(source, state, text[:MAX_CONTENT_CHARS])
        content, meta = doc
        if len(content) > MAX_CONTENT_CHARS:
            content = content[:MAX_CONTENT_CHARS] + " ...(truncated)"
        meta["source"] = source.path.name
        meta["line"] = state.line
        when = parse_time(meta.get("ts")) if meta.get("ts") else None
        if when is not None and when.timestamp() > time.time() + FUTURE_S:
            meta["ts_claimed"] = meta["ts"]  # a clock far ahead: filed with the line before
            when = None
        if when is None:  # the time of the previous line (a traceback's lines), or else of
            meta["ts"] = state.ts  # the next one (LogIndex._read_from): never the reading time
            when = parse_time(state.ts)
        meta["epoch"] = when.timestamp() if when else None
        meta["severity"] = SEVERITY[meta["level"]]
        state.ts = meta["ts"]
        if meta.get("trace_id"):
            state.trace_id = meta["trace_id"]
        digest = hashlib.sha1(f"{source.path.name}\0{state.inode}\0{offset}\0".encode()
                              + text.encode("utf-8", "replace"))
        return Document(id=digest.hexdigest()[:24], content=content, meta=meta)

    def _slow(self, duration: Any) -> str:
        try:
            return " slow" if float(duration) >= self.slow_ms else ""
        except (TypeError, ValueError):
            return ""

    def _log(self, source: Source, obj: dict) -> tuple[str, dict]:
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
        return content, meta

    def _span(self, source: Source, obj: dict) -> tuple[str, dict]:
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
        if isinstance(duration, (int, float)) and not isinstance(duration, bool):
            meta["duration_ms"] = float(duration)
        for key, value in attrs.items():
            short = key.removeprefix("visionguard.").removeprefix("vg.")
            short = {"http.route": "route", "stream.id": "stream_id",
                     "http.status_code": "http_status",
                     "http.response.status_code": "http_status"}.get(short, short)
            if short in META_KEYS + ("http_status",) and _scalar(value):
                meta.setdefault(short, _meta(value))
        try:  # a request answered 4xx: a warning, as its log line is
            if meta["level"] == "INFO" and 400 <= int(meta.get("http_status", 0)) < 500:
                meta["level"] = "WARNING"
        except (TypeError, ValueError):
            pass
        words: list[str] = []
        _flat("", attrs, words)
        content = (f"span {meta['name']} {service} status={status} "
                   f"duration_ms={meta.get('duration_ms', '?')}")
        if words:
            content += " | " + " ".join(words)
        content += self._slow(meta.get("duration_ms"))
        return content, meta

    def _audit(self, source: Source, obj: dict) -> tuple[str, dict]:
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
        return content, meta

    def _triton(self, source: Source, text: str) -> tuple[str, dict] | None:
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
        return f"{level} {source.service} {m['src']}: {m['msg']}", meta

    def _plain(self, source: Source, state: FileState, text: str) -> tuple[str, dict]:
        if text.lstrip().startswith("{"):  # a JSON line cut short (or broken): what its head says
            head = {k: m[1] for k, p in JSON_HEAD.items() if (m := p.search(text))}
            if "ts" in head or "level" in head:
                level = normalize_level(head.get("level"))
                ts = parse_time(head.get("ts"))
                meta = {"kind": "log", "service": head.get("service") or source.service,
                        "level": level, "ts": iso(ts) if ts else "",
                        "trace_id": head.get("trace_id", ""), "span_id": "", "cut": True}
                return f"{level} {meta['service']}: {text}", meta
        m = PLAIN_LEVEL.match(text)
        if m:
            level = normalize_level(m["lvl"])
        else:
            level = "ERROR" if ERRORISH.search(text) else "INFO"
        meta = {"kind": "text", "service": source.service, "level": level, "ts": "",
                "trace_id": state.trace_id if not m else "", "span_id": ""}
        return f"{level} {source.service}: {text}", meta


# -- what is kept ------------------------------------------------------------------------------


def keep_reason(doc: Document, slow_ms: float) -> str | None:
    """Why an event is always kept, or None for a routine request event (sampled or counted)."""
    meta = doc.meta
    severity = meta.get("severity", 20)
    if severity >= 40:
        return "error"
    if severity >= 30:
        return "warning"
    try:
        if float(meta.get("duration_ms", 0) or 0) >= slow_ms:
            return "slow"
    except (TypeError, ValueError):
        pass
    if meta.get("kind") == "audit":
        return "audit"
    if meta.get("kind") == "span" or (meta.get("kind") == "log" and meta.get("event") == "request"):
        return None
    return "event"  # lifecycle, drift, Triton's log, anything that is not a request


@dataclass
class RequestRoot:
    source: str   # log | span
    service: str
    route: str
    version: str
    status: int
    duration_ms: float


def request_root(doc: Document) -> RequestRoot | None:
    """The event that stands for a whole request: its log line, or its root (server) span."""
    meta = doc.meta
    if meta.get("kind") == "log" and meta.get("event") == "request":
        source = "log"
        status = meta.get("status")
    elif meta.get("kind") == "span" and not meta.get("parent_span_id") and (
            meta.get("route") or str(meta.get("name", "")).startswith(HTTP_METHODS)):
        source = "span"
        status = meta.get("http_status")
    else:
        return None
    try:
        status = int(status or 0)
    except (TypeError, ValueError):
        status = 0
    try:
        duration = float(meta.get("duration_ms") or 0.0)
    except (TypeError, ValueError):
        duration = 0.0
    route = str(meta.get("route") or meta.get("name") or "?")
    return RequestRoot(source, str(meta.get("service") or "?"), route,
                       str(meta.get("model_version") or ""), status, duration)


# -- the index ---------------------------------------------------------------------------------

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, inode INTEGER, offset INTEGER,
    line INTEGER, ts TEXT, trace_id TEXT);
CREATE TABLE IF NOT EXISTS pending (id TEXT PRIMARY KEY, key TEXT, doc TEXT);
CREATE INDEX IF NOT EXISTS pending_key ON pending(key);
CREATE TABLE IF NOT EXISTS traces (trace_id TEXT PRIMARY KEY, state TEXT, epoch REAL);
CREATE INDEX IF NOT EXISTS traces_epoch ON traces(epoch);
CREATE TABLE IF NOT EXISTS samples (route TEXT, minute INTEGER, n INTEGER,
    PRIMARY KEY (route, minute));
CREATE TABLE IF NOT EXISTS rollups (minute INTEGER, service TEXT, route TEXT, version TEXT,
    source TEXT, requests INTEGER, errors INTEGER, client_errors INTEGER, slow INTEGER,
    sum_ms REAL, max_ms REAL, PRIMARY KEY (minute, service, route, version, source));
"""


class IndexUnreadable(sqlite3.DatabaseError):
    pass


@dataclass
class _Run:
    """What one update accumulates before its final commit."""

    result: UpdateResult
    out: list[Document] = field(default_factory=list)
    traces: dict[str, tuple[str, float]] = field(default_factory=dict)   # decided, this run
    known: dict[str, tuple[str, float]] = field(default_factory=dict)    # looked up
    samples: dict[tuple[str, int], int] = field(default_factory=dict)
    rollups: dict[tuple, list] = field(default_factory=dict)
    relabel: dict[str, list[str]] = field(default_factory=dict)  # stored as pending, now kept
    delete: list[str] = field(default_factory=list)              # stored as pending, counted
    settled: set[str] = field(default_factory=set)               # pending keys decided

    def release(self, docs: list[Document], keep: str) -> None:
        """Routine events decided kept: written, or relabelled when stored while waiting."""
        for d in docs:
            if d.meta.get("keep") == "pending":
                self.relabel.setdefault(keep, []).append(d.id)
            else:
                self.out.append(d)
            d.meta["keep"] = keep

    def discard(self, docs: list[Document]) -> None:
        """Routine events decided counted only: dropped, or deleted when stored while waiting."""
        self.delete += [d.id for d in docs if d.meta.get("keep") == "pending"]
        self.result.aggregated += len(docs)


@dataclass
class Rollup:
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    slow: int = 0
    sum_ms: float = 0.0
    max_ms: float = 0.0


class LogIndex:
    """A persisted, incrementally updated, retention-bounded index of log events and spans.

    `embed` (documents -> documents with embeddings) is given when embedding retrieval is on;
    then new events are embedded as they are written, and events stored without are back-filled.
    """

    def __init__(self, settings: Settings,
                 embed: Callable[[list[Document]], list[Document]] | None = None,
                 embedding_model: str = "", store_options: dict | None = None) -> None:
        self.settings = settings
        self.store_options = store_options or {}  # to the OpenSearch client (a test's transport)
        self.dir = settings.logs_index_dir
        self.path = self.dir / "index.sqlite"
        self.embed = embed
        self.embedding_model = embedding_model
        self.parser = LineParser(slow_ms=settings.logs_slow_ms)
        self.lock = threading.RLock()
        self.updated_at: float | None = None
        self.paused: str | None = None
        self.rebuilt_from: str | None = None
        self.files: dict[str, FileState] = {}
        self.pending: dict[str, list[Document]] = {}
        self.pending_newest: dict[str, float] = {}
        self._saved: set[str] = set()  # pending events already in the pending table
        self.watermark: float | None = None
        self.db: Database | None = None
        self.store: LogStore | None = None

    # -- opening, recovering -------------------------------------------------------------------

    @classmethod
    def open(cls, settings: Settings, **kwargs) -> "LogIndex":
        """The index saved under settings.logs_index_dir, or an empty one.

        A file that cannot be read (truncated, overwritten, another format) is moved aside
        (`index.sqlite.unreadable`) and the index starts empty: the next update rebuilds it from
        the logs, which are the source of truth.
        """
        index = cls(settings, **kwargs)
        index.dir.mkdir(parents=True, exist_ok=True)
        legacy = index.dir / "index.json"
        if legacy.exists():  # the whole-file JSON index of before: rebuilt from the logs
            log.warning("log index %s replaced by %s (rebuilt from the logs)", legacy, index.path)
            legacy.unlink(missing_ok=True)
        try:
            index._connect()
        except sqlite3.DatabaseError as exc:
            if not (is_corrupt(exc) or isinstance(exc, IndexUnreadable)):
                raise
            index._set_aside(exc)
            index._connect()
        return index

    def _connect(self) -> None:
        db = Database(self.path)
        try:
            db.check()
            with db.transaction() as con:
                run_script(con, STATE_SCHEMA)
                found = con.execute("SELECT value FROM index_meta WHERE key = 'format'"
                                    ).fetchone()
                if found is None:
                    con.execute("INSERT INTO index_meta VALUES ('format', ?)", (str(FORMAT),))
                elif found[0] != str(FORMAT):
                    raise IndexUnreadable(f"format {found[0]!r}, expected {FORMAT}")
            self.db = db
            self.store = self._make_store(db)
            self._load_state()
        except BaseException:
            db.close()
            self.db = None
            raise
        self._check_embedding_model()

    def _make_store(self, db: Database) -> LogStore:
        kind = self.settings.logs_store
        if kind == "sqlite":
            return SQLiteLogStore(db)
        if kind == "opensearch":
            from control_plane.logs.opensearch_store import OpenSearchLogStore

            return OpenSearchLogStore.from_settings(self.settings, **self.store_options)
        raise ValueError(f"VG_LOGS_STORE must be sqlite or opensearch; got {kind!r}")

    def _set_aside(self, why: BaseException | str) -> None:
        aside = self.path.with_name(self.path.name + ".unreadable")
        log.warning("log index %s unreadable (%s); moved to %s and rebuilt from the logs",
                    self.path, why, aside)
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.path.exists():
            os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.rebuilt_from = f"{why}"
        self.files, self.pending, self.pending_newest, self.watermark = {}, {}, {}, None
        self._saved = set()

    def _recover(self, why: BaseException) -> None:
        with self.lock:
            self._set_aside(why)
            self._connect()

    def _load_state(self) -> None:
        con = self.db.reader()
        self.files = {r[0]: FileState(inode=r[1], offset=r[2], line=r[3], ts=r[4] or "",
                                      trace_id=r[5] or "")
                      for r in con.execute("SELECT path, inode, offset, line, ts, trace_id "
                                           "FROM files")}
        self.pending, self.pending_newest = {}, {}
        self._saved = set()
        for _id, key, doc in con.execute("SELECT id, key, doc FROM pending"):
            self._saved.add(_id)
            obj = json.loads(doc)
            d = Document(id=obj["id"], content=obj["content"], meta=obj["meta"])
            self.pending.setdefault(key, []).append(d)
            self.pending_newest[key] = max(self.pending_newest.get(key, 0.0), d.meta["epoch"])
        found = con.execute("SELECT value FROM index_meta WHERE key = 'watermark'").fetchone()
        self.watermark = float(found[0]) if found else None

    def _meta_value(self, key: str) -> str | None:
        found = self.db.reader().execute("SELECT value FROM index_meta WHERE key = ?",
                                         (key,)).fetchone()
        return found[0] if found else None

    def _check_embedding_model(self) -> None:
        saved = self._meta_value("embedding_model") or ""
        if self.embed is None:
            self.embedding_model = saved  # kept for when embeddings are on again
            return
        if saved != self.embedding_model:
            if saved:  # another model's vectors mean nothing to this one
                self.store.clear_embeddings()
            with self.db.transaction() as con:
                con.execute("INSERT OR REPLACE INTO index_meta VALUES ('embedding_model', ?)",
                            (self.embedding_model,))

    def close(self) -> None:
        """Close the files (the next update opens them again)."""
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None

    def save(self) -> int:
        """Everything is committed as it is indexed; returns the index's size in bytes."""
        return self.file_bytes()

    # -- reading the sources -------------------------------------------------------------------

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

    def _free_space_problem(self) -> str | None:
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            return None
        floor = self.settings.logs_min_free_mb * (1 << 20)
        if free < floor:
            return (f"disk full: {free / (1 << 20):.0f} MiB free on {self.dir}, under "
                    f"VG_LOGS_MIN_FREE_MB={self.settings.logs_min_free_mb}")
        return None

    def update(self, save: bool = True) -> UpdateResult:
        """Index the lines written since the last update; apply retention. Never raises for a
        full disk (pauses) or an unreadable index (rebuilds)."""
        started = time.perf_counter()
        result = UpdateResult()
        with self.lock:
            if self.db is None:
                self._connect()
            problem = self._free_space_problem()
            if problem:
                self._pause(problem, result)
            else:
                try:
                    self._update(result)
                    self.paused = None
                except Exception as exc:  # noqa: BLE001 - sorted out below
                    if is_full(exc):
                        self._pause(f"disk full: {exc}", result)
                        self._reload()
                    elif is_corrupt(exc):
                        self._recover(exc)
                        result = self.update()
                        result.rebuilt = True
                        return result
                    elif type(exc).__name__ in ("ConnectionError", "ConnectionTimeout",
                                                "TransportError", "DocumentStoreError"):
                        self._pause(f"store unavailable: {type(exc).__name__}: {exc}", result)
                        self._reload()
                    else:
                        self._reload()
                        raise
            result.seconds = time.perf_counter() - started
            self.updated_at = time.time()
        return result

    def _pause(self, why: str, result: UpdateResult) -> None:
        if self.paused != why:
            log.warning("log indexing paused: %s (answering goes on from what is indexed)", why)
        self.paused = why
        result.paused = why

    def _reload(self) -> None:
        """After a failed update: the offsets and pending events as last committed."""
        with contextlib.suppress(sqlite3.Error):
            self._load_state()

    def _update(self, result: UpdateResult) -> None:
        run = _Run(result)
        for source in self.sources():
            result.files += 1
            self._read(source, run)
        self._settle(run)
        self._store_pending(run)
        self._commit(run)
        self._retain(result)
        self._embed_missing(result)

    def _read(self, source: Source, run: _Run) -> None:
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
                self._read_from(Source(rolled, source.service, source.kind), state, run)
        if state is None or state.inode != st.st_ino or st.st_size < state.offset:
            state = FileState(inode=st.st_ino)  # new, replaced or truncated: from the start
        self.files[key] = state
        self._read_from(source, state, run)

    def _read_from(self, source: Source, state: FileState, run: _Run) -> None:
        st = source.path.stat()
        if st.st_size == state.offset:
            return
        self.parser.year = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc).year
        batch: list[Document] = []
        untimed: list[Document] = []  # lines with no time and none before them in the file
        with open(source.path, "rb") as f:
            f.seek(state.offset)
            while True:
                offset = f.tell()
                raw = f.readline(MAX_LINE_BYTES)
                if not raw:
                    break
                if not raw.endswith(b"\n"):
                    if len(raw) < MAX_LINE_BYTES:
                        break  # a line still being written: read it next time
                    length = _skip_line(f)  # over MAX_LINE_BYTES: keep the head, skip the rest
                    if length is None:
                        break  # its end is not written yet
                    raw += f" ...(line of {length + len(raw)} bytes cut)".encode()
                state.offset = f.tell()
                state.line += 1
                run.result.read += 1
                doc = self.parser.parse(source, state, raw.decode("utf-8", "replace"), offset)
                if doc is None:
                    continue
                if doc.meta["epoch"] is None:
                    untimed.append(doc)
                    continue
                for u in untimed:  # take the time of the first line that has one
                    u.meta["ts"], u.meta["epoch"] = doc.meta["ts"], doc.meta["epoch"]
                batch += untimed
                untimed = []
                batch.append(doc)
                if len(batch) >= BATCH_LINES:
                    self._process(batch, run)
                    batch = []
        if untimed:  # no line with a time after them: the file's last write
            state.ts = iso(datetime.fromtimestamp(min(st.st_mtime, time.time()), tz=timezone.utc))
            for u in untimed:
                u.meta["ts"], u.meta["epoch"] = state.ts, parse_time(state.ts).timestamp()
            batch += untimed
        if batch:
            self._process(batch, run)

    # -- sorting events: kept, sampled, counted ------------------------------------------------

    def _process(self, docs: list[Document], run: _Run) -> None:
        slow_ms = self.settings.logs_slow_ms
        unknown = list({tid for d in docs if (tid := d.meta.get("trace_id"))
                        and tid not in run.traces and tid not in run.known})
        con = self.db.reader()
        for i in range(0, len(unknown), 500):
            chunk = unknown[i:i + 500]
            for tid, state, epoch in con.execute(
                    f"SELECT trace_id, state, epoch FROM traces WHERE trace_id IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                run.known[tid] = (state, epoch)
        for d in docs:
            epoch = d.meta["epoch"]
            if self.watermark is None or epoch > self.watermark:
                self.watermark = epoch
            self._count(d, run)
            reason = keep_reason(d, slow_ms)
            tid = d.meta.get("trace_id") or ""
            decided = run.traces.get(tid) or run.known.get(tid) if tid else None
            if reason:
                d.meta["keep"] = reason
                run.out.append(d)
                if tid and (decided is None or decided[0] != "kept"):
                    run.traces[tid] = ("kept", epoch)
                    if tid in self.pending:
                        run.release(self.pending.pop(tid), "trace")
                        self.pending_newest.pop(tid, None)
                        run.settled.add(tid)
            elif decided and decided[0] == "dropped":
                run.discard([d])
            elif decided:
                run.release([d], "trace" if decided[0] == "kept" else "sampled")
            else:
                key = tid or d.id
                self.pending.setdefault(key, []).append(d)
                self.pending_newest[key] = max(self.pending_newest.get(key, epoch), epoch)
        self._settle(run, cutoff=(self.watermark or 0.0) - GRACE_S)
        if len(run.out) >= BATCH_LINES:
            self._flush(run)
        if len(run.known) > 200_000:
            run.known.clear()

    def _count(self, d: Document, run: _Run) -> None:
        root = request_root(d)
        if root is None:
            return
        key = (int(d.meta["epoch"] // 60), root.service, root.route, root.version, root.source)
        acc = run.rollups.get(key)
        if acc is None:
            acc = run.rollups[key] = [0, 0, 0, 0, 0.0, 0.0]
        acc[0] += 1
        acc[1] += root.status >= 500
        acc[2] += 400 <= root.status < 500
        acc[3] += root.duration_ms >= self.settings.logs_slow_ms
        acc[4] += root.duration_ms
        acc[5] = max(acc[5], root.duration_ms)

    def _settle(self, run: _Run, cutoff: float | None = None) -> None:
        """Routine events whose trace has waited GRACE_S: sampled (kept whole) or counted only.
        Without a cutoff (the end of an update), only what is older than the grace."""
        if cutoff is None:
            cutoff = (self.watermark or 0.0) - GRACE_S
        budget = self.settings.logs_routine_samples_per_minute
        for key in [k for k, newest in self.pending_newest.items() if newest < cutoff]:
            docs = self.pending.pop(key)
            del self.pending_newest[key]
            run.settled.add(key)
            tid = docs[0].meta.get("trace_id") or ""
            decided = run.traces.get(tid) or run.known.get(tid) if tid else None
            if decided and decided[0] == "dropped":
                run.discard(docs)
                continue
            if decided:
                run.release(docs, "trace" if decided[0] == "kept" else "sampled")
                continue
            root = next((r for d in docs if (r := request_root(d))), None)
            first = min(d.meta["epoch"] for d in docs)
            if root is None:  # spans of no request seen (a batch job's, a lost root's): kept
                run.release(docs, "event")
                continue
            slot = (root.route, int(first // 60))
            n = run.samples.get(slot)
            if n is None:
                found = self.db.reader().execute(
                    "SELECT n FROM samples WHERE route = ? AND minute = ?", slot).fetchone()
                n = found[0] if found else 0
            if budget < 0 or n < budget:
                run.samples[slot] = n + 1
                if tid:
                    run.traces[tid] = ("sampled", first)
                run.release(docs, "sampled")
                continue
            run.samples[slot] = n
            if tid:  # its late spans are counted, not kept as orphans
                run.traces[tid] = ("dropped", first)
            run.discard(docs)

    def _flush(self, run: _Run) -> None:
        for keep, ids in run.relabel.items():
            self.store.relabel(ids, keep)
        if run.delete:
            self.store.delete_documents(run.delete)
        run.relabel, run.delete = {}, []
        if not run.out:
            return
        docs, run.out = run.out, []
        if self.embed is not None:
            docs = self.embed(docs)
            run.result.embedded += len(docs)
        run.result.added += self.store.write(docs)

    def _store_pending(self, run: _Run) -> None:
        """Routine events still waiting for their trace are searchable meanwhile (keep
        "pending"); their decision relabels or deletes them."""
        waiting = [d for docs in self.pending.values() for d in docs
                   if d.meta.get("keep") != "pending"]
        for d in waiting:
            d.meta["keep"] = "pending"
        run.out.extend(waiting)
        self._flush(run)

    def _commit(self, run: _Run) -> None:
        """Offsets, waiting events, trace decisions, samples and counts: one transaction."""
        with self.db.transaction() as con:
            con.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)", [
                (k, s.inode, s.offset, s.line, s.ts, s.trace_id) for k, s in self.files.items()])
            # Waiting events: only what changed (at 50 requests/s a minute of routine
            # events is 24,000 of them: rewriting them all each update would be issue 19's
            # whole-file rewrite again).
            con.executemany("DELETE FROM pending WHERE key = ?", [(k,) for k in run.settled])
            con.executemany("INSERT OR IGNORE INTO pending VALUES (?,?,?)", [
                (d.id, key, json.dumps({"id": d.id, "content": d.content, "meta": d.meta},
                                       default=str))
                for key, docs in self.pending.items() for d in docs if d.id not in self._saved])
            self._saved = {d.id for docs in self.pending.values() for d in docs}
            con.executemany("INSERT OR REPLACE INTO traces VALUES (?,?,?)", [
                (tid, state, epoch) for tid, (state, epoch) in run.traces.items()])
            con.executemany("INSERT OR REPLACE INTO samples VALUES (?,?,?)", [
                (route, minute, n) for (route, minute), n in run.samples.items()])
            con.executemany(
                "INSERT INTO rollups VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "requests = requests + excluded.requests, errors = errors + excluded.errors, "
                "client_errors = client_errors + excluded.client_errors, "
                "slow = slow + excluded.slow, sum_ms = sum_ms + excluded.sum_ms, "
                "max_ms = max(max_ms, excluded.max_ms)",
                [(*k, *v) for k, v in run.rollups.items()])
            if self.watermark is not None:
                con.execute("INSERT OR REPLACE INTO index_meta VALUES ('watermark', ?)",
                            (repr(self.watermark),))

    # -- retention -----------------------------------------------------------------------------

    def _retain(self, result: UpdateResult) -> None:
        if self.watermark is None:
            return
        cutoff = self.watermark - self.settings.logs_retention_days * 86400
        result.evicted += self.store.delete_before(cutoff)
        with self.db.transaction() as con:
            con.execute("DELETE FROM rollups WHERE minute < ?", (math.floor(cutoff / 60),))
            con.execute("DELETE FROM samples WHERE minute < ?", (math.floor(cutoff / 60),))
            con.execute("DELETE FROM traces WHERE epoch < ?", (self.watermark - DECISION_S,))
        cap = self.settings.logs_max_mb * (1 << 20)
        for _ in range(3):  # estimate, evict, reclaim; again if the estimate was short
            size = self.store.size_bytes()
            count = self.store.count_documents()
            if size <= cap or not count:
                return
            excess = math.ceil(count * (size - 0.9 * cap) / size)
            for keep in ("sampled", None):
                if excess <= 0:
                    break
                n, newest = self.store.evict_oldest(excess, keep)
                excess -= n
                result.evicted += n
                if keep is None and newest is not None:
                    with self.db.transaction() as con:
                        con.execute("INSERT OR REPLACE INTO index_meta VALUES "
                                    "('evicted_before', ?)", (repr(newest),))
            self.store.compact()
            log.info("log index over %d MiB: evicted the oldest events",
                     self.settings.logs_max_mb)

    def _embed_missing(self, result: UpdateResult) -> None:
        if self.embed is None:
            return
        missing = self.store.missing_embeddings(EMBED_BACKFILL)
        if missing:
            self.store.set_embeddings(self.embed(missing))
            result.embedded += len(missing)

    # -- reading the index ---------------------------------------------------------------------

    def all_documents(self) -> list[Document]:
        return self.store.filter_documents(None)

    def count(self) -> int:
        return self.store.count_documents()

    def values(self, key: str) -> set[str]:
        """Distinct values of a metadata field (stream ids, services) to recognise in questions."""
        return self.store.values(key)

    def latest_epoch(self) -> float | None:
        """The newest event read (the indexer's watermark)."""
        return self.watermark

    def coverage(self) -> tuple[float, float] | None:
        """(first, last) time the index holds anything for: events kept or requests counted."""
        held = self.store.time_range()
        first_minute = self.db.reader().execute("SELECT min(minute) FROM rollups").fetchone()[0]
        starts = [t for t in ((held or (None,))[0],
                              first_minute * 60 if first_minute is not None else None)
                  if t is not None]
        if not starts:
            return None
        end = max(self.watermark or 0.0, held[1] if held else 0.0)
        kept_from = end - self.settings.logs_retention_days * 86400  # rollups are per minute
        evicted = self._meta_value("evicted_before")  # the size cap took events up to here
        if evicted is not None:
            kept_from = max(kept_from, float(evicted))
        return min(max(min(starts), kept_from), end), end

    def rollups(self, since: float | None, until: float | None) -> dict[str, Any]:
        """Requests counted in [since, until]: totals, by route, and per minute."""
        lo = math.floor(since / 60) if since is not None else -(1 << 62)
        hi = math.floor((until - 0.001) / 60) if until is not None else 1 << 62
        con = self.db.reader()
        sources = [r[0] for r in con.execute(
            "SELECT DISTINCT source FROM rollups WHERE minute BETWEEN ? AND ?", (lo, hi))]
        if not sources:
            return {}
        source = "log" if "log" in sources else sources[0]  # one request, one count
        total = Rollup()
        routes: dict[str, Rollup] = {}
        for route, *v in con.execute(
                "SELECT route, sum(requests), sum(errors), sum(client_errors), sum(slow), "
                "sum(sum_ms), max(max_ms) FROM rollups WHERE minute BETWEEN ? AND ? AND "
                "source = ? GROUP BY route", (lo, hi, source)):
            routes[route] = Rollup(*v)
            for name in ("requests", "errors", "client_errors", "slow", "sum_ms"):
                setattr(total, name, getattr(total, name) + getattr(routes[route], name))
            total.max_ms = max(total.max_ms, routes[route].max_ms)
        worst = con.execute(
            "SELECT minute, sum(errors) AS e FROM rollups WHERE minute BETWEEN ? AND ? AND "
            "source = ? GROUP BY minute ORDER BY e DESC, minute LIMIT 1", (lo, hi, source)
        ).fetchone()
        return {"source": source, "total": total.__dict__,
                "routes": {k: v.__dict__ for k, v in routes.items()},
                "worst_minute": {"minute": worst[0] * 60, "errors": worst[1]}
                if worst and worst[1] else None}

    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                   if p.exists())

    def stats(self) -> dict[str, Any]:
        cover = self.coverage()
        counted = self.db.reader().execute(
            "SELECT coalesce(sum(requests), 0) FROM rollups WHERE source = 'log'").fetchone()[0]
        evicted_before = self._meta_value("evicted_before")
        return {
            "documents": self.count(), "store": self.store.name,
            "by_kind": self.store.count_by("kind"), "by_keep": self.store.count_by("keep"),
            "embedded": self.store.count_embedded() if self.embed is not None or
            self.embedding_model else 0,
            "embedding_model": self.embedding_model or None,
            "coverage": {"from": iso(_dt(cover[0])), "to": iso(_dt(cover[1]))} if cover else None,
            "requests_counted": counted,
            "pending_routine_events": sum(len(v) for v in self.pending.values()),
            "retention_days": self.settings.logs_retention_days,
            "max_mb": self.settings.logs_max_mb,
            "routine_samples_per_minute": self.settings.logs_routine_samples_per_minute,
            "evicted_before": iso(_dt(float(evicted_before))) if evicted_before else None,
            "store_bytes": self.store.size_bytes(),
            "file_bytes": self.file_bytes(), "path": str(self.path),
            "paused": self.paused, "rebuilt_from": self.rebuilt_from,
            "sources": {Path(k).name: {"offset": v.offset, "lines": v.line}
                        for k, v in self.files.items()},
        }


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _skip_line(f) -> int | None:
    """Read past the rest of an overlong line in chunks; its skipped length, or None when the
    file ends before the line does (it is still being written)."""
    skipped = 0
    while True:
        chunk = f.readline(MAX_LINE_BYTES)
        if not chunk:
            return None
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            return skipped
