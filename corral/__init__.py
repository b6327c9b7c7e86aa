"""Corral: an Ollama-compatible LLM server built as async gRPC microservices."""

__version__ = "0.1.0"
