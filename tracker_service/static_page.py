"""A static page served with security headers: the gateway's demo page and the control plane's
release console are each one HTML file, one script and one stylesheet, read once at start;
nothing else in their folder is served, and the headers apply to the page and its assets only,
never to the API beside them."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import ResponseHeader
from litestar.exceptions import NotFoundException

# Besides each page's own Content-Security-Policy: no MIME sniffing, no framing, no referrer,
# nothing shared with other origins.
COMMON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                  ("Referrer-Policy", "no-referrer"),
                  ("Cross-Origin-Opener-Policy", "same-origin"),
                  ("Cross-Origin-Resource-Policy", "same-origin"))
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def static_page_router(static_dir: Path, *, page: str, assets_path: str, assets: tuple[str, ...],
                       csp: list[str], extra_headers: tuple[tuple[str, str], ...] = (),
                       tags: list[str] | None = None) -> Router:
    """GET `page` answers `static_dir/index.html`; GET `assets_path/{name}` answers one of
    `assets` (file names in `static_dir`), and a 404 for any other name."""
    files = {name: ((static_dir / name).read_bytes(), MEDIA_TYPES[Path(name).suffix])
             for name in ("index.html", *assets)}

    @get(page, include_in_schema=False, sync_to_thread=False)
    def static_page() -> Response[bytes]:
        content, media_type = files["index.html"]
        return Response(content, media_type=media_type)

    @get(f"{assets_path}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
    def static_asset(name: str) -> Response[bytes]:
        if name not in assets:
            raise NotFoundException(f"no asset {name!r} under {assets_path}")
        content, media_type = files[name]
        return Response(content, media_type=media_type)

    headers = [ResponseHeader(name=k, value=v) for k, v in (
        ("Content-Security-Policy", "; ".join(csp)), *COMMON_HEADERS, *extra_headers)]
    return Router(path="/", route_handlers=[static_page, static_asset], response_headers=headers,
                  tags=tags)
