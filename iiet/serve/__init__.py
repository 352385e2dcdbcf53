"""Serving iiet checkpoints behind an OpenAI-compatible API (``iiet serve``; docs/serving.md).

``app.py`` builds the server from ``transformers serve``'s own FastAPI app and handlers, handed a loaded iiet model
and checked requests; ``commands.py`` is the command line.
"""
