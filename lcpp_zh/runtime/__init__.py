"""The runtime: the one engine that owns llama.cpp (model, context, slots, samplers, prefix cache,
detokenizer), the runner process that hosts it for the server, and the offload planner.

Nothing here knows about HTTP, terminals or chat templates; lcpp_zh.chat and lcpp_zh.server sit above it.
"""
