"""`lcpp-zh verify`: tokenizer and logits parity of a GGUF against transformers."""
