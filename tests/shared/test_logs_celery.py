"""Guards on what shared/logs.py's RoutineFilter relies on in Celery's own log lines.

The filter drops the routine lines of housekeeping tasks by logger name, the task name
in the record's args and Celery's format-string constants. If a Celery release logs
those lines another way, the lines would quietly come back (or others vanish); these
tests fail first, saying what changed.
"""

from __future__ import annotations

import inspect
import logging
import re

import celery
import celery.beat
import celery.worker.strategy
from celery.app import trace

from shared.contracts import TASK_SCAN_CALLBACKS, TASK_TRAIN
from shared.logs import RoutineFilter

_VERSION = f"celery {celery.__version__}"


def test_celery_still_defines_the_received_and_succeeded_formats() -> None:
    for name in ("LOG_RECEIVED", "LOG_SUCCESS"):
        value = getattr(trace, name, None)
        assert isinstance(value, str), (
            f"{_VERSION}: celery.app.trace.{name} is gone; shared/logs.py's RoutineFilter "
            "compares records with it")
        assert "%(name)s" in value, (
            f"{_VERSION}: celery.app.trace.{name} no longer formats the task name "
            "from the record's args, which RoutineFilter reads")


def test_celery_logs_received_and_succeeded_with_those_formats_and_the_task_name() -> None:
    strategy = inspect.getsource(celery.worker.strategy)
    assert re.search(r"info\(\s*_app_trace\.LOG_RECEIVED,\s*context", strategy), (
        f"{_VERSION}: celery.worker.strategy no longer logs app.trace.LOG_RECEIVED; "
        "RoutineFilter would keep every housekeeping 'received' line")
    assert "'name': req.name" in strategy, (
        f"{_VERSION}: celery.worker.strategy's received line no longer carries 'name'")
    tracer = inspect.getsource(trace)
    assert re.search(r"info\(\s*LOG_SUCCESS,\s*\{", tracer), (
        f"{_VERSION}: celery.app.trace no longer logs LOG_SUCCESS with a dict of args; "
        "RoutineFilter would keep every housekeeping 'succeeded' line")


def test_celery_beat_still_passes_the_task_name_as_an_arg() -> None:
    source = inspect.getsource(celery.beat.Scheduler.apply_entry)
    assert re.search(r"info\(\s*'Scheduler: Sending due task %s \(%s\)',\s*entry\.name,"
                     r"\s*entry\.task\)", source), (
        f"{_VERSION}: celery.beat.Scheduler.apply_entry no longer logs the due task's name "
        "as an arg; RoutineFilter reads it there")


def _record(logger: str, msg: str, args: object) -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, msg, None, None)
    record.args = args  # type: ignore[assignment]
    return record


def test_the_filter_goes_by_celerys_format_not_by_words() -> None:
    keep = RoutineFilter()
    routine = {"id": "t1", "name": TASK_SCAN_CALLBACKS, "return_value": "1", "runtime": 0.1}
    # Celery's success line of a housekeeping task is dropped
    assert not keep.filter(_record("celery.app.trace", trace.LOG_SUCCESS, routine))
    # another line of the same task that happens to say "succeeded" is kept
    retry = {"id": "t1", "name": TASK_SCAN_CALLBACKS, "exc": "probe succeeded, retrying"}
    assert keep.filter(_record("celery.app.trace", trace.LOG_RETRY, retry))
    # the same success line of a training run is kept
    assert keep.filter(_record("celery.app.trace", trace.LOG_SUCCESS,
                               {**routine, "name": TASK_TRAIN}))
