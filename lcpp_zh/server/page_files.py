"""The web page's files (lcpp_zh/server/static/, vendored libraries included), read once into a table.

The table maps URL paths (/, /index.html, /static/...) to contents, media type and ETag. A request path is only
ever looked up in it, never joined to a path on disk, and only files of the types below are in it (not the
vendored LICENSE and README files). Serving and the route live in misc_api; this module knows no HTTP routes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

from fastapi.responses import Response

logger = logging.getLogger(__name__)

STATIC_PREFIX = "/static/"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
}


# The page's Content-Security-Policy: it runs only its own scripts (no inline script, no eval) and talks only
# to this server. style-src keeps 'unsafe-inline' because KaTeX writes its layout into style attributes
# (heights, margins of fractions and roots) in the HTML it renders; style-src-elem still refuses <style> elements
# in browsers that know it. Avatars are data: URLs (pictures picked on the device pass through a blob: URL).
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "style-src-elem 'self'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])


@dataclass(frozen=True)
class PageFile:
    body: bytes
    media_type: str
    etag: str


def _walk(folder: Traversable, prefix: str, table: dict[str, PageFile]) -> None:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            _walk(entry, f"{prefix}{entry.name}/", table)
            continue
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            table[STATIC_PREFIX + prefix + entry.name] = PageFile(body, MEDIA_TYPES[suffix], etag)


def load_page_files() -> dict[str, PageFile]:
    """URL path -> file, for every servable file under static/; / and /index.html are the page itself."""
    table: dict[str, PageFile] = {}
    _walk(resources.files("lcpp_zh.server") / "static", "", table)
    index = table[STATIC_PREFIX + "index.html"]
    table["/"] = table["/index.html"] = index
    return table


def is_page_path(path: str) -> bool:
    """Paths that serve the page's own files: open without the API key (they hold no data, and the page
    must load before the user can type the key)."""
    return path in ("/", "/index.html", "/favicon.ico") or path.startswith(STATIC_PREFIX)


def page_response(file: PageFile, if_none_match: str | None) -> Response:
    """The file, or 304 when the browser's copy is current. no-cache makes the browser ask each time, so an
    upgraded lcpp-zh serves its new page at once; the 304s keep that cheap."""
    headers = {"Cache-Control": "no-cache", "ETag": file.etag}
    if file.media_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if if_none_match and file.etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)
