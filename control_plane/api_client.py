"""The CLI's calls to the running control plane's HTTP API.

Commands whose state lives in the running control plane (the live drift window and its
retraining requests, an automated canary, the log index of a cluster) call its API at
`VG_CONTROL_URL` with the token `VG_TOKEN`. One place for the bearer header, an unreachable
control plane, and a refusal: its code and message are printed and the command exits 2 for a
rejected candidate (422) or 1 otherwise, unless the caller accepts that error code (`ok_codes`).
"""

from __future__ import annotations

import httpx
import typer
from rich.console import Console

from control_plane.settings import Settings

_console = Console(soft_wrap=True)


def call_api(settings: Settings, method: str, path: str, *, ok_codes: tuple[str, ...] = (),
             timeout: float = 300.0, hint: str = "", console: Console | None = None,
             **kwargs) -> httpx.Response:
    """The API's answer to `method path` (kwargs go to httpx: json, params, ...); `hint` is
    added to the unreachable message (what the user can do instead)."""
    out = console or _console
    headers = {"authorization": f"Bearer {settings.token}"} if settings.token else {}
    try:
        response = httpx.request(method, f"{settings.control_url}{path}", headers=headers,
                                 timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        out.print(f"[red]control plane at {settings.control_url} unreachable:[/] {exc}"
                  + (f" ({hint})" if hint else ""))
        raise typer.Exit(1) from None
    if response.status_code < 400:
        return response
    try:
        error = response.json()["error"]
        code, message = error["code"], f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        code, message = "", response.text[:300]
    if code and code in ok_codes:
        return response
    out.print(f"[red]{method} {path} refused ({response.status_code}):[/] {message}")
    raise typer.Exit(2 if response.status_code == 422 else 1)
