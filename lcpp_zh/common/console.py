"""Status lines for the user (a server ready, an offload plan, a conversion started) through logging, and the
console handler the CLI installs: status lines plain, warnings and errors with their level and logger.

The library never prints: it logs status at the STATUS level, between INFO and WARNING, so that the CLI
shows it by default while `-v` adds INFO and DEBUG. Only the CLI (and the runner process) configure logging.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

# Shown by default (the CLI's level), below every real warning.
STATUS = 25
logging.addLevelName(STATUS, "STATUS")

PREFIXED_FORMAT = "%(levelname)s %(name)s: %(message)s"


def status(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log a line the user should read as it is (`ready: atom on http://127.0.0.1:8001`), no prefix."""
    logger.log(STATUS, message, *args)


class ConsoleFormatter(logging.Formatter):
    """STATUS records as their bare message; everything else as `WARNING lcpp_zh.server.app: ...`."""

    def __init__(self, prefixed_format: str = PREFIXED_FORMAT) -> None:
        super().__init__(prefixed_format)
        self._plain = logging.Formatter("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return self._plain.format(record) if record.levelno == STATUS else super().format(record)


def configure_console(level: int = STATUS, stream: TextIO | None = None,
                      prefixed_format: str = PREFIXED_FORMAT) -> None:
    """The root logger to `stream` (stderr: data goes to stdout) at `level`, through ConsoleFormatter. Like
    logging.basicConfig, it leaves a root logger that already has handlers (an embedding program's) alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(ConsoleFormatter(prefixed_format))
    logging.basicConfig(level=level, handlers=[handler])
