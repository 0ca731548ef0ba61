"""What the Overview page shows: batches by tag and kind, dataset totals, interactions per day.

Batches and totals come from the same functions as ``GET /data_batch`` and
``GET /dataset``; uploads go through the API's own multipart path. Only the
per-day histogram is new: it reads the timestamp column of each interaction
batch (nothing else) and counts rows per UTC day with pyarrow.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from api.context import services
from shared.data.batches import BatchMeta, list_batches
from shared.data.selection import DataSpec
from shared.data.summary import summarise_data
from shared.storage import batch_path

#: Label of the group of batches uploaded without tags.
UNTAGGED = "(no tag)"
#: Most interaction batches the per-day chart reads (the newest ones), so a page stays fast.
MAX_CHART_BATCHES = 500


def batches(tenant: str) -> list[BatchMeta]:
    """Every batch of the tenant, newest first."""
    return list(reversed(list_batches(services().redis, tenant)))


def by_tag_and_kind(metas: list[BatchMeta]) -> list[dict[str, Any]]:
    """One row per (tag, kind): batch count, rows and bytes; a batch counts under each tag."""
    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"batches": 0, "rows": 0, "bytes": 0})
    for meta in metas:
        for tag in meta.tags or (UNTAGGED,):
            group = groups[(tag, meta.kind)]
            group["batches"] += 1
            group["rows"] += meta.rows
            group["bytes"] += meta.bytes
    return [{"tag": tag, "kind": kind, **groups[(tag, kind)]} for tag, kind in sorted(groups)]


def totals(tenant: str) -> dict[str, Any]:
    """The ``GET /dataset`` body for all the tenant's data."""
    svc = services()
    return summarise_data(svc.storage, svc.redis, tenant, DataSpec.from_request({}),
                          datetime.now(UTC))


def interactions_per_day(tenant: str, metas: list[BatchMeta]) -> dict[str, list[Any]]:
    """``{"days": [unix seconds of each UTC midnight], "counts": [...]}``, days in order."""
    storage = services().storage
    counts: dict[int, int] = defaultdict(int)
    chosen = [m for m in metas if m.kind == "interactions"][:MAX_CHART_BATCHES]
    for meta in chosen:
        try:
            table = pq.read_table(storage.full_path(batch_path(tenant, meta.batch_id)),
                                  columns=["timestamp"], filesystem=storage.fs)
        except (FileNotFoundError, OSError):  # deleted meanwhile: the chart skips it
            continue
        stamps = table.column("timestamp").drop_null()
        if len(stamps) == 0:
            continue
        seconds = pc.divide(pc.cast(pc.cast(stamps, pa.timestamp("s", "UTC")), pa.int64()),
                            86400)
        days = pc.value_counts(seconds)
        for day, count in zip(days.field("values").to_pylist(),
                              days.field("counts").to_pylist(), strict=True):
            counts[int(day) * 86400] += int(count)
    ordered = sorted(counts)
    return {"days": ordered, "counts": [counts[d] for d in ordered]}
