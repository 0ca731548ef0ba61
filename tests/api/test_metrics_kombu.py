"""Guards on what /metrics reads of kombu's Redis transport (api/metrics.py).

kombu has no public call that counts a queue's waiting or unacknowledged messages over
a plain Redis client, so the scrape reads the key names from kombu's Redis channel. When
a kombu release renames or drops one, these tests say which, before the metrics go quiet.
"""

from __future__ import annotations

import types

import kombu
from kombu.transport import redis as kombu_redis

from api import metrics
from shared.config import Settings
from shared.queue import celery_config

#: The channel attributes api/metrics.py reads; each is a documented transport option.
READ_ATTRIBUTES = ("sep", "priority_steps", "unacked_key")


def _where(attr: str) -> str:
    return (f"kombu {kombu.__version__}: kombu.transport.redis.Channel.{attr}, which "
            "api/metrics.py reads to find queue keys, ")


def test_kombu_redis_channel_still_has_the_attributes_metrics_reads() -> None:
    # given kombu's Redis channel
    channel = kombu_redis.Channel
    for attr in READ_ATTRIBUTES:
        # then each attribute exists, has the expected type, and is still a transport option
        assert hasattr(channel, attr), _where(attr) + "is gone; update api/metrics.py"
        assert attr in channel.from_transport_options, (
            _where(attr) + "is no longer a transport option; update api/metrics.py")
    assert isinstance(channel.sep, str), _where("sep") + "is not a string"
    assert isinstance(channel.unacked_key, str), _where("unacked_key") + "is not a string"
    assert all(isinstance(s, int) for s in channel.priority_steps), (
        _where("priority_steps") + "is not a list of integers")


def test_metrics_reads_the_same_keys_kombu_writes() -> None:
    # given a stand-in for a channel with kombu's defaults
    channel = kombu_redis.Channel
    assert hasattr(channel, "_q_for_pri") and hasattr(channel, "priority"), (
        f"kombu {kombu.__version__}: kombu.transport.redis.Channel._q_for_pri/priority "
        "(how kombu names a priority's list) changed; check api/metrics.py's _queue_keys")
    fake = types.SimpleNamespace(sep=channel.sep, priority_steps=channel.priority_steps)
    fake.priority = lambda n: channel.priority(fake, n)
    # when kombu names the list of each priority a message may have
    written = {channel._q_for_pri(fake, "train", p) for p in range(10)}
    # then the scrape counts exactly those lists, and the unacked hash kombu uses
    assert written == set(metrics._queue_keys("train")), (
        f"kombu {kombu.__version__} names priority lists {sorted(written)!r}; "
        f"api/metrics.py counts {metrics._queue_keys('train')!r}")
    assert channel.unacked_key == metrics._UNACKED_KEY


def test_the_service_leaves_kombus_key_names_at_their_defaults() -> None:
    # given the broker options the API and the workers share
    options = celery_config(Settings())["broker_transport_options"]
    # then none of the names the scrape reads from kombu's defaults is overridden
    assert not set(options) & set(READ_ATTRIBUTES), (
        "shared/queue.py overrides a kombu key name that api/metrics.py reads from "
        "kombu's defaults; make the scrape read the configured value")
