"""Key hygiene: a new bootstrap key revokes the previous one; tenant names at the CLI."""

from __future__ import annotations

import fakeredis
import pytest
from click.testing import CliRunner

from shared.client.cli import cli
from shared.keys import SCOPES, _store, create_key, ensure_key, list_keys, lookup


def test_a_new_bootstrap_key_revokes_the_previous_one(fake_redis: fakeredis.FakeRedis
                                                      ) -> None:
    # given a stack started with bootstrap key A
    ensure_key(fake_redis, "rk_old_bootstrap_value")
    assert lookup(fake_redis, "rk_old_bootstrap_value") is not None
    # when it starts again with RECSYS_BOOTSTRAP_KEY changed to B
    ensure_key(fake_redis, "rk_new_bootstrap_value")
    # then only B works, and only one bootstrap key is listed
    assert lookup(fake_redis, "rk_old_bootstrap_value") is None
    new = lookup(fake_redis, "rk_new_bootstrap_value")
    assert new is not None and new.scopes == set(SCOPES) and new.tenant == "default"
    assert [k.key_id for k in list_keys(fake_redis)] == [new.key_id]


def test_the_same_bootstrap_key_again_changes_nothing(fake_redis: fakeredis.FakeRedis) -> None:
    first = ensure_key(fake_redis, "rk_same")
    again = ensure_key(fake_redis, "rk_same")
    assert again == first and len(list_keys(fake_redis)) == 1


def test_other_keys_survive_a_bootstrap_change(fake_redis: fakeredis.FakeRedis) -> None:
    raw, _ = create_key(fake_redis, "default", list(SCOPES), name="ops")
    ensure_key(fake_redis, "rk_a")
    ensure_key(fake_redis, "rk_b")
    assert lookup(fake_redis, raw) is not None


def test_a_bootstrap_key_made_before_the_record_existed_is_revoked(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # given a bootstrap key stored by an older version (no record of which one it was)
    _store(fake_redis, "rk_from_an_older_version", "default", frozenset(SCOPES), "bootstrap")
    # when a start brings a different bootstrap key
    ensure_key(fake_redis, "rk_current")
    # then the old one no longer works
    assert lookup(fake_redis, "rk_from_an_older_version") is None
    assert lookup(fake_redis, "rk_current") is not None


@pytest.mark.parametrize("tenant", [".", "..", "Shop", "a.b"])
def test_recsys_keys_create_refuses_bad_tenant_names(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, tenant: str
) -> None:
    monkeypatch.setattr("shared.client.cli.keys._redis", lambda settings=None: fake_redis)
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", tenant, "--scope", "admin"])
    assert result.exit_code != 0
    assert "tenant name" in result.output
    assert list_keys(fake_redis) == []
