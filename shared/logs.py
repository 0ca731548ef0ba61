"""Structured logs: one JSON object per line, carrying the request id and tenant.

Every line has ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``message`` and,
when known, ``request_id``, ``tenant``, ``task_id`` and ``task``; fields given
with ``extra=`` are added as they are (``RECSYS_LOG_FORMAT=text`` prints the
same facts as plain text for local reading).

Where the context comes from:

- in the API, a provider registered by :mod:`api.reqlog` reads Flask's ``g``
  (the request id set from ``X-Request-Id`` or generated, the tenant once the
  key is known);
- in a worker, :func:`connect_celery_signals` handlers copy the request id
  and tenant from the task message's headers into contextvars before the task
  runs and clear them after; a task that publishes another (training, then its
  callback) passes them on, because the publish hook reads the same contextvars.

Housekeeping tasks (the callback scan every 5 s, the run reconciler) run all
the time: the routine lines of a run that succeeds (Celery's "Sending due
task", "received", "succeeded", and this module's "task started"/"task ended")
are left out unless the level is DEBUG (:class:`RoutineFilter`); whatever such a
task logs itself, and any failure, is kept. The lines are told apart by logger,
task name in the record's args, and Celery's own format-string constants
(``celery.app.trace.LOG_RECEIVED``/``LOG_SUCCESS``), never by matching words.

Nothing secret is logged: whole lines (message, extras, traceback) are
scrubbed of API keys (``rk_...``), webhook secrets (``whsec_...``) and the
credentials and query strings of http(s) URLs (Celery's own "Task received"
line shows task kwargs, which may hold a callback URL), as a last line of
defence; callers log URLs through :func:`redact_url`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO
from urllib.parse import urlsplit

import orjson

from shared.contracts import TASK_RECONCILE_RUNS, TASK_SCAN_CALLBACKS

#: Message header that carries the request id from the publisher into the task.
TASK_HEADER = "recsys_request_id"
#: Message header that carries the tenant (when the publisher knew it).
TENANT_HEADER = "recsys_tenant"

request_id_var: ContextVar[str | None] = ContextVar("recsys_request_id", default=None)
tenant_var: ContextVar[str | None] = ContextVar("recsys_tenant", default=None)
task_id_var: ContextVar[str | None] = ContextVar("recsys_task_id", default=None)
task_name_var: ContextVar[str | None] = ContextVar("recsys_task_name", default=None)

#: Context fields, in the order they appear on a line.
CONTEXT_FIELDS = ("request_id", "tenant", "task_id", "task")

ContextProvider = Callable[[], Mapping[str, str | None]]
_providers: list[ContextProvider] = []

_SECRETS = re.compile(r"\b(whsec_|rk_)[A-Za-z0-9+/=_-]{8,}")
# An http(s) URL's credentials and its query: both may hold tokens (callback URLs do).
# The classes stop at quotes, backslashes and spaces so a JSON line stays valid.
_URL_USERINFO = re.compile(r"(?i)\b(https?://)[^/\s'\"\\@?#]+@")
_URL_QUERY = re.compile(r"(?i)(\bhttps?://[^\s'\"\\?#]*)[?#][^\s'\"\\]*")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", *CONTEXT_FIELDS}

#: Marks the handler :func:`configure_logging` installed, so a second call replaces it.
_HANDLER_FLAG = "_recsys_handler"


def add_context_provider(provider: ContextProvider) -> None:
    """Register a function giving context fields (e.g. from a web request); idempotent."""
    if provider not in _providers:
        _providers.append(provider)


def log_context() -> dict[str, str]:
    """The context fields known right now (contextvars win over providers)."""
    found: dict[str, str] = {}
    for provider in _providers:
        try:
            values = provider()
        except Exception:  # noqa: S112 - a provider must never break logging
            continue
        found.update({k: v for k, v in values.items() if v})
    for name, var in (
        ("request_id", request_id_var),
        ("tenant", tenant_var),
        ("task_id", task_id_var),
        ("task", task_name_var),
    ):
        value = var.get()
        if value:
            found[name] = value
    return found


def current_request_id() -> str | None:
    """The request id this code runs for, if any."""
    return log_context().get("request_id")


@contextmanager
def bound(request_id: str | None = None, tenant: str | None = None) -> Iterator[None]:
    """Run a block with the given request id / tenant in the log context."""
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = []
    if request_id is not None:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if tenant is not None:
        tokens.append((tenant_var, tenant_var.set(tenant)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def redact(text: str) -> str:
    """``text`` without API keys, webhook secrets, or URL credentials and query strings."""
    text = _SECRETS.sub(lambda m: f"{m.group(1)}[redacted]", text)
    text = _URL_USERINFO.sub(r"\1[redacted]@", text)
    return _URL_QUERY.sub(r"\1?[redacted]", text)


def redact_url(url: str) -> str:
    """A URL fit for logs: scheme, host, port and path; no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class ContextFilter(logging.Filter):
    """Puts the context fields on every record (as attributes, empty when unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        context = log_context()
        for name in CONTEXT_FIELDS:
            if not getattr(record, name, None):
                setattr(record, name, context.get(name, ""))
        return True


#: Tasks run on a schedule whose routine lines are left out (:class:`RoutineFilter`).
HOUSEKEEPING_TASKS = frozenset({TASK_SCAN_CALLBACKS, TASK_RECONCILE_RUNS})


def _routine(record: logging.LogRecord) -> bool:
    """True for a line that only says a housekeeping task was sent, received, started,
    succeeded or ended."""
    args = record.args
    if record.name == "recsys.task":
        return (getattr(record, "task", None) in HOUSEKEEPING_TASKS
                and getattr(record, "state", "SUCCESS") == "SUCCESS")
    if record.name == "celery.beat":  # "Scheduler: Sending due task %s (%s)", name, task
        return isinstance(args, tuple) and any(a in HOUSEKEEPING_TASKS for a in args)
    if record.name in ("celery.worker.strategy", "celery.app.trace"):
        # Celery logs a task's "received" and "succeeded" lines with these format strings,
        # the task's name in the args (tests/shared/test_logs_celery.py checks it still does).
        from celery.app import trace

        return (isinstance(args, Mapping) and args.get("name") in HOUSEKEEPING_TASKS
                and record.msg in (trace.LOG_RECEIVED, trace.LOG_SUCCESS))
    return False


class RoutineFilter(logging.Filter):
    """Drops the routine lines of housekeeping tasks, unless the root level is DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a routine line at INFO or below, while DEBUG is off."""
        if record.levelno > logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        return not _routine(record)


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = value
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        # Scrub the whole line, extras included (Celery logs task kwargs as an extra).
        return redact(orjson.dumps(line, default=str).decode())


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [request_id=... tenant=...] message key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one human-readable line (plus a traceback, if any)."""
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None)
        )
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        parts = [_timestamp(record), record.levelname, record.name]
        if context:
            parts.append(f"[{context}]")
        parts.append(record.getMessage())
        if extras:
            parts.append(extras)
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``; replaces an earlier call's."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.addFilter(ContextFilter())
    handler.addFilter(RoutineFilter())  # after ContextFilter, which sets the task
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)


# -- Celery: carry the request id from publisher to task, and on to the tasks it publishes --

_task_log = logging.getLogger("recsys.task")
_task_tokens: dict[str, list[tuple[ContextVar[str | None], Token[str | None]]]] = {}


def _before_task_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    context = log_context()
    for name, header in (("request_id", TASK_HEADER), ("tenant", TENANT_HEADER)):
        if context.get(name) and not headers.get(header):
            headers[header] = context[name]


def _header(request: Any, name: str) -> str | None:
    value = getattr(request, name, None)
    if value is None and request is not None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return str(value) if value else None


def _task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    tokens = [
        (request_id_var, request_id_var.set(_header(request, TASK_HEADER))),
        (tenant_var, tenant_var.set(_header(request, TENANT_HEADER))),
        (task_id_var, task_id_var.set(task_id)),
        (task_name_var, task_name_var.set(getattr(task, "name", None))),
    ]
    if task_id:
        _task_tokens[task_id] = tokens
    _task_log.info("task started")


def _task_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    _task_log.info("task ended", extra={"state": state or "UNKNOWN"})
    for var, token in reversed(_task_tokens.pop(task_id or "", [])):
        try:
            var.reset(token)
        except ValueError:  # set in another context (should not happen); clear instead
            var.set(None)


def connect_celery_signals() -> None:
    """Connect the publish/prerun/postrun handlers (safe to call more than once)."""
    from celery import signals

    signals.before_task_publish.connect(
        _before_task_publish, weak=False, dispatch_uid="recsys.logs.publish"
    )
    signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="recsys.logs.prerun")
    signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="recsys.logs.postrun")
