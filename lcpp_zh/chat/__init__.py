"""The terminal fronts over the engine: the chat REPL, its conversation state and `generate`."""
