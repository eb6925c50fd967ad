"""Thin, typed wrappers over llama-cpp-python's low-level API: model, context, batch.

The only module besides the sampler builder that calls llama_cpp directly. It knows nothing of slots,
requests or templates; lcpp_zh.runtime.engine drives it. Failures become ModelError/EngineError with a message
the user can act on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from lcpp_zh.common.llama_log import route_llama_logs
from lcpp_zh.errors import EngineError, ModelError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# ggml type ids of llama.cpp's KV cache types (lcpp_zh.runtime.settings.KV_CACHE_TYPES, llama-server's
# --cache-type-k/-v choices); bf16 is 30 in ggml.h but not exported by llama-cpp-python.
KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16, "bf16": 30,
            "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0, "q4_1": llama_cpp.GGML_TYPE_Q4_1,
            "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL, "q5_0": llama_cpp.GGML_TYPE_Q5_0, "q5_1": llama_cpp.GGML_TYPE_Q5_1}
FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}
_backend_ready = False


def init_backend() -> None:
    """Once per process: llama.cpp's backend, with its log routed into Python logging."""
    global _backend_ready
    if not _backend_ready:
        route_llama_logs()
        llama_cpp.llama_backend_init()
        _backend_ready = True


def check_gguf_file(path: Path) -> None:
    """A one-line error for a missing or non-GGUF file, before llama.cpp prints pages about it."""
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path}: not a GGUF file (bad magic); convert it with `lcpp-zh convert`")


@dataclass(frozen=True)
class SpecialToken:
    """A token llama.cpp matches as a whole in text before tokenizing: `control` ones (CONTROL or UNKNOWN
    attribute: `<s>`, `<|im_end|>`, `<unk>`) only when asked to parse specials, user-defined ones always.
    `lstrip`/`rstrip`: llama.cpp drops the whitespace on that side of a match."""

    id: int
    text: str
    control: bool
    lstrip: bool = False
    rstrip: bool = False


class LlamaModel:
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: str | os.PathLike, *, gpu_layers: int = 0, main_gpu: int = 0,
                 tensor_split: Sequence[float] | None = None, vocab_only: bool = False,
                 devices: Sequence[int] | None = None, rpc: str | None = None) -> None:
        """`devices`: ggml_backend_dev_t handles to offload to, in layer order (lcpp_zh.runtime.devices);
        None lets llama.cpp pick (RPC workers, then GPUs). `tensor_split` is over those devices. `rpc`:
        workers (HOST:PORT,...) to probe and register in this process first (the eval commands)."""
        init_backend()
        if rpc:
            from lcpp_zh.runtime.rpc import parse_endpoints, register_workers

            register_workers(parse_endpoints(rpc))
        self.path = Path(path)
        check_gguf_file(self.path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        params.main_gpu = main_gpu
        params.vocab_only = vocab_only
        if tensor_split:
            n_max = llama_cpp.llama_max_devices()
            self._split = (ctypes.c_float * n_max)(*[float(x) for x in list(tensor_split)[:n_max]])
            params.tensor_split = self._split
        if devices:
            from lcpp_zh.runtime.ggml_api import device_array

            # llama-cpp-python declares the field as a plain pointer; the array lives as long as the model.
            self._devices = device_array(list(devices))
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if not self.model:
            raise ModelError(f"{self.path}: llama.cpp could not load this GGUF (corrupt, truncated or an "
                             "unsupported architecture; run with -vv for llama.cpp's log)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.eot_id = llama_cpp.llama_vocab_eot(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.n_layer = llama_cpp.llama_model_n_layer(self.model)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        # One piece buffer per thread: the engine thread detokenizes while request threads tokenize and
        # detokenize, and a shared buffer could be overwritten between the call and the read.
        self._local = threading.local()
        self._special: list[SpecialToken] | None = None  # read on first use (special_tokens)

    def metadata(self) -> dict[str, str]:
        """All GGUF key/value pairs as strings (arrays are left out by llama.cpp)."""
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama_cpp.llama_model_meta_count(self.model)):
            n = llama_cpp.llama_model_meta_key_by_index(self.model, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            n = llama_cpp.llama_model_meta_val_str_by_index(self.model, i, buf, len(buf))
            if n >= len(buf):  # a long chat template: read it again with room for all of it
                big = ctypes.create_string_buffer(n + 1)
                llama_cpp.llama_model_meta_val_str_by_index(self.model, i, big, len(big))
                out[key] = big.value.decode("utf-8", errors="replace")
            elif n >= 0:
                out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """Token ids of `text`; with special=True, `<s>`-like control token texts become their ids."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # never for byte-level or SentencePiece vocabularies, but llama.cpp's contract allows it
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, special)
        tokens = list(buf[:n])
        if add_bos and self.bos_id >= 0 and (not tokens or tokens[0] != self.bos_id):
            tokens.insert(0, self.bos_id)
        return tokens

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; the buffer grows for long pieces instead of truncating them."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = self._local.buf = ctypes.create_string_buffer(-n + 16)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def special_tokens(self) -> list[SpecialToken]:
        """The tokens of llama.cpp's special-token cache (llama-vocab.cpp: CONTROL, USER_DEFINED or UNKNOWN
        attribute), in the order its tokenizer_st_partition tries them: longest text (in bytes) first; ties,
        which llama.cpp's unstable sort leaves in no set order, by id. Read once (a pass over the vocab)."""
        if self._special is None:
            wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED | \
                llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
            control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
            found = []
            for token in range(self.n_vocab):
                attr = llama_cpp.llama_vocab_get_attr(self.vocab, token)
                if not attr & wanted:
                    continue
                raw = llama_cpp.llama_vocab_get_text(self.vocab, token) or b""
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:  # added tokens are strings: none in practice; skipping one
                    # would only leave it as text in templates too, never parse it in contents
                    continue
                if text:  # llama.cpp would loop forever on an empty one; no real vocabulary has it
                    found.append(SpecialToken(token, text, bool(attr & control),
                                              bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                                              bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)))
            found.sort(key=lambda t: (-len(t.text.encode("utf-8")), t.id))
            self._special = found
        return list(self._special)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None


class Batch:
    """A llama_batch with room for `capacity` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append a token; returns its index (the index its logits are read from)."""
        i = self.n
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        self.n += 1
        return i

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None


def _kv_type(name: str | None, default: int) -> int:
    if name is None:
        return default
    if name not in KV_TYPES:
        raise EngineError(f"KV cache type {name!r}: expected one of {', '.join(KV_TYPES)}")
    return KV_TYPES[name]


class LlamaContext:
    """A llama context with `n_seq` sequences sharing one unified KV cache of `n_ctx` cells."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_batch: int, n_seq: int, n_threads: int,
                 embeddings: bool = False, kv_type: str | None = None, cache_type_k: str | None = None,
                 cache_type_v: str | None = None, flash_attn: str = "auto", n_ubatch: int | None = None,
                 kv_unified: bool = True, cb_eval: object | None = None, cb_eval_user_data: int | None = None) -> None:
        """`kv_type`: one type (KV_TYPES) for both K and V cells; `cache_type_k`/`cache_type_v` set each
        (None: llama.cpp's f16). `flash_attn`: auto | on | off; a quantized V cache needs it on or auto.
        `n_ubatch`: tokens per compute step (None: n_batch); how llama.cpp cuts a batch changes a model's
        logits slightly, so the eval commands set llama-perplexity's -ub. `kv_unified` False: one KV stream per
        sequence, as llama-perplexity and llama-imatrix. `cb_eval`: a ggml_backend_sched_eval_callback (the
        importance matrix), kept alive with the context."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch) if n_ubatch else n_batch
        params.n_seq_max = n_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.embeddings = embeddings
        # By default one KV cache shared by all sequences (llama-server's --kv-unified): any one request may use the
        # whole context while the slots share it (the scheduler does the admission), and llama_memory_seq_cp
        # shares cells instead of copying them, so a common system prompt is held once.
        params.kv_unified = kv_unified
        params.type_k = _kv_type(cache_type_k or kv_type, params.type_k)
        params.type_v = _kv_type(cache_type_v or kv_type, params.type_v)
        if flash_attn not in FLASH_ATTN:
            raise EngineError(f"flash attention {flash_attn!r}: expected one of {', '.join(FLASH_ATTN)}")
        if flash_attn == "off" and params.type_v not in (llama_cpp.GGML_TYPE_F16, llama_cpp.GGML_TYPE_F32, 30):
            # llama.cpp refuses this context with only a log line; say why here.
            raise EngineError("a quantized V cache needs flash attention: use --flash-attn auto or on, "
                              "or --cache-type-v f16")
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        if embeddings:
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        if cb_eval is not None:
            params.cb_eval = cb_eval
            params.cb_eval_user_data = cb_eval_user_data
        self.model = model
        self._cb_eval = cb_eval  # ctypes callbacks are freed with their Python object: keep it while C may call
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens (out of memory? "
                              "try a smaller --ctx or fewer --gpu-layers)")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        # llama.cpp may lower the batch it accepts (to the requested context when that is smaller, while it
        # rounds the context itself up): a batch above this aborts in llama_decode, so callers use this one.
        # With n_ubatch apart from n_batch (the eval contexts), llama.cpp cuts each batch into micro-batches itself.
        accepted = llama_cpp.llama_n_batch(self.ctx)
        self.n_batch = accepted if n_ubatch else min(accepted, llama_cpp.llama_n_ubatch(self.ctx) or n_batch)
        self.memory = llama_cpp.llama_get_memory(self.ctx)

    def decode(self, batch: Batch) -> int:
        batch.batch.n_tokens = batch.n
        return llama_cpp.llama_decode(self.ctx, batch.batch)

    def seq_rm(self, seq_id: int, p0: int, p1: int = -1) -> bool:
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Give `dst` the cells of `src` in [p0, p1): shared, not copied, in the unified cache."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def state_save(self, seq_id: int) -> bytes:
        """The KV cells of one sequence as bytes (llama-server's prompt cache in RAM keeps these)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, seq_id)
        return bytes(buf)[:n]

    def state_load(self, seq_id: int, data: bytes) -> bool:
        """Put saved cells back into an empty sequence; False when llama.cpp found no room for them."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(data), seq_id) > 0

    def seq_pos_max(self, seq_id: int) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)

    def embeddings_seq(self, seq_id: int) -> list[float]:
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
        if not ptr:
            raise EngineError("this model gives no pooled embeddings")
        return [float(ptr[i]) for i in range(self.model.n_embd)]

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

