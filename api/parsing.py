"""Request parsing: JSON bodies with orjson and a depth limit, errors in the contract's shape.

flask-smorest validates through webargs, whose default parser answers 422 in
its own body shape and whose JSON loader recurses (a body of ``[[[[...`` ends
in a RecursionError). This parser loads JSON with orjson, refuses bodies
nested deeper than :data:`MAX_DEPTH`, and raises the project's own errors, so
the same marshmallow schemas validate requests and document them in OpenAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import flask_smorest
import marshmallow as ma
import orjson
from flask import Request
from webargs.flaskparser import FlaskParser

from shared.contracts import MODEL_ID_PATTERN, MODEL_ID_RULE, is_model_id
from shared.errors import BadRequest, UnsupportedMediaType, ValidationFailed

#: Deepest JSON nesting any endpoint accepts; metadata objects are shallow in practice.
MAX_DEPTH = 32


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise BadRequest when ``value`` nests containers deeper than ``limit`` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise BadRequest(
                f"The JSON body is nested more than {limit} levels deep.",
                code="json_too_deep",
            )
        stack.extend((child, depth + 1) for child in children)


def load_json_body(req: Request) -> Any:
    """Parse the request body as JSON, or raise 415/400 in the contract's format."""
    if not req.is_json:
        raise UnsupportedMediaType(
            "This endpoint takes a JSON body (Content-Type: application/json).",
            details={"content_type": req.content_type},
        )
    raw = req.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    check_depth(data)
    return data


class ContractParser(FlaskParser):
    """webargs parser that speaks the contract's error format."""

    DEFAULT_VALIDATION_STATUS = 422

    def _raw_load_json(self, req: Request) -> Any:
        return load_json_body(req)

    def handle_error(
        self,
        error: ma.ValidationError,
        req: Request,
        schema: ma.Schema,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:
            # webargs nests messages under the location ("json", "query"); flatten it.
            (only,) = messages.values()
            if isinstance(only, dict):
                messages = only
        raise ValidationFailed(
            "The request is invalid: " + _summarise(messages),
            details={"fields": messages},
        )


def _summarise(messages: Any) -> str:
    if isinstance(messages, dict):
        parts = []
        for name, value in list(messages.items())[:3]:
            parts.append(f"{name}: {_summarise(value)}")
        return "; ".join(parts)
    if isinstance(messages, list):
        return " ".join(str(m) if not isinstance(m, dict | list) else _summarise(m)
                        for m in messages[:2])
    return str(messages)


parser = ContractParser()


class Blueprint(flask_smorest.Blueprint):  # type: ignore[misc]  # flask-smorest is untyped
    """flask-smorest's Blueprint with the contract's parser.

    The parser is bound when ``@blp.arguments`` decorates a view, so it must be
    set on the class, before any view module is imported; every blueprint of
    the API is built from this class.
    """

    ARGUMENTS_PARSER = parser


def _check_model_id(value: str) -> None:
    if not is_model_id(value):
        raise ma.ValidationError(MODEL_ID_RULE)


def model_id_field(**kwargs: Any) -> ma.fields.String:
    """A ``model_id`` field checked by the one model-id rule (documented with its pattern)."""
    metadata = {"pattern": MODEL_ID_PATTERN, **kwargs.pop("metadata", {})}
    return ma.fields.String(validate=_check_model_id, metadata=metadata, **kwargs)
