"""Ollama's native API (/api/*) of a real `lcpp-zh serve` (SmolLM2-135M GGUF), through the official `ollama`
client and raw NDJSON reads with httpx.

Model facts are checked against gguf-py's reader, greedy text against llama-cpp-python's own Llama, and the
translation against /v1 on the same server (same prompt tokens, same greedy answer). Hostile bodies get a 400
or 404 in Ollama's {"error": "..."} shape and the server stays up.
"""

from __future__ import annotations

import datetime
import json
import time

import httpx
import numpy as np
import ollama
import psutil
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

KEY = "ollama-key"
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--parallel", "2", "--ctx", "2048", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-ollama"), api_key=KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers=server.headers(), timeout=300)


def post(server, path, body, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers(), timeout=300, **kwargs)


def runners(server) -> list[psutil.Process]:
    """The server's runner processes (one per loaded model)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "lcpp_zh.runtime.runner" in " ".join(p.cmdline())]


def test_list_and_show_report_the_gguf_header(client, smollm2_gguf):
    import gguf

    reader = gguf.GGUFReader(smollm2_gguf)
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"smol:latest"}
    entry = listed["smol:latest"]
    assert entry.size == smollm2_gguf.stat().st_size
    assert entry.details.format == "gguf" and entry.details.family == "llama"
    assert entry.details.quantization_level == "Q4_1"
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    assert entry.details.parameter_size == f"{n_params / 1e6:.2f}M"
    assert len(entry.digest) == 64
    shown = client.show("smol")
    assert shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == reader.get_field("llama.context_length").contents()
    assert shown.modelinfo["general.parameter_count"] == n_params
    assert shown.modelinfo["tokenizer.ggml.tokens"] == []  # the big arrays only with verbose, as Ollama
    assert "<|im_start|>" in shown.template  # SmolLM2's own ChatML template, as prompts are rendered
    assert "temperature" in shown.parameters and "completion" in shown.capabilities
    assert client.show("smol:latest").details == shown.details


def test_version_and_ps(client, server):
    assert httpx.get(f"{server.url}/api/version", headers=server.headers(), timeout=60).json()["version"]
    client.generate("smol", "Hi", options={"num_predict": 1})
    running = client.ps().models
    assert [m.model for m in running] == ["smol:latest"]
    assert running[0].size > 0 and running[0].size_vram == 0  # a CPU build offloads nothing
    assert running[0].context_length > 0
    # The server's --keep-alive default (5 minutes) counts from the last request.
    left = running[0].expires_at - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(minutes=4) < left <= datetime.timedelta(minutes=5, seconds=5)


def test_chat_stream_equals_whole_and_v1(client, server):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    options = {**GREEDY, "num_predict": 24}
    client.chat("smol", messages, options={**options, "num_predict": 2})  # fill the prefix cache first
    whole = client.chat("smol", messages, options=options)
    parts = list(client.chat("smol", messages, options=options, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert whole.message.role == "assistant" and whole.done_reason in ("stop", "length")
    last = parts[-1]
    assert last.eval_count == whole.eval_count and last.prompt_eval_count == whole.prompt_eval_count
    assert last.total_duration >= last.prompt_eval_duration + last.eval_duration > 0
    # The same request through /v1: the same prompt tokens and the same greedy answer.
    v1 = post(server, "/v1/chat/completions", {"model": "smol", "messages": messages, "max_tokens": 24,
                                               "temperature": 0, "repeat_penalty": 1.0}).json()
    assert v1["choices"][0]["message"]["content"] == whole.message.content
    assert v1["usage"]["prompt_tokens"] == whole.prompt_eval_count
    assert v1["usage"]["completion_tokens"] == whole.eval_count


def test_raw_generate_follows_llama_cpp_python(client, smollm2_gguf):
    from llama_cpp import Llama

    prompt = "The capital of France is"
    got = client.generate("smol", prompt, raw=True, options={**GREEDY, "num_predict": 16})
    reference = Llama(str(smollm2_gguf), n_ctx=512, n_threads=2, verbose=False)
    try:
        want = reference.create_completion(reference.tokenize(prompt.encode(), add_bos=False), max_tokens=16,
                                           temperature=0.0, repeat_penalty=1.0)
        n_prompt = len(reference.tokenize(prompt.encode(), add_bos=False))
    finally:
        reference.close()
    assert got.response == want["choices"][0]["text"]
    assert got.prompt_eval_count == n_prompt and got.context is None  # raw answers carry no context, as Ollama


def test_generate_with_system_and_context(client, server):
    first = client.generate("smol", "Name a colour.", system="You are terse.", options={**GREEDY, "num_predict": 6})
    v1 = post(server, "/v1/chat/completions", {"model": "smol", "max_tokens": 6, "temperature": 0,
                                               "repeat_penalty": 1.0, "messages": [
                                                   {"role": "system", "content": "You are terse."},
                                                   {"role": "user", "content": "Name a colour."}]}).json()
    assert first.response == v1["choices"][0]["message"]["content"]
    assert len(first.context) == first.prompt_eval_count + first.eval_count
    follow = client.generate("smol", "And another?", context=first.context, options={**GREEDY, "num_predict": 4})
    alone = client.generate("smol", "And another?", options={**GREEDY, "num_predict": 4})
    assert follow.prompt_eval_count == len(first.context) + alone.prompt_eval_count


def test_raw_ndjson_stream(server):
    body = {"model": "smol", "prompt": "Count: one, two,", "raw": True, "options": {**GREEDY, "num_predict": 8}}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, headers=server.headers(), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(line["model"] == "smol" and line["created_at"].endswith("Z") for line in lines)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    final = lines[-1]
    assert final["done_reason"] == "length" and final["eval_count"] == 8 and final["response"] == ""
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int), key


def test_curl_style_body_without_json_content_type(server):
    """Ollama's documentation sends bodies with `curl -d` (a form content type); they are read as JSON."""
    r = httpx.post(f"{server.url}/api/show", content=b'{"model": "smol"}',
                   headers={**server.headers(), "content-type": "application/x-www-form-urlencoded"}, timeout=120)
    assert r.status_code == 200 and r.json()["details"]["family"] == "llama"


def test_options_map_to_sampling(client):
    stopped = client.generate("smol", "Count: one, two, three,", raw=True,
                              options={**GREEDY, "num_predict": 30, "stop": [" five"]})
    assert stopped.done_reason == "stop" and " five" not in stopped.response and "four" in stopped.response
    runs = [client.generate("smol", "Once upon a time", raw=True,
                            options={"temperature": 1.0, "seed": 7, "num_predict": 12}).response for _ in range(2)]
    assert runs[0] == runs[1]
    # num_ctx below the slot's context bounds this request: prompt and answer together fit in 48 tokens.
    capped = client.generate("smol", "Tell me a story.", options={"num_ctx": 48, "num_predict": -1, **GREEDY})
    assert capped.done_reason == "length" and capped.prompt_eval_count + capped.eval_count == 48
    # The largest values the fields take are capped, not refused, and reach llama.cpp within its range.
    huge = client.generate("smol", "Hi", options={"num_ctx": 2**31 - 1, "num_predict": 3, "repeat_last_n": -1,
                                                  "top_k": 2**31 - 1})
    assert huge.eval_count == 3
    longest = client.generate("smol", "Hi", options={"num_ctx": 40, "num_predict": 2**31 - 1, **GREEDY})
    assert longest.prompt_eval_count + longest.eval_count == 40


def test_format_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat("smol", [{"role": "user", "content": "Invent a person, give name and age."}], format=schema,
                    options={**GREEDY, "num_predict": 80})
    data = json.loads(r.message.content)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    # The prompt /v1's JSON mode test uses: the grammar lets the answer end only after a complete object.
    r = client.generate("smol", "Give a JSON object with the keys name and age for a person named Tom, aged 30.",
                        format="json", options={**GREEDY, "num_predict": 200})
    assert r.done_reason == "stop" and isinstance(json.loads(r.response), dict)


def test_embed_matches_llama_cpp_python(client, smollm2_gguf):
    import llama_cpp

    texts = ["北京是中国的首都。", "The cat sat on the mat."]
    got = client.embed("smol", texts)
    assert len(got.embeddings) == 2 and got.prompt_eval_count > 0
    ref = llama_cpp.Llama(str(smollm2_gguf), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                          n_ctx=512, n_threads=2, verbose=False)
    try:
        want = [np.asarray(ref.embed(t, normalize=True)) for t in texts]
    finally:
        ref.close()
    for vector, reference in zip(got.embeddings, want, strict=True):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)  # /api/embed normalizes, as Ollama
        assert float(np.asarray(vector) @ reference) > 0.999
    short = client.embed("smol", texts[0], dimensions=64).embeddings[0]
    assert len(short) == 64 and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-4)
    old = client.embeddings("smol", texts[0]).embedding  # the older route: the vector as the model gives it
    assert float(np.asarray(old) @ want[0] / np.linalg.norm(old)) > 0.999
    long = client.embed("smol", "word " * 5000)  # truncate=true (the default) keeps the first tokens
    assert len(long.embeddings) == 1
    with pytest.raises(ollama.ResponseError) as info:
        client.embed("smol", "word " * 5000, truncate=False)
    assert info.value.status_code == 400 and "too long" in info.value.error


def test_keep_alive_zero_unloads_and_the_next_request_loads_again(client, server):
    client.generate("smol", "Hi", options={"num_predict": 1})
    assert len(runners(server)) == 1
    unloaded = client.generate("smol", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert client.ps().models == []
    deadline = time.monotonic() + 30
    while runners(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert runners(server) == []  # the runner process has really gone
    again = client.chat("smol", [{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive="-1")
    warm = client.chat("smol", [{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive="-1")
    assert again.done and again.load_duration > 10 * warm.load_duration  # the first had to load the model
    assert len(runners(server)) == 1
    forever = client.ps().models[0].expires_at
    assert forever.year > 2100  # keep_alive -1: loaded for good, shown as Ollama does
    loaded = client.chat("smol", [], keep_alive="5m")
    assert loaded.done_reason == "load" and client.ps().models[0].expires_at.year < 2100


def test_a_request_with_keep_alive_zero_unloads_after_answering(client, server):
    r = client.generate("smol", "Hi", options={"num_predict": 2}, keep_alive=0)
    assert r.done and r.response
    deadline = time.monotonic() + 30
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.ps().models == []


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "nope"),
    ("/api/generate", {"model": "nope", "prompt": "hi"}, 404, "nope"),
    ("/api/show", {"model": "nope"}, 404, "nope"),
    ("/api/embed", {"model": "nope", "input": "hi"}, 404, "nope"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model is required"),
    ("/api/chat", {"model": "smol", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, 400,
     "images"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "images": ["aGk="]}, 400, "images"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "suffix": "end"}, 400, "suffix"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "template": "{{ .Prompt }}"}, 400, "template"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "raw": True, "system": "x"}, 400, "raw"),
    ("/api/chat", {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "think": True}, 400,
     "thinking"),
    ("/api/chat", {"model": "smol", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ("/api/chat", {"model": "smol", "messages": "hi"}, 400, "messages"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"temperature": -1}}, 400, "options.temperature"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"temperature": "hot"}}, 400, "temperature"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"top_k": -5}}, 400, "top_k"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"num_predict": -3}}, 400, "num_predict"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"num_predict": 2**40}}, 400, "num_predict"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"num_ctx": 10**12}}, 400, "num_ctx"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"num_ctx": 0}}, 400, "num_ctx"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"repeat_last_n": -2}}, 400, "repeat_last_n"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": {"stop": ["x"] * 50}}, 400, "stop"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "options": "fast"}, 400, "options"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "stream": "maybe"}, 400, "stream"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "format": "xml"}, 400, "format"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "format": {"type": "object", "properties": 5}}, 400,
     "format"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "keep_alive": "forever"}, 400, "keep_alive"),
    ("/api/generate", {"model": "smol", "prompt": "hi", "context": [-1, 5]}, 400, "context"),
    ("/api/generate", {"model": "smol", "prompt": "hello " * 3000}, 400, "too long"),
    ("/api/embed", {"model": "smol", "input": ["a", ""]}, 400, "empty"),
    ("/api/embed", {"model": "smol", "input": "a", "dimensions": 100000}, 400, "dimensions"),
])
def test_hostile_requests_get_ollama_errors(server, path, body, status, words):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
    assert words in r.json()["error"]


def test_bad_json_missing_key_and_the_official_client_errors(server, client):
    r = httpx.post(f"{server.url}/api/chat", content=b'{"model": "smol", "messages": [', headers=server.headers(),
                   timeout=60)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    unauthorized = httpx.get(f"{server.url}/api/tags", timeout=60)
    assert unauthorized.status_code == 401 and set(unauthorized.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("no-such-model", [{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and "no-such-model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        list(client.chat("smol", [{"role": "user", "content": "hi"}], options={"temperature": 9}, stream=True))
    assert info.value.status_code == 400 and "temperature" in info.value.error
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tools_and_tool_history_take_the_v1_chat_path(client, server):
    """Ollama's tool calls (arguments as objects, results by tool_name) render as /v1's (arguments as JSON
    text, results by call id): the same prompt, the same greedy reply, calls with object arguments."""
    ollama_messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 21 C"},
        {"role": "user", "content": "And in Beijing?"}]
    openai_messages = [
        ollama_messages[0],
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Sunny, 21 C"},
        ollama_messages[3]]
    got = post(server, "/api/chat", {"model": "smol", "messages": ollama_messages, "tools": [WEATHER],
                                     "stream": False, "options": {**GREEDY, "num_predict": 40}}).json()
    want = post(server, "/v1/chat/completions", {"model": "smol", "messages": openai_messages, "tools": [WEATHER],
                                                 "max_tokens": 40, "temperature": 0, "repeat_penalty": 1.0}).json()
    assert got["prompt_eval_count"] == want["usage"]["prompt_tokens"]
    wanted = want["choices"][0]["message"]
    calls = [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
             for c in wanted.get("tool_calls") or []]
    assert got["message"].get("tool_calls", []) == calls
    assert got["message"]["content"] == (wanted["content"] or "")
    streamed = list(client.chat("smol", ollama_messages, tools=[WEATHER], stream=True,
                                options={**GREEDY, "num_predict": 40}))
    assert streamed[-1].done and "".join(p.message.content or "" for p in streamed) == got["message"]["content"]
    assert [c.model_dump() for p in streamed for c in p.message.tool_calls or []] == [
        {"function": c["function"]} for c in calls]
