"""Measuring a GGUF model: perplexity and KL divergence as llama-perplexity computes them (perplexity), their
formulas (scoring), the base model's saved log-probabilities (base_logits), and speed as llama-bench measures
it (speed). Figures only; nothing here prints or quantizes."""
