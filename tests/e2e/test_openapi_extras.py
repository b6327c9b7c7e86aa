"""Schemathesis over docs/openapi/corral-extras.yaml: /v1/responses (create, GET, DELETE),
/api/tokenize and /api/detokenize against the real stack and Gemma. Generated requests must
never produce a server error, and every response must match the documented shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.stack import Stack, create_model, start_stack, stop_stack

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "corral-extras.yaml"
schema = schemathesis.openapi.from_path(SPEC)


@pytest.fixture(scope="module")
def extras_stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("extras"))
    try:
        create_model(s.url, "gemma3", gemma_path)
        yield s
    finally:
        stop_stack(s)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_extras_conform_to_their_openapi(case: schemathesis.Case, extras_stack: Stack) -> None:
    case.call_and_validate(
        base_url=extras_stack.url, checks=[not_a_server_error, response_schema_conformance], timeout=120
    )
