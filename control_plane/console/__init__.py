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

It imports the gateway's static_page (shared with the demo page) and the settings only: it
reads no state and calls no wing (a wing beside releases, drift and logs in the layers,
registered in the API's FEATURES).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router

from control_plane.settings import Settings
from tracker_service.static_page import static_page_router

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
]


def router(settings: Settings) -> Router:
    """`/console` (the page) and `/console/{name}` (its script and stylesheet), public, with the
    security headers; the data behind them stays behind the API's tokens."""
    return static_page_router(STATIC_DIR, page="/console", assets_path="/console",
                              assets=("console.js", "console.css"),
                              csp=CONTENT_SECURITY_POLICY,
                              extra_headers=(("Cache-Control", "no-store"),), tags=["console"])
