"""Recognise a BPE tokenizer's pre-tokenizer by llama.cpp's method: hash the token ids of a probe text.

The table holds the checksums llama.cpp's convert_hf_to_gguf_update.py computed for the BPE vocabularies
found in Llama-architecture models (facts from that file, not its code). An unknown checksum is an error,
as upstream: guessing the pre-tokenizer silently would tokenize differently from the original.
"""

from __future__ import annotations

from lcpp_zh.errors import TokenizerError

KNOWN_PRE_TOKENIZERS: dict[str, str] = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
}


def pre_tokenizer_name(checksum: str) -> str:
    """llama.cpp's name for the pre-tokenizer with this probe checksum."""
    try:
        return KNOWN_PRE_TOKENIZERS[checksum]
    except KeyError:
        raise TokenizerError(
            f"tokenizer.json: unrecognised BPE pre-tokenizer (checksum {checksum[:16]}…); "
            "llama.cpp would tokenize it differently from the original, so it is not converted"
        ) from None
