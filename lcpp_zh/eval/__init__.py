"""Measure a GGUF model: perplexity over a text and, against a base model, KL-divergence statistics, computed
the way llama.cpp's llama-perplexity computes them (lcpp_zh.eval.perplexity), over built-in Chinese and
English texts (lcpp_zh.eval.texts) or the user's own."""
