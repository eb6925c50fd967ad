"""The HTTP server: OpenAI-compatible API, the seed's /generate API and the web chat page."""
