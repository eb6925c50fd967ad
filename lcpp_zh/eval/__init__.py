"""Evaluation, in three rooms: measuring a model (measure: perplexity, KL divergence, speed, as llama-perplexity
and llama-bench do), quantization support (quantization: importance matrices, calibrated quantizing) and the
advisor (advisor: which quantization to run here). The built-in texts are package data (texts)."""
