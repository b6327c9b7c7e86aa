"""Anthropic Messages-compatible endpoint."""
