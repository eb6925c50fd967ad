"""Hostile grammars and schemas (lcpp_zh.runtime.grammar, the engine's candidate path, server/params.py): limits
checked before llama.cpp's parser sees a grammar, parse errors named, a grammar that allows no token ending
its request with an error event instead of aborting the process, and the same limits shown to be needed by
what llama.cpp does without them (in child processes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading

import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime import grammar as grammar_module
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.grammar import (
    MAX_EXPANDED,
    MAX_GRAMMAR_BYTES,
    MAX_NESTING,
    MAX_REPEAT,
    check_grammar,
    check_grammar_text,
    schema_to_grammar,
)
from lcpp_zh.runtime.llama_api import LlamaModel
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.params import build_sampling, grammar_for
from lcpp_zh.server.schemas import ChatRequest

NUL_GRAMMAR = 'root ::= "\\u0000"'  # only the NUL character, which no token produces: no candidate ever
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"}}, "required": ["name", "age"]}


@pytest.fixture(scope="module")
def vocab(smollm2_gguf):
    model = LlamaModel(smollm2_gguf, vocab_only=True)
    yield model.vocab
    model.close()


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=2048, n_parallel=2, n_threads=2)) as engine:
        yield engine


@pytest.fixture(scope="module")
def tiny(tiny_zh_gguf):
    with Engine(tiny_zh_gguf, EngineSettings(n_ctx=512, n_parallel=2, n_threads=2)) as engine:
        yield engine


# --- GBNF limits, no llama.cpp involved ---
@pytest.mark.parametrize("text,problem", [
    ("root ::= " + "(" * (MAX_NESTING + 1) + '"a"' + ")" * (MAX_NESTING + 1), "nests groups"),
    (f'root ::= "a"{{{MAX_REPEAT + 1}}}', "above the limit"),
    (f'root ::= "a"{{0,{MAX_REPEAT + 1}}}', "above the limit"),  # llama.cpp would read it as unbounded
    ('root ::= "a"{99999999999999999999999}', "above the limit"),
    ('root ::= "' + "x" * 200 + f'"{{{MAX_REPEAT}}}', "copy"),
    ("root ::= [a-zA-Z0-9_]" + "{2000} [a-zA-Z0-9_]" * 10 + "{2000}", "copy"),
    ('root ::= "a"{2000}{2000}', "copy"),  # the second repetition copies all 2000 copies
    ('root ::= "' + "a" * MAX_GRAMMAR_BYTES + '"', "bytes"),
])
def test_grammar_limits(text, problem):
    with pytest.raises(EngineError, match=problem):
        check_grammar_text(text)


@pytest.mark.parametrize("text", [
    'root ::= "((((((((((" [(((] "{99999}" # (((( {99999} in a comment\n',  # brackets in literals/classes
    "root ::= " + "(" * MAX_NESTING + '"a"' + ")" * MAX_NESTING,
    'item ::= "' + "x" * 50 + f'"\nroot ::= item{{{MAX_REPEAT}}} item{{0,{MAX_REPEAT}}}',  # a rule: one element
    'root ::= "' + "x" * (MAX_EXPANDED // MAX_REPEAT) + f'"{{{MAX_REPEAT}}}',
])
def test_grammars_within_the_limits_pass(text, vocab):
    check_grammar_text(text)
    check_grammar(text, vocab)


# --- compiling: parse errors named ---
@pytest.mark.parametrize("text,problem", [
    ("root ::= foo", "Undefined rule identifier 'foo'"),
    ('root ::= ("a"', "expecting ')'"),
    ("root ::= root \"a\"", "left recursion"),
    ('x ::= "a"', "does not contain a 'root' symbol"),
    ("root ::= [a-", "unexpected end of input"),
])
def test_parse_errors_name_the_problem(text, problem, vocab, capfd):
    with pytest.raises(EngineError, match="grammar does not parse: .*" + re.escape(problem)):
        check_grammar(text, vocab)
    # llama.cpp prints the error and the whole grammar on stderr: captured, not left in the server's log.
    assert text not in capfd.readouterr().err


def test_compiling_from_several_threads(vocab):
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(20):
            try:
                check_grammar(f"root ::= undefined{i}", vocab)
            except EngineError as exc:
                errors.append(str(exc))
            check_grammar(f'root ::= "{i}"', vocab)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(errors) == sorted(f"grammar does not parse: Undefined rule identifier 'undefined{i}'"
                                    for i in range(4) for _ in range(20))


# --- what llama.cpp does without the limits, and that the limits are safe (child processes) ---
_CHILD = textwrap.dedent("""
    import sys, threading, llama_cpp
    from lcpp_zh.runtime.llama_api import LlamaModel
    vocab = LlamaModel(sys.argv[1], vocab_only=True).vocab
    text = sys.stdin.read()
    def run():
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
        print("parsed" if sampler else "refused", flush=True)
    threading.stack_size(int(sys.argv[2]))  # 1 MB: smaller than any thread a server runs requests on
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
""")


def _compile_in_child(gguf, text: str, stack: int = 1 << 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, str(gguf), str(stack)], input=text, text=True,
                          capture_output=True, timeout=120)


def test_llama_cpp_parser_overflows_its_stack_on_deep_nesting(smollm2_gguf):
    """Why MAX_NESTING exists: 20,000 nested groups (40 kB of text) kill the process in llama.cpp's parser."""
    depth = 20_000
    result = _compile_in_child(smollm2_gguf, "root ::= " + "(" * depth + '"a"' + ")" * depth, stack=8 << 20)
    assert result.returncode < 0  # SIGSEGV
    with pytest.raises(EngineError):
        check_grammar_text("root ::= " + "(" * depth + '"a"' + ")" * depth)


def test_grammars_at_the_limits_parse_on_a_small_stack(smollm2_gguf):
    """The worst grammars check_grammar_text lets through still parse in a thread with a 1 MB stack: the
    deepest nesting, and the longest chain of rules that fits the size limit."""
    nested = "root ::= " + "(" * MAX_NESTING + '"a"' + ")" * MAX_NESTING
    lines, i = ["root::=a0"], 0
    while sum(map(len, lines)) + len(lines) < MAX_GRAMMAR_BYTES - 100:
        lines.append(f"a{i}::=a{i + 1}")
        i += 1
    chain = "\n".join([*lines, f'a{i}::="x"'])
    repeated = 'root ::= "' + "x" * (MAX_EXPANDED // MAX_REPEAT) + f'"{{{MAX_REPEAT}}}'
    for text in (nested, chain, repeated):
        check_grammar_text(text)
        result = _compile_in_child(smollm2_gguf, text)
        assert result.returncode == 0 and result.stdout.strip() == "parsed", result.stderr[-500:]


def test_huge_repetition_counts_do_not_crash_llama_cpp(smollm2_gguf):
    """llama.cpp itself refuses a lower bound above 2000 and an unparsable count, and reads an upper bound
    above 2000 as unbounded (which check_grammar_text refuses instead); none of them crashes."""
    for text, outcome in (('root ::= "a"{2001}', "refused"), ('root ::= "a"{99999999999999999999999}', "refused"),
                          ('root ::= "a"{0,50000000}', "parsed")):
        result = _compile_in_child(smollm2_gguf, text)
        assert result.returncode == 0, (text, result.stderr[-500:])
        assert result.stdout.strip() == outcome
        with pytest.raises(EngineError):
            check_grammar_text(text)


# --- JSON schemas ---
@pytest.mark.parametrize("schema,problem", [
    ({"type": "string", "maxLength": 20_000_000}, "maxLength 20000000 is above the limit of 1000"),
    ({"type": "string", "minLength": 5000}, "minLength 5000"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 1_000_000}, "maxItems"),
    ({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}}, r"non-negative .*at properties\.a"),
    ({"type": "string", "minLength": 9, "maxLength": 3}, "minLength 9 is above maxLength 3"),
    ({"type": "string", "pattern": "^(a{100}){200}$"}, "pattern repeats"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern repeats"),
    ({"type": "string", "pattern": "^" + "a" * 2000 + "$"}, "pattern is 2002 characters"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(300)}}, "300 properties"),
    ({"anyOf": [{"type": "integer"}] * 3000}, "subschemas"),
    (json.loads("[" * 100 + "]" * 100), "nests more than"),
    ({"$ref": "https://example.com/schema.json"}, "cannot be turned into a grammar"),
])
def test_schema_limits(schema, problem):
    with pytest.raises(EngineError, match=problem):
        schema_to_grammar(schema)


def test_schema_keywords_as_property_names_are_not_limits(vocab):
    schema = {"type": "object", "properties": {"maxLength": {"type": "string", "maxLength": 5},
                                               "pattern": {"type": "integer"}}}
    check_grammar(schema_to_grammar(schema), vocab)


def test_largest_schema_counts_compile(vocab):
    for schema in ({"type": "string", "maxLength": 1000}, {"type": "array", "items": {"type": "integer"},
                                                            "minItems": 1000, "maxItems": 1000}):
        check_grammar(schema_to_grammar(schema), vocab)


# --- the server's parameters: 400s before any engine work ---
def _fields(**body) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "hi"}], **body)


@pytest.mark.parametrize("body,param,problem", [
    ({"grammar": "root ::= foo"}, "grammar", "Undefined rule identifier 'foo'"),
    ({"grammar": "root ::= " + "(" * 2000 + '"a"' + ")" * 2000}, "grammar", "nests groups"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "string", "maxLength": 20_000_000}}}}, "response_format", "maxLength 20000000"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "string", "pattern": "no anchors"}}}}, "response_format", "cannot be turned into a grammar"),
])
def test_bad_grammars_are_400s(body, param, problem, smollm2):
    requests = smollm2.stats().get("requests", 0)
    with pytest.raises(ApiError) as caught:
        build_sampling(_fields(**body), n_prompt=5, n_ctx_slot=1024, engine=smollm2)
    assert caught.value.status == 400 and caught.value.param == param
    assert problem in caught.value.message
    assert smollm2.stats().get("requests", 0) == requests  # nothing reached the engine


def test_good_grammars_pass_grammar_for(smollm2):
    assert grammar_for(_fields(grammar='root ::= "ok"'), smollm2) == 'root ::= "ok"'
    assert re.search(r"^root +::=", grammar_for(_fields(response_format={"type": "json_object"}), smollm2), re.M)
    schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    assert "root ::=" in grammar_for(_fields(response_format=schema), smollm2)
    assert grammar_for(_fields(), smollm2) is None


def test_limits_apply_without_an_engine_too():
    """A caller that passes no engine still gets the limits (the trial compile then happens in the engine)."""
    with pytest.raises(ApiError, match="nests groups"):
        grammar_for(_fields(grammar="root ::= " + "(" * 2000 + '"a"' + ")" * 2000))


# --- the engine: no candidate ends the request with an error, the rest go on ---
def test_a_grammar_with_no_candidate_ends_its_request_only(smollm2):
    prompt = smollm2.tokenize("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n", add_bos=False)
    normal = smollm2.submit(prompt, SamplingParams(temperature=0.0, max_tokens=30))
    doomed = smollm2.submit(prompt, SamplingParams(temperature=0.0, max_tokens=30, grammar=NUL_GRAMMAR))
    doomed_random = smollm2.submit(prompt, SamplingParams(seed=3, max_tokens=30, grammar=NUL_GRAMMAR))
    for stream in (doomed, doomed_random):
        text, finished = stream.text()
        assert finished.reason == "error" and text == ""
        assert finished.error.startswith("the grammar allows no token here")
    text, finished = normal.text()
    assert finished.reason in ("stop", "length") and text
    # The engine thread lives on.
    assert smollm2.generate(prompt, SamplingParams(temperature=0.0, max_tokens=5))[1].reason in ("stop", "length")


def test_a_grammar_that_dead_ends_midway_ends_with_an_error(tiny):
    """Candidates run out after some accepted tokens: `a` then NUL."""
    prompt = tiny.tokenize("你好", add_bos=True)
    text, finished = tiny.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20,
                                                          grammar='root ::= "a" "\\u0000"'))
    assert finished.reason == "error" and "grammar allows no token" in finished.error
    assert finished.completion_tokens == 1


def test_grammar_with_byte_tokens_goes_through_the_candidate_path(tiny):
    """Characters missing from the tiny vocabulary are byte tokens; grammar, UTF-8 mask and candidates agree."""
    rare = "龘靐齉爩"
    prompt = tiny.tokenize("你好", add_bos=True)
    for seed in range(3):
        text, finished = tiny.generate(prompt, SamplingParams(temperature=1.5, seed=seed, max_tokens=60,
                                                              grammar=f'root ::= "{rare}北京"'))
        assert finished.reason == "stop" and text == rare + "北京"


def test_json_schema_grammar_gives_valid_json(smollm2):
    grammar = schema_to_grammar(PERSON)
    smollm2.check_grammar(grammar)
    prompt = smollm2.tokenize("<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n",
                              add_bos=False)
    for seed in (1, 2):
        text, finished = smollm2.generate(prompt, SamplingParams(seed=seed, max_tokens=200, grammar=grammar))
        assert finished.reason == "stop", text
        person = json.loads(text)
        assert set(person) == {"name", "age"} and isinstance(person["age"], int) and len(person["name"]) <= 20


def test_engine_check_grammar(smollm2):
    smollm2.check_grammar('root ::= "yes" | "no"')
    with pytest.raises(EngineError, match="Undefined rule identifier"):
        smollm2.check_grammar("root ::= maybe")


def test_build_chain_refuses_what_check_grammar_refuses(tiny):
    """Callers that skip the check (the Python API, the REPL) get the same refusal as an error event."""
    prompt = tiny.tokenize("你好", add_bos=True)
    deep = "root ::= " + "(" * 30_000 + '"a"' + ")" * 30_000
    _, finished = tiny.generate(prompt, SamplingParams(max_tokens=5, grammar=deep))
    assert finished.reason == "error" and "nests groups" in finished.error


def test_module_limits_are_consistent():
    assert grammar_module.MAX_SCHEMA_COUNT <= MAX_NESTING  # maxItems N nests N groups
