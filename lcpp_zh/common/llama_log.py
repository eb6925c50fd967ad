"""Route llama.cpp's own log lines into Python logging instead of the terminal.

llama.cpp reports every tensor and context setting on stderr, and llama-cpp-python's `verbose=False`
does not catch all of it. Installed once per process by quantize, the runtime, eval and verify.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger("llama.cpp")

_callback = None  # keeps the ctypes callback alive for as long as llama.cpp may call it


def route_llama_logs() -> None:
    """Send llama.cpp's log to the `llama.cpp` logger: errors as warnings, everything else as debug."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace").rstrip("\n")
        if message:
            # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation; only errors reach the user.
            logger.log(logging.WARNING if level == 4 else logging.DEBUG, "%s", message)

    _callback = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
