"""The HTTP side of `lcpp-zh serve`, in one place: address, API key, request limits, streaming and shutdown.

What a model runs with is lcpp_zh.runtime.settings.EngineSettings; this is only what the web server needs.
Each default lives here once: serve's options and create_app/run_server take theirs from this class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# serve's own engine defaults where they differ from EngineSettings' (chat needs one slot, a server several;
# /v1/embeddings is part of the OpenAI API a server offers).
SERVE_PARALLEL = 4
SERVE_EMBEDDINGS = True


@dataclass(frozen=True)
class ServerSettings:
    """How the server listens and answers; frozen: derive a changed copy with `settings.replace(port=0)`."""

    host: str = "127.0.0.1"
    port: int = 8001                          # the seed's accelerate_server.py listens here; its clients expect it
    api_key: str | None = None                # None: no key asked for (a warning when the host is not loopback)
    max_body_bytes: int = 4 * 1024 * 1024     # larger request bodies get a 413 before they are read
    # Streams send at most one chunk per 50 ms (20 a second, which reads as smooth): several tokens then share
    # a chunk, which spares the event loop and the client a wake-up per token on a busy machine.
    stream_interval_s: float = 0.05
    shutdown_timeout_s: float = 10.0          # how long SIGTERM or Ctrl-C lets the requests in flight finish
    # Origins whose pages may call the API from a browser (`*`: any); none by default, so a page on another
    # site cannot use a local server with the user's network position (lcpp_zh.server.cors).
    cors_origins: tuple[str, ...] = ()
    # Seconds a model stays loaded after its last request (None: forever); Ollama's 5 minutes.
    keep_alive_s: float | None = 300.0
    max_loaded: int | None = None             # most models loaded at once; the least recently used idle one goes
    models_dir: Path | None = None            # a folder of GGUFs servable by name, besides the cache
    # A chat history longer than the context: `error` (a 400) or `truncate-middle` (old turns dropped after the
    # system prompt, said in usage.truncated_messages and X-Context-Truncated; lcpp_zh.server.overflow).
    context_overflow: str = "error"

    def replace(self, **changes: Any) -> ServerSettings:
        return replace(self, **changes)
