"""API keys: stored hashed, scoped, tenant-bound, revocable."""

from __future__ import annotations

import fakeredis
import pytest

from shared.errors import NotFound, ValidationFailed
from shared.keys import SCOPES, create_key, ensure_key, list_keys, lookup, revoke_key


def test_created_key_is_found_and_never_stored_in_clear(fake_redis: fakeredis.FakeRedis) -> None:
    raw, record = create_key(fake_redis, "shop", ["data:read", "recommend"])
    found = lookup(fake_redis, raw)
    assert found is not None
    assert found.tenant == "shop" and found.scopes == {"data:read", "recommend"}
    dump = [fake_redis.dump(k) for k in fake_redis.keys("*")]
    assert not any(raw.encode() in (d or b"") for d in dump)
    assert record.key_id == found.key_id


def test_unknown_key_is_not_found(fake_redis: fakeredis.FakeRedis) -> None:
    assert lookup(fake_redis, "rk_nope") is None


def test_bootstrap_key_gets_every_scope_for_default(fake_redis: fakeredis.FakeRedis) -> None:
    ensure_key(fake_redis, "my-deploy-key")
    found = lookup(fake_redis, "my-deploy-key")
    assert found is not None and found.tenant == "default" and found.scopes == set(SCOPES)
    ensure_key(fake_redis, "my-deploy-key")
    assert len(list_keys(fake_redis)) == 1


def test_revoked_key_stops_working(fake_redis: fakeredis.FakeRedis) -> None:
    raw, record = create_key(fake_redis, "shop", ["admin"])
    revoke_key(fake_redis, record.key_id)
    assert lookup(fake_redis, raw) is None
    with pytest.raises(NotFound):
        revoke_key(fake_redis, record.key_id)


def test_list_filters_by_tenant(fake_redis: fakeredis.FakeRedis) -> None:
    create_key(fake_redis, "a", ["admin"])
    create_key(fake_redis, "b", ["admin"])
    assert [k.tenant for k in list_keys(fake_redis, "b")] == ["b"]


@pytest.mark.parametrize("scopes", [[], ["root"], ["admin", "everything"]])
def test_unknown_scopes_are_refused(fake_redis: fakeredis.FakeRedis, scopes: list[str]) -> None:
    with pytest.raises(ValidationFailed):
        create_key(fake_redis, "shop", scopes)


def test_bad_tenant_name_is_refused(fake_redis: fakeredis.FakeRedis) -> None:
    with pytest.raises(ValidationFailed):
        create_key(fake_redis, "no spaces please", ["admin"])
