"""Property-based requests generated from /openapi.json against the live stack:
no 5xx, and every response matches the schema the API publishes for it.

Operations are driven one by one with Hypothesis (schemathesis' pytest fixture
loader does not work with pytest 9), and failures are collected so one run
reports every broken operation.
"""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.helpers.stack import Stack

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES_PER_OPERATION = 10


def test_no_server_errors_and_responses_match_the_schema(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(stack.url("/openapi.json"))
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
        def exercise(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **stack.headers()}
            case.call_and_validate(base_url=stack.api_url, checks=CHECKS, timeout=30)

        try:
            exercise()
        except Exception as exc:  # one operation's failure must not hide the others'
            failures[operation.label] = str(exc)[:3000]
    assert operations >= 10, "the OpenAPI document lists too few operations"
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
