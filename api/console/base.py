"""What every console page module shares: the blueprint, CSRF protection, the scope
decorator and the model-id check. :mod:`api.console.views` registers the pages on it;
the tuning and schedule pages (:mod:`api.console.tuning`, :mod:`api.console.schedules`)
add theirs, without importing the views back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFProtect

from api.console.auth import current_key, has_scope
from shared.contracts import is_model_id
from shared.errors import NotFound, ValidationFailed
from shared.keys import ApiKey

P = ParamSpec("P")
R = TypeVar("R")

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")
csrf = CSRFProtect()


def needs(scope: str) -> Callable[[Callable[P, R]], Callable[P, R | ResponseReturnValue]]:
    """Decorator: the page needs ``scope``; without it, a page says so (403)."""

    def decorate(view: Callable[P, R]) -> Callable[P, R | ResponseReturnValue]:
        @wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | ResponseReturnValue:
            if not has_scope(scope):
                return render_template("console/no_scope.html", scope=scope), 403
            return view(*args, **kwargs)

        return wrapper

    return decorate


def signed_in() -> ApiKey:
    """The key of this request (the blueprint's guard has already sent anyone else away)."""
    key = current_key()
    assert key is not None
    return key


def checked_model_id(model_id: str) -> str:
    """``model_id`` if it could name a model; else the 404 an unknown model gets."""
    if not is_model_id(model_id):
        raise NotFound(f"There is no model '{model_id[:140]}'.", code="model_not_found")
    return model_id


def whole_number(form: Mapping[str, str], name: str, label: str, low: int = 1,
                 high: int | None = None) -> int | None:
    """The form field ``name`` as a whole number in [low, high], None when blank; a 422
    naming ``label`` otherwise."""
    raw = str(form.get(name, "") or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValidationFailed(f"{label} is a whole number {bound}.", code="invalid_body",
                               details={"fields": {name: [f"a whole number {bound}"]}})
    return int(raw)


def selection_fields(form: Mapping[str, str], with_model_id: bool = True) -> dict[str, object]:
    """The ``model_id`` (when given) and ``data_tags`` (comma-separated) of a run form."""
    body: dict[str, object] = {}
    model_id = form.get("model_id", "").strip()
    if with_model_id and model_id:
        body["model_id"] = model_id
    tags = [t.strip() for t in form.get("data_tags", "").split(",") if t.strip()]
    if tags:
        body["data_tags"] = tags
    return body
