"""`visionguard logs index|ask`: questions over the stack's logs and spans.

`ask` calls the running control plane (`POST /v1/logs/query`, token `VG_TOKEN` with the `sre`
role; `up` prints an operator token) when a token is set, else (or with `--local`) it reads the
index under `VG_RUNTIME_DIR` itself, indexing new lines first.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console

from control_plane.api_client import call_api
from control_plane.settings import Settings, cli_settings

app = typer.Typer(help="Ask questions over the logs and spans (log RAG).", no_args_is_help=True)
console = Console(soft_wrap=True)


@app.command("index")
def index_cmd(
    ctx: typer.Context,
    mode: Annotated[Optional[str], typer.Option(
        help="bm25, embedding or hybrid (embeds new events); default VG_LOGS_RETRIEVAL.")] = None,
) -> None:
    """Index the lines written since the last run; print what the index holds."""
    from control_plane.logs.query import QueryError, open_search

    settings = cli_settings(ctx)
    try:
        search = open_search(settings, mode)
    except QueryError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = search.index.update()
    stats = search.index.stats()
    cover = stats["coverage"]
    console.print(f"indexed {result.added} new events from {result.read} lines in "
                  f"{result.files} files in {result.seconds:.2f} s ({result.aggregated} routine "
                  f"request events counted, not kept; {result.evicted} evicted by retention; "
                  f"{result.embedded} embedded); {stats['documents']} events in the "
                  f"{stats['store']} store, "
                  + (f"covering {cover['from']} to {cover['to']}" if cover else "empty")
                  + f", {stats['file_bytes'] / 1e6:.1f} MB at {stats['path']}", markup=False)
    if result.paused:
        console.print(f"[yellow]indexing paused:[/] {result.paused}")
    if result.rebuilt:
        console.print(f"[yellow]the index was unreadable and was rebuilt from the logs[/] "
                      f"({stats['rebuilt_from']})")


def _remote(settings: Settings, body: dict) -> dict:
    return call_api(settings, "POST", "/v1/logs/query", json=body, timeout=120,
                    hint="--local reads the index here", console=console).json()


def _local(settings: Settings, body: dict) -> dict:
    from control_plane.logs.query import LogQuery, QueryError, ask, open_search, parse_when

    try:
        search = open_search(settings, body.get("mode"))
        search.index.update()
        query = LogQuery(question=body["question"], service=body.get("service"),
                         stream_id=body.get("stream_id"), trace_id=body.get("trace_id"),
                         level=body.get("level"), since=parse_when(body.get("since"), "since"),
                         until=parse_when(body.get("until"), "until"),
                         top_k=body.get("top_k", 10), mode=body.get("mode"),
                         time_zone=body.get("time_zone"))
        return ask(search, query)
    except QueryError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("ask")
def ask_cmd(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help='e.g. "why were stream cam-3\'s requests '
                                                 'slow at 10:05?"')],
    service: Annotated[Optional[str], typer.Option(help="gateway, triton, control-plane")] = None,
    stream: Annotated[Optional[str], typer.Option(help="Only this stream id.")] = None,
    trace: Annotated[Optional[str], typer.Option(help="Only this trace id.")] = None,
    level: Annotated[Optional[str], typer.Option(
        help="Least severe level wanted: debug, info, warning, error.")] = None,
    since: Annotated[Optional[str], typer.Option(help="RFC3339, e.g. 2026-11-22T10:00:00Z")
                     ] = None,
    until: Annotated[Optional[str], typer.Option(help="RFC3339")] = None,
    top_k: Annotated[int, typer.Option(help="Events to retrieve and cite.")] = 10,
    mode: Annotated[Optional[str], typer.Option(help="bm25, embedding or hybrid.")] = None,
    tz: Annotated[Optional[str], typer.Option(
        "--tz", help="Time zone of the times in the question (IANA name); default "
                     "VG_LOGS_TIMEZONE, UTC.")] = None,
    local: Annotated[bool, typer.Option(
        "--local", help="Read the index here instead of asking the control plane.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON.")
                       ] = False,
) -> None:
    """Answer a question from the logs and spans, citing the events and trace ids used."""
    settings = cli_settings(ctx)
    body = {k: v for k, v in dict(question=question, service=service, stream_id=stream,
                                  trace_id=trace, level=level, since=since, until=until,
                                  top_k=top_k, mode=mode, time_zone=tz).items()
            if v is not None}
    answer = _local(settings, body) if local or not settings.token else _remote(settings, body)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    console.print(answer["answer"], markup=False, highlight=False)
    console.print(f"cited ({answer['mode']}, {answer['took_ms']:.0f} ms, "
                  f"{answer['index_documents']} events indexed):", markup=False)
    for c in answer["citations"]:
        console.print(f"  [{c['ref']}] {c['source']}:{c['line']}  {c['ts']}  {c['level']}  "
                      f"{c['service']}  trace {c['trace_id'] or '-'}", markup=False,
                      highlight=False)
