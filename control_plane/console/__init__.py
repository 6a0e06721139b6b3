"""The release console at the control plane's `/console`: versions, routing, drift, retraining
decisions and the log assistant on one page, for the people who release.

A static page (`static/`: one HTML file, one script, one stylesheet; no build step, no
framework, nothing from another origin). The page holds no data and needs no token to load:
every number on it comes from the existing API, called from the browser with the bearer token
the person pastes into its login box (kept in the tab's sessionStorage, never in a URL or a
cookie), so the API's own guards (control_plane.auth) decide what each token may see and do.
A 401 or 403 from the API sends the page back to its login box with the API's reason.

Security headers apply to the page and its assets only. Scripts: the page's own file only.
Styles and images may also be inline or `data:`: the release and drift reports are
self-contained HTML (a <style> block, charts as data: URIs) that the page opens as `blob:`
documents, and those inherit this policy. No framing, no forms posted anywhere, no referrer.

It imports Litestar and the settings only: it reads no state and calls no wing (a wing beside
releases, drift and logs in the layers, registered in the API's FEATURES).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException

from control_plane.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
# The page's three files, read once: nothing else under this folder is served.
ASSETS = {name: ((STATIC_DIR / name).read_bytes(), media_type) for name, media_type in (
    ("index.html", "text/html"), ("console.js", "text/javascript"),
    ("console.css", "text/css"))}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(name="Cross-Origin-Opener-Policy", value="same-origin"),
    ResponseHeader(name="Cross-Origin-Resource-Policy", value="same-origin"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]


@get("/console", include_in_schema=False, sync_to_thread=False)
def console_page() -> Response[bytes]:
    content, media_type = ASSETS["index.html"]
    return Response(content, media_type=media_type)


@get("/console/{name:str}", include_in_schema=False, sync_to_thread=False)
def console_asset(name: str) -> Response[bytes]:
    if name not in ASSETS or name == "index.html":
        raise NotFoundException(f"no console asset {name!r}")
    content, media_type = ASSETS[name]
    return Response(content, media_type=media_type)


def router(settings: Settings) -> Router:
    """`/console` (the page) and `/console/{name}` (its script and stylesheet), public, with the
    security headers; the data behind them stays behind the API's tokens."""
    return Router(path="/", route_handlers=[console_page, console_asset],
                  response_headers=SECURITY_HEADERS, tags=["console"])
