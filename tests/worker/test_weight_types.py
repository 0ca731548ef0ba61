"""A weight for an interaction type the data lacks (a typo) is named in the run's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pyarrow as pa

from bench._data import write_batch
from shared.config import Settings
from shared.runs.lifecycle import create_run
from shared.runs.records import get_status
from shared.runs.ref import RunRef
from shared.storage import Storage
from tests.helpers.synthetic import clustered
from worker.context import WorkerServices
from worker.runner import execute_run

T = "acme"


def _run(tmp_path: Path, r: fakeredis.FakeRedis, weights: dict[str, float]) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path, heartbeat_interval=0.05)
    storage = Storage(str(tmp_path / "storage"))
    entities, interactions = clustered(n_users=60, n_items=30, per_user=6)
    # half the interactions are purchases, the rest views
    types = ["purchase" if i % 2 else "view" for i in range(interactions.num_rows)]
    interactions = interactions.set_column(0, "type", pa.array(types))
    write_batch(storage, r, T, "entities", entities, ("a",))
    write_batch(storage, r, T, "interactions", interactions, ("a",))
    svc = WorkerServices(settings=settings, redis=r, storage=storage,
                         celery=None)  # type: ignore[arg-type]
    params = {"hyperparameters": {"epochs": 1, "no_components": 4},
              "evaluation": {"holdout": 0}, "interaction_weights": weights}
    version = create_run(r, T, "m", params, None)["version"]
    execute_run(svc, RunRef(T, "m", version), lambda meta: None)
    return dict(get_status(r, T, "m"))


def test_a_misspelt_interaction_type_is_named_and_the_run_still_trains(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis
) -> None:
    # given data with views and purchases, when a run weighs "purchases" (a typo)
    status = _run(tmp_path, fake_redis, {"view": 1.0, "purchases": 5.0})
    # then it still completes, and its message names the type and what the data has
    assert status["status"] == "completed", status
    assert "'purchases'" in status["message"]
    assert "'purchase', 'view'" in status["message"]


def test_weights_that_all_match_add_nothing_to_the_message(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis
) -> None:
    status = _run(tmp_path, fake_redis, {"view": 1.0, "purchase": 5.0})
    assert status["status"] == "completed"
    assert "interaction_weights" not in status["message"]
