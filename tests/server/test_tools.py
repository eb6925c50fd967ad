"""Tool calling through a real `lcpp-zh serve` and the official openai client: SmolLM2 (ChatML, no tool format
of its own) and the tiny Chinese Llama (llama2-chinese template), both in the generic `<tool_call>` format.

Calls are checked by parsing their arguments and validating them against the tool's JSON schema by hand
(required keys, types, enums); streaming deltas are reassembled and compared with the non-streamed call.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "北京"]},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Time in a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CST"]}},
                   "required": ["zone"]}}}
# The tiny Chinese Llama's context is 512 tokens: its tools are the same without descriptions or `days`.
LIGHT = [{"type": "function", "function": {"name": t["function"]["name"], "parameters": {
    **t["function"]["parameters"], "properties": dict(list(t["function"]["parameters"]["properties"].items())[:1]),
    "required": t["function"]["parameters"]["required"][:1]}}} for t in (WEATHER, TIME)]
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 2 days?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 100, "extra_body": {"repeat_penalty": 1.0}}


@pytest.fixture(scope="module", params=["smollm2", "tiny_zh"])
def server(request, tmp_path_factory):
    gguf = request.getfixturevalue(f"{request.param}_gguf")
    srv = start_server([f"m={gguf}", "--ctx", "2048", "--threads", "2"], tmp_path_factory.mktemp("serve-tools"))
    srv.tools = LIGHT if request.param == "tiny_zh" else [WEATHER, TIME]
    srv.ask = [{"role": "user", "content": "巴黎天气？"}] if request.param == "tiny_zh" else ASK
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=600)


def check_arguments(schema: dict, arguments: str) -> dict:
    """Parse a call's arguments and check them against the (flat) schemas of this module by hand."""
    value = json.loads(arguments)
    assert isinstance(value, dict)
    for key in schema.get("required", []):
        assert key in value, f"{key} missing from {value}"
    for key, item in value.items():
        prop = schema["properties"].get(key)
        assert prop is not None or schema.get("additionalProperties", True) is not False, key
        if prop is None:
            continue
        kind = {"string": str, "integer": int}[prop["type"]]
        assert isinstance(item, kind) and not isinstance(item, bool), f"{key}: {item!r}"
        if "enum" in prop:
            assert item in prop["enum"]
    return value


def check_calls(message, tools) -> list:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert message.tool_calls, f"no tool call in {message}"
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        check_arguments(schemas[call.function.name], call.function.arguments)
    return message.tool_calls


def test_required_gives_a_call_that_fits_the_schema(server, client):
    reply = client.chat.completions.create(model="m", messages=server.ask, tools=server.tools, tool_choice="required",
                                           **GREEDY)
    assert reply.choices[0].finish_reason == "tool_calls"
    check_calls(reply.choices[0].message, server.tools)


def test_named_choice_calls_that_function(server, client):
    reply = client.chat.completions.create(model="m", messages=server.ask, tools=server.tools, parallel_tool_calls=False,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}}, **GREEDY)
    calls = check_calls(reply.choices[0].message, server.tools)
    assert [c.function.name for c in calls] == ["get_time"]


def test_parallel_false_gives_one_call(server, client):
    reply = client.chat.completions.create(model="m", messages=server.ask, tools=server.tools, tool_choice="required",
                                           parallel_tool_calls=False, **GREEDY)
    assert len(check_calls(reply.choices[0].message, server.tools)) == 1
    assert reply.choices[0].finish_reason == "tool_calls"


def test_none_answers_with_text(server, client):
    reply = client.chat.completions.create(model="m", messages=server.ask, tools=server.tools, tool_choice="none",
                                           **{**GREEDY, "max_tokens": 12})
    message = reply.choices[0].message
    assert not message.tool_calls and isinstance(message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_auto_gives_text_or_a_valid_call(server, client):
    reply = client.chat.completions.create(model="m", messages=server.ask, tools=server.tools, **GREEDY)
    message = reply.choices[0].message
    if message.tool_calls:
        check_calls(message, server.tools)
        assert reply.choices[0].finish_reason == "tool_calls"
    else:
        assert isinstance(message.content, str) and "<tool_call>{" not in message.content.replace(" ", "")


def test_streamed_call_reassembles_to_the_same_call(server, client):
    args = {"model": "m", "messages": server.ask, "tools": server.tools, "tool_choice": "required",
            "parallel_tool_calls": False, "seed": 7, **GREEDY}
    whole = check_calls(client.chat.completions.create(**args).choices[0].message, server.tools)
    calls: dict[int, dict] = {}
    finish, pieces = None, 0
    for chunk in client.chat.completions.create(stream=True, **args):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert entry["id"] is None and entry["arguments"] == "", "id and name come first"
                entry["id"], entry["name"] = delta.id, delta.function.name
            entry["arguments"] += delta.function.arguments or ""
            pieces += 1
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole]
    assert pieces >= 2  # the header, then the arguments


def _after_result(ask: list[dict], result: str) -> list[dict]:
    return [*ask, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": result}]


def test_text_answer_after_the_tool_result(server, client):
    short = client.chat.completions.create(model="m", messages=_after_result(server.ask, "sunny"), tools=server.tools[:1],
                                           tool_choice="none", **{**GREEDY, "max_tokens": 16})
    message = short.choices[0].message
    assert message.content and not message.tool_calls
    # The result is in the prompt: a longer one costs more prompt tokens.
    longer = client.chat.completions.create(model="m", messages=_after_result(server.ask, "sunny, 25 degrees, light wind"),
                                            tools=server.tools[:1], tool_choice="none", **{**GREEDY, "max_tokens": 1})
    assert longer.usage.prompt_tokens > short.usage.prompt_tokens


def _bad(server, body: dict) -> httpx.Response:
    body = {"model": "m", "messages": server.ask, "max_tokens": 4, **body}
    return httpx.post(f"{server.v1}/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("case", ["10000_tools", "bad_schema", "remote_ref", "control_name", "newline_name",
                                  "no_tool_call_id", "unknown_choice", "duplicate_names", "huge_enum_length"])
def test_hostile_tools_are_400_and_the_server_lives(server, case):
    fn = WEATHER["function"]
    bodies = {
        "10000_tools": {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]},
        "bad_schema": {"tools": [{"type": "function", "function": {**fn, "parameters": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}], "tool_choice": "required"},
        "remote_ref": {"tools": [{"type": "function", "function": {**fn, "parameters": {
            "$ref": "https://example.com/schema.json"}}}]},
        "control_name": {"tools": [{"type": "function", "function": {**fn, "name": "get\x00weather\x1b[2J"}}]},
        "newline_name": {"tools": [{"type": "function", "function": {**fn, "name": "get_weather\n"}}]},
        "no_tool_call_id": {"messages": [*ASK, {"role": "tool", "content": "sunny"}]},
        "unknown_choice": {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "duplicate_names": {"tools": [WEATHER, WEATHER]},
        "huge_enum_length": {"tools": [{"type": "function", "function": {**fn, "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "maxLength": 20_000_000}}}}}]},
    }
    response = _bad(server, bodies[case])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
