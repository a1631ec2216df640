"""Tether: a local-first, WebSocket-first async chat server for LLMs."""

__version__ = "0.1.0"
