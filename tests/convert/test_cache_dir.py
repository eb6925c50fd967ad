"""The cache folder: LCPP_ZH_CACHE first, then the platform's user cache folder (platformdirs; XDG_CACHE_HOME
on Linux), and the scripts that run around the package (install_gguf_py.py, build-llama-cpp-tools.sh) agree
with lcpp_zh.resolve on it, with and without platformdirs installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import platformdirs
import pytest

from lcpp_zh import resolve
from lcpp_zh.common.versions import llama_cpp_python_pin

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is Linux's convention")


def _install_gguf_py():
    spec = importlib.util.spec_from_file_location("install_gguf_py", ROOT / "scripts" / "install_gguf_py.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_cache_env(monkeypatch, tmp_path):
    """No LCPP_ZH_CACHE and no XDG_CACHE_HOME; HOME is a fresh folder."""
    monkeypatch.delenv("LCPP_ZH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_env_var_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LCPP_ZH_CACHE", str(tmp_path / "mine"))
    assert resolve.cache_dir() == tmp_path / "mine"
    assert resolve.models_dir() == tmp_path / "mine" / "models"
    assert _install_gguf_py().cache_dir() == tmp_path / "mine"


def test_env_var_expands_user(monkeypatch, no_cache_env):
    monkeypatch.setenv("LCPP_ZH_CACHE", "~/somewhere")
    assert resolve.cache_dir() == no_cache_env / "somewhere"


def test_default_is_the_platforms_user_cache(no_cache_env):
    expected = Path(platformdirs.user_cache_dir("lcpp-zh", appauthor=False))
    assert resolve.cache_dir() == expected
    assert expected.is_relative_to(no_cache_env)  # under the user's home on every platform
    if sys.platform.startswith("linux"):
        assert resolve.cache_dir() == no_cache_env / ".cache" / "lcpp-zh"
    elif sys.platform == "darwin":
        assert resolve.cache_dir() == no_cache_env / "Library" / "Caches" / "lcpp-zh"


@linux_only
def test_xdg_cache_home(monkeypatch, no_cache_env, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve.cache_dir() == tmp_path / "xdg" / "lcpp-zh"


@linux_only
@pytest.mark.parametrize("xdg", [True, False])
def test_install_script_without_platformdirs_agrees(monkeypatch, no_cache_env, tmp_path, xdg):
    """scripts/install_gguf_py.py may run before platformdirs is installed: same folder on Linux."""
    if xdg:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    script = _install_gguf_py()
    with_lib = script.cache_dir()
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # import platformdirs -> ImportError
    assert script.cache_dir() == with_lib == resolve.cache_dir()


@linux_only
@pytest.mark.parametrize("python", [sys.executable, "false"], ids=["platformdirs", "no-python"])
@pytest.mark.parametrize("env_name", ["XDG_CACHE_HOME", "LCPP_ZH_CACHE", None])
def test_tools_script_agrees(monkeypatch, no_cache_env, tmp_path, python, env_name):
    """build-llama-cpp-tools.sh finds already built tools in resolve's cache folder (and so builds nothing)."""
    if env_name:
        monkeypatch.setenv(env_name, str(tmp_path / "c"))
    tools = resolve.cache_dir() / "llama.cpp-tools" / llama_cpp_python_pin() / "bin"
    tools.mkdir(parents=True)
    for name in ("llama-server", "llama-bench", "llama-perplexity", "llama-quantize", "llama-imatrix",
                 "ggml-rpc-server"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    env = dict(os.environ, PYTHON=python)
    env.pop("DEST", None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-llama-cpp-tools.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tools)


def test_cli_lists_models_in_the_default_cache(monkeypatch, no_cache_env, tmp_path):
    """The real command, without LCPP_ZH_CACHE (with XDG_CACHE_HOME on Linux), lists resolve's cache folder."""
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    models = resolve.models_dir()
    models.mkdir(parents=True)
    (models / "cached.Q4_1.gguf").write_bytes(b"GGUF" + bytes(60))
    exe = Path(sys.executable).parent / "lcpp-zh"
    done = subprocess.run([str(exe), "models", "--json"], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120, check=True)
    assert [m["path"] for m in json.loads(done.stdout)] == [str(models / "cached.Q4_1.gguf")]
