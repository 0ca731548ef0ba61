"""The Tuning page: start a hyperparameter search and watch its trials and the best value
so far, live.

A search is an ordinary run whose status carries ``tuning`` (docs/tuning.md); the
page reads it with the same status functions as ``GET /train/<id>/status`` and
starts one with the same validation and ``submit_search`` as ``POST /tune``, all
through :mod:`api.console.runs`. The live part re-fetches itself every second and
stops once the run (search and final fit) has ended.
"""

from __future__ import annotations

from typing import Any

from flask import redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from api.console import runs
from api.console.base import (
    bp,
    checked_model_id,
    needs,
    selection_fields,
    signed_in,
    whole_number,
)
from shared.errors import ValidationFailed
from shared.runs.search import DEFAULT_METRIC, DEFAULT_TRIALS, MAX_TRIALS, METRICS

#: Run states after which a search page stops polling.
ENDED = ("completed", "error")


def best_so_far(tuning: dict[str, Any]) -> dict[str, list[Any]]:
    """``{"x": trial numbers, "best": best value up to each}`` over the completed trials,
    in trial order (every metric of a search is better when higher)."""
    done = sorted((t for t in tuning.get("trials") or []
                   if t.get("state") == "complete" and isinstance(t.get("value"), int | float)),
                  key=lambda t: int(t["trial"]))
    xs: list[int] = []
    best: list[float] = []
    for trial in done:
        xs.append(int(trial["trial"]))
        best.append(max(float(trial["value"]), best[-1]) if best else float(trial["value"]))
    return {"x": xs, "best": best}


def search_body(form: Any) -> dict[str, Any]:
    """A ``POST /tune`` body from the form's fields."""
    body: dict[str, Any] = dict(selection_fields(form))
    search: dict[str, Any] = {"trials": whole_number(form, "trials", "Trials", 1, MAX_TRIALS)
                              or DEFAULT_TRIALS}
    if form.get("metric"):
        search["metric"] = form["metric"]
    parallelism = whole_number(form, "parallelism", "Trials at once", 1, MAX_TRIALS)
    if parallelism is not None:
        search["parallelism"] = parallelism
    body["search"] = search
    epochs = whole_number(form, "epochs", "Epochs", 1, 1000)
    if epochs is not None:
        body["hyperparameters"] = {"epochs": epochs}
    return body


def _page(form: Any, error: ValidationFailed | None = None) -> ResponseReturnValue:
    key = signed_in()
    models = [m for m in runs.models_with_status(key.tenant)
              if m["status"] and m["status"].get("tuning")]
    page = render_template("console/tuning.html", models=models, form=form, form_error=error,
                           metrics=METRICS, default_metric=DEFAULT_METRIC,
                           default_trials=DEFAULT_TRIALS, max_trials=MAX_TRIALS)
    return page, (error.status if error else 200)


@bp.route("/tuning")
@needs("train")
def tuning_page() -> ResponseReturnValue:
    """The form that starts a search, and every model whose latest run is a search."""
    return _page(request.args)


@bp.route("/tuning", methods=["POST"])
@needs("train")
def start_search() -> ResponseReturnValue:
    """Start a search from the form (the ``POST /tune`` body's common fields)."""
    try:
        status = runs.start_search(signed_in().tenant, search_body(request.form))
    except ValidationFailed as exc:
        return _page(request.form, exc)
    return redirect(url_for("console.search_page", model_id=status["model_id"],
                            version=status["version"]))


def _search(model_id: str) -> dict[str, Any]:
    version = whole_number(request.args, "version", "The run's version", 1)
    return runs.search(signed_in().tenant, checked_model_id(model_id), version)


def _live_context(status: dict[str, Any]) -> dict[str, Any]:
    return {"st": status, "tuning": status["tuning"], "chart": best_so_far(status["tuning"]),
            "live": status["status"] not in ENDED}


@bp.route("/tuning/<model_id>")
@needs("train")
def search_page(model_id: str) -> ResponseReturnValue:
    """One search of a model (its newest, or ``?version=``): trials and best so far, live."""
    status = _search(model_id)
    return render_template("console/search.html", model_id=model_id,
                           others=runs.searches(signed_in().tenant, model_id),
                           **_live_context(status))


@bp.route("/tuning/<model_id>/live")
@needs("train")
def search_live(model_id: str) -> ResponseReturnValue:
    """The live part of a search page, polled by htmx while the run is going."""
    return render_template("console/search_live.html", model_id=model_id,
                           **_live_context(_search(model_id)))
