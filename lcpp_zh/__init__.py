"""lcpp-zh: Chinese Llama 2 models on ordinary machines through llama.cpp.

This package root stays import-light: importing `lcpp_zh` must not load llama.cpp, torch or the server,
so `lcpp_zh.convert` (the conversion pipeline) can be used on its own.
"""

__version__ = "0.1.0"
