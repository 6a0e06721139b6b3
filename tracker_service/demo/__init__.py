"""The demo page at the gateway's `/`: upload an image or a short video, see boxes and tracks.

A static page (`static/`: one HTML file, one script, one stylesheet; no build step, no framework,
nothing fetched from another origin) that calls the gateway's own API from the browser, as any
client would: `POST /v1/detect` for an image, and for a video the frames it samples itself
(seek + canvas JPEG) posted in order to `POST /v1/streams/{id}/frames`, then `DELETE` of that
stream. The gateway has no client authentication (its only token is the one it sends to the
control plane), so neither does the page.

Security headers apply to the page and its assets only, not to the API: a Content-Security-Policy
of the page's own origin, plus `blob:` for the user's own file shown in <img>/<video>; no inline
script or style, no framing, no referrer.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException

STATIC_DIR = Path(__file__).parent / "static"
# The page's three files, read once: nothing else under this folder is served.
ASSETS = {name: ((STATIC_DIR / name).read_bytes(), media_type) for name, media_type in (
    ("index.html", "text/html"), ("demo.js", "text/javascript"), ("demo.css", "text/css"))}

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' blob:",
    "media-src 'self' blob:",
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
]


@get("/", include_in_schema=False, sync_to_thread=False)
def demo_page() -> Response[bytes]:
    content, media_type = ASSETS["index.html"]
    return Response(content, media_type=media_type)


@get("/demo/{name:str}", include_in_schema=False, sync_to_thread=False)
def demo_asset(name: str) -> Response[bytes]:
    if name not in ASSETS or name == "index.html":
        raise NotFoundException(f"no demo asset {name!r}")
    content, media_type = ASSETS[name]
    return Response(content, media_type=media_type)


def demo_router() -> Router:
    """`/` (the page) and `/demo/{name}` (its script and stylesheet), with the security
    headers."""
    return Router(path="/", route_handlers=[demo_page, demo_asset],
                  response_headers=SECURITY_HEADERS)
