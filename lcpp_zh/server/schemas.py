"""Request bodies of the HTTP API as pydantic models: OpenAI's chat/completions/embeddings, the seed's /generate.

Validation only: ranges and types are checked here so a bad body is a 400 naming the field. Turning a request
into engine sampling settings lives in params.py; unknown OpenAI fields are accepted and ignored.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.grammar import check_grammar_size

logger = logging.getLogger(__name__)

# Every list and string a client sends is bounded, so no request can make the server do unbounded work
# (the body size limit alone still lets 4 MB of tiny items through).
# Stop strings: OpenAI allows 4; llama-server takes any number. Each one is searched at every token.
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 256
# OpenAI's limits for logit_bias: at most 300 tokens, biases in [-100, 100] (-100 bans a token in practice).
MAX_LOGIT_BIAS_TOKENS = 300
# OpenAI's limit on embedding inputs per request.
MAX_EMBEDDING_INPUTS = 2048
MAX_MESSAGES = 1024
MAX_TEXT_CHARS = 1_000_000
MAX_DETOKENIZE_TOKENS = 200_000


class _Lenient(BaseModel):
    """Ignore fields we do not know: OpenAI clients send many (user, metadata, store, ...)."""

    model_config = ConfigDict(extra="ignore")


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingFields(_Lenient):
    """The sampling settings shared by /v1/completions and /v1/chat/completions (None: the engine default)."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)  # an int32 in llama.cpp
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # Any 64-bit seed, as OpenAI takes; llama.cpp's is 32 bits, so it is reduced modulo 2**32.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # Extension (llama-server and llama-cpp-python accept it too): a raw GBNF grammar.
    grammar: str | None = None
    # Extension for the web page: a chat template other than the model's (name from lcpp_zh.templates).
    template: str | None = None

    @field_validator("grammar")
    @classmethod
    def _check_grammar(cls, value: str | None) -> str | None:
        # Only the size here, before anything else is done with the body; the grammar itself is checked
        # and compiled by lcpp_zh.server.params.
        if value is not None:
            try:
                check_grammar_size(value)
            except EngineError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return [s for s in stops if s]

    @field_validator("seed")
    @classmethod
    def _seed_32_bits(cls, value: int | None) -> int | None:
        return None if value is None else value % 2**32

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return None
        if len(value) > MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_TOKENS} tokens may be biased")
        for token, bias in value.items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids, not {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias {bias} of token {token} is outside [-100, 100]")
        return value


# OpenAI's limits for tools: at most 128 functions, names of letters, digits, `_` and `-` up to 64 characters
# (`.` too: MCP tools use it). A name is written into prompts and grammars, so nothing else may be in it.
MAX_TOOLS = 128
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
MAX_TOOL_CALL_ID_CHARS = 128


class FunctionDef(_Lenient):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = Field(default=None, max_length=MAX_STOP_CHARS * 64)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class ToolCallFunction(_Lenient):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str | dict[str, Any] = "{}"  # a JSON text as OpenAI sends it; some clients send the object


class ToolCall(_Lenient):
    id: str | None = Field(default=None, max_length=MAX_TOOL_CALL_ID_CHARS)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    # An assistant turn that called tools, and a tool's result answering one of those calls.
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=MAX_TOOL_CALL_ID_CHARS)
    name: str | None = Field(default=None, max_length=64)

    def text(self) -> str:
        """The message text; content parts of type text are joined (other parts are not supported)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content part of type {part.get('type')!r} is not supported (text only)")
            texts.append(str(part.get("text", "")))
        return "".join(texts)


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    # Tool calling (lcpp_zh.server.tools): functions the model may call, and whether it must.
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[int]:
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("one prompt per request is supported (a list of one string or a token list)")
            return value[0]
        if isinstance(value, list) and not value:
            raise ValueError("prompt is empty")
        return value


class EmbeddingRequest(_Lenient):
    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TokenizeRequest(_Lenient):
    model: str | None = None
    content: str = Field(max_length=MAX_TEXT_CHARS)
    add_special: bool = False


class DetokenizeRequest(_Lenient):
    model: str | None = None
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE_TOKENS)


class SeedTurn(_Lenient):
    role: str
    content: str = ""


class SeedGenerateRequest(_Lenient):
    """The body of the seed's accelerate_client.py; n, best_of, top_k, stop, ... are ignored as the seed did."""

    history: list[SeedTurn] = Field(min_length=1, max_length=MAX_MESSAGES)
    system_prompt: str | None = ""
    max_new_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    model: str | None = None
