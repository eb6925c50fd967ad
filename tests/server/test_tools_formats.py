"""Tool-call formats without a model (lcpp_zh.server.tools): detection from templates, parsing replies in each
format, the streamed parser against the whole-reply parser, messages for templates with and without tools,
and grammars that the converter's rules and llama.cpp's GBNF checks accept."""

from __future__ import annotations

import json

import pytest

from lcpp_zh.server import tools
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.schemas import ChatRequest
from lcpp_zh.server.tools.formats import GENERIC, HERMES, LLAMA3, MISTRAL, detect_format, parse_reply
from lcpp_zh.server.tools.streaming import ToolCallStream
from lcpp_zh.templates import ChatTemplate

NAMES = frozenset({"get_weather", "get_time"})
# The tool part of Qwen 2.5's template (Hermes format), shortened.
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}{%- for message in messages %}{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{% for tool_call in message.tool_calls %}<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_formats_are_detected_from_the_template():
    assert detect_format(HERMES_TEMPLATE) is HERMES
    assert detect_format("{% for m in messages %}{{ m.content }}{% endfor %}") is GENERIC
    assert detect_format("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]") is MISTRAL
    assert detect_format("{% if tools %}<|start_header_id|>ipython{% endif %}") is LLAMA3


@pytest.mark.parametrize("fmt, text, content, calls", [
    (GENERIC, 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "北京"}}</tool_call>',
     "Let me check.", [("get_weather", {"city": "北京"})]),
    (GENERIC, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>\n'
              '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>',
     None, [("get_weather", {}), ("get_time", {"zone": "UTC"})]),
    (GENERIC, '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', None, []),  # not a tool of the request
    (GENERIC, '<tool_call>{"name": "get_weather", "argu', None, []),  # cut off
    (HERMES, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CST"}}\n', None, [("get_time", {"zone": "CST"})]),
    (LLAMA3, '{"name": "get_time", "parameters": {"zone": "UTC"}}', None, [("get_time", {"zone": "UTC"})]),
    (LLAMA3, '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {}}',
     None, [("get_time", {}), ("get_weather", {})]),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', None,
     [("get_weather", {"city": "Paris"})]),
    (MISTRAL, "It is sunny.", "It is sunny.", []),
])
def test_replies_parse_in_each_format(fmt, text, content, calls):
    got_content, got = parse_reply(fmt, text, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    if calls:
        assert got_content == content
    else:
        assert got_content == text


@pytest.mark.parametrize("fmt, text", [
    (GENERIC, 'Sure.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
              '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'),
    (GENERIC, "No tools needed: 2 < 3 and <tool_ is not a call."),
    (HERMES, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CST"}}\n</tool_call>'),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    (LLAMA3, '{"name": "get_time", "parameters": {"zone": "UTC"}}'),
    (LLAMA3, "Plain text, no call."),
])
@pytest.mark.parametrize("size", [1, 3, 7])
def test_streamed_parse_equals_the_whole_reply_parse(fmt, text, size):
    parser = ToolCallStream(fmt, NAMES)
    events = []
    for i in range(0, len(text), size):
        events += parser.feed(text[i:i + size])
    events += parser.finish()
    content = "".join(v for k, v in events if k == "content") or None
    calls = [(v.name, v.arguments) for k, v in events if k == "call"]
    whole_content, whole = parse_reply(fmt, text, NAMES)
    assert calls == [(c.name, c.arguments) for c in whole]
    assert content == whole_content


def _request(**fields) -> ChatRequest:
    base = {"messages": [{"role": "user", "content": "天气？"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}]}
    return ChatRequest(**{**base, **fields})


HISTORY = [{"role": "user", "content": "天气？"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "晴"},
           {"role": "tool", "tool_call_id": "call_1", "content": "25°C"}]


def test_generic_messages_carry_calls_and_results_as_text():
    body = _request(messages=HISTORY)
    messages = tools.chat_messages(body.messages, tools.plan_tools(body, ""))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "get_weather" in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "北京"}}</tool_call>'
    results = messages[3]["content"].splitlines()
    assert [json.loads(r.removeprefix("<tool_response>").removesuffix("</tool_response>")) for r in results] == \
        [{"name": "get_weather", "content": "晴"}, {"name": "get_weather", "content": "25°C"}]


def test_a_template_with_tools_renders_them_itself():
    body = _request(messages=HISTORY)
    plan = tools.plan_tools(body, HERMES_TEMPLATE)
    assert plan.format is HERMES and plan.triggers == ["<tool_call>"]
    messages = tools.chat_messages(body.messages, plan)
    text = ChatTemplate("qwen", HERMES_TEMPLATE).render_text(messages, add_generation_prompt=True, bos_token="",
                                                             eos_token="", tools=plan.jinja_tools())
    assert '"name": "get_weather"' in text.split("</tools>")[0]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>' in text
    assert "<tool_response>\n晴\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")


def test_choices_shape_the_grammar():
    required = tools.plan_tools(_request(tool_choice="required"), "")
    assert required.grammar.endswith('("\\n" "<tool_call>" space call "</tool_call>")*') and not required.triggers
    single = tools.plan_tools(_request(tool_choice="required", parallel_tool_calls=False), "")
    assert single.grammar.endswith('root ::= "<tool_call>" space call "</tool_call>"')
    auto = tools.plan_tools(_request(), "")
    assert auto.triggers == ["<tool_call>"] and "root ::= space call" in auto.grammar
    assert tools.plan_tools(_request(tool_choice="none"), "").grammar is None


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tools"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice"),
])
def test_conflicting_requests_are_400(fields, param):
    with pytest.raises(ApiError) as info:
        tools.plan_tools(_request(**fields), "")
    assert info.value.param == param
