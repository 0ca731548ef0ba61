"""``recsys recommend``: a model's recommendations as a table, JSON or the API's CSV."""

from __future__ import annotations

import sys

import click

from shared.client.cli.data import parse_json_option, split_values
from shared.client.cli.main import CliState
from shared.client.cli.output import print_json, table

ROW_COLUMNS = ["source_id", "rank", "target_id", "score", "fallback"]


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
@click.pass_obj
def recommend(
    state: CliState,
    model_id: str,
    sources: tuple[str, ...],
    max_recommendations: int | None,
    as_csv: bool,
    include_seen: bool,
    metadata: str | None,
) -> None:
    """Recommend targets for sources of a trained model."""
    source_ids = split_values(sources)
    source_metadata = parse_json_option(metadata, "--metadata")
    if source_metadata is not None and not isinstance(source_metadata, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--metadata")
    client = state.client()
    if as_csv:
        if source_metadata is not None:
            raise click.UsageError("--metadata cannot be combined with --csv.")
        out = sys.stdout.buffer
        for chunk in client.recommend_csv_chunks(
            model_id, source_ids, max_recommendations=max_recommendations,
            exclude_seen=not include_seen,
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
        exclude_seen=not include_seen, source_metadata=source_metadata,
    )
    if state.as_json:
        print_json(state.out, result)
        return
    rows = result.get("recommendations") or []
    title = f"{result.get('model_id', model_id)} v{result.get('version', '?')}"
    table(state.out, rows, ROW_COLUMNS, title=title, empty="No recommendations.")
    if any(row.get("fallback") for row in rows):
        state.out.print("fallback = yes: made without the source's own history "
                        "(metadata features or most popular).")
