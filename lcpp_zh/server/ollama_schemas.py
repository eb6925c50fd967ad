"""Request bodies of Ollama's native API (/api/chat, /api/generate, /api/embed, /api/show ...) as pydantic models.

Types and bounds only, as Ollama documents the fields; what each field does here (mapped to our sampling,
refused with a reason, or accepted and ignored) is decided in ollama_api.py. Unknown fields are ignored,
as Ollama itself does with options it does not know.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lcpp_zh.server.schemas import MAX_EMBEDDING_INPUTS, MAX_MESSAGES, MAX_TEXT_CHARS

logger = logging.getLogger(__name__)

# Ollama's keep_alive: a Go duration ("5m", "1h30m"), a number of seconds, or a negative number (forever).
KeepAlive = str | float | None
MAX_TOOLS = 128
MAX_IMAGES = 16
MAX_NAME_CHARS = 256
MAX_CONTEXT_TOKENS = 1_000_000
INT32_MAX = 2**31 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OllamaOptions(_Lenient):
    """Ollama's `options` (its Modelfile parameters). Ranges are checked where they map to our sampling
    (lcpp_zh.server.schemas.SamplingFields), so a bad value is a 400 naming `options.<field>`."""

    num_predict: int | None = Field(default=None, ge=-2, le=INT32_MAX)  # -1: no limit, -2: fill the context
    num_ctx: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = None
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    top_p: float | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = Field(default=None, ge=-1, le=INT32_MAX)  # -1: the whole context, 0: off
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    # Accepted and ignored (load-time settings of Ollama's runner, or samplers llama.cpp dropped): listed
    # so clients that send them (Open WebUI sends many) are not refused.
    num_keep: int | None = None
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    penalize_newline: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    low_vram: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    numa: bool | None = None


class OllamaFunctionCall(_Lenient):
    name: str = Field(max_length=MAX_NAME_CHARS)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(_Lenient):
    function: OllamaFunctionCall


class OllamaMessage(_Lenient):
    role: str = Field(max_length=32)
    content: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    images: list[str] | None = Field(default=None, max_length=MAX_IMAGES)
    tool_calls: list[OllamaToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    thinking: str | None = None


class GenerationFields(_Lenient):
    """Fields /api/chat and /api/generate share."""

    model: str = Field(default="", max_length=MAX_NAME_CHARS)
    stream: bool = True  # Ollama streams unless told not to
    format: str | dict[str, Any] | None = None  # "json", or a JSON schema
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None
    think: bool | str | None = None


class OllamaChatRequest(GenerationFields):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=MAX_MESSAGES)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)


class OllamaGenerateRequest(GenerationFields):
    prompt: str = Field(default="", max_length=MAX_TEXT_CHARS)
    system: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    raw: bool = False
    template: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    suffix: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    context: list[int] | None = Field(default=None, max_length=MAX_CONTEXT_TOKENS)
    images: list[str] | None = Field(default=None, max_length=MAX_IMAGES)


class OllamaEmbedRequest(_Lenient):
    model: str = Field(default="", max_length=MAX_NAME_CHARS)
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None


    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
        if any(len(text) > MAX_TEXT_CHARS for text in ([value] if isinstance(value, str) else value)):
            raise ValueError(f"an input may have at most {MAX_TEXT_CHARS} characters")
        return value


class OllamaEmbeddingsRequest(_Lenient):
    """The older /api/embeddings: one prompt, one vector."""

    model: str = Field(default="", max_length=MAX_NAME_CHARS)
    prompt: str = Field(default="", max_length=MAX_TEXT_CHARS)
    options: OllamaOptions | None = None
    keep_alive: KeepAlive = None


class OllamaShowRequest(_Lenient):
    model: str = Field(default="", max_length=MAX_NAME_CHARS)
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)  # the older spelling
    verbose: bool = False
