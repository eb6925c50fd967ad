"""`lcpp-zh list`, `rm` and `ps` as a user runs them (the installed command in a subprocess), on a cache of
GGUFs (conftest points LCPP_ZH_CACHE at a temporary folder). `ps` against a running server is in
tests/server/test_models_on_demand.py; here, the answer when no server listens."""

from __future__ import annotations

import json
import os
import socket

import pytest

from lcpp_zh import resolve


@pytest.fixture
def cache(smollm2_gguf):
    folder = resolve.models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    names = ["FlagAlpha--Atom-7B-Chat.Q4_K_M.gguf", "FlagAlpha--Atom-7B-Chat.Q8_0.gguf", "smol-1a2b3c4d.F16.gguf"]
    for name in names:
        (folder / name).write_bytes(smollm2_gguf.read_bytes()[: 4096 * (1 + len(name) % 5)])
    (folder / ".converting.gguf").write_bytes(b"GGUF")  # a conversion in progress is not listed
    return folder


def test_list_shows_name_quant_and_size(run_cli, cache):
    done = run_cli("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "SIZE", "MODIFIED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {p.name for p in cache.glob("[!.]*.gguf")}
    assert rows["FlagAlpha--Atom-7B-Chat.Q4_K_M.gguf"][1] == "Q4_K_M"
    assert rows["smol-1a2b3c4d.F16.gguf"][1] == "F16"
    listed = {m["name"]: m for m in json.loads(run_cli("list", "--json").stdout)}
    for name, entry in listed.items():
        assert entry["size"] == (cache / name).stat().st_size and entry["path"] == str(cache / name)
    assert "3 model(s)" in done.stderr


def test_list_of_an_empty_cache_says_where_it_looked(run_cli):
    done = run_cli("list")
    assert done.returncode == 0 and done.stdout == ""
    assert str(resolve.models_dir()) in done.stderr


def test_rm_asks_first_and_no_keeps_the_files(run_cli, cache):
    import subprocess

    from conftest import lcpp_zh_command

    target = cache / "smol-1a2b3c4d.F16.gguf"
    refused = subprocess.run([*lcpp_zh_command(), "rm", "smol"], input="n\n", capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "nothing removed" in refused.stderr and target.exists()
    agreed = subprocess.run([*lcpp_zh_command(), "rm", "smol"], input="y\n", capture_output=True, text=True,
                            timeout=60)
    assert agreed.returncode == 0, agreed.stderr
    assert not target.exists() and "removed smol-1a2b3c4d.F16.gguf" in agreed.stderr


def test_rm_by_repo_id_removes_every_quantization_with_yes(run_cli, cache):
    done = run_cli("rm", "FlagAlpha/Atom-7B-Chat", "--yes")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in cache.glob("[!.]*.gguf")) == ["smol-1a2b3c4d.F16.gguf"]


@pytest.mark.parametrize("outside", ["absolute", "relative", "dotdot"])
def test_rm_refuses_a_path_outside_the_cache(run_cli, cache, tmp_path, outside):
    victim = tmp_path / "elsewhere" / "FlagAlpha--Atom-7B-Chat.Q4_K_M.gguf"
    victim.parent.mkdir()
    victim.write_bytes(b"GGUF")
    name = {"absolute": str(victim), "relative": os.path.relpath(victim),  # the CLI runs in this cwd
            "dotdot": str(cache / ".." / "elsewhere.gguf")}[outside]
    if outside == "dotdot":
        (cache.parent / "elsewhere.gguf").write_bytes(b"GGUF")
    done = run_cli("rm", name, "--yes")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert victim.exists() and (cache / "FlagAlpha--Atom-7B-Chat.Q4_K_M.gguf").exists()


def test_rm_of_an_unknown_name_removes_nothing(run_cli, cache):
    before = sorted(cache.iterdir())
    done = run_cli("rm", "FlagAlpha/Atom-7B-Chat", "no-such-model", "--yes")
    assert done.returncode == 1 and "no-such-model" in done.stderr
    assert sorted(cache.iterdir()) == before  # every name is checked before anything is removed


def test_ps_without_a_server_is_one_line(run_cli):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    done = run_cli("ps", "--port", port)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: no lcpp-zh server at http://127.0.0.1:{port}")
    assert done.stderr.count("\n") == 1


def test_the_old_models_command_still_lists(run_cli, cache):
    done = run_cli("models", "--json")
    assert done.returncode == 0
    assert {m["name"] for m in json.loads(done.stdout)} == {p.name for p in cache.glob("[!.]*.gguf")}
