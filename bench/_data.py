"""Write batches straight into storage and the registry (for tests and benchmarks).

It lives here, not in ``tests/``, because ``bench/`` imports nothing from ``tests/``; tests may
import it (``from bench._data import write_batch``). It is not product code: it skips the
ingest path (validation, limits) that every real upload goes through, so it stays out of
``shared/``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from shared.data.batches import BatchMeta, iso_utc, new_batch_ids, record_batches
from shared.ingest.columns import SCHEMAS, Kind
from shared.storage import Storage, batch_path


def write_batch(storage: Storage, r: redis.Redis, tenant: str, kind: Kind, table: pa.Table,
                tags: tuple[str, ...] = ()) -> str:
    """Store ``table`` as one batch of ``kind``; returns its id."""
    time.sleep(0.001)  # batch ids are time-ordered to the microsecond
    now = datetime.now(UTC)
    batch_id = new_batch_ids(1, now)[0]
    rel = batch_path(tenant, batch_id)
    path = storage.full_path(rel)
    storage.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table.select(SCHEMAS[kind].names).cast(SCHEMAS[kind]), path,
                   filesystem=storage.fs)
    size = storage.fs.get_file_info(path).size
    rows = table.num_rows
    record_batches(r, tenant, [BatchMeta(
        batch_id=batch_id, timestamp=iso_utc(now), tags=tags, kind=kind,
        entity_count=rows if kind == "entities" else 0,
        interaction_count=rows if kind == "interactions" else 0, bytes=int(size or 0))])
    return batch_id
