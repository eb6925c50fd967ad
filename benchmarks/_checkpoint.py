"""Generate a large synthetic Llama checkpoint (f16 safetensors) for the conversion benchmark.

Written tensor by tensor from a repeated random block, so generating 2 GiB takes seconds and little memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# TinyLlama-1.1B's shape: 1.1 B parameters, 2.05 GiB in f16.
LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "torch_dtype": "float16", "tie_word_embeddings": False,
}


def llama_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, ff, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                   (p + "mlp.gate_proj.weight", (ff, h)), (p + "mlp.up_proj.weight", (ff, h)),
                   (p + "mlp.down_proj.weight", (h, ff)), (p + "input_layernorm.weight", (h,)),
                   (p + "post_attention_layernorm.weight", (h,))]
    return shapes + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_checkpoint(folder: Path, config: dict, tokenizer_model: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    shapes = llama_shapes(config)
    header, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    block = np.random.default_rng(0).normal(0, 0.02, 1 << 22).astype(np.float16).tobytes()  # 8 MiB
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, shape in shapes:
            remaining = int(np.prod(shape)) * 2
            while remaining:
                chunk = block[: min(remaining, len(block))]
                f.write(chunk)
                remaining -= len(chunk)
