"""``recsys train``, ``status``, ``models``, ``cancel`` and ``delete-model``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from shared.client.cli.data import parse_json_option, split_values
from shared.client.cli.main import EXIT_INTERRUPTED, EXIT_RUN_FAILED, CliState
from shared.client.cli.output import key_values, metrics_table, print_json, table
from shared.client.cli.progress import wait_for_run

STATUS_ORDER = [
    "model_id",
    "version",
    "status",
    "phase",
    "progress",
    "message",
    "start_timestamp",
    "end_timestamp",
    "counts",
    "data_batch_ids",
    "callback",
]
MODEL_COLUMNS = [
    "model_id",
    "serving_version",
    "versions",
    "status",
    "phase",
    "progress",
    "precision_at_k",
    "end_timestamp",
]


def parse_weights(values: tuple[str, ...]) -> dict[str, float] | None:
    """``TYPE=W`` pairs as the ``interaction_weights`` object."""
    if not values:
        return None
    weights: dict[str, float] = {}
    for value in values:
        name, sep, raw = value.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(raw)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not TYPE=WEIGHT (e.g. purchase=5)", param_hint="--weight"
            ) from None
    return weights


def build_train_body(options: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /train`` body from the command's options; unset options are left out."""
    body: dict[str, Any] = {}
    simple = {
        "model_id": "model_id",
        "max_age_days": "maximum_interaction_age_days",
        "callback_url": "callback_url",
        "source_type": "source_type",
        "target_type": "target_type",
    }
    for option, name in simple.items():
        if options.get(option) is not None:
            body[name] = options[option]
    tags = split_values(options.get("tags") or ())
    if tags:
        body["data_tags"] = tags
    filters = parse_json_option(options.get("filters"), "--filters")
    if filters is not None:
        body["data_filters"] = filters
    weights = parse_weights(options.get("weights") or ())
    if weights is not None:
        body["interaction_weights"] = weights
    hyper_names = {
        "loss": "loss",
        "components": "no_components",
        "epochs": "epochs",
        "learning_rate": "learning_rate",
        "item_alpha": "item_alpha",
        "user_alpha": "user_alpha",
        "max_sampled": "max_sampled",
        "random_state": "random_state",
    }
    hyper = {name: options[o] for o, name in hyper_names.items() if options.get(o) is not None}
    if hyper:
        body["hyperparameters"] = hyper
    if options.get("no_metadata_features"):
        body["use_metadata_features"] = False
    evaluation: dict[str, Any] = {}
    if options.get("holdout") is not None:
        evaluation["holdout"] = options["holdout"]
    if options.get("eval_max_sources") is not None:
        evaluation["max_sources"] = options["eval_max_sources"]
    if evaluation:
        body["evaluation"] = evaluation
    if options.get("dry_run"):
        body["dry_run"] = True
    if options.get("warm_start"):
        body["warm_start"] = True
    return body


def show_status(state: CliState, status: dict[str, Any]) -> None:
    """A status object as a key/value panel, then its metrics against the baseline."""
    ordered = {k: status[k] for k in STATUS_ORDER if k in status}
    ordered.update({k: v for k, v in status.items() if k not in ordered and k != "metrics"})
    key_values(state.out, ordered, title=f"Model {status.get('model_id', '')}")
    metrics = status.get("metrics")
    if isinstance(metrics, dict) and metrics:
        metrics_table(state.out, metrics)


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``train`` and ``tune`` share: model id, data selection, callback, types."""
    for option in reversed(SELECTION_OPTIONS):
        command = option(command)
    return command


SELECTION_OPTIONS = [
    click.option("--model-id", default=None, help="Model id; generated when absent."),
    click.option("--tag", "tags", multiple=True,
                 help="Use only batches with at least one tag."),
    click.option("--max-age-days", type=int, default=None,
                 help="Leave out older interactions."),
    click.option("--filters", default=None, metavar="JSON",
                 help="data_filters as JSON (or @file.json)."),
    click.option("--callback-url", default=None, help="URL called when the run ends."),
    click.option("--source-type", default=None, help="Entity type of sources (default user)."),
    click.option("--target-type", default=None, help="Entity type of targets (default item)."),
]


@click.command("train")
@selection_options
@click.option("--weight", "weights", multiple=True, metavar="TYPE=W",
              help="Interaction weight per type, e.g. purchase=5 (repeatable; 0 drops).")
@click.option("--loss", type=click.Choice(["warp", "bpr", "warp-kos"]), default=None)
@click.option("--components", type=int, default=None, help="no_components (1-512).")
@click.option("--epochs", type=int, default=None, help="Epochs (1-1000).")
@click.option("--learning-rate", type=float, default=None)
@click.option("--item-alpha", type=float, default=None)
@click.option("--user-alpha", type=float, default=None)
@click.option("--max-sampled", type=int, default=None)
@click.option("--random-state", type=int, default=None)
@click.option("--no-metadata-features", is_flag=True, help="Do not learn metadata features.")
@click.option("--holdout", type=float, default=None, help="Holdout fraction (0 turns it off).")
@click.option("--eval-max-sources", type=int, default=None,
              help="At most this many sources are evaluated.")
@click.option("--dry-run", is_flag=True, help="Validate and estimate, without training.")
@click.option("--warm-start", is_flag=True, help="Continue from the serving version.")
@click.option("--wait", is_flag=True, help="Show live progress until the run ends.")
@click.option("--poll-interval", type=float, default=1.0, show_default=True, hidden=True)
@click.pass_obj
def train(state: CliState, /, wait: bool, poll_interval: float, **options: Any) -> None:
    """Start a training run (and with --wait, watch it to the end)."""
    body = build_train_body(options)
    client = state.client()
    status = client.train(body)
    if options.get("dry_run"):
        if state.as_json:
            print_json(state.out, status)
        else:
            key_values(state.out, status, title="Dry run")
        return
    model_id = str(status.get("model_id"))
    if not wait:
        if state.as_json:
            print_json(state.out, status)
            return
        state.out.print(
            f"Training [bold]{model_id}[/] (version {status.get('version', '?')}) started; "
            f"`recsys status {model_id}` shows progress."
        )
        return
    # With --json, stdout carries only the JSON; the live progress goes to stderr.
    progress_console = Console(stderr=True) if state.as_json else state.out
    try:
        final = wait_for_run(
            client, model_id, progress_console, poll_interval=poll_interval, first=status
        )
    except KeyboardInterrupt:
        click.echo(
            f"\nStopped watching; the run goes on. `recsys status {model_id}` to check, "
            f"`recsys cancel {model_id}` to stop it.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if state.as_json:
        print_json(state.out, final)
    else:
        show_status(state, final)
    if final.get("status") != "completed":
        click.echo(
            f"recsys: error: training {model_id} ended in {final.get('phase')}: "
            f"{final.get('message') or 'no message'}",
            err=True,
        )
        sys.exit(EXIT_RUN_FAILED)


@click.command("status")
@click.argument("model_id")
@click.option("--wait", is_flag=True, help="Show live progress until the run ends.")
@click.pass_obj
def status(state: CliState, model_id: str, wait: bool) -> None:
    """Show a model's latest run: phase, progress, counts, metrics."""
    client = state.client()
    current = client.status(model_id)
    if wait and current.get("status") not in {"completed", "error"}:
        progress_console = Console(stderr=True) if state.as_json else state.out
        current = wait_for_run(client, model_id, progress_console, first=current)
    if state.as_json:
        print_json(state.out, current)
        return
    show_status(state, current)


@click.command("models")
@click.argument("model_id", required=False)
@click.pass_obj
def models(state: CliState, model_id: str | None) -> None:
    """List the tenant's models, or show one model's versions and last run."""
    client = state.client()
    if model_id is not None:
        detail = client.model(model_id)
        if state.as_json:
            print_json(state.out, detail)
            return
        last_run = detail.get("status")
        summary = {k: v for k, v in detail.items() if k != "status"}
        key_values(state.out, summary, title=f"Model {model_id}")
        if isinstance(last_run, dict):
            show_status(state, last_run)
        return
    listing = client.models()
    if state.as_json:
        print_json(state.out, listing)
        return
    rows = listing.get("models", listing) if isinstance(listing, dict) else listing
    if not isinstance(rows, list):
        key_values(state.out, listing)
        return
    flat = [_flatten_model(row) for row in rows if isinstance(row, dict)]
    table(state.out, flat, MODEL_COLUMNS, title="Models", empty="No models yet.")


def _flatten_model(row: dict[str, Any]) -> dict[str, Any]:
    """Lift the last run's fields to the top so one table shows them."""
    flat = dict(row)
    for nested in ("status", "last_run"):
        inner = row.get(nested)
        if isinstance(inner, dict):
            flat.pop(nested)
            for key in ("status", "phase", "progress", "end_timestamp", "version"):
                if key in inner and key not in flat:
                    flat[key] = inner[key]
            metrics = inner.get("metrics")
            if isinstance(metrics, dict) and "precision_at_k" in metrics:
                flat["precision_at_k"] = metrics["precision_at_k"]
    return flat


@click.command("cancel")
@click.argument("model_id")
@click.pass_obj
def cancel(state: CliState, model_id: str) -> None:
    """Stop a running or queued run (its status becomes error, phase cancelled)."""
    result = state.client().cancel(model_id)
    if state.as_json:
        print_json(state.out, result)
        return
    state.out.print(f"{model_id} ({result.get('phase', '?')}): {result.get('message', '')}")


@click.command("delete-model")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete_model(state: CliState, model_id: str, yes: bool) -> None:
    """Delete a model and its versions."""
    if not yes:
        click.confirm(f"Delete model {model_id} and every version?", abort=True)
    result = state.client().delete_model(model_id)
    if state.as_json:
        print_json(state.out, result)
        return
    state.out.print(f"Deleted model {model_id}.")


@click.command("webhook-secret")
@click.option("--rotate", is_flag=True, help="Replace the secret (receivers need the new one).")
@click.pass_obj
def webhook_secret(state: CliState, rotate: bool) -> None:
    """Print the tenant's webhook signing secret (admin scope)."""
    secret = state.client().webhook_secret(rotate=rotate)
    if state.as_json:
        print_json(state.out, {"secret": secret})
        return
    click.echo(secret)
