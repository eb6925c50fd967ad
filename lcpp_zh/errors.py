"""The typed errors of lcpp-zh.

Every error a user can cause is an `LcppError` whose message says what is wrong and what to do; the CLI
prints it as one line and exits 1. Leaf module: imported by both the conversion pipeline and the runtime.
"""


class LcppError(Exception):
    """An error the user can act on; its message is shown as is."""


class CheckpointError(LcppError):
    """A Hugging Face checkpoint that cannot be read or is not supported."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks to run code or build objects other than tensors."""


class TokenizerError(CheckpointError):
    """A missing or inconsistent tokenizer."""


class ConversionError(LcppError):
    """A conversion or quantization that cannot be carried out."""


class ModelError(LcppError):
    """A model file or name that cannot be loaded or resolved."""


class TemplateError(LcppError):
    """An unknown or broken chat template."""


class EngineError(LcppError):
    """A request the engine cannot serve (context too long, bad sampling settings)."""


class EngineUnavailable(EngineError):
    """The model's runner is restarting or has failed: retry later (a server answers 503)."""


class QueueFull(EngineError):
    """Every slot is busy and the waiting queue is full: retry later (a server answers 503)."""


class AdapterError(CheckpointError):
    """A LoRA adapter that cannot be read or does not fit its base model."""


class RpcError(LcppError):
    """An RPC worker that cannot be used (unreachable, not a worker, another protocol version, busy)."""


class RpcUnavailable(LcppError):
    """llama-cpp-python was built without ggml's RPC backend."""
