"""/metrics reads queue depth from the keys kombu really uses on a Redis-compatible server."""

from __future__ import annotations

from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.config import Settings
from shared.contracts import QUEUE_CALLBACKS, QUEUE_TRAIN, TASK_PROGRESS_PROBE
from shared.queue import make_producer
from shared.stack.embedded import EmbeddedServer


def _depths(settings: Settings) -> dict[str, float]:
    client = create_app(settings).test_client()
    text = client.get("/metrics").get_data(as_text=True)
    return {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "recsys_queue_depth"
    }


def test_waiting_messages_of_every_priority_are_counted_per_queue(
    redis_server: EmbeddedServer, tmp_path: Path
) -> None:
    # Given no worker, and messages published the way the API publishes them
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.delete(QUEUE_TRAIN, QUEUE_CALLBACKS, *r.keys(f"{QUEUE_TRAIN}\x06\x16*"))
    settings = Settings.from_env(
        {"RECSYS_REDIS_URL": redis_server.url, "RECSYS_DATA_DIR": str(tmp_path / "var")}
    )
    before = _depths(settings)
    celery = make_producer(settings)
    for priority in (None, None, 9):
        options = {} if priority is None else {"priority": priority}
        celery.send_task(TASK_PROGRESS_PROBE, kwargs={"steps": 1, "delay": 0}, **options)
    celery.send_task(TASK_PROGRESS_PROBE, queue=QUEUE_CALLBACKS)

    # Then /metrics counts them where kombu put them
    after = _depths(settings)
    assert after[QUEUE_TRAIN] - before.get(QUEUE_TRAIN, 0) == 3
    assert after[QUEUE_CALLBACKS] - before.get(QUEUE_CALLBACKS, 0) == 1
    r.delete(QUEUE_TRAIN, QUEUE_CALLBACKS, *r.keys(f"{QUEUE_TRAIN}\x06\x16*"))
