"""Cross-origin access (`serve --cors-origins`): which other origins' pages may call the API from a browser.

None by default, so a page on another site cannot use a local server with the user's network position. The
CORS middleware sits outside the API-key check: preflights (which carry no key) are answered here, while the
actual request still needs the key. No credentials mode: the API authenticates with a bearer key, not cookies.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from lcpp_zh.errors import LcppError

# How long a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE_S = 600


def parse_cors_origins(text: str | None) -> tuple[str, ...]:
    """`https://a.example,http://localhost:3210` or `*` -> a tuple; an origin is scheme://host[:port]."""
    if not text or not text.strip():
        return ()
    origins = []
    for raw in text.split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*":
            origins.append(origin)
            continue
        try:
            parts = urlsplit(origin)
            _ = parts.port  # raises on a bad port
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path
                or parts.query or parts.fragment or parts.username or parts.password):
            raise LcppError(f"--cors-origins: {raw.strip()!r} is not an origin; give scheme://host[:port] "
                            "(e.g. http://localhost:3210) or *")
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def with_cors(app: Any, origins: tuple[str, ...]) -> Any:
    """`app` wrapped by Starlette's CORS middleware for `origins`; `app` itself when there are none (then a
    preflight gets no allow headers and the browser refuses the call)."""
    if not origins:
        return app
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, allow_origins=list(origins), allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                          allow_headers=["*"], allow_credentials=False, max_age=PREFLIGHT_MAX_AGE_S)
