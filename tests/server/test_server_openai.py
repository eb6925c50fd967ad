"""The OpenAI-compatible API of a real `lcpp-zh serve` (SmolLM2-135M GGUF) through the official openai client.

Greedy output is checked against llama-cpp-python's own Llama on the same GGUF and tokens; streaming against
non-streaming; JSON modes by parsing what comes back. One server (two aliases) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", f"smol2={smollm2_gguf}", "--parallel", "4", "--ctx", "4096",
                        "--threads", "2"], tmp_path_factory.mktemp("serve-openai"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    """llama-cpp-python's high-level Llama on the same file: the independent reference."""
    from llama_cpp import Llama

    llm = Llama(str(smollm2_gguf), n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    yield llm
    llm.close()


def greedy(**extra):
    return {"temperature": 0.0, "extra_body": {"repeat_penalty": 1.0, **extra.pop("extra_body", {})}, **extra}


def test_models_lists_every_alias(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["smol", "smol2"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in info.value.message


def test_tokenize_matches_llama_cpp(server, reference):
    text = "Hello 世界, 北京欢迎你!"
    got = httpx.post(f"{server.url}/tokenize", json={"content": text}).json()["tokens"]
    assert got == reference.tokenize(text.encode(), add_bos=False, special=True)
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": got}).json()["content"]
    assert back == text


def test_greedy_completion_follows_llama_cpp_python(client, server, reference):
    """Every token the server picks greedily is the reference's best, within the float noise of different batch shapes."""
    tokens = httpx.post(f"{server.url}/tokenize", json={"content": PROMPT}).json()["tokens"]
    got = client.completions.create(model="smol", prompt=PROMPT, max_tokens=24, **greedy())
    assert got.usage.prompt_tokens == len(tokens)
    assert got.usage.completion_tokens == 24 and got.choices[0].finish_reason == "length"
    out = reference.tokenize(got.choices[0].text.encode(), add_bos=False, special=False)
    reference.reset()
    reference.eval(tokens + out)
    scores = np.asarray(reference.scores[: len(tokens) + len(out)])
    for i, token in enumerate(out):
        row = scores[len(tokens) - 1 + i]
        assert row[token] >= row.max() - 0.5, (i, reference.detokenize([token]), row.max() - row[token])
    # Where the reference's choice is clear, whole texts agree too.
    clear = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=16, **greedy())
    want = reference.create_completion(reference.tokenize(b"The capital of France is", add_bos=False), max_tokens=16,
                                       temperature=0.0, repeat_penalty=1.0)
    assert clear.choices[0].text == want["choices"][0]["text"]


def test_logit_bias_bans_a_token_as_llama_cpp_python_does(client, reference):
    prompt = "The capital of France is"
    plain = client.completions.create(model="smol", prompt=prompt, max_tokens=12, **greedy())
    first = reference.tokenize(plain.choices[0].text.encode(), add_bos=False, special=False)[0]
    banned = client.completions.create(model="smol", prompt=prompt, max_tokens=12, logit_bias={str(first): -100},
                                       **greedy())
    out = reference.tokenize(banned.choices[0].text.encode(), add_bos=False, special=False)
    assert first not in out
    want = reference.create_completion(reference.tokenize(prompt.encode(), add_bos=False), max_tokens=12,
                                       temperature=0.0, repeat_penalty=1.0, logit_bias={first: -100.0})
    assert banned.choices[0].text == want["choices"][0]["text"]


@pytest.mark.parametrize("bias", [{"99999999": -100}, {"hello": 1}, {"5": 1000}])
def test_bad_logit_bias_is_refused(client, bias):
    with pytest.raises((openai.BadRequestError, openai.UnprocessableEntityError)) as info:
        client.completions.create(model="smol", prompt=PROMPT, max_tokens=4, logit_bias=bias)
    assert "logit_bias" in str(info.value.body)


@pytest.fixture(scope="module")
def coalescing_server(smollm2_gguf, tmp_path_factory):
    srv = start_server([str(smollm2_gguf), "--parallel", "1", "--ctx", "1024", "--threads", "2",
                        "--stream-interval", "1000", "--no-embeddings"], tmp_path_factory.mktemp("serve-interval"))
    yield srv
    srv.stop()


def test_stream_interval_gathers_tokens_into_fewer_chunks(coalescing_server):
    """With --stream-interval 1000 the first token goes out alone at once and what follows within the next
    second shares a chunk; the end is not held back until the second is over."""
    client = openai.OpenAI(base_url=coalescing_server.v1, api_key="x", max_retries=0, timeout=120)
    whole = client.completions.create(model="", prompt=PROMPT, max_tokens=20, **greedy())
    deltas, usage = [], None
    for chunk in client.completions.create(model="", prompt=PROMPT, max_tokens=20, stream=True,
                                           stream_options={"include_usage": True}, **greedy()):
        usage = chunk.usage or usage
        deltas.extend(c.text for c in chunk.choices if c.text)
    assert "".join(deltas) == whole.choices[0].text
    assert usage is not None and usage.completion_tokens == 20
    assert len(deltas) < 20  # one chunk per token would be 20
    first = client.completions.create(model="", prompt=PROMPT, max_tokens=1, **greedy()).choices[0].text
    assert deltas[0] == first


def test_second_alias_serves_the_same_model(client):
    one = client.completions.create(model="smol", prompt=PROMPT, max_tokens=12, **greedy())
    two = client.completions.create(model="smol2", prompt=PROMPT, max_tokens=12, **greedy())
    assert two.model == "smol2" and one.model == "smol"
    assert one.choices[0].text == two.choices[0].text


def test_chat_stream_equals_non_stream_and_reports_usage(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    # A first run fills a slot's prefix cache, so the two compared runs below evaluate the prompt alike.
    client.chat.completions.create(model="smol", messages=messages, max_tokens=2, **greedy())
    whole = client.chat.completions.create(model="smol", messages=messages, max_tokens=40, **greedy())
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="smol", messages=messages, max_tokens=40, stream=True,
                                                stream_options={"include_usage": True}, **greedy()):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completion_stream(client):
    client.completions.create(model="smol", prompt=PROMPT, max_tokens=2, **greedy())
    whole = client.completions.create(model="smol", prompt=PROMPT, max_tokens=20, **greedy())
    streamed = client.completions.create(model="smol", prompt=PROMPT, max_tokens=20, stream=True, **greedy())
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_async_client_streams_and_not(server):
    """Three plain and three streaming requests at once through AsyncOpenAI; each comes back whole.

    Greedy texts are not compared across concurrent runs: the batch a request shares changes float rounding.
    """

    async def plain(aclient, i: int) -> tuple[str, str, int]:
        r = await aclient.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=24, **greedy())
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens

    async def streamed(aclient, i: int) -> tuple[str, str, int]:
        stream = await aclient.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": f"Name {i + 2} animals."}], max_tokens=24,
            stream=True, stream_options={"include_usage": True}, **greedy())
        text, finish, used = [], None, 0
        async for chunk in stream:
            used = chunk.usage.completion_tokens if chunk.usage else used
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        return "".join(text), finish, used

    async def run() -> list[tuple[str, str, int]]:
        async with openai.AsyncOpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=120) as aclient:
            return await asyncio.gather(*(plain(aclient, i) for i in range(3)),
                                        *(streamed(aclient, i) for i in range(3)))

    for text, finish, used in asyncio.run(run()):
        assert text and finish in ("stop", "length") and 0 < used <= 24
        assert finish == "stop" or used == 24


def test_stop_string_ends_the_text_before_it(client):
    free = client.completions.create(model="smol", prompt=PROMPT, max_tokens=24, **greedy()).choices[0].text
    words = free.split()
    assert len(words) >= 4, free
    stop = " " + words[2]
    cut = client.completions.create(model="smol", prompt=PROMPT, max_tokens=24, stop=[stop], **greedy())
    assert cut.choices[0].text == free[: free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client):
    kwargs = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "top_p": 0.95,
              "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": 0.3,
              "extra_body": {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}}
    first = client.completions.create(**kwargs).choices[0].text
    again = client.completions.create(**kwargs).choices[0].text
    assert first == again
    others = {client.completions.create(**{**kwargs, "seed": s}).choices[0].text for s in (1, 2, 3)}
    assert len(others | {first}) > 1


def test_json_object_mode_gives_json(client):
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Give a JSON object with the keys name and age for a person named Tom, aged 30."}],
        max_tokens=200, response_format={"type": "json_object"}, **greedy())
    assert r.choices[0].finish_reason == "stop"  # the grammar let it end only after a complete object
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_mode_follows_the_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Invent a person, give name and age."}], max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}, **greedy())
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and len(data["name"]) <= 12
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 120


def test_prompt_longer_than_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smol", prompt="hello " * 5000, max_tokens=8)  # > --ctx 4096
    assert "too long" in info.value.message


def test_embeddings_are_mean_pooled_vectors(client):
    r = client.embeddings.create(model="smol", input=["北京是中国的首都。", "The cat sat on the mat.", "北京是中国的首都。"])
    vectors = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) == 576  # SmolLM2-135M's n_embd
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert r.usage.prompt_tokens > 0


def test_embeddings_match_llama_cpp_python_mean_pooling(client, smollm2_gguf):
    import llama_cpp

    text = "北京是中国的首都。"
    got = np.asarray(client.embeddings.create(model="smol", input=text, encoding_format="float").data[0].embedding)
    ref_model = llama_cpp.Llama(str(smollm2_gguf), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                n_ctx=512, n_threads=2, verbose=False)
    try:
        want = np.asarray(ref_model.embed(text, normalize=False))
    finally:
        ref_model.close()
    cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.999
    assert np.linalg.norm(got) == pytest.approx(np.linalg.norm(want), rel=0.02)
