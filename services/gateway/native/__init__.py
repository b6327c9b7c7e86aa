"""Ollama's native REST API (/api/*)."""
