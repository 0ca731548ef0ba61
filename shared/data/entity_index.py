"""The newest uploaded record of an entity id, without opening every entity batch.

Cold start by id (``GET /recommended_items?source_id=<id the model never saw>``)
needs the newest uploaded record of that id. Opening every entity batch newest
first until one has it costs about 0.6 ms a batch, and an id no batch
describes opens them all: a tenant sending small JSON entity updates has
thousands of batches, and 300 batches already cost 0.18 s an id, 18 s for a
request of 100 new ids.

Stored batch files never change, so each process keeps, per entity batch, the
hashes of its ids: a set for a small batch (a membership test is then a few
tens of nanoseconds, about 70 bytes an id), a sorted array for a large one (8
bytes an id), :data:`MAX_BYTES` in all, the least recently used batches
dropped first. A lookup walks the tenant's entity batch ids newest first (one
Redis read) and opens only a batch whose hashes hold the id's; a hash
collision costs one read that finds nothing, never a wrong answer. A deleted
batch is no longer listed, so it is never consulted, and its hashes age out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from shared.data.batches import batch_ids_newest_first
from shared.errors import DependencyUnavailable
from shared.storage import Storage, batch_path

#: Memory the kept hashes may take, per process.
MAX_BYTES = 64 << 20
#: Batches of at most this many ids keep their hashes in a set, larger ones in an array.
SET_IDS = 256
#: Bytes per id kept, in a set and in an array (what the memory bound counts).
SET_BYTES, ARRAY_BYTES = 72, 8

Hashes = frozenset[int] | np.ndarray


def _holds(hashes: Hashes, wanted: int) -> bool:
    if isinstance(hashes, frozenset):
        return wanted in hashes
    at = int(np.searchsorted(hashes, wanted))
    return at < len(hashes) and int(hashes[at]) == wanted


def _weight(hashes: Hashes) -> int:
    return len(hashes) * (SET_BYTES if isinstance(hashes, frozenset) else ARRAY_BYTES)


def _unreadable(batch_id: str, exc: Exception) -> DependencyUnavailable:
    return DependencyUnavailable(
        f"Storage could not read batch {batch_id}: {exc}",
        details={"dependency": "storage", "batch_id": batch_id},
    )


class EntityIndex:
    """Id hashes of entity batches, kept in this process (thread-safe)."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        #: Hash of an id (Python's: stable within a process, which is all a cache needs).
        self.hash = hash
        self._kept: OrderedDict[tuple[str, str, str], Hashes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes the kept hashes count for."""
        return self._bytes

    def _load(self, storage: Storage, key: tuple[str, str, str]) -> Hashes:
        _, tenant, batch_id = key
        path = storage.full_path(batch_path(tenant, batch_id))
        ids = pq.read_table(path, filesystem=storage.fs, columns=["id"]).column("id")
        if len(ids) <= SET_IDS:
            hashes: Hashes = frozenset(self.hash(i) for i in ids.to_pylist())
        else:
            hashes = np.sort(np.fromiter((self.hash(i) for i in ids.to_pylist()),
                                         dtype=np.int64, count=len(ids)))
        weight = _weight(hashes)
        if weight <= self.max_bytes:
            with self._lock:
                if key not in self._kept:
                    self._kept[key] = hashes
                    self._bytes += weight
                while self._bytes > self.max_bytes:
                    _, dropped = self._kept.popitem(last=False)
                    self._bytes -= _weight(dropped)
        return hashes

    def latest(self, storage: Storage, r: redis.Redis, tenant: str, entity_id: str
               ) -> dict[str, Any] | None:
        """The newest uploaded record of ``entity_id`` (metadata parsed), or None."""
        wanted = self.hash(entity_id)
        keys = [(storage.root, tenant, b) for b in batch_ids_newest_first(r, tenant, "entities")]
        with self._lock:
            kept = [self._kept.get(key) for key in keys]
            for key, hashes in zip(keys, kept, strict=True):
                if hashes is not None:
                    self._kept.move_to_end(key)
        for key, hashes in zip(keys, kept, strict=True):
            batch_id = key[2]
            try:
                if not _holds(hashes if hashes is not None else self._load(storage, key),
                              wanted):
                    continue
                table = pq.read_table(storage.full_path(batch_path(tenant, batch_id)),
                                      filesystem=storage.fs, filters=[("id", "==", entity_id)])
            except FileNotFoundError:  # deleted since it was listed
                continue
            except (OSError, pa.ArrowException) as exc:
                raise _unreadable(batch_id, exc) from exc
            if table.num_rows:
                row: dict[str, Any] = table.slice(table.num_rows - 1).to_pylist()[0]
                row["metadata"] = orjson.loads(row["metadata"]) if row["metadata"] else {}
                return row
        return None


#: The index every lookup of this process uses.
INDEX = EntityIndex()
