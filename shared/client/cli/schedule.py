"""``recsys schedule set|show|delete`` and ``recsys serve``: keeping a model fresh."""

from __future__ import annotations

from typing import Any

import click

from shared.client.cli.data import parse_json_option
from shared.client.cli.main import CliState
from shared.client.cli.output import key_values, print_json, table
from shared.client.cli.training import build_train_body
from shared.client.http import RecsysClient


def _path(model_id: str, tail: str) -> str:
    from urllib.parse import quote

    return f"/models/{quote(model_id, safe='')}/{tail}"


def _call(client: RecsysClient, method: str, path: str, body: Any = None) -> Any:
    response = client.request(method, path, json_body=body)
    return response.json() if response.content else None


def _show(state: CliState, schedule: dict[str, Any]) -> None:
    if state.as_json:
        print_json(state.out, schedule)
        return
    view = {k: v for k, v in schedule.items() if k != "recent_ticks"}
    key_values(state.out, view, title=f"Schedule of {schedule.get('model_id', '')}")
    ticks = schedule.get("recent_ticks") or []
    if ticks:
        table(state.out, ticks, ["at", "outcome", "version", "message"], title="Recent ticks")


@click.group("schedule")
def schedule_group() -> None:
    """Retrain a model on a clock: set, show or delete its schedule."""


@schedule_group.command("set")
@click.argument("model_id")
@click.option("--every", "interval", type=float, default=None, metavar="MINUTES",
              help="Tick every this many minutes (at least 1).")
@click.option("--cron", default=None, help="5-field cron expression in UTC, e.g. '0 3 * * *'.")
@click.option("--tag", "tags", multiple=True, help="Train on batches with at least one tag.")
@click.option("--weight", "weights", multiple=True, metavar="TYPE=W",
              help="Interaction weight per type (repeatable).")
@click.option("--epochs", type=int, default=None, help="Epochs of each run.")
@click.option("--callback-url", default=None, help="URL called when each run ends.")
@click.option("--train", "train_json", default=None, metavar="JSON",
              help="The whole POST /train body (without model_id) as JSON or @file.json; "
                   "the flags above are merged into it.")
@click.option("--tune", "trials", type=int, default=None, metavar="TRIALS",
              help="Run a search of this many trials each tick instead of one run "
                   "(a POST /tune body; the best version serves).")
@click.option("--warm-start", is_flag=True, help="Continue from the serving version.")
@click.option("--always", is_flag=True,
              help="Train on every tick, even when no new batch arrived.")
@click.pass_obj
def schedule_set(state: CliState, /, model_id: str, interval: float | None, cron: str | None,
                 train_json: str | None, trials: int | None, warm_start: bool,
                 always: bool, **options: Any) -> None:
    """Create or replace MODEL_ID's schedule."""
    if (interval is None) == (cron is None):
        raise click.UsageError("give exactly one of --every and --cron")
    body: dict[str, Any] = dict(parse_json_option(train_json, "--train") or {})
    body.update(build_train_body(options))
    if trials is not None:
        body["search"] = {**body.get("search", {}), "trials": trials}
    request: dict[str, Any] = {"tune" if trials is not None else "train": body,
                               "warm_start": warm_start, "only_with_new_data": not always}
    request.update({"interval_minutes": interval} if interval is not None else {"cron": cron})
    _show(state, _call(state.client(), "PUT", _path(model_id, "schedule"), request))


@schedule_group.command("show")
@click.argument("model_id")
@click.pass_obj
def schedule_show(state: CliState, model_id: str) -> None:
    """Show MODEL_ID's schedule, its next tick and its recent ticks."""
    _show(state, _call(state.client(), "GET", _path(model_id, "schedule")))


@schedule_group.command("delete")
@click.argument("model_id")
@click.pass_obj
def schedule_delete(state: CliState, model_id: str) -> None:
    """Remove MODEL_ID's schedule (a run already started goes on)."""
    result = _call(state.client(), "DELETE", _path(model_id, "schedule"))
    if state.as_json:
        print_json(state.out, result)
        return
    state.out.print(f"Deleted the schedule of {model_id}.")


@click.command("serve")
@click.argument("model_id")
@click.argument("version", type=int)
@click.option("--no-pin", is_flag=True,
              help="Let the next completed run replace it (default: pinned).")
@click.pass_obj
def serve(state: CliState, model_id: str, version: int, no_pin: bool) -> None:
    """Serve a kept VERSION of MODEL_ID at once (pinned until the next serve)."""
    model = _call(state.client(), "POST", _path(model_id, "serve"),
                  {"version": version, "pin": not no_pin})
    if state.as_json:
        print_json(state.out, model)
        return
    pinned = " (pinned)" if model.get("pinned") else ""
    state.out.print(f"{model_id} now serves version {model.get('serving_version')}{pinned}.")
