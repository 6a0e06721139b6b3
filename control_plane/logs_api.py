"""`POST /v1/logs/query` and `GET /v1/logs/index`: questions over the logs, for the `sre` role.

Read-only for the system: a query reads the logs (indexing what was written since the last
query, at most every `REFRESH_S`) and answers; it changes nothing that serves.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Router, get, post

from control_plane.api import ControlPlaneError
from control_plane.auth import requires
from control_plane.log_query import LogQuery, LogSearch, QueryError, ask, open_search, parse_when
from control_plane.settings import Settings

REFRESH_S = 2.0


class InvalidQuery(ControlPlaneError):
    status_code = 400
    code = "invalid_query"


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


def to_query(body: QueryBody) -> LogQuery:
    try:
        return LogQuery(question=body.question, service=body.service, stream_id=body.stream_id,
                        trace_id=body.trace_id, level=body.level,
                        since=parse_when(body.since, "since"),
                        until=parse_when(body.until, "until"), top_k=body.top_k, mode=body.mode)
    except QueryError as exc:
        raise InvalidQuery(str(exc)) from None


def refreshed(search: LogSearch) -> LogSearch:
    index = search.index
    if index.updated_at is None or time.time() - index.updated_at > REFRESH_S:
        index.update()
    return search


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
    try:
        answer = ask(search, query)
    except QueryError as exc:
        raise InvalidQuery(str(exc)) from None
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
    """Load the persisted index at start (so the first query is fast); save it at the end."""
    try:
        app.state.log_search = await anyio.to_thread.run_sync(open_search, app.state.settings)
    except QueryError:  # a bad VG_LOGS_RETRIEVAL: queries answer with the error
        app.state.log_search = None
    try:
        yield
    finally:
        search = getattr(app.state, "log_search", None)
        if search is not None:
            await anyio.to_thread.run_sync(search.index.save)
