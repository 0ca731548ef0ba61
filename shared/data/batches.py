"""The batch metadata registry in Redis, per tenant.

A batch is one stored Parquet file plus a small metadata record. Metadata is
written only after the file is durable, in one ``MULTI``, so a batch is either
fully visible (file and record) or not at all; training and listings only ever
discover batches through this registry.

Keys (all under :func:`shared.registry.tenant_key`)::

    batches              ZSET  batch_id -> upload time in microseconds (oldest first)
    batches:<kind>       ZSET  the same, for one kind only (newest entity lookups)
    batch:<batch_id>     HASH  the record (see :class:`BatchMeta`)
    batchtag:<tag>       SET   batch ids carrying the tag
    batches:pending      ZSET  batch_id -> Unix time its file started moving into storage;
                               cleared in the MULTI that records it (see :func:`mark_pending`)

Batch ids are time-ordered (``b_`` + 13 hex digits of microseconds + a
sequence within the request + random hex), so ordering by id, and by the
sorted set, is upload order: the "newest batch wins" rule uses it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
import redis

from shared import quotas
from shared.config import Settings
from shared.errors import ValidationFailed
from shared.registry import redis_guard, tenant_key

Kind = Literal["entities", "interactions"]
KINDS: tuple[Kind, ...] = ("entities", "interactions")

#: Longest tag accepted, in characters.
MAX_TAG_LENGTH = 128
#: What a batch id looks like; anything else cannot name a batch (and never reaches Redis keys).
BATCH_ID_RE = re.compile(r"^b_[0-9a-f]{13}[0-9a-f]{4}[0-9a-f]{8}$")


@dataclass(frozen=True)
class BatchMeta:
    """The public facts of one stored batch."""

    batch_id: str
    timestamp: str
    tags: tuple[str, ...]
    kind: Kind
    entity_count: int
    interaction_count: int
    bytes: int

    @property
    def rows(self) -> int:
        """Rows stored in the batch (of its kind)."""
        return self.entity_count if self.kind == "entities" else self.interaction_count

    def as_dict(self) -> dict[str, Any]:
        """The contract's JSON view of the batch."""
        return {
            "batch_id": self.batch_id,
            "timestamp": self.timestamp,
            "tags": list(self.tags),
            "kind": self.kind,
            "entity_count": self.entity_count,
            "interaction_count": self.interaction_count,
            "bytes": self.bytes,
        }

    def to_hash(self) -> dict[str, str]:
        """The Redis hash form."""
        return {
            "batch_id": self.batch_id,
            "timestamp": self.timestamp,
            "tags": orjson.dumps(list(self.tags)).decode(),
            "kind": self.kind,
            "entity_count": str(self.entity_count),
            "interaction_count": str(self.interaction_count),
            "bytes": str(self.bytes),
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> BatchMeta:
        """Rebuild from the Redis hash form."""
        kind = data["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown batch kind {kind!r}")
        return cls(
            batch_id=data["batch_id"],
            timestamp=data["timestamp"],
            tags=tuple(orjson.loads(data["tags"])),
            kind=kind,
            entity_count=int(data["entity_count"]),
            interaction_count=int(data["interaction_count"]),
            bytes=int(data["bytes"]),
        )


def new_batch_ids(count: int, now: datetime) -> list[str]:
    """``count`` fresh, time-ordered batch ids for one request made at ``now``."""
    micros = int(now.timestamp() * 1_000_000)
    salt = secrets.token_hex(4)
    return [f"b_{micros:013x}{seq:04x}{salt}" for seq in range(count)]


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix, to the microsecond."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def validate_tags(raw: Any, max_tags: int) -> tuple[str, ...]:
    """Tags are non-empty strings of sane length, at most ``max_tags`` given; duplicates dropped."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple):
        raise ValidationFailed(
            "tags must be a list of strings.", code="invalid_tags", details={"tags": raw}
        )
    if len(raw) > max_tags:  # before anything else: a huge list fails at once
        raise ValidationFailed(
            f"At most {max_tags} tags per batch (repeated tags count too).",
            code="too_many_tags",
            details={"count": len(raw), "max_tags": max_tags},
        )
    tags: dict[str, None] = {}  # ordered, and de-duplicated in linear time
    for tag in raw:
        if not isinstance(tag, str):
            raise ValidationFailed(
                "Every tag must be a string.", code="invalid_tags", details={"tag": tag}
            )
        tag = tag.strip()
        if not tag or len(tag) > MAX_TAG_LENGTH or any(ch in tag for ch in ",\r\n\x00"):
            raise ValidationFailed(
                f"A tag is 1 to {MAX_TAG_LENGTH} characters, without commas or line breaks.",
                code="invalid_tags",
                details={"tag": tag},
            )
        tags[tag] = None
    return tuple(tags)


def _index(tenant: str) -> str:
    return tenant_key(tenant, "batches")


def _kind_index(tenant: str, kind: Kind) -> str:
    return tenant_key(tenant, "batches", kind)


def _record(tenant: str, batch_id: str) -> str:
    return tenant_key(tenant, "batch", batch_id)


def _tag_set(tenant: str, tag: str) -> str:
    return tenant_key(tenant, "batchtag", tag)


def _micros(meta: BatchMeta) -> int:
    return int(meta.batch_id[2:15], 16)


def _pending(tenant: str) -> str:
    return tenant_key(tenant, "batches", "pending")


def mark_pending(r: redis.Redis, tenant: str, batch_ids: Sequence[str], now: float) -> None:
    """Note files about to be put in storage, so a crash before recording them leaves a trace."""
    with redis_guard("preparing to store batches"):
        r.zadd(_pending(tenant), dict.fromkeys(batch_ids, now))


def unmark_pending(r: redis.Redis, tenant: str, batch_ids: Sequence[str]) -> None:
    """Forget pending marks (their files were removed)."""
    if batch_ids:
        with redis_guard("cleaning up batches"):
            r.zrem(_pending(tenant), *batch_ids)


def stale_pending(r: redis.Redis, tenant: str, older_than: float) -> list[str]:
    """Batch ids marked pending before ``older_than``: their upload died mid-way."""
    with redis_guard("listing pending batches"):
        return cast(list[str], r.zrangebyscore(_pending(tenant), "-inf", older_than))


def _ensure_bytes_counter(r: redis.Redis, tenant: str) -> None:
    """Start the tenant's byte counter from its batches if it has none (data from before it)."""
    key = quotas.batch_bytes_key(tenant)
    if r.exists(key):
        return
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key, _index(tenant))  # type: ignore[no-untyped-call]
                if pipe.exists(key):
                    pipe.unwatch()
                    return
                ids = cast(list[str], pipe.zrange(_index(tenant), 0, -1))
                sizes = [cast(str | None, pipe.hget(_record(tenant, b), "bytes")) for b in ids]
                pipe.multi()
                pipe.set(key, sum(int(size or 0) for size in sizes))
                pipe.execute()
                return
            except redis.WatchError:
                continue


def record_batches(r: redis.Redis, tenant: str, metas: Sequence[BatchMeta],
                   settings: Settings | None = None) -> None:
    """Make the batches visible, all of them or none (one MULTI).

    With ``settings``, the tenant's batch and storage quotas are checked in the
    same transaction (429 ``quota_exceeded``; the caller removes the files).
    """
    if not metas:
        return
    size = sum(m.bytes for m in metas)
    with redis_guard("recording uploaded batches"):
        _ensure_bytes_counter(r, tenant)
    with redis_guard("recording uploaded batches"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(*quotas.batch_watch_keys(tenant))  # type: ignore[no-untyped-call]
                if settings is not None:
                    quotas.check_new_batches(pipe, settings, tenant, len(metas), size)
                pipe.multi()
                pipe.zrem(_pending(tenant), *[m.batch_id for m in metas])
                for meta in metas:
                    pipe.hset(_record(tenant, meta.batch_id), mapping=meta.to_hash())
                    for tag in meta.tags:
                        pipe.sadd(_tag_set(tenant, tag), meta.batch_id)
                    pipe.zadd(_index(tenant), {meta.batch_id: _micros(meta)})
                    pipe.zadd(_kind_index(tenant, meta.kind), {meta.batch_id: _micros(meta)})
                pipe.incrby(quotas.batch_bytes_key(tenant), size)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def batches_recorded(r: redis.Redis, tenant: str, metas: Sequence[BatchMeta]) -> bool:
    """Whether :func:`record_batches` committed ``metas`` (its MULTI records all or none).

    For an upload whose MULTI reply was lost (a timeout): Redis may have run it.
    """
    if not metas:
        return True
    with redis_guard("checking uploaded batches"):
        return bool(r.exists(_record(tenant, metas[0].batch_id)))


def _load(r: redis.Redis, tenant: str, batch_ids: Iterable[str]) -> list[BatchMeta]:
    ids = [b for b in batch_ids if BATCH_ID_RE.fullmatch(b)]
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for batch_id in ids:
        pipe.hgetall(_record(tenant, batch_id))
    metas = [BatchMeta.from_hash(data) for data in pipe.execute() if data]
    metas.sort(key=lambda m: m.batch_id)
    return metas


def list_batches(
    r: redis.Redis,
    tenant: str,
    batch_ids: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> list[BatchMeta]:
    """Batches oldest first; only ``batch_ids`` if given; only those carrying all ``tags``."""
    with redis_guard("listing batches"):
        if tags:
            candidates = set(cast(set[str], r.sinter([_tag_set(tenant, t) for t in tags])))
            if batch_ids is not None:
                candidates &= set(batch_ids)
            return _load(r, tenant, sorted(candidates))
        if batch_ids is not None:
            return _load(r, tenant, sorted(set(batch_ids)))
        return _load(r, tenant, cast(list[str], r.zrange(_index(tenant), 0, -1)))


def batches_with_any_tag(
    r: redis.Redis, tenant: str, tags: Sequence[str] | None
) -> list[BatchMeta]:
    """Batches oldest first carrying at least one of ``tags``; every batch when ``tags`` is None."""
    with redis_guard("listing batches"):
        if tags is None:
            return _load(r, tenant, cast(list[str], r.zrange(_index(tenant), 0, -1)))
        if not tags:
            return []
        ids = set(cast(set[str], r.sunion([_tag_set(tenant, t) for t in tags])))
        return _load(r, tenant, sorted(ids))


def batch_ids_newest_first(r: redis.Redis, tenant: str, kind: Kind) -> list[str]:
    """Ids of the tenant's batches of one kind, newest first (no metadata read)."""
    with redis_guard("listing batches"):
        return cast(list[str], r.zrevrange(_kind_index(tenant, kind), 0, -1))


def forget_batches(r: redis.Redis, tenant: str, metas: Sequence[BatchMeta]) -> None:
    """Remove the records (one MULTI); the caller deletes the files afterwards.

    The records are watched so that two deletes of one batch take its bytes off
    the tenant's byte counter once.
    """
    if not metas:
        return
    with redis_guard("deleting batches"), r.pipeline(transaction=True) as pipe:
        _ensure_bytes_counter(r, tenant)
        while True:
            try:
                pipe.watch(*[_record(tenant, m.batch_id) for m in metas])  # type: ignore[no-untyped-call]
                present = [m for m in metas if pipe.exists(_record(tenant, m.batch_id))]
                pipe.multi()
                for meta in metas:
                    pipe.delete(_record(tenant, meta.batch_id))
                    pipe.zrem(_index(tenant), meta.batch_id)
                    pipe.zrem(_kind_index(tenant, meta.kind), meta.batch_id)
                    for tag in meta.tags:
                        pipe.srem(_tag_set(tenant, tag), meta.batch_id)
                pipe.decrby(quotas.batch_bytes_key(tenant), sum(m.bytes for m in present))
                pipe.execute()
                return
            except redis.WatchError:
                continue
