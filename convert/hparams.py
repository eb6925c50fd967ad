"""Write a Llama config's hyper-parameters as GGUF `llama.*` keys, as llama.cpp's converter does.

Same keys, same values, same order as convert_hf_to_gguf.py's TextModel/LlamaModel.set_gguf_parameters
(rope scaling: linear and yarn are written, dynamic is not, which llama.cpp does not implement).
"""

from __future__ import annotations

import logging
from typing import Any

import gguf

from lcpp_zh.errors import CheckpointError

logger = logging.getLogger(__name__)


def find_hparam(config: dict[str, Any], keys: list[str]) -> Any:
    """The first of `keys` present in the config, or None."""
    return next((config[k] for k in keys if k in config), None)


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """rope_scaling with rope_theta and rope_type mirrored into it, as the reference converter builds it."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    if "rope_type" not in params and params.get("type") is not None:
        params["rope_type"] = params["type"]
    if "original_max_position_embeddings" not in params and "original_max_position_embeddings" in config:
        params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    return params


def _add_rope_scaling(writer: gguf.GGUFWriter, params: dict[str, Any]) -> None:
    rope_type, factor = params.get("rope_type"), params.get("factor")
    if rope_type is None:
        return
    if rope_type == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    elif rope_type == "yarn" and factor is not None:
        if "original_max_position_embeddings" not in params:
            raise CheckpointError("config.json: yarn rope_scaling needs original_max_position_embeddings")
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(factor)
        writer.add_rope_scaling_orig_ctx_len(params["original_max_position_embeddings"])
        optional = (
            ("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
            ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
            ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
        )
        for key, add in optional:
            value = params.get(key, params.get("attn_factor")) if key == "attention_factor" else params.get(key)
            if value is not None:
                add(value)
    elif rope_type in ("su", "longrope"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif rope_type == "dynamic":
        logger.warning("dynamic NTK rope scaling is not implemented by llama.cpp; written without scaling")
    elif rope_type.lower() != "llama3":
        logger.warning("unknown rope scaling type %r ignored", rope_type)


def add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], file_type: gguf.LlamaFileType) -> None:
    """The `llama.*` keys and general.file_type."""
    writer.add_block_count(config["num_hidden_layers"])
    n_ctx = find_hparam(config, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                 "max_sequence_length", "model_max_length"])
    if n_ctx is not None:
        writer.add_context_length(n_ctx)
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    if config.get("is_causal") is False:
        writer.add_causal_attention(False)
    params = rope_parameters(config)
    _add_rope_scaling(writer, params)
    if params.get("rope_theta") is not None:
        writer.add_rope_freq_base(params["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if (eps := find_hparam(config, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        writer.add_layer_norm_eps(eps)
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_file_type(file_type)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["head_dim"])
