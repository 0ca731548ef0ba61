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
    "progress": "%",
    "precision_at_k": "p@k",
    "end_timestamp": "ended",
    "created_at": "created",
}
#: Columns of names and ids: kept on one line, shortened with "…" when the terminal is narrow.
ONE_LINE_COLUMNS = {"tenant", "name"}
#: Words up to this long are never broken across lines (statuses, numbers, dates).
WHOLE_WORD = 20
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d+(Z|[+-]\d\d:\d\d)?$")
_SHORT_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)?")


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
    grid = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True)
    cells = [[_spaced(cell(row.get(name))) for name in columns] for row in rows]
    headers = [HEADERS.get(name, name) for name in columns]
    ids = {i for i, name in enumerate(columns) if name.endswith("id") or name in ONE_LINE_COLUMNS}
    for i, width in enumerate(_widths(cells, headers, ids, out.width)):
        # ids stay on one line; other text wraps between words; what still does not fit
        # ends in "…" (never folded mid-word: "complet/ed"); --json shows everything
        grid.add_column(headers[i], width=width, overflow="ellipsis", no_wrap=i in ids)
    for row_cells in cells:
        grid.add_row(*row_cells)
    out.print(grid)


def _widths(cells: list[list[str]], headers: list[str], ids: set[int], total: int
            ) -> list[int]:
    """Column widths that fit ``total`` characters, computed here rather than by rich.

    rich shrinks the widest columns first and folds words to do so; here a column gives
    way only down to its longest word (at most :data:`WHOLE_WORD`), ids last, and an id
    gives way only when nothing else can.
    """
    count = len(headers)
    natural = [max([len(line) for r in cells for line in r[i].splitlines() or [""]]
                   + [len(headers[i])]) for i in range(count)]
    words = [max([len(w) for r in cells for w in r[i].split()] + [len(headers[i])])
             for i in range(count)]
    least = [len(headers[i]) if i in ids else min(words[i], WHOLE_WORD) for i in range(count)]
    widths = list(natural)
    excess = sum(widths) + 2 * count + 1 - total  # padding and edges: 2 per column, plus 1
    for group in ([i for i in range(count) if i not in ids], sorted(ids)):
        while excess > 0:
            surplus = [(widths[i] - least[i], i) for i in group if widths[i] > least[i]]
            if not surplus:
                break
            _, widest = max(surplus)
            widths[widest] -= 1
            excess -= 1
    return widths


def _spaced(text: str) -> str:
    """An ISO timestamp with a space for its ``T``, so a narrow column wraps it at the time."""
    if _SHORT_ISO.fullmatch(text):
        return text.replace("T", " ", 1)
    return text


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
