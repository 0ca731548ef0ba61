"""Rendering API answers for a terminal: tables, key/value panels, metrics, or raw JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def print_json(out: Console, value: Any) -> None:
    """Raw JSON on stdout, unstyled, for scripts (``--json``)."""
    out.file.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
    out.file.flush()


#: Shorter column headers for long field names, so tables fit a terminal.
HEADERS = {
    "entity_count": "entities",
    "interaction_count": "interactions",
    "serving_version": "serving",
    "precision_at_k": "precision@k",
    "end_timestamp": "ended",
}
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d+(Z|[+-]\d\d:\d\d)?$")


def cell(value: Any) -> str:
    """One table cell: lists joined, objects as compact JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    text = str(value)
    match = _ISO.fullmatch(text)
    return match.group(1) + (match.group(2) or "") if match else text


def table(
    out: Console,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    """A table of ``rows``; columns default to every key in order of first appearance."""
    if not rows:
        out.print(empty)
        return
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    else:
        present = {key for row in rows for key in row}
        columns = [c for c in columns if c in present]
    grid = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD)
    for name in columns:
        # Everything folds rather than being cut: a narrow terminal never hides digits.
        grid.add_column(HEADERS.get(name, name), overflow="fold")
    for row in rows:
        grid.add_row(*(cell(row.get(name)) for name in columns))
    out.print(grid)


def flatten(value: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested objects as ``a.b.c`` keys, in order."""
    items: list[tuple[str, Any]] = []
    for key, inner in value.items():
        name = f"{prefix}{key}"
        if isinstance(inner, Mapping) and inner:
            items.extend(flatten(inner, name + "."))
        else:
            items.append((name, inner))
    return items


def key_values(out: Console, value: Mapping[str, Any], title: str | None = None) -> None:
    """A two-column table of a (flattened) object."""
    grid = Table(title=title, show_header=False, box=None, padding=(0, 2, 0, 0))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, inner in flatten(value):
        grid.add_row(key, cell(inner))
    out.print(grid)


def metrics_table(out: Console, metrics: Mapping[str, Any]) -> None:
    """The holdout metrics next to the most-popular baseline."""
    k = metrics.get("k", "k")
    grid = Table(title="Holdout evaluation", header_style="bold")
    grid.add_column("metric")
    grid.add_column("model", justify="right")
    grid.add_column("popularity baseline", justify="right")
    grid.add_row(
        f"precision@{k}",
        _num(metrics.get("precision_at_k")),
        _num(metrics.get("baseline_precision_at_k")),
    )
    grid.add_row(
        f"recall@{k}",
        _num(metrics.get("recall_at_k")),
        _num(metrics.get("baseline_recall_at_k")),
    )
    grid.add_row("AUC", _num(metrics.get("auc")), _num(metrics.get("baseline_auc")))
    out.print(grid)
    model, base = metrics.get("precision_at_k"), metrics.get("baseline_precision_at_k")
    if isinstance(model, int | float) and isinstance(base, int | float) and base > 0:
        out.print(f"precision@{k} is {model / base:.2f}x the popularity baseline's.")
    if metrics.get("evaluated_sources") is not None:
        out.print(f"Evaluated on {metrics['evaluated_sources']} sources.")


def _num(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.4f}"
    return "-"
