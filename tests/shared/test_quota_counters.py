"""The per-tenant counters quotas read: batch bytes (fakeredis)."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis
import pytest

from shared import quotas
from shared.config import Settings
from shared.data.batches import BatchMeta, forget_batches, iso_utc, new_batch_ids, record_batches
from shared.errors import QuotaExceeded


def _metas(n: int, size: int) -> list[BatchMeta]:
    now = datetime.now(UTC)
    return [BatchMeta(batch_id=b, timestamp=iso_utc(now), tags=("t",), kind="entities",
                      entity_count=1, interaction_count=0, bytes=size)
            for b in new_batch_ids(n, now)]


def test_batches_stored_before_the_counter_existed_are_counted(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    old = _metas(3, 100)
    record_batches(fake_redis, "acme", old)
    fake_redis.delete(quotas.batch_bytes_key("acme"))  # as before this counter existed
    record_batches(fake_redis, "acme", _metas(1, 50))
    assert int(fake_redis.get(quotas.batch_bytes_key("acme"))) == 350


def test_deleting_a_batch_twice_takes_its_bytes_off_once(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    metas = _metas(2, 100)
    record_batches(fake_redis, "acme", metas)
    forget_batches(fake_redis, "acme", metas[:1])
    forget_batches(fake_redis, "acme", metas[:1])
    assert int(fake_redis.get(quotas.batch_bytes_key("acme"))) == 100


def test_record_batches_refuses_past_the_storage_quota_and_records_nothing(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    settings = Settings(quota_storage_bytes=250)
    record_batches(fake_redis, "acme", _metas(2, 100), settings)
    with pytest.raises(QuotaExceeded) as caught:
        record_batches(fake_redis, "acme", _metas(1, 100), settings)
    assert caught.value.details == {"quota": "storage_bytes", "limit": 250, "used": 200}
    assert fake_redis.zcard("recsys:t:acme:batches") == 2
