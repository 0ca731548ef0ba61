"""``recsys data`` (upload, list, delete batches) and ``recsys dataset`` (totals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shared.client.cli.main import CliState
from shared.client.cli.output import key_values, print_json, table

BATCH_COLUMNS = ["batch_id", "kind", "tags", "rows", "bytes", "timestamp"]


def batch_rows(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches for a table: one ``rows`` count (entities or interactions, by kind)."""
    return [
        {**b, "rows": int(b.get("entity_count") or 0) + int(b.get("interaction_count") or 0)}
        for b in batches
    ]


def parse_json_option(raw: str | None, option: str) -> Any:
    """A JSON-valued option (``@path`` reads it from a file), or a usage error naming it."""
    if raw is None:
        return None
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {raw[1:]} ({exc.strerror})",
                                     param_hint=option) from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint=option) from exc


def split_values(values: tuple[str, ...]) -> list[str]:
    """Repeated options, each possibly comma-separated, as one list."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@click.group("data")
def data_group() -> None:
    """Upload, list and delete data batches."""


@data_group.command("upload")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--tag", "tags", multiple=True, help="Tag the batches (repeat, or comma-separate).")
@click.pass_obj
def upload(state: CliState, files: tuple[Path, ...], tags: tuple[str, ...]) -> None:
    """Upload CSV files (entities or interactions, told from the header); one batch per file."""
    batches = state.client().upload(list(files), split_values(tags))
    if state.as_json:
        print_json(state.out, batches)
        return
    table(state.out, batch_rows(batches), BATCH_COLUMNS, title="Stored batches")
    entities = sum(int(b.get("entity_count") or 0) for b in batches)
    interactions = sum(int(b.get("interaction_count") or 0) for b in batches)
    state.out.print(
        f"{len(batches)} batch(es): {entities} entities, {interactions} interactions."
    )


@data_group.command("list")
@click.option("--tag", "tags", multiple=True, help="Only batches carrying all these tags.")
@click.option("--batch-id", "batch_ids", multiple=True, help="Only these batches.")
@click.pass_obj
def list_(state: CliState, tags: tuple[str, ...], batch_ids: tuple[str, ...]) -> None:
    """List stored batches (metadata only)."""
    batches = state.client().list_batches(split_values(tags), split_values(batch_ids))
    if state.as_json:
        print_json(state.out, batches)
        return
    table(state.out, batch_rows(batches), BATCH_COLUMNS, empty="No batches.")


@data_group.command("delete")
@click.option("--tag", "tags", multiple=True, help="Delete batches carrying all these tags.")
@click.option("--batch-id", "batch_ids", multiple=True, help="Delete these batches.")
@click.pass_obj
def delete(state: CliState, tags: tuple[str, ...], batch_ids: tuple[str, ...]) -> None:
    """Delete batches by tag and/or id; models already trained keep working."""
    tag_list, id_list = split_values(tags), split_values(batch_ids)
    if not tag_list and not id_list:
        raise click.UsageError("Give --tag or --batch-id (deleting everything is not allowed).")
    batches = state.client().delete_batches(tag_list, id_list)
    if state.as_json:
        print_json(state.out, batches)
        return
    table(state.out, batch_rows(batches), BATCH_COLUMNS, title="Deleted batches",
          empty="Nothing matched.")
    if batches:
        state.out.print(f"Deleted {len(batches)} batch(es).")


@click.command("dataset")
@click.option("--tag", "tags", multiple=True, help="Only batches carrying at least one tag.")
@click.option("--max-age-days", type=click.IntRange(min=1), default=None,
              help="Leave out interactions older than this.")
@click.option("--filters", default=None, metavar="JSON",
              help='data_filters (or @file.json), e.g. \'{"entities": [{"field": "type", '
                   '"op": "eq", "value": "item"}]}\'.')
@click.pass_obj
def dataset(
    state: CliState, tags: tuple[str, ...], max_age_days: int | None, filters: str | None
) -> None:
    """Show what a training run with these selections would use."""
    summary = state.client().dataset(
        split_values(tags) or None, max_age_days, parse_json_option(filters, "--filters")
    )
    if state.as_json:
        print_json(state.out, summary)
        return
    key_values(state.out, summary, title="Dataset")
