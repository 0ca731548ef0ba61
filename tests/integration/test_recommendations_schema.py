"""Schemathesis against /recommended_items with a served model: JSON and CSV answers, errors,
never a 5xx, every response as the OpenAPI document describes it."""

from __future__ import annotations

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from shared.storage import open_storage
from tests.helpers.models import make_artifact, register
from tests.helpers.stack import Stack

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_recommendations_conform_to_the_published_schema(stack: Stack) -> None:
    # Given a served model "m" with metadata features (so every answer path is reachable)
    register(stack.redis, open_storage(stack.settings.storage_root()), stack.tenant, "m",
             make_artifact(n_targets=60, features=["country=fr", "plan=pro"]))
    schema = schemathesis.openapi.from_url(stack.url("/openapi.json"))
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.endswith("/recommended_items"):
            continue

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def exercise(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), **stack.headers()}
            # Aim half of the generated requests at the served model.
            for params in (case.query, case.body):
                if isinstance(params, dict) and "model_id" in params and len(str(params)) % 2:
                    params["model_id"] = "m"
            case.call_and_validate(base_url=stack.api_url, checks=CHECKS, timeout=30)

        try:
            exercise()
        except Exception as exc:  # report both methods' failures together
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
