"""``recsys tune``: start a hyperparameter search; with ``--wait``, a live table of its trials.

The table (rich's ``Live``) is redrawn from ``GET /status`` on every poll: one row
per trial (state, worker, seconds, parameters, value) and the best so far in the
caption. The exit codes are those of ``recsys train``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shared.client.cli.data import parse_json_option
from shared.client.cli.main import EXIT_INTERRUPTED, EXIT_RUN_FAILED, CliState
from shared.client.cli.output import print_json
from shared.client.cli.progress import FINAL_STATES, OUTAGE_GRACE, POLL_INTERVAL, _transient
from shared.client.cli.training import build_train_body, selection_options, show_status
from shared.client.http import ApiError, ConnectionFailed, RecsysClient

STATE_STYLE = {"complete": "green", "running": "cyan", "failed": "red", "cancelled": "yellow",
               "queued": "dim"}


def _value(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.1f}"


def _params(params: Any) -> str:
    if not isinstance(params, dict):
        return ""
    return ", ".join(f"{k}={float(v):.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def trials_table(status: dict[str, Any]) -> Table:
    """The trials of a status object's ``tuning`` field, with the best so far."""
    tuning = status.get("tuning") or {}
    best = tuning.get("best")
    title = (f"{status.get('model_id')}: {tuning.get('trials_done', 0)} of "
             f"{tuning.get('trials_total', '?')} trials done ({status.get('phase')}, "
             f"{status.get('progress', 0)}%)")
    caption = ("best so far: none yet" if not best else
               f"best so far: trial {best['trial']}, {tuning.get('metric')} "
               f"{_value(best['value'])} ({_params(best['params'])})")
    table = Table(title=title, caption=caption, expand=False)
    for column in ("trial", "state", tuning.get("metric") or "value", "epochs", "seconds",
                   "worker", "parameters"):
        table.add_column(column, overflow="fold")
    best_trial = best["trial"] if best else None
    for trial in tuning.get("trials", []):
        state = str(trial.get("state"))
        style = "bold" if trial.get("trial") == best_trial else ""
        table.add_row(str(trial.get("trial")), f"[{STATE_STYLE.get(state, '')}]{state}[/]",
                      _value(trial.get("value")), str(trial.get("epochs") or ""),
                      _seconds(trial.get("seconds")), str(trial.get("worker") or ""),
                      _params(trial.get("params")), style=style)
    return table


def watch_search(client: RecsysClient, model_id: str, console: Console,
                 first: dict[str, Any], poll_interval: float = POLL_INTERVAL) -> dict[str, Any]:
    """Redraw the trials table until the run ends; its final status."""
    status, failing_since = first, None
    with Live(trials_table(status), console=console, refresh_per_second=4) as live:
        while status.get("status") not in FINAL_STATES:
            time.sleep(poll_interval)
            try:
                status = client.status(model_id)
            except (ApiError, ConnectionFailed) as exc:  # wait out a restart or a 429
                failing_since = failing_since or time.monotonic()
                if not _transient(exc) or time.monotonic() - failing_since > OUTAGE_GRACE:
                    raise
                continue
            failing_since = None
            live.update(trials_table(status))
    return status


@click.command("tune")
@selection_options
@click.option("--loss", type=click.Choice(["warp", "bpr", "warp-kos"]), default=None,
              help="Loss when the space does not search it.")
@click.option("--epochs", type=int, default=None, help="Epochs of every trial (1-1000).")
@click.option("--holdout", type=float, default=None, help="Holdout fraction (above 0).")
@click.option("--trials", type=int, default=None, help="Trials (1-200, default 20).")
@click.option("--metric", default=None,
              help="precision_at_k (default), recall_at_k, ndcg_at_k, map_at_k or auc.")
@click.option("--space", default=None, metavar="JSON",
              help='Search space as JSON (or @file.json), e.g. {"no_components": [16, 128]}.')
@click.option("--parallelism", type=int, default=None, help="Most trials at once.")
@click.option("--wait", is_flag=True, help="Show the live trials table until the run ends.")
@click.option("--poll-interval", type=float, default=POLL_INTERVAL, show_default=True,
              hidden=True)
@click.pass_obj
def tune(state: CliState, /, wait: bool, poll_interval: float, trials: int | None,
         metric: str | None, space: str | None, parallelism: int | None,
         **options: Any) -> None:
    """Search hyperparameters; the best are fit on all the data and served."""
    body = build_train_body(options)
    search: dict[str, Any] = {}
    for name, value in (("trials", trials), ("metric", metric), ("parallelism", parallelism),
                        ("space", parse_json_option(space, "--space"))):
        if value is not None:
            search[name] = value
    if search:
        body["search"] = search
    client = state.client()
    status: dict[str, Any] = client.request("POST", "/tune", json_body=body).json()
    model_id = str(status.get("model_id"))
    if not wait:
        if state.as_json:
            print_json(state.out, status)
        else:
            state.out.print(f"Tuning [bold]{model_id}[/] (version {status.get('version')}) "
                            f"started; `recsys status {model_id}` shows its trials.")
        return
    console = Console(stderr=True) if state.as_json else state.out
    try:
        final = watch_search(client, model_id, console, status, poll_interval)
    except KeyboardInterrupt:
        click.echo(f"\nStopped watching; the search goes on. `recsys cancel {model_id}` "
                   "stops it.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if state.as_json:
        print_json(state.out, final)
    else:
        show_status(state, {k: v for k, v in final.items() if k != "tuning"})
    if final.get("status") != "completed":
        click.echo(f"recsys: error: tuning {model_id} ended in {final.get('phase')}: "
                   f"{final.get('message') or 'no message'}", err=True)
        sys.exit(EXIT_RUN_FAILED)
