"""The settings of one loaded model, in one place: what the CLI's options fill, what chat, generate and serve
pass to the loader, what travels to a runner process, and what the Engine reads.

Each default lives here once; the CLI's options take their defaults from these classes
(`default=EngineSettings.n_ctx`), the server reports them, nothing else repeats them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# llama.cpp's KV cache types (llama-server's --cache-type-k/-v choices).
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN_MODES = ("auto", "on", "off")
# Speculative decoding from the answer's own text (lcpp_zh.runtime.speculative): auto drafts while it pays.
SPEC_NGRAM_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ModelChoice:
    """Which model to load and how a checkpoint becomes a GGUF: the resolver's inputs."""

    name: str                        # a .gguf, a Hugging Face folder, a hub repo id, modelscope:owner/name
    quant: str | None = None         # quantization of a converted checkpoint (None: the resolver's default)
    infer_dtype: str | None = None   # the seed's --infer_dtype (int4, int8, float16): wins over quant
    template: str | None = None      # a built-in template name for the chat format and conversion; None: auto


@dataclass(frozen=True)
class EngineSettings:
    """How one model runs: context, slots, threads, placement on devices, adapters. Frozen: derive a changed
    copy with `settings.replace(n_ctx=8192)`."""

    n_ctx: int = 4096                # the context of the model, shared by its slots
    n_parallel: int = 1              # sequence slots (concurrent generations)
    n_threads: int | None = None     # None: physical cores
    n_batch: int = 512               # tokens per decode step (prompt chunk size)
    max_queue: int = 64              # requests waiting beyond the slots before QueueFull
    embeddings: bool = False         # a second, small context for embeddings, made on first use
    gpu_layers: str = "auto"         # auto | all | N
    gpus: str | None = None          # device indexes or names (`lcpp-zh devices`)
    main_gpu: int | None = None
    rpc: str | None = None           # HOST:PORT[,HOST:PORT] of llama.cpp RPC workers
    tensor_split: str | None = None  # proportions per device, llama-server's format
    loras: tuple[tuple[str, float], ...] = field(default_factory=tuple)  # (adapter path, scale)
    verbose: bool = False            # llama.cpp's own log on stderr
    cache_type_k: str = "f16"        # KV cache cell types (KV_CACHE_TYPES); q8_0 halves the KV's memory
    cache_type_v: str = "f16"        # a quantized V cache needs flash attention (auto or on)
    flash_attn: str = "auto"         # FLASH_ATTN_MODES; auto: llama.cpp enables it where the device has it
    # Idle conversations' KV kept in host RAM and restored when they come back (llama-server's --cache-ram,
    # same default); 0 turns it off. The engine caps it at a quarter of the memory available at load.
    cache_ram_mb: int = 8192
    # Speculative decoding (lcpp_zh.runtime.speculative): guesses of the next tokens, verified in one batch with
    # the request's own sampler, so the output is the same as without. N-gram drafts come from the prompt and
    # the answer so far (copy-heavy tasks); a draft model (same vocabulary) guesses anything, at its own cost.
    # SPEC_NGRAM_MODES. Off by default until its speed-up is measured on a quiet machine (issue 17) and the
    # UTF-8 mask holds with drafts accepted (tests/runtime/test_utf8_mask.py failed with auto); auto stops
    # drafting in answers where guesses fail.
    spec_ngram: str = "off"
    draft_model: str | None = None   # a small GGUF with the model's vocabulary (llama-server's --model-draft)
    draft_max: int = 16              # most tokens guessed per step (llama-server's --draft-max)
    draft_min: int = 1               # fewer guesses than this are not worth verifying (--draft-min)

    def replace(self, **changes: Any) -> EngineSettings:
        return replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-safe dict (the runner protocol sends it to the runner process)."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EngineSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["loras"] = tuple((str(path), float(scale)) for path, scale in values.get("loras", ()))
        return cls(**values)
