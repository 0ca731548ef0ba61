"""``recsys recommend`` and ``recsys similar``: a model's answers as a table, JSON or CSV.

Shaping flags map one to one onto the API's fields: ``--filter JSON`` (a condition
object or a list of them, repeatable; ``@file.json`` reads a file) to ``filters``,
``--include``/``--exclude ID`` to ``include_ids``/``exclude_ids``, ``--new-targets``
to ``new_targets: include``, ``--explain`` and ``--with-entities`` to their fields.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shared.client.cli.data import parse_json_option, split_values
from shared.client.cli.main import CliState, cli
from shared.client.cli.output import print_json, table

ROW_COLUMNS = ["source_id", "rank", "target_id", "score", "fallback"]
SIMILAR_COLUMNS = ["target_id", "rank", "similar_id", "score", "fallback"]
F = TypeVar("F", bound=Callable[..., Any])


def shaping_options(command: F) -> F:
    """The ``--filter``, ``--include`` and ``--exclude`` flags both commands take."""
    command = click.option("--exclude", "excluded", multiple=True, metavar="ID",
                           help="Never return this target (repeat or comma-separate).")(command)
    command = click.option("--include", "included", multiple=True, metavar="ID",
                           help="Rank only these targets (repeat or comma-separate).")(command)
    return click.option(
        "--filter", "filters", multiple=True, metavar="JSON",
        help='Condition(s) on targets, e.g. \'{"field": "metadata.stock", "op": "gt", '
        '"value": 0}\' (repeatable; a JSON list also works; @file.json reads a file).',
    )(command)


def shape(filters: tuple[str, ...], included: tuple[str, ...],
          excluded: tuple[str, ...]) -> dict[str, Any]:
    """The API fields of the shaping flags (only those given)."""
    conditions: list[Any] = []
    for raw in filters:
        parsed = parse_json_option(raw, "--filter")
        if not isinstance(parsed, dict | list):
            raise click.BadParameter("must be a JSON object or list", param_hint="--filter")
        conditions.extend(parsed if isinstance(parsed, list) else [parsed])
    options: dict[str, Any] = {}
    if filters:
        options["filters"] = conditions
    if included:
        options["include_ids"] = split_values(included)
    if excluded:
        options["exclude_ids"] = split_values(excluded)
    return options


def _json_object(raw: str | None, option: str) -> dict[str, Any] | None:
    value = parse_json_option(raw, option)
    if value is not None and not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


@click.command("recommend")
@click.argument("model_id")
@click.option("--source", "sources", multiple=True,
              help="Source id (repeat or comma-separate); absent with --csv: every source.")
@click.option("--max", "max_recommendations", type=int, default=None,
              help="Recommendations per source (default 10, at most 1000).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the API's CSV (header row first).")
@click.option("--include-seen", is_flag=True,
              help="Keep targets the source already interacted with.")
@click.option("--metadata", default=None, metavar="JSON",
              help="Metadata of a new source the model never saw (cold start).")
@shaping_options
@click.option("--new-targets", is_flag=True,
              help="Also score targets with an entity record but no interactions.")
@click.option("--explain", is_flag=True,
              help="Show up to 3 targets of the source's history behind each row.")
@click.option("--with-entities", is_flag=True, help="Show each target's name and media_url.")
@click.pass_obj
def recommend(
    state: CliState, model_id: str, sources: tuple[str, ...], max_recommendations: int | None,
    as_csv: bool, include_seen: bool, metadata: str | None, filters: tuple[str, ...],
    included: tuple[str, ...], excluded: tuple[str, ...], new_targets: bool, explain: bool,
    with_entities: bool,
) -> None:
    """Recommend targets for sources of a trained model."""
    source_ids = split_values(sources)
    source_metadata = _json_object(metadata, "--metadata")
    options = shape(filters, included, excluded)
    options |= {"new_targets": "include"} if new_targets else {}
    options |= {"explain": True} if explain else {}
    options |= {"with_entities": True} if with_entities else {}
    client = state.client()
    if as_csv:
        if source_metadata is not None:
            raise click.UsageError("--metadata cannot be combined with --csv.")
        out = sys.stdout.buffer
        for chunk in client.recommend_csv_chunks(
            model_id, source_ids, max_recommendations=max_recommendations,
            exclude_seen=not include_seen, options=options,
        ):
            out.write(chunk)
        out.flush()
        return
    if not source_ids:
        raise click.UsageError(
            "Give --source (repeatable), or --csv to stream every source's recommendations."
        )
    result = client.recommend(
        model_id, source_ids, max_recommendations=max_recommendations,
        exclude_seen=not include_seen, source_metadata=source_metadata, options=options,
    )
    if state.as_json:
        print_json(state.out, result)
        return
    rows = result.get("recommendations") or []
    extra = ["new_target"] * new_targets + ["name"] * with_entities
    if explain:
        extra.append("because")
        rows = [{**row, "because": ", ".join(row.get("because") or [])} for row in rows]
    title = f"{result.get('model_id', model_id)} v{result.get('version', '?')}"
    table(state.out, rows, ROW_COLUMNS + extra, title=title, empty="No recommendations.")
    if result.get("unknown_ids"):
        state.out.print("Unknown --include ids: " + ", ".join(result["unknown_ids"]))
    if any(row.get("fallback") for row in rows):
        state.out.print("fallback = yes: made without the source's own history "
                        "(metadata features or most popular).")


@click.command("similar")
@click.argument("model_id")
@click.option("--target", "targets", multiple=True, required=True,
              help="Target id (repeat or comma-separate).")
@click.option("--max", "max_recommendations", type=int, default=None,
              help="Similar targets per target (default 10, at most 1000).")
@click.option("--csv", "as_csv", is_flag=True, help="Print the API's CSV (header row first).")
@click.option("--metadata", default=None, metavar="JSON",
              help="Metadata of a target the model never saw.")
@shaping_options
@click.pass_obj
def similar(
    state: CliState, model_id: str, targets: tuple[str, ...], max_recommendations: int | None,
    as_csv: bool, metadata: str | None, filters: tuple[str, ...], included: tuple[str, ...],
    excluded: tuple[str, ...],
) -> None:
    """Targets most like the given ones (cosine of the model's target representations)."""
    target_ids = split_values(targets)
    if not target_ids:
        raise click.UsageError("Give --target (repeatable).")
    result = state.client().similar(
        model_id, target_ids, max_recommendations=max_recommendations,
        output_format="csv" if as_csv else "json",
        target_metadata=_json_object(metadata, "--metadata"),
        options=shape(filters, included, excluded),
    )
    if as_csv:
        sys.stdout.write(result)
        sys.stdout.flush()
    elif state.as_json:
        print_json(state.out, result)
    else:
        rows = result.get("similar_items") or []
        title = f"{result.get('model_id', model_id)} v{result.get('version', '?')}"
        table(state.out, rows, SIMILAR_COLUMNS, title=title, empty="No similar items.")


# The package lists its commands in __init__; this one is registered beside recommend.
cli.add_command(similar)
