"""`lcpp-zh serve`'s options before anything loads: MODEL arguments to aliases, and settings that cannot work
(a context too small for the slots, an unknown template or model source) refused in one line, with exit
status 1 and no port bound."""

from __future__ import annotations

import pytest

from lcpp_zh.errors import LcppError
from lcpp_zh.server.model_loader import ModelSpec, parse_model_specs


def test_model_arguments_become_aliases(tmp_path):
    existing = tmp_path / "a=b.gguf"  # a file whose name has a `=` is a file, not ALIAS=MODEL
    existing.write_bytes(b"")
    specs = parse_model_specs(["atom=./models/atom.Q4_K_M.gguf", "/models/SmolLM2.Q8_0.gguf",
                               "FlagAlpha/Atom-7B-Chat", "x/y=z", str(existing)])
    assert specs == [ModelSpec("atom", "./models/atom.Q4_K_M.gguf"), ModelSpec("SmolLM2.Q8_0", "/models/SmolLM2.Q8_0.gguf"),
                     ModelSpec("Atom-7B-Chat", "FlagAlpha/Atom-7B-Chat"), ModelSpec("y=z", "x/y=z"),
                     ModelSpec("a=b", str(existing))]


def test_two_models_under_one_alias_are_refused():
    with pytest.raises(LcppError, match="share the alias 'm'"):
        parse_model_specs(["m=a.gguf", "m=b.gguf"])


@pytest.mark.parametrize("args, fragment", [
    (["--ctx", "32", "--parallel", "4"], "--ctx 32 is too small for 4 slot(s); use at least 64"),
    (["--template", "nope"], "unknown template 'nope'"),
    (["--gpu-layers", "many"], "--gpu-layers 'many'"),
    (["--rpc", "nohost"], "--rpc 'nohost': expected HOST:PORT"),
])
def test_impossible_settings_fail_in_one_line_before_loading(run_cli, smollm2_gguf, args, fragment):
    result = run_cli("serve", smollm2_gguf, "--port", "1", *args, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr)
    # One line and nothing before it: the server never started ("serving on ...") nor planned a model.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
