"""One run end to end in-process (fakeredis, local storage, no broker): every way it ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from celery.exceptions import SoftTimeLimitExceeded

from bench._data import write_batch
from shared.config import Settings
from shared.contracts import ProgressMeta
from shared.data.assembly import DatasetOptions, build_dataset
from shared.data.selection import DataSpec, select_data
from shared.models.artifact import load_artifact
from shared.runs.lifecycle import create_run
from shared.runs.lock import acquire_lock
from shared.runs.records import get_model, get_status
from shared.runs.ref import RunRef
from shared.storage import Storage
from tests.helpers.synthetic import clustered
from worker.context import WorkerServices
from worker.runner import execute_run

T = "acme"
FAST = {"hyperparameters": {"epochs": 3, "no_components": 8}, "evaluation": {"holdout": 0.2}}


class FakeCelery:
    """No broker in unit tests."""

    def send_task(self, name: str, **options: Any) -> None:
        raise AssertionError("nothing is enqueued here")


@pytest.fixture
def svc(tmp_path: Path, fake_redis: fakeredis.FakeRedis) -> WorkerServices:
    settings = Settings(data_dir=tmp_path, heartbeat_interval=0.05, keep_versions=2)
    storage = Storage(str(tmp_path / "storage"))
    entities, interactions = clustered(n_users=120, n_items=60, per_user=8)
    # recent timestamps for half of the users, a year-old ones for the rest
    now = datetime.now(UTC)
    recent = pc.starts_with(interactions["source_id"], "u1")
    stamps = pa.array([now - timedelta(days=400 if not r else 2)
                       for r in recent.to_pylist()], pa.timestamp("us", tz="UTC"))
    interactions = interactions.set_column(3, "timestamp", stamps)
    write_batch(storage, fake_redis, T, "entities", entities, ("a",))
    write_batch(storage, fake_redis, T, "interactions", interactions.slice(0, 1000), ("a",))
    write_batch(storage, fake_redis, T, "interactions", interactions.slice(1000), ("b",))
    return WorkerServices(settings=settings, redis=fake_redis, storage=storage,
                          celery=FakeCelery())  # type: ignore[arg-type]


@pytest.fixture
def callbacks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    calls: list[tuple[int, str]] = []

    def fake(r: Any, celery: Any, tenant: str, model_id: str, version: int, url: str,
             status: Any) -> None:
        calls.append((version, status["status"]))

    monkeypatch.setattr("shared.webhooks.deliveries.schedule_for_run", fake)
    return calls


def _run(svc: WorkerServices, params: dict[str, Any], model_id: str = "m",
         callback: str | None = None) -> tuple[dict[str, Any], list[ProgressMeta]]:
    version = create_run(svc.redis, T, model_id, params, callback)["version"]
    reports: list[ProgressMeta] = []
    result = execute_run(svc, RunRef(T, model_id, version), reports.append)
    return result, reports


def test_a_run_completes_writes_its_artifact_and_serves(
    svc: WorkerServices, callbacks: list[Any]
) -> None:
    result, reports = _run(svc, FAST, callback="http://127.0.0.1:9/hook")
    assert result["outcome"] == "completed"
    status = get_status(svc.redis, T, "m")
    assert (status["status"], status["phase"], status["progress"]) == ("completed", "done", 100)
    assert status["counts"] == {"entities": 180, "interactions": 1320, "sources": 120,
                                "targets": 60}
    assert len(status["data_batch_ids"]) == 3 and status["metrics"] is not None
    progress = [r["progress"] for r in reports]
    assert progress == sorted(progress) and progress[-1] == 100 and 100 not in progress[:-1]
    assert callbacks == [(1, "completed")]
    artifact = load_artifact(svc.storage, T, "m", 1)
    assert artifact.manifest["counts"] == status["counts"]
    assert artifact.manifest["source_features"]["names"]
    assert artifact.source_repr.shape == (120, 10)
    assert abs(float(artifact.target_popularity.sum()) - 1) < 1e-5
    # 120 users x 11 interactions, minus the duplicates merged into one pair each
    assert int(artifact.seen_indptr[-1]) == artifact.seen_indices.size
    assert 1200 < artifact.seen_indices.size <= 1320


def test_only_the_last_versions_are_kept_on_storage(svc: WorkerServices) -> None:
    for _ in range(3):
        assert _run(svc, FAST)[0]["outcome"] == "completed"
    model = get_model(svc.redis, T, "m")
    assert model is not None and model["versions"] == [2, 3] and model["serving_version"] == 3
    assert svc.storage.list_dir("tenants/acme/models/m") == ["v2", "v3"]


@pytest.mark.parametrize("params, setting", [
    ({"data_tags": ["nope"]}, "data_tags"),
    ({"maximum_interaction_age_days": 1, "data_tags": ["a"]}, "maximum_interaction_age_days"),
    ({"data_filters": {"interactions": [{"field": "type", "op": "eq", "value": "buy"}]}},
     "data_filters.interactions"),
    ({"data_filters": {"entities": [{"field": "metadata.segment", "op": "eq", "value": "zz"}]}},
     "data_filters.entities"),
    ({"interaction_weights": {"view": 0}}, "interaction_weights"),
    ({"source_type": "item", "target_type": "user"}, "source_type"),
])
def test_empty_data_ends_the_run_naming_the_setting(
    svc: WorkerServices, callbacks: list[Any], params: dict[str, Any], setting: str
) -> None:
    result, _ = _run(svc, {**FAST, **params}, callback="http://127.0.0.1:9/hook")
    assert result["outcome"] == "error"
    status = get_status(svc.redis, T, "m")
    assert (status["status"], status["phase"]) == ("error", "failed")
    assert setting in status["message"]
    assert status["progress"] < 100 and callbacks == [(1, "error")]
    assert get_model(svc.redis, T, "m")["serving_version"] is None  # type: ignore[index]


def test_the_soft_time_limit_ends_the_run_with_a_clear_message(
    svc: WorkerServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(*args: object, **kwargs: object) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr("worker.runner.train", too_slow)
    assert _run(svc, FAST)[0]["outcome"] == "error"
    status = get_status(svc.redis, T, "m")
    assert status["status"] == "error" and "RECSYS_TRAIN_SOFT_TIME_LIMIT" in status["message"]


def test_a_locked_model_is_left_to_the_lock_holder(svc: WorkerServices) -> None:
    assert acquire_lock(svc.redis, T, "m", "someone", 60)
    result, _ = _run(svc, FAST)
    assert result == {"outcome": "skipped", "reason": "locked"}
    assert get_status(svc.redis, T, "m")["phase"] == "queued"


def _counts(svc: WorkerServices, body: dict[str, Any]) -> dict[str, int]:
    spec = DataSpec.from_request(body)
    selected = select_data(svc.storage, svc.redis, T, spec, datetime.now(UTC))
    return dict(build_dataset(selected.entities, selected.interactions,
                              DatasetOptions()).counts)


def test_tags_age_and_filters_change_the_counts_as_they_should(svc: WorkerServices) -> None:
    everything = _counts(svc, {})
    assert everything["interactions"] == 1320
    assert _counts(svc, {"data_tags": ["b"]})["interactions"] == 320
    recent = _counts(svc, {"maximum_interaction_age_days": 30})
    assert 0 < recent["interactions"] < 1320  # users u1* only
    # items have no "segment": "ne" keeps them (a missing field never matches eq)
    not_s0 = {"field": "metadata.segment", "op": "ne", "value": "s0"}
    by_segment = _counts(svc, {"data_filters": {"entities": [not_s0]}})
    assert 0 < by_segment["sources"] < everything["sources"]
    assert 0 < by_segment["interactions"] < everything["interactions"]
    buys = _counts(svc, {"interaction_weights": {}, "data_filters": {
        "interactions": [{"field": "target_id", "op": "in", "value": ["i0", "i1", "i2"]}]}})
    assert buys["targets"] == 3 and buys["sources"] == everything["sources"]
