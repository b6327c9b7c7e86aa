"""Schemathesis over docs/openapi/corral-extras.yaml: /v1/responses (create, GET, DELETE),
/api/tokenize and /api/detokenize against the real stack and Gemma. Generated requests must
never produce a server error, and every response must match the documented shape."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.stack import Stack

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "corral-extras.yaml"
schema = schemathesis.openapi.from_path(SPEC)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_extras_conform_to_their_openapi(case: schemathesis.Case, stack: Stack, gemma: str) -> None:
    # The session stack: nothing here touches models (test_openapi_schema.py, which creates
    # and deletes them, keeps a stack of its own).
    case.call_and_validate(base_url=stack.url, checks=[not_a_server_error, response_schema_conformance], timeout=120)
