"""Secret rotation with a grace period: receivers holding the old secret keep verifying."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import fakeredis
import pytest
from flask.testing import FlaskClient
from standardwebhooks.webhooks import WebhookVerificationError

from shared.config import Settings
from shared.contracts import RunStatus
from shared.webhooks.deliveries import schedule_for_run
from shared.webhooks.secrets import get_secret, rotate, signing_secrets
from tests.helpers.callback_receiver import Receiver, receiving
from worker.callbacks import run_attempt


class NoCelery:
    """The attempt is made by the test itself."""

    def send_task(self, name: str, **options: object) -> None:
        pass


def scheduled(r: fakeredis.FakeRedis, url: str, model_id: str) -> None:
    status: RunStatus = {
        "model_id": model_id, "version": 1, "start_timestamp": "2026-01-01T00:00:00Z",
        "end_timestamp": "2026-01-01T00:01:00Z", "status": "completed", "phase": "done",
        "message": "done", "progress": 100, "data_batch_ids": ["b"], "counts": None,
        "metrics": None, "callback": None,
    }  # type: ignore[typeddict-item]
    schedule_for_run(r, NoCelery(), "acme", model_id, 1, url, status)  # type: ignore[arg-type]


def attempt(r: fakeredis.FakeRedis, s: Settings, model_id: str) -> str | None:
    return run_attempt(r, s, "acme", model_id, 1)


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return replace(settings, callback_connect_timeout=1.0, callback_read_timeout=2.0,
                   callback_retry_delays=(0.0, 0.0, 0.0))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_old_secret_verifies_during_the_grace_and_not_after(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    # given a receiver configured with the tenant's secret
    old = get_secret(fake_redis, "acme")
    # when the secret is rotated with a grace period and a delivery is sent
    new = rotate(fake_redis, "acme", grace_seconds=2)
    scheduled(fake_redis, receiver.url(), model_id="during")
    assert attempt(fake_redis, fast, "during") == "delivered"
    # then the delivery carries two signatures, and both secrets verify it
    (during,) = receiver.requests
    signatures = during.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert during.verify(old)["model_id"] == "during"
    assert during.verify(new)["model_id"] == "during"
    # and once the grace has passed, only the new secret signs
    _wait_until(lambda: signing_secrets(fake_redis, "acme") == [new])
    scheduled(fake_redis, receiver.url(), model_id="after")
    assert attempt(fake_redis, fast, "after") == "delivered"
    after = receiver.requests[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert after.verify(new)["model_id"] == "after"
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


def test_rotation_without_grace_drops_the_old_secret_at_once(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    get_secret(fake_redis, "acme")
    new = rotate(fake_redis, "acme", grace_seconds=0)
    assert signing_secrets(fake_redis, "acme") == [new]


def test_a_second_rotation_keeps_only_the_secret_it_replaced(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    get_secret(fake_redis, "acme")
    middle = rotate(fake_redis, "acme", grace_seconds=3600)
    newest = rotate(fake_redis, "acme", grace_seconds=3600)
    assert signing_secrets(fake_redis, "acme") == [newest, middle]


def test_the_rotate_endpoint_uses_the_configured_grace(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis,
    settings: Settings,
) -> None:
    # given the default settings (24 h of grace)
    assert settings.webhook_secret_grace_seconds == 24 * 3600
    old = client.get("/v1/recommender/webhook_secret", headers=auth).json["secret"]
    # when the secret is rotated over HTTP
    new = client.post("/v1/recommender/webhook_secret/rotate", headers=auth).json["secret"]
    # then both sign deliveries, the old one for about a day
    assert new != old and signing_secrets(fake_redis, "acme") == [new, old]
    ttls = [fake_redis.ttl(k) for k in fake_redis.keys("*webhook_secret_previous*")]
    assert len(ttls) == 1 and 24 * 3600 - 60 < ttls[0] <= 24 * 3600
    assert client.get("/v1/recommender/webhook_secret", headers=auth).json["secret"] == new
