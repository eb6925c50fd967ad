"""GET/POST /v1/lora on a real `lcpp-zh serve` (tiny Chinese GGUF served twice with a real PEFT adapter, plus a
server without adapters as the base reference): list, set scales at runtime with llama-server's semantics,
per-model choice, API key, and refusals in OpenAI's error shape."""

from __future__ import annotations

import httpx
import openai
import pytest
from lora_adapters import make_adapter
from server_harness import start_server

from lcpp_zh.convert.lora_adapter import convert_lora

pytestmark = pytest.mark.slow

KEY = "lora-key"
PROMPT = "<s>Human: 介绍一下北京\n</s><s>Assistant: "
COMMON = ["--ctx", "512", "--parallel", "2", "--threads", "2", "--no-embeddings"]


@pytest.fixture(scope="module")
def adapter(tiny_zh_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-lora")
    return convert_lora(make_adapter(tiny_zh_hf, root / "peft", r=4, alpha=8, seed=41), tiny_zh_hf,
                        root / "zh-style.gguf")


@pytest.fixture(scope="module")
def servers(tiny_zh_gguf, adapter, tmp_path_factory):
    """`main` and `second` (the same GGUF, each with the adapter at 0.5) behind a key; `base` without adapters."""
    work = tmp_path_factory.mktemp("serve-lora-run")
    lora = start_server([f"main={tiny_zh_gguf}", f"second={tiny_zh_gguf}", "--lora", str(adapter),
                         "--lora-scale", "0.5", *COMMON], work, api_key=KEY)
    try:
        base = start_server([f"base={tiny_zh_gguf}", *COMMON], work)
    except BaseException:
        lora.stop()
        raise
    yield lora, base
    lora.stop()
    base.stop()


def _get(server, model: str | None = None, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/v1/lora", params={"model": model} if model else None, headers=headers,
                     timeout=30)


def _post(server, body=None, key: str | None = KEY, headers: dict | None = None, **kwargs) -> httpx.Response:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server.url}/v1/lora", headers=headers, timeout=60, **kwargs)


def _scales(server, model: str | None = None) -> list[float]:
    response = _get(server, model)
    assert response.status_code == 200, response.text
    return [a["scale"] for a in response.json()]


def _complete(server, model: str) -> str:
    client = openai.OpenAI(base_url=server.v1, api_key=server.api_key or "none", max_retries=0)
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_get_lists_adapters(servers, adapter):
    lora, base = servers
    expected = [{"id": 0, "name": "zh-style", "path": str(adapter), "scale": 0.5, "alpha": 8.0}]
    assert _get(lora).json() == expected  # the first model by default
    assert _get(lora, "second").json() == expected
    assert _get(base, key=None).json() == []
    assert _error(_get(lora, "nope"), 404)["code"] == "model_not_found"


def test_scales_change_outputs_without_reloading(servers):
    lora, base = servers
    base_text = _complete(base, "base")
    at_half = _complete(lora, "main")
    assert at_half != base_text  # the adapter is active
    response = _post(lora, [{"id": 0, "scale": 0}])
    assert response.status_code == 200, response.text
    assert response.json()["adapters"][0]["scale"] == 0.0 and response.json()["model"] == "main"
    assert _complete(lora, "main") == base_text  # scale 0: the base model's greedy text
    assert _complete(lora, "second") == at_half  # the other model keeps its own scale
    assert _post(lora, [{"name": "zh-style", "scale": 0.5}]).status_code == 200
    assert _complete(lora, "main") == at_half  # back: stale cached prefixes were not reused
    # The object form picks a model; llama-server's semantics: an adapter left out of the list goes to 0.
    assert _post(lora, {"model": "second", "lora": []}).json()["adapters"][0]["scale"] == 0.0
    assert _scales(lora, "second") == [0.0] and _scales(lora, "main") == [0.5]
    assert _post(lora, [{"id": 0, "scale": 0.25}], params={"model": "second"}).status_code == 200
    assert _scales(lora, "second") == [0.25]


def test_key_and_bad_bodies(servers):
    lora, base = servers
    before = _scales(lora)
    assert _error(_get(lora, key=None), 401)["type"] == "authentication_error"
    assert _error(_post(lora, [{"id": 0, "scale": 2}], key=None), 401)["type"] == "authentication_error"
    assert _error(_post(lora, [{"id": 0, "scale": 2}], key="wrong"), 401)["type"] == "authentication_error"
    assert "no LoRA adapter 7" in _error(_post(lora, [{"id": 7, "scale": 1}]), 400)["message"]
    assert "no LoRA adapter 'other'" in _error(_post(lora, [{"name": "other", "scale": 1}]), 400)["message"]
    assert "finite number" in _error(_post(lora, [{"id": 0, "scale": "high"}]), 400)["message"]
    assert "finite number" in _error(_post(lora, [{"id": 0, "scale": True}]), 400)["message"]
    # A bad entry after a good one changes nothing: all entries are checked first.
    _error(_post(lora, [{"id": 0, "scale": 1.0}, {"id": 0, "scale": None}]), 400)
    assert "id or a name" in _error(_post(lora, [{"scale": 1}]), 400)["message"]
    assert "needs an id or a name" in _error(_post(lora, [1, 2]), 400)["message"]
    invalid = _post(lora, content=b"[{not json", headers={"Content-Type": "application/json"})
    assert _error(invalid, 400)["message"] == "request body is not valid JSON"
    for shape in ({"scale": 1}, {"lora": [], "extra": 1}, {"model": 3, "lora": []}, "zh-style", None):
        refused = _error(_post(lora, shape) if shape is not None else _post(lora), 400)
        assert refused["type"] == "invalid_request_error" and refused["param"] in ("lora", None), refused
    assert _error(_post(lora, {"model": "nope", "lora": []}), 404)["code"] == "model_not_found"
    assert _error(_post(lora, [], params={"model": "nope"}), 404)["code"] == "model_not_found"
    assert "no LoRA adapters are loaded" in _error(_post(base, [{"id": 0, "scale": 1}], key=None), 400)["message"]
    assert _scales(lora) == before
