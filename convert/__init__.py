"""Hugging Face checkpoint -> GGUF conversion, installed as `lcpp_zh.convert`.

Knows nothing of serving or chatting: it reads checkpoints, writes GGUF files and, in its quantize step
only, calls llama.cpp's quantizer. It never imports torch or transformers.
"""
