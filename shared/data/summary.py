"""Totals of a data selection: the ``GET``/``POST /dataset`` body, and the run's emptiness check.

Reads interaction batches one at a time, and only the columns a summary needs,
through the same selection a training run uses (:mod:`shared.data.selection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis

from shared.data.batches import BatchMeta
from shared.data.filters import as_array
from shared.data.selection import DataSpec, SelectedEntities, implied_count, selected_batches
from shared.storage import Storage


def _counts_by_type(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("type"))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                strict=True)
    return dict(sorted(pairs))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


class _Totals:
    """The /dataset figures of interactions, added up batch by batch."""

    def __init__(self) -> None:
        self.rows = 0
        self.by_type: dict[str, int] = {}
        self.ids = {"source_id": pa.array([], pa.string()), "target_id": pa.array([], pa.string())}
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.without_timestamp = 0

    def add(self, table: pa.Table) -> None:
        """Count the rows of ``table`` in."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        for kind, count in _counts_by_type(table).items():
            self.by_type[kind] = self.by_type.get(kind, 0) + count
        for role, seen in self.ids.items():
            both = pa.chunked_array([seen, pc.unique(table.column(role))], pa.string())
            self.ids[role] = as_array(pc.unique(both))
        ts = table.column("timestamp")
        bounds = pc.min_max(ts)
        for name, value in (("first", bounds["min"].as_py()), ("last", bounds["max"].as_py())):
            current = getattr(self, name)
            if value is not None and (current is None or (value < current if name == "first"
                                                          else value > current)):
                setattr(self, name, value)
        self.without_timestamp += ts.null_count

    def summary(self, metas: Sequence[BatchMeta], entities: SelectedEntities) -> dict[str, Any]:
        """The /dataset body."""
        return {
            "batch_count": len(metas),
            "bytes": sum(m.bytes for m in metas),
            "batch_ids": [m.batch_id for m in metas],
            "entities": {"total": entities.table.num_rows,
                         "by_type": _counts_by_type(entities.table)},
            "interactions": {"total": self.rows, "by_type": dict(sorted(self.by_type.items()))},
            "sources": len(self.ids["source_id"]),
            "targets": len(self.ids["target_id"]),
            "implied_entities": {
                "sources": implied_count(self.ids["source_id"], entities.described),
                "targets": implied_count(self.ids["target_id"], entities.described),
            },
            "timestamps": {
                "min": _iso(self.first),
                "max": _iso(self.last),
                "without_timestamp": self.without_timestamp,
            },
        }


#: Interaction columns a summary reads when no interaction filter needs the others.
_SUMMARY_COLUMNS = ("type", "source_id", "target_id", "timestamp")


def count_interactions(storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec,
                       now: datetime) -> int:
    """How many interactions a run with ``spec`` would use (read batch by batch)."""
    columns = None if spec.interaction_filters else _SUMMARY_COLUMNS
    _, _, batches, _ = selected_batches(storage, r, tenant, spec, now, columns)
    return sum(table.num_rows for table in batches)


def summarise_data(storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec,
                   now: datetime) -> dict[str, Any]:
    """The /dataset body: totals of what a run with the same selection would use.

    Reads interaction batches one at a time, and only the columns it needs.
    """
    columns = None if spec.interaction_filters else _SUMMARY_COLUMNS
    metas, entities, batches, vanished = selected_batches(storage, r, tenant, spec, now, columns)
    totals = _Totals()
    for table in batches:
        totals.add(table)
    return totals.summary([m for m in metas if m.batch_id not in vanished], entities)
