"""The admin dashboard's files (served by `health`): one static page, its script and stylesheet,
and the vendored uPlot (functions/health/static/vendor, MIT).

The page holds no data and no secret, so it is served without authentication; its script
fetches `GET /health/metrics` with an administrator's bearer token, which that route checks.
A strict Content-Security-Policy allows scripts, styles and requests from this origin only:
nothing is loaded from a CDN, and an injected inline script would not run.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from shared_layer.errors import NotFound

ASSETS: dict[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


def dashboard_page(static_dir: Path, *, request_path: str) -> bytes:
    """The page, its links relative to where it was asked for: the function may sit under any
    prefix (`/health` in the local stack, its own URL in the cloud), with or without a final
    slash."""
    in_directory = request_path.endswith("/")
    html = _read(static_dir / "dashboard.html").decode()
    html = html.replace("__ASSETS__", "" if in_directory else "dashboard/")
    return html.replace("__METRICS__", "../metrics" if in_directory else "metrics").encode()


def dashboard_asset(static_dir: Path, name: str) -> tuple[bytes, str]:
    """(content, media type) of a listed asset; `NotFound` for any other name."""
    if name not in ASSETS:
        raise NotFound(f"no dashboard asset {name!r}; the assets are: {', '.join(sorted(ASSETS))}")
    relative, media_type = ASSETS[name]
    return _read(static_dir / relative), media_type
