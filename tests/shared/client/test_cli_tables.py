"""CLI tables fit an 80-column terminal without breaking words."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from shared.client.cli.data import BATCH_COLUMNS, batch_rows
from shared.client.cli.output import table
from shared.client.cli.training import MODEL_COLUMNS

MODELS = [
    {"model_id": "demo-shop-recommender-model", "serving_version": 3, "versions": [1, 2, 3],
     "status": "completed", "phase": "done", "progress": 100, "precision_at_k": 0.123456,
     "end_timestamp": "2026-11-30T01:30:12.123456Z"},
    {"model_id": "m2", "serving_version": None, "versions": [], "status": "running",
     "phase": "loading_data", "progress": 5, "precision_at_k": None, "end_timestamp": None},
]
BATCHES = batch_rows([
    {"batch_id": "b_0123456789abc0123deadbeef", "kind": "interactions",
     "tags": ["shop", "2024-05", "imported"], "entity_count": 0, "interaction_count": 1234567,
     "bytes": 98765432, "timestamp": "2026-11-30T01:30:12.123456Z"},
])


def _render(rows: list[dict[str, Any]], columns: list[str], width: int) -> list[str]:
    buffer = io.StringIO()
    table(Console(file=buffer, width=width, color_system=None), rows, columns, title="T")
    return buffer.getvalue().splitlines()


@pytest.mark.parametrize(("rows", "columns", "words"), [
    (MODELS, MODEL_COLUMNS, ["completed", "running", "loading_data", "0.1235", "100",
                             "2026-11-30", "01:30:12Z", "1,", "serving", "p@k"]),
    (BATCHES, BATCH_COLUMNS, ["interactions", "1234567", "98765432", "2024-05,", "imported",
                              "2026-11-30", "timestamp"]),
])
def test_tables_fit_80_columns_and_keep_words_whole(
    rows: list[dict[str, Any]], columns: list[str], words: list[str]
) -> None:
    lines = _render(rows, columns, 80)
    assert max(len(line) for line in lines) <= 80
    tokens = {token for line in lines for token in line.split()}
    for word in words:
        assert word in tokens, f"{word!r} was broken or cut: {lines}"


def test_an_id_too_long_for_the_terminal_ends_in_an_ellipsis() -> None:
    lines = _render(MODELS, MODEL_COLUMNS, 80)
    first_row = next(line for line in lines if "completed" in line)
    shown = first_row.split()[0]
    assert shown.endswith("…") and "demo-shop-recommender-model".startswith(shown[:-1])


def test_a_wide_terminal_shows_ids_whole() -> None:
    lines = _render(MODELS + BATCHES, ["model_id", "batch_id", "status"], 120)
    tokens = {token for line in lines for token in line.split()}
    assert {"demo-shop-recommender-model", "b_0123456789abc0123deadbeef"} <= tokens
