"""The console's pages under ``/console``: sign in, Overview, Runs and models, Try it.

Server-rendered with Jinja2; htmx polls run cards and posts the upload and Try it
forms; uPlot draws the charts (both vendored under ``static/vendor``). Every
form carries a CSRF token (flask-wtf): a field in plain forms, the
``X-CSRFToken`` header in htmx requests. Pages check the same scopes as the API.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Flask, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, validate_csrf
from werkzeug.wrappers import Response
from wtforms import ValidationError

from api.console import data, runs, schedules, tryit, tuning
from api.console.auth import current_key, sign_in, sign_out
from api.console.base import bp, checked_model_id, csrf, needs, selection_fields
from api.console.sessions import ConsoleSession, RedisConsoleSessions
from api.context import services
from shared.errors import DependencyUnavailable, ServiceError, ValidationFailed
from shared.registry import global_key, redis_guard

#: Modules that add their own pages to the blueprint (imported here for those routes).
PAGE_MODULES = (schedules, tuning)
#: Pages of the navigation bar: (endpoint, label, scope needed to see it).
NAV = (("console.overview", "Overview", "data:read"),
       ("console.runs_page", "Runs and models", "train"),
       ("console.tuning_page", "Tuning", "train"),
       ("console.try_page", "Try it", "recommend"))


def init_app(app: Flask) -> None:
    """Register the console, its session store and CSRF protection on ``app``."""
    app.session_interface = RedisConsoleSessions()
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # the API's endpoints take no forms
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # the session's expiry bounds it
    csrf.init_app(app)
    app.register_blueprint(bp)


def _csrf_secret() -> None:
    """One signing secret for every API process, kept in Redis (never in the repo)."""
    from flask import current_app

    if current_app.config.get("WTF_CSRF_SECRET_KEY"):
        return
    r = services().redis
    name = global_key("console", "csrf_secret")
    with redis_guard("reading the console's CSRF secret"):
        r.set(name, secrets.token_urlsafe(32), nx=True)
        current_app.config["WTF_CSRF_SECRET_KEY"] = str(r.get(name))


@bp.before_request
def _guard() -> ResponseReturnValue | None:
    if isinstance(session, ConsoleSession) and session.unavailable:
        raise DependencyUnavailable("The console's session store (Redis) is unreachable.")
    _csrf_secret()
    if request.method == "POST":
        if request.endpoint == "console.upload":  # multipart streams: the token is a header
            try:
                validate_csrf(request.headers.get("X-CSRFToken"))
            except ValidationError as exc:
                raise CSRFError(exc.args[0]) from exc
        else:
            csrf.protect()
    public = {"console.signin", "console.static"}
    if request.endpoint not in public and current_key() is None:
        if request.headers.get("HX-Request"):
            return Response(status=401, headers={"HX-Redirect": url_for("console.signin")})
        return redirect(url_for("console.signin"))
    return None


@bp.context_processor
def _globals() -> dict[str, Any]:
    key = current_key() if request.endpoint != "console.static" else None
    nav = [(e, label) for e, label, scope in NAV if key is not None and scope in key.scopes]
    return {"key": key, "nav": nav}


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> ResponseReturnValue:
    template = ("console/error_fragment.html" if request.headers.get("HX-Request")
                else "console/error.html")
    return render_template(template, error=exc), exc.status


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    error = ServiceError("The form expired or did not come from this console; reload the "
                         "page and try again.", code="csrf_failed", status=400)
    return _service_error(error)


# -- sign in and out -------------------------------------------------------------------------
@bp.route("/", strict_slashes=False)
def index() -> ResponseReturnValue:
    """Home: the first page the key may see."""
    key = current_key()
    for endpoint, _label, scope in NAV:
        if key is not None and scope in key.scopes:
            return redirect(url_for(endpoint))
    return render_template("console/no_scope.html", scope="data:read, train or recommend")


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> ResponseReturnValue:
    """The sign-in form; a valid key starts a session."""
    if request.method == "POST":
        if sign_in(request.form.get("api_key", "")) is not None:
            return redirect(url_for("console.index"))
        return render_template("console/signin.html", failed=True), 401
    return render_template("console/signin.html", failed=False)


@bp.route("/signout", methods=["POST"])
def signout() -> ResponseReturnValue:
    """End the session."""
    sign_out()
    return redirect(url_for("console.signin"))


# -- overview --------------------------------------------------------------------------------
@bp.route("/overview")
@needs("data:read")
def overview() -> ResponseReturnValue:
    """Batches by tag and kind, dataset totals, interactions per day, and the upload form."""
    key = current_key()
    assert key is not None
    metas = data.batches(key.tenant)
    return render_template(
        "console/overview.html", groups=data.by_tag_and_kind(metas), batches=metas[:20],
        batch_count=len(metas), totals=data.totals(key.tenant),
        per_day=data.interactions_per_day(key.tenant, metas),
    )


@bp.route("/upload", methods=["POST"])
@needs("data:write")
def upload() -> ResponseReturnValue:
    """Store the uploaded CSV files through the API's own multipart path."""
    from api.data import upload_multipart

    key = current_key()
    assert key is not None
    if request.mimetype != "multipart/form-data":
        raise ValidationFailed("Choose one or more CSV files to upload.", code="no_files")
    metas = upload_multipart(key.tenant)
    return render_template("console/uploaded.html", metas=metas), 201


# -- runs and models -------------------------------------------------------------------------
@bp.route("/runs")
@needs("train")
def runs_page() -> ResponseReturnValue:
    """Every model with its latest run (live), and the form that starts a run."""
    key = current_key()
    assert key is not None
    return render_template("console/runs.html", models=runs.models_with_status(key.tenant),
                           form=request.args, form_error=None)


@bp.route("/runs", methods=["POST"])
@needs("train")
def start_run() -> ResponseReturnValue:
    """Start a run from the form (the ``POST /train`` body's common fields)."""
    key = current_key()
    assert key is not None
    form = request.form
    try:
        status = runs.start(key.tenant, _train_body(form))
    except ValidationFailed as exc:
        return render_template("console/runs.html", models=runs.models_with_status(key.tenant),
                               form=form, form_error=exc), exc.status
    return redirect(url_for("console.model_page", model_id=status["model_id"]))


def _train_body(form: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(selection_fields(form))
    hyper: dict[str, Any] = {}
    for name in ("epochs", "no_components"):
        raw = form.get(name, "").strip()
        if raw:
            if not raw.isdigit():
                raise ValidationFailed(f"{name.replace('_', ' ').capitalize()} is a whole "
                                       "number.", code="invalid_body")
            hyper[name] = int(raw)
    if form.get("loss"):
        hyper["loss"] = form["loss"]
    if hyper:
        body["hyperparameters"] = hyper
    return body


@bp.route("/runs/<model_id>")
@needs("train")
def model_page(model_id: str) -> ResponseReturnValue:
    """One model: its latest run (live), metrics against the baseline, curve, versions,
    schedule and pin."""
    key = current_key()
    assert key is not None
    context = schedules.model_context(key.tenant, checked_model_id(model_id))
    return render_template("console/model.html", **context)


@bp.route("/runs/<model_id>/card")
@needs("train")
def run_card(model_id: str) -> ResponseReturnValue:
    """The live part of a model's run, polled by htmx while the run is going."""
    key = current_key()
    assert key is not None
    model = runs.model_with_status(key.tenant, checked_model_id(model_id))
    detail = request.args.get("detail") == "1"
    return render_template("console/run_card.html", model=model, detail=detail)


@bp.route("/runs/<model_id>/cancel", methods=["POST"])
@needs("train")
def cancel_run(model_id: str) -> ResponseReturnValue:
    """Cancel the model's queued or running run."""
    key = current_key()
    assert key is not None
    runs.cancel(key.tenant, checked_model_id(model_id))
    if request.headers.get("HX-Request"):
        return run_card(model_id)
    return redirect(url_for("console.model_page", model_id=model_id))


# -- try it ----------------------------------------------------------------------------------
def _serving_models(key: Any) -> list[str] | None:
    """Model ids serving a version (for the pickers), or None when the key lacks ``train``
    (the picker is then a text field)."""
    if "train" not in key.scopes:
        return None
    return [m["model_id"] for m in runs.models_with_status(key.tenant) if m.get("serving_version")]


def _how_many(form: Any, name: str) -> int:
    raw = form.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else 10


@bp.route("/try", methods=["GET", "POST"])
@needs("recommend")
def try_page() -> ResponseReturnValue:
    """Pick a model and a source (or type metadata) and see its recommendations."""
    key = current_key()
    assert key is not None
    result = None
    form = request.form if request.method == "POST" else request.args
    if request.method == "POST":
        model_id = form.get("model_id", "").strip()
        source_id = form.get("source_id", "").strip()
        if not model_id or not source_id:
            raise ValidationFailed("Choose a model and type a source id.", code="invalid_body")
        result = tryit.recommend(key.tenant, checked_model_id(model_id), source_id,
                                 _how_many(form, "max_recommendations"),
                                 tryit.parse_metadata(form.get("source_metadata", "")))
        if request.headers.get("HX-Request"):
            return render_template("console/recs.html", result=result, source_id=source_id)
    return render_template("console/try.html", models=_serving_models(key), form=form,
                           result=result, similar=None)


@bp.route("/try/similar", methods=["POST"])
@needs("recommend")
def try_similar() -> ResponseReturnValue:
    """The items most like one item (``GET /similar_items``), with names and pictures."""
    key = current_key()
    assert key is not None
    form = request.form
    model_id = form.get("model_id", "").strip()
    target_id = form.get("target_id", "").strip()
    if not model_id or not target_id:
        raise ValidationFailed("Choose a model and type an item id.", code="invalid_body")
    similar = tryit.similar(key.tenant, checked_model_id(model_id), target_id,
                            _how_many(form, "max_recommendations"))
    if request.headers.get("HX-Request"):
        return render_template("console/similar.html", similar=similar, target_id=target_id)
    return render_template("console/try.html", models=_serving_models(key), form={},
                           similar_form=form, result=None, similar=similar)
