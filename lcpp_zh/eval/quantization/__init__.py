"""Quantization support: importance matrices as llama-imatrix computes them (imatrix, reading activations
through ggml_tensor), and quantizing with a matrix made on the way (calibrate). The quantizer itself is
lcpp_zh.convert.quantize; the matrix file format is lcpp_zh.convert.imatrix_file."""
