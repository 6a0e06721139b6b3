"""`POST /v1/logs/query` and `GET /v1/logs/index`: questions over the logs, for the `sre` role.

Read-only for the system: a query reads the logs and answers; it changes nothing that serves.
The lifespan indexes new lines in a background thread every `VG_LOGS_INDEX_INTERVAL_S`, so
retention runs and the first question after a quiet hour is not the one that waits for the
backlog; a query also indexes what was written since the last update (at most every
`REFRESH_S`) unless an update is already running, in which case it answers from what is
committed (SQLite WAL: readers never wait for the writer).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Router, get, post

from control_plane.auth import requires
from control_plane.logs.query import LogQuery, LogSearch, QueryError, ask, open_search, parse_when
from control_plane.settings import Settings

REFRESH_S = 2.0
log = logging.getLogger(__name__)


class QueryBody(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    service: str | None = None
    stream_id: str | None = None
    trace_id: str | None = None
    level: str | None = None
    since: str | None = None
    until: str | None = None
    top_k: int = 10
    mode: str | None = None
    time_zone: str | None = None


def to_query(body: QueryBody) -> LogQuery:
    return LogQuery(question=body.question, service=body.service, stream_id=body.stream_id,
                    trace_id=body.trace_id, level=body.level,
                    since=parse_when(body.since, "since"),
                    until=parse_when(body.until, "until"), top_k=body.top_k, mode=body.mode,
                    time_zone=body.time_zone)


def refreshed(search: LogSearch) -> LogSearch:
    """Index what was written since the last update, unless one is running (then answer from
    what is committed); the very first query waits for the first update."""
    index = search.index
    if index.updated_at is None:
        index.update()
    elif time.time() - index.updated_at > REFRESH_S and index.lock.acquire(blocking=False):
        try:
            index.update()
        finally:
            index.lock.release()
    return search


class BackgroundIndexer:
    """Updates the index every `interval` seconds in a daemon thread until stopped."""

    def __init__(self, search: LogSearch, interval: float) -> None:
        self.search = search
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="log-indexer", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.search.index.update()
            except Exception:  # logged; the next round tries again
                log.exception("log indexing failed")

    def start(self) -> "BackgroundIndexer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)


def _search(request: Request) -> LogSearch:
    search = getattr(request.app.state, "log_search", None)
    if search is None:  # the app was built without its lifespan (an embedding app)
        search = request.app.state.log_search = open_search(request.app.state.settings)
    return search


@post("/v1/logs/query", guards=[requires("sre")], status_code=200, sync_to_thread=True,
      summary="Ask a question over the logs and spans")
def query_logs(request: Request, data: QueryBody) -> dict:
    query = to_query(data)
    search = refreshed(_search(request))
    started = time.perf_counter()
    answer = ask(search, query)
    metrics = request.app.state.metrics
    metrics.log_query_seconds.labels(answer["mode"]).observe(time.perf_counter() - started)
    metrics.log_index_documents.set(search.index.count())
    return answer


@get("/v1/logs/index", guards=[requires("sre")], sync_to_thread=True,
     summary="What the log index holds")
def index_stats(request: Request) -> dict:
    search = refreshed(_search(request))
    request.app.state.metrics.log_index_documents.set(search.index.count())
    return {**search.index.stats(), "modes": search.available_modes(),
            "default_mode": search.settings.logs_retrieval}


def router(settings: Settings) -> Router:
    return Router(path="/", route_handlers=[query_logs, index_stats], tags=["logs"])


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Open the persisted index at start (so the first query is fast) and index in the
    background; stop indexing and close the index at the end."""
    settings = app.state.settings
    try:
        app.state.log_search = await anyio.to_thread.run_sync(open_search, settings)
    except QueryError:  # a bad VG_LOGS_RETRIEVAL or VG_LOGS_STORE: queries answer the error
        app.state.log_search = None
    indexer = None
    if app.state.log_search is not None and settings.logs_index_interval_s > 0:
        indexer = BackgroundIndexer(app.state.log_search, settings.logs_index_interval_s).start()
    try:
        yield
    finally:
        if indexer is not None:
            await anyio.to_thread.run_sync(indexer.stop)
        search = getattr(app.state, "log_search", None)
        if search is not None:
            await anyio.to_thread.run_sync(search.index.close)
