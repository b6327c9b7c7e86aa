"""CORRAL_API_KEY: every request but the liveness probe needs the bearer token."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.stack import start_stack, stop_stack


def test_api_key_guards_everything_but_the_root(tmp_path: Path) -> None:
    # start_stack polls GET /, which stays open so health checks keep working.
    stack = start_stack(tmp_path, CORRAL_API_KEY="s3cret")
    try:
        assert httpx.get(stack.url + "/").text == "Ollama is running"
        denied = httpx.get(stack.url + "/api/tags")
        assert denied.status_code == 401 and "error" in denied.json()
        assert httpx.get(stack.url + "/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(stack.url + "/api/tags", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == {"models": []}
        # The official clients send the key as a bearer token.
        assert ollama.Client(host=stack.url, headers={"Authorization": "Bearer s3cret"}).list().models == []
        assert list(openai.OpenAI(base_url=stack.url + "/v1", api_key="s3cret").models.list()) == []
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=stack.url + "/v1", api_key="nope").models.list()
    finally:
        stop_stack(stack)
