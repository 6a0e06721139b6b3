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

from litestar import Router

from tracker_service.static_page import static_page_router

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = [
    "default-src 'self'",
    "img-src 'self' blob:",
    "media-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
]


def demo_router() -> Router:
    """`/` (the page) and `/demo/{name}` (its script and stylesheet), with the security
    headers."""
    return static_page_router(STATIC_DIR, page="/", assets_path="/demo",
                              assets=("demo.js", "demo.css"), csp=CONTENT_SECURITY_POLICY)
