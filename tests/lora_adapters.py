"""Build PEFT LoRA adapters for the tests with the real `peft` library, and their transformers references.

Adapters get random (non-zero) A and B so that merging visibly changes the logits; references are PEFT's own
merge_and_unload() results, saved as Hugging Face folders or used for logits directly. Test helper only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEW_TOKENS = [f"新词{i:02d}" for i in range(24)]  # more than the base's padding: the vocabulary must grow


def base_model(base_dir: Path, vocab_size: int | None = None):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    if vocab_size is not None:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def make_adapter(*args, **kwargs) -> Path:
    """See _make_adapter; library warnings are silenced (pytest turns warnings into errors)."""
    with warnings.catch_warnings():
        return _make_adapter(*args, **kwargs)


def _make_adapter(base_dir: Path, out_dir: Path, *, r: int = 4, alpha: float = 8, rslora: bool = False,
                 targets=ALL_TARGETS, seed: int = 0, weights: str = "safetensors", resize: bool = False,
                 std: float = 0.2, dtype: str = "float32", rank_pattern: dict | None = None,
                 alpha_pattern: dict | None = None) -> Path:
    """A PEFT LoRA adapter on `base_dir` with random A and B; `resize` adds NEW_TOKENS to a tokenizer saved
    in the adapter and saves embed_tokens/lm_head through modules_to_save, as vocabulary-extending LoRAs do."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    warnings.simplefilter("ignore")  # peft/transformers advice (resized embeddings saved, ...) is expected here
    torch.manual_seed(seed)
    tokenizer = None
    vocab_size = None
    if resize:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), use_fast=False)
        tokenizer.add_tokens(NEW_TOKENS)
        vocab_size = len(tokenizer)
    model = base_model(base_dir, vocab_size)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora,
                        rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {},
                        modules_to_save=["embed_tokens", "lm_head"] if resize else None, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, std)
            elif "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))  # the "trained" copy differs from the base
    if dtype != "float32":  # e.g. FlagAlpha's Llama2-Chinese-7b-Chat-LoRA ships bf16 weights in a .bin
        peft_model = peft_model.to(getattr(torch, dtype))
    peft_model.save_pretrained(str(out_dir), safe_serialization=weights == "safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir), legacy_format=True)
        (out_dir / "tokenizer.json").unlink(missing_ok=True)
    return out_dir


def merged_reference(base_dir: Path, adapters: list[tuple[Path, float]]):
    """PEFT's merge_and_unload() of the adapters, one after the other, each at its scale."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _merged_reference(PeftModel, base_dir, adapters)


def _merged_reference(PeftModel, base_dir: Path, adapters: list[tuple[Path, float]]):
    vocab = None
    for path, _ in adapters:
        if (path / "tokenizer.model").is_file():
            vocab = _tokenizer_length(path)
    model = base_model(base_dir, vocab)
    for path, scale in adapters:
        peft_model = PeftModel.from_pretrained(model, str(path))
        if scale != 1.0:
            for module in peft_model.modules():
                if hasattr(module, "scale_layer") and hasattr(module, "lora_A"):
                    module.scale_layer(scale)
        model = peft_model.merge_and_unload()
    return model.eval()


def _tokenizer_length(path: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path), use_fast=False))


def model_logits(model, token_ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([token_ids], dtype=torch.long)).logits[0].float().numpy()


def edit_config(adapter_dir: Path, **changes) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")


def reference_lora_converter() -> Path:
    """llama.cpp's convert_lora_to_gguf.py from the llama-cpp-python sdist, beside the reference converter's
    conversion/ and gguf-py/ (which it imports), extracted once into the persistent test cache."""
    import shutil
    import tarfile

    from fixtures import cache_root, cached_dir
    from fixtures.reference import _VENDOR, LLAMA_CPP_PYTHON_VERSION, find_sdist, reference_dir

    def build(tmp: Path) -> None:
        shutil.copytree(reference_dir(), tmp, dirs_exist_ok=True)
        with tarfile.open(find_sdist()) as tar:
            member = tar.getmember(_VENDOR + "convert_lora_to_gguf.py")
            with tar.extractfile(member) as src:  # type: ignore[union-attr]
                (tmp / "convert_lora_to_gguf.py").write_bytes(src.read())

    folder = cached_dir(cache_root() / f"reference-lora-converter-{LLAMA_CPP_PYTHON_VERSION}", build)
    return folder / "convert_lora_to_gguf.py"


def run_reference_lora(adapter_dir: Path, base_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """Convert an adapter with llama.cpp's own convert_lora_to_gguf.py (needs torch, transformers)."""
    import os
    import subprocess
    import sys

    script = reference_lora_converter()
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out),
         "--outtype", outtype], capture_output=True, text=True, env=env, cwd=str(script.parent), timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"convert_lora_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    return out
