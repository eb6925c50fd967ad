"""Small helpers shared by the conversion pipeline, the runtime, eval, the fronts and the tests.

Leaf package: it imports lcpp_zh.errors and third-party libraries only, never lcpp_zh.runtime or
lcpp_zh.convert, so `convert/` may use it without pulling in the runtime.
"""
