"""Ollama's subset of Go's text/template, interpreted with bounds (templates are untrusted)."""

from services.gateway.templates.engine import Template, TemplateError

__all__ = ["Template", "TemplateError"]
