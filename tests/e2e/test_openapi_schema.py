"""Schema tests of /api/* against Ollama's own OpenAPI description (schemathesis).

Generated requests (valid and invalid) must never produce a server error, and every
documented response must match its schema. Pull and push are left out: they reach for
registry.ollama.ai, which no test may contact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.stack import Stack, create_model, start_stack, stop_stack

# The reference material lies in shared/ beside the checkout (and beside CI's clone).
SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "ollama-openapi.yaml"
if not SPEC.exists():
    pytest.skip(f"{SPEC} is not there", allow_module_level=True)

schema = schemathesis.openapi.from_path(SPEC).exclude(path_regex="^/api/(pull|push)$")


@pytest.fixture(scope="module")
def schema_stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("schema"))
    try:
        create_model(s.url, "gemma3", gemma_path)
        yield s
    finally:
        stop_stack(s)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_ollama_openapi(case: schemathesis.Case, schema_stack: Stack) -> None:
    case.call_and_validate(
        base_url=schema_stack.url, checks=[not_a_server_error, response_schema_conformance], timeout=120
    )
