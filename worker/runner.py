"""One attempt of one training run: lock, heartbeat, data, fit, artifact, atomic switch.

The Celery task in :mod:`worker.tasks` only binds this to the queue; here is
the order of things a run goes through and how each way of ending is
recorded (always through :mod:`shared.runs.lifecycle`, which schedules the
callback exactly once). A background thread writes the heartbeat and keeps
the per-model lock alive while the main thread is inside a LightFM epoch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from shared.contracts import Phase, ProgressMeta
from shared.data.assembly import (
    Dataset,
    DatasetOptions,
    EmptyData,
    build_dataset,
    dataset_options,
)
from shared.data.selection import DataSpec, SelectedData, count_interactions, select_data
from shared.errors import ServiceError
from shared.models.artifact import ModelArtifact, delete_version, save_artifact
from shared.runs.lifecycle import (
    cancel_requested,
    complete_run,
    finish_run,
    start_attempt,
    update_run,
)
from shared.runs.lock import acquire_lock, refresh_lock, release_lock
from shared.runs.records import now_iso
from worker.context import WorkerServices
from worker.params import train_params
from worker.training import TrainedModel, TrainingCancelled, train

log = logging.getLogger(__name__)

Report = Callable[[ProgressMeta], None]

#: Overall progress at which each phase starts (evaluation on / off).
WITH_EVAL = {"loading_data": 1, "training": 10, "evaluating": 55, "saving": 95}
WITHOUT_EVAL = {"loading_data": 1, "training": 10, "evaluating": 95, "saving": 95}


class Heartbeat:
    """Writes the run's heartbeat and refreshes the model lock every interval."""

    def __init__(self, svc: WorkerServices, tenant: str, model_id: str, version: int,
                 owner: str) -> None:
        self.svc, self.tenant, self.model_id, self.version = svc, tenant, model_id, version
        self.owner = owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-heartbeat", daemon=True)

    def _loop(self) -> None:
        settings = self.svc.settings
        while not self._stop.wait(settings.heartbeat_interval):
            try:
                alive = update_run(self.svc.redis, self.tenant, self.model_id, self.version,
                                   self.owner)
                refresh_lock(self.svc.redis, self.tenant, self.model_id, self.owner,
                             settings.heartbeat_stale_after)
            except ServiceError:
                log.warning("heartbeat of %s/%s v%s failed; retrying", self.tenant,
                            self.model_id, self.version)
                continue
            if alive is None:
                self.lost = True  # finalised or taken over elsewhere: stop at the next epoch

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Progress:
    """Maps phase fractions onto the run's 0-100 scale; writes the record and reports."""

    def __init__(self, svc: WorkerServices, tenant: str, model_id: str, version: int,
                 owner: str, report: Report, evaluation: bool) -> None:
        self.svc, self.tenant, self.model_id, self.version = svc, tenant, model_id, version
        self.owner, self.report = owner, report
        self.starts = WITH_EVAL if evaluation else WITHOUT_EVAL
        self.last = -1

    def _span(self, phase: str) -> tuple[int, int]:
        order = ["loading_data", "training", "evaluating", "saving"]
        start = self.starts[phase]
        following = [self.starts[p] for p in order[order.index(phase) + 1:]] or [99]
        return start, max(following[0], start)

    def __call__(self, phase: Phase, fraction: float, message: str,
                 fields: dict[str, Any] | None = None) -> None:
        start, end = self._span(phase)
        value = int(start + (end - start) * max(0.0, min(fraction, 1.0)))
        record = update_run(self.svc.redis, self.tenant, self.model_id, self.version,
                            self.owner, phase=phase, progress=value, message=message,
                            fields=fields)
        if record is None:
            return
        progress = int(record["progress"])
        if progress != self.last or fields:
            self.last = progress
            self.report({"phase": phase, "progress": progress, "message": message})


def _artifact(dataset: Dataset, trained: TrainedModel, manifest: dict[str, Any]) -> ModelArtifact:
    indptr = np.zeros(dataset.n_sources + 1, dtype=np.int64)
    np.cumsum(np.bincount(dataset.rows, minlength=dataset.n_sources), out=indptr[1:])
    keys = dataset.rows.astype(np.int64) * dataset.n_targets + dataset.cols
    # build_dataset yields pairs sorted by (source, target); sort only if that ever changes
    order = slice(None) if bool(np.all(keys[1:] > keys[:-1])) else np.argsort(keys)
    popularity = np.bincount(dataset.cols, weights=dataset.weights,
                             minlength=dataset.n_targets)
    total = float(popularity.sum()) or 1.0
    return ModelArtifact(
        manifest=manifest,
        source_ids=dataset.source_ids, target_ids=dataset.target_ids,
        source_repr=trained.source_repr, target_repr=trained.target_repr,
        seen_indptr=indptr, seen_indices=dataset.cols[order].astype(np.int32),
        target_popularity=(popularity / total).astype(np.float32),
        source_feature_embeddings=trained.source_feature_embeddings,
        source_feature_biases=trained.source_feature_biases,
    )


def explain_empty(svc: WorkerServices, tenant: str, spec: DataSpec, now: datetime) -> str:
    """Which setting left no interactions: widen the selection one setting at a time."""
    steps: list[tuple[str, DataSpec]] = [
        ("data_tags", DataSpec(data_tags=spec.data_tags)),
        ("maximum_interaction_age_days", DataSpec(
            data_tags=spec.data_tags,
            maximum_interaction_age_days=spec.maximum_interaction_age_days)),
        ("data_filters.interactions", DataSpec(
            data_tags=spec.data_tags,
            maximum_interaction_age_days=spec.maximum_interaction_age_days,
            interaction_filters=spec.interaction_filters)),
        ("data_filters.entities", spec),
    ]
    if count_interactions(svc.storage, svc.redis, tenant, DataSpec(), now) == 0:
        return "There are no interactions to train on; upload interaction batches first."
    for setting, step in steps:
        if count_interactions(svc.storage, svc.redis, tenant, step, now) == 0:
            return (f"No interactions are left after applying {setting}; widen or remove it "
                    "(GET /dataset shows what a selection contains).")
    return "No interactions are left after the data selection."


def _fail(svc: WorkerServices, tenant: str, model_id: str, version: int, owner: str,
          phase: Phase, message: str) -> None:
    try:
        finish_run(svc.redis, svc.celery, tenant, model_id, version, phase=phase,
                   message=message, owner=owner)
    except ServiceError:
        log.exception("could not record the end of %s/%s v%s; the reconciler will",
                      tenant, model_id, version)


def execute_run(svc: WorkerServices, tenant: str, model_id: str, version: int,
                report: Report) -> dict[str, Any]:
    """Run one attempt; returns a small summary for the Celery result."""
    picked_up = time.time()
    owner = uuid.uuid4().hex
    settings = svc.settings
    if not acquire_lock(svc.redis, tenant, model_id, owner, settings.heartbeat_stale_after):
        log.info("%s/%s is locked by another attempt; leaving v%s to it", tenant, model_id,
                 version)
        return {"outcome": "skipped", "reason": "locked"}
    try:
        record = start_attempt(svc.redis, tenant, model_id, version, owner,
                               settings.heartbeat_stale_after)
        if record is None:
            return {"outcome": "skipped", "reason": "ended or running elsewhere"}
        log.info("training %s/%s v%s: attempt %s started", tenant, model_id, version,
                 record["attempts"])
        with Heartbeat(svc, tenant, model_id, version, owner) as beat:
            summary = _attempt(svc, tenant, model_id, version, owner, record, report, beat)
        summary["picked_up_at"] = round(picked_up, 3)
        log.info("training %s/%s v%s: %s", tenant, model_id, version, summary)
        return summary
    except TrainingCancelled:
        _fail(svc, tenant, model_id, version, owner, "cancelled", "Cancelled on request.")
        return {"outcome": "cancelled"}
    except SoftTimeLimitExceeded:
        _fail(svc, tenant, model_id, version, owner, "failed",
              f"Training ran past its time limit of {settings.train_soft_time_limit} s and "
              "was stopped; use fewer epochs or components, less data, or raise "
              "RECSYS_TRAIN_SOFT_TIME_LIMIT.")
        return {"outcome": "error", "reason": "time limit"}
    except ServiceError as exc:
        log.info("training %s/%s v%s ended as error: %s", tenant, model_id, version, exc.message)
        _fail(svc, tenant, model_id, version, owner, "failed", exc.message)
        return {"outcome": "error", "reason": exc.code}
    except Exception as exc:  # a defect: end the run clearly rather than leave it running
        log.exception("training %s/%s v%s crashed", tenant, model_id, version)
        _fail(svc, tenant, model_id, version, owner, "failed",
              f"Training stopped on an internal error ({type(exc).__name__}); it has been "
              "logged by the worker. Retrying may help; if not, report it.")
        return {"outcome": "error", "reason": type(exc).__name__}
    finally:
        try:
            release_lock(svc.redis, tenant, model_id, owner)
        except ServiceError:
            log.warning("could not release the lock of %s/%s; it expires", tenant, model_id)


def _attempt(svc: WorkerServices, tenant: str, model_id: str, version: int, owner: str,
             record: dict[str, Any], report: Report, beat: Heartbeat) -> dict[str, Any]:
    params: dict[str, Any] = record.get("params") or {}
    options: DatasetOptions = dataset_options(params)
    tp = train_params(params, svc.settings.train_threads)
    progress = Progress(svc, tenant, model_id, version, owner, report,
                        tp.evaluation.holdout > 0)

    def should_cancel() -> bool:
        return beat.lost or cancel_requested(svc.redis, tenant, model_id, version)

    if should_cancel():
        raise TrainingCancelled("Cancelled on request.")
    started = record.get("start_timestamp") or now_iso()
    now = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone(UTC)
    spec = DataSpec.from_request(params)
    progress("loading_data", 0.0, "Reading the selected data batches.")
    t0, cpu0 = time.perf_counter(), time.process_time()
    selected: SelectedData = select_data(svc.storage, svc.redis, tenant, spec, now,
                                         count_implied=False)
    selection = time.perf_counter() - t0
    progress("loading_data", 0.4, "Assembling the interaction and feature matrices.",
             {"data_batch_ids": selected.batch_ids})
    if selected.interactions.num_rows == 0:
        raise EmptyData(explain_empty(svc, tenant, spec, now))
    batch_ids = list(selected.batch_ids)
    dataset = build_dataset(selected.entities, selected.interactions, options)
    del selected
    assembly = time.perf_counter() - t0
    progress("loading_data", 1.0, "Data assembled.", {"counts": dict(dataset.counts)})
    epochs = tp.hyperparameters.epochs

    def on_progress(phase: str, fraction: float) -> None:
        if phase == "training":
            done = round(fraction * epochs)
            progress("training", fraction, f"Training: epoch {done} of {epochs}.")
        else:
            progress("evaluating", fraction,
                     "Evaluating: fitting a second model on the holdout split.")

    trained = train(dataset, tp, on_progress, should_cancel)
    if should_cancel():
        raise TrainingCancelled("Cancelled on request.")
    progress("saving", 0.0, "Saving the model.")
    t_save = time.perf_counter()
    model = record_manifest(batch_ids, params, dataset, trained)
    save_artifact(svc.storage, tenant, model_id, version, _artifact(dataset, trained, model))
    saving = time.perf_counter() - t_save
    metrics = trained.metrics
    message = "Training completed."
    if metrics:
        message += (f" precision@{metrics['k']} {metrics['precision_at_k']:.3f} (most popular: "
                    f"{metrics['baseline_precision_at_k']:.3f}).")
    elif tp.evaluation.holdout > 0:
        message += " No metrics: no source has 2 or more interactions to hold out."
    status, dropped = complete_run(
        svc.redis, svc.celery, tenant, model_id, version, owner=owner,
        keep_versions=svc.settings.keep_versions, message=message,
        model_fields={"source_type": options.source_type, "target_type": options.target_type},
        fields={"metrics": metrics},
    )
    if status is None:  # ended elsewhere (cancelled, reconciled) while saving
        delete_version(svc.storage, tenant, model_id, version)
        return {"outcome": "superseded"}
    for old in dropped:
        delete_version(svc.storage, tenant, model_id, old)
    report({"phase": "done", "progress": 100, "message": message})
    # timings for logs and bench/train.py; finished_at is wall-clock (time.time())
    return {"outcome": "completed", "assembly_seconds": round(assembly, 3),
            "selection_seconds": round(selection, 3),
            "epoch_seconds": round(trained.epoch_seconds, 3),
            "evaluation_seconds": round(trained.evaluation_seconds, 3),
            "scoring_seconds": round(trained.scoring_seconds, 3),
            "saving_seconds": round(saving, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3),
            "finished_at": round(time.time(), 3)}


def record_manifest(batch_ids: list[str], params: dict[str, Any], dataset: Dataset,
                    trained: TrainedModel) -> dict[str, Any]:
    """The manifest.json of a version (see :mod:`shared.models.artifact`)."""
    features = dataset.source_features
    return {
        "created_at": now_iso(),
        "source_type": params.get("source_type", "user"),
        "target_type": params.get("target_type", "item"),
        "hyperparameters": params.get("hyperparameters", {}),
        "evaluation": params.get("evaluation", {}),
        "interaction_weights": params.get("interaction_weights", {}),
        "use_metadata_features": bool(params.get("use_metadata_features", True)),
        "no_components": int(trained.source_repr.shape[1] - 2),
        "n_sources": dataset.n_sources,
        "n_targets": dataset.n_targets,
        "counts": dict(dataset.counts),
        "data_batch_ids": batch_ids,
        "data_hash": dataset.data_hash(),
        "metrics": trained.metrics,
        "source_features": None if features is None else {
            "names": features.names, "numeric_scales": features.numeric_scales},
    }
