"""One attempt of one training run: lock, heartbeat, data, fit, artifact, atomic switch.

The Celery task in :mod:`worker.tasks` only binds this to the queue; here is
the order of things a run goes through and how each way of ending is
recorded (always through the :class:`~shared.runs.service.Runs` service, which
schedules the callback exactly once). A background thread writes the heartbeat
and keeps the per-model lock alive while the main thread is inside a LightFM
epoch. :class:`Attempt` names the steps: load the data, fit, save and complete.
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
from shared.data.selection import DataSpec, SelectedData, select_data
from shared.data.summary import count_interactions
from shared.errors import ServiceError
from shared.models.artifact import ModelArtifact, delete_version, save_artifact
from shared.models.state import save_state
from shared.runs.records import now_iso
from shared.runs.ref import RunRef
from shared.runs.service import Runs
from worker.candidates import Offer, worth_offering
from worker.context import WorkerServices
from worker.fitting import TrainingCancelled
from worker.params import train_params
from worker.training import TrainedModel, train
from worker.warm_start import from_parent, parent_version, state_of

log = logging.getLogger(__name__)

Report = Callable[[ProgressMeta], None]

#: Overall progress at which each phase starts (evaluation on / off).
WITH_EVAL = {"loading_data": 1, "training": 10, "evaluating": 55, "saving": 95}
WITHOUT_EVAL = {"loading_data": 1, "training": 10, "evaluating": 95, "saving": 95}
#: With "auto" choices the evaluation fits come first, then the served fit.
CHOOSING_FIRST = {"loading_data": 1, "evaluating": 10, "training": 65, "saving": 95}


class Heartbeat:
    """Writes the run's heartbeat and refreshes the model lock every interval."""

    def __init__(self, runs: Runs, ref: RunRef, owner: str) -> None:
        self.runs, self.ref, self.owner = runs, ref, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.runs.settings.heartbeat_interval):
            try:
                alive = self.runs.progress(self.ref, self.owner)
                self.runs.refresh_lock(self.ref, self.owner)
            except ServiceError:
                log.warning("heartbeat of %s failed; retrying", self.ref)
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

    def __init__(self, runs: Runs, ref: RunRef, owner: str, report: Report,
                 evaluation: bool, choosing_first: bool = False) -> None:
        self.runs, self.ref, self.owner, self.report = runs, ref, owner, report
        self.starts = (CHOOSING_FIRST if evaluation and choosing_first
                       else WITH_EVAL if evaluation else WITHOUT_EVAL)
        self.last = -1

    def _span(self, phase: str) -> tuple[int, int]:
        order = sorted(self.starts, key=lambda p: (self.starts[p], p != "saving"))
        start = self.starts[phase]
        following = [self.starts[p] for p in order[order.index(phase) + 1:]] or [99]
        return start, max(following[0], start)

    def __call__(self, phase: Phase, fraction: float, message: str,
                 fields: dict[str, Any] | None = None) -> None:
        start, end = self._span(phase)
        value = int(start + (end - start) * max(0.0, min(fraction, 1.0)))
        record = self.runs.progress(self.ref, self.owner, phase=phase, progress=value,
                                    message=message, fields=fields)
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
        target_feature_embeddings=trained.target_feature_embeddings,
        target_feature_biases=trained.target_feature_biases,
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


def _fail(runs: Runs, ref: RunRef, owner: str, phase: Phase, message: str) -> None:
    try:
        runs.finish(ref, phase=phase, message=message, owner=owner)
    except ServiceError:
        log.exception("could not record the end of %s; the reconciler will", ref)


def execute_run(svc: WorkerServices, ref: RunRef, report: Report) -> dict[str, Any]:
    """Run one attempt; returns a small summary for the Celery result."""
    picked_up = time.time()
    owner = uuid.uuid4().hex
    runs = svc.runs
    if not runs.take_lock(ref, owner):
        log.info("%s/%s is locked by another attempt; leaving v%s to it", ref.tenant,
                 ref.model_id, ref.version)
        return {"outcome": "skipped", "reason": "locked"}
    try:
        record = runs.start(ref, owner)
        if record is None:
            return {"outcome": "skipped", "reason": "ended or running elsewhere"}
        log.info("training %s: attempt %s started", ref, record["attempts"])
        with Heartbeat(runs, ref, owner) as beat:
            summary = Attempt(svc, ref, owner, record, report, beat).run()
        summary["picked_up_at"] = round(picked_up, 3)
        log.info("training %s: %s", ref, summary)
        return summary
    except TrainingCancelled:
        _fail(runs, ref, owner, "cancelled", "Cancelled on request.")
        return {"outcome": "cancelled"}
    except SoftTimeLimitExceeded:
        _fail(runs, ref, owner, "failed",
              f"Training ran past its time limit of {svc.settings.train_soft_time_limit} s "
              "and was stopped; use fewer epochs or components, less data, or raise "
              "RECSYS_TRAIN_SOFT_TIME_LIMIT.")
        return {"outcome": "error", "reason": "time limit"}
    except ServiceError as exc:
        log.info("training %s ended as error: %s", ref, exc.message)
        _fail(runs, ref, owner, "failed", exc.message)
        return {"outcome": "error", "reason": exc.code}
    except Exception as exc:  # a defect: end the run clearly rather than leave it running
        log.exception("training %s crashed", ref)
        _fail(runs, ref, owner, "failed",
              f"Training stopped on an internal error ({type(exc).__name__}); it has been "
              "logged by the worker. Retrying may help; if not, report it.")
        return {"outcome": "error", "reason": type(exc).__name__}
    finally:
        try:
            runs.release_lock(ref, owner)
        except ServiceError:
            log.warning("could not release the lock of %s/%s; it expires", ref.tenant,
                        ref.model_id)


def completion_message(metrics: Any, holdout: float, dataset: Dataset | None = None) -> str:
    """The message of a completed run: its precision against the baseline, if measured,
    and the ``interaction_weights`` types that had no data (a typo such as 'purchases')."""
    message = "Training completed."
    if metrics:
        message += (f" precision@{metrics['k']} {metrics['precision_at_k']:.3f} (most popular: "
                    f"{metrics['baseline_precision_at_k']:.3f}).")
    elif holdout > 0:
        message += " No metrics: no source has 2 or more interactions to hold out."
    if dataset is not None and dataset.unmatched_weight_types:
        unmatched = ", ".join(repr(t) for t in dataset.unmatched_weight_types)
        present = ", ".join(repr(t) for t in dataset.interaction_types)
        message += (f" interaction_weights names type(s) with no data: {unmatched}; "
                    f"the data has {present}.")
    return message


class Attempt:
    """One claimed attempt, in named steps: load the data, fit, save and complete."""

    def __init__(self, svc: WorkerServices, ref: RunRef, owner: str, record: dict[str, Any],
                 report: Report, beat: Heartbeat) -> None:
        self.svc, self.ref, self.owner, self.report, self.beat = svc, ref, owner, report, beat
        self.params: dict[str, Any] = record.get("params") or {}
        self.options: DatasetOptions = dataset_options(self.params)
        self.tp = train_params(self.params, svc.settings.train_threads)
        #: "auto" epochs or metadata: the holdout fits choose first, then the served fit
        self.choosing = self.tp.evaluation.holdout > 0 and (
            self.tp.epochs_auto or self.tp.metadata == "auto")
        self.progress = Progress(svc.runs, ref, owner, report, self.tp.evaluation.holdout > 0,
                                 self.choosing)
        started = record.get("start_timestamp") or now_iso()
        self.now = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone(UTC)
        #: seconds of each step, for logs and bench/train.py
        self.timings: dict[str, float] = {}

    def should_cancel(self) -> bool:
        """True once the run was cancelled, ended or taken over elsewhere."""
        return self.beat.lost or self.svc.runs.cancel_requested(self.ref)

    def _check_cancel(self) -> None:
        if self.should_cancel():
            raise TrainingCancelled("Cancelled on request.")

    def run(self) -> dict[str, Any]:
        """All steps; returns the summary for the Celery result."""
        self._check_cancel()
        t0, cpu0 = time.perf_counter(), time.process_time()
        dataset, batch_ids = self.load(t0)
        trained = self.fit(dataset)
        self._check_cancel()
        if not self.save_and_complete(dataset, trained, batch_ids):
            return {"outcome": "superseded"}
        # finished_at is wall-clock (time.time())
        return {"outcome": "completed", "assembly_seconds": self.timings["assembly"],
                "selection_seconds": self.timings["selection"],
                "epoch_seconds": round(trained.epoch_seconds, 3),
                "evaluation_seconds": round(trained.evaluation_seconds, 3),
                "scoring_seconds": round(trained.scoring_seconds, 3),
                "saving_seconds": self.timings["saving"],
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - cpu0, 3),
                "finished_at": round(time.time(), 3)}

    def load(self, t0: float) -> tuple[Dataset, list[str]]:
        """Select the batches and assemble the matrices; EmptyData says which setting emptied it."""
        svc, progress = self.svc, self.progress
        spec = DataSpec.from_request(self.params)
        progress("loading_data", 0.0, "Reading the selected data batches.")
        selected: SelectedData = select_data(svc.storage, svc.redis, self.ref.tenant, spec,
                                             self.now, count_implied=False)
        self.timings["selection"] = round(time.perf_counter() - t0, 3)
        progress("loading_data", 0.4, "Assembling the interaction and feature matrices.",
                 {"data_batch_ids": selected.batch_ids})
        if selected.interactions.num_rows == 0:
            raise EmptyData(explain_empty(svc, self.ref.tenant, spec, self.now))
        batch_ids = list(selected.batch_ids)
        dataset = build_dataset(selected.entities, selected.interactions, self.options)
        del selected
        self.timings["assembly"] = round(time.perf_counter() - t0, 3)
        progress("loading_data", 1.0, "Data assembled.", {"counts": dict(dataset.counts)})
        return dataset, batch_ids

    def fit(self, dataset: Dataset) -> TrainedModel:
        """Train (and evaluate on the holdout), reporting each epoch."""
        epochs = self.tp.hyperparameters.epochs

        def on_progress(phase: str, fraction: float) -> None:
            if phase == "training" and self.choosing:
                self.progress("training", fraction, "Training on all the data with the chosen "
                              f"epochs and features: {round(100 * fraction)}%.")
            elif phase == "training":
                done = round(fraction * epochs)
                self.progress("training", fraction, f"Training: epoch {done} of {epochs}.")
            elif self.choosing:
                self.progress("evaluating", fraction, "Choosing epochs and metadata features: "
                              "fitting on the holdout split.")
            else:
                self.progress("evaluating", fraction,
                              "Evaluating: fitting a second model on the holdout split.")

        start = from_parent(self.svc.storage, self.ref, self.params, self.tp.hyperparameters)
        offer = Offer(self.svc, self.ref, self.owner, self.should_cancel)  # worker/candidates.py
        try:
            return train(dataset, self.tp, on_progress, self.should_cancel, start=start,
                         offload=offer if worth_offering(self.tp.threads) else None)
        finally:
            offer.close()

    def save_and_complete(self, dataset: Dataset, trained: TrainedModel,
                          batch_ids: list[str]) -> bool:
        """Write the artifact, then complete the run; False when it ended elsewhere meanwhile."""
        svc, ref = self.svc, self.ref
        self.progress("saving", 0.0, "Saving the model.")
        t_save = time.perf_counter()
        manifest = record_manifest(batch_ids, self.params, dataset, trained)
        parent = parent_version(self.params)
        manifest["parent_version"] = parent
        served_data = dataset if trained.metadata_features else dataset.without_metadata()
        save_state(svc.storage, ref.tenant, ref.model_id, ref.version,
                   state_of(trained.model, served_data, self.tp.hyperparameters.loss))
        save_artifact(svc.storage, ref.tenant, ref.model_id, ref.version,
                      _artifact(dataset, trained, manifest))
        self.timings["saving"] = round(time.perf_counter() - t_save, 3)
        message = completion_message(trained.metrics, self.tp.evaluation.holdout, dataset)
        status, dropped = svc.runs.complete(
            ref, owner=self.owner, message=message,
            model_fields={"source_type": self.options.source_type,
                          "target_type": self.options.target_type},
            fields={"metrics": trained.metrics, "training": {
                **trained.training_choice(),
                **({"parent_version": parent} if parent is not None else {})},
                **({"candidate_fits": trained.candidate_fits} if trained.candidate_fits else {})},
        )
        if status is None:  # ended elsewhere (cancelled, reconciled) while saving
            delete_version(svc.storage, ref.tenant, ref.model_id, ref.version)
            return False
        for old in dropped:
            delete_version(svc.storage, ref.tenant, ref.model_id, old)
        self.report({"phase": "done", "progress": 100, "message": message})
        return True


def record_manifest(batch_ids: list[str], params: dict[str, Any], dataset: Dataset,
                    trained: TrainedModel) -> dict[str, Any]:
    """The manifest.json of a version (see :mod:`shared.models.artifact`)."""
    features = dataset.source_features if trained.metadata_features else None
    targets = dataset.target_features if trained.metadata_features else None
    hyperparameters = {**params.get("hyperparameters", {}), "epochs": trained.epochs}
    return {
        "created_at": now_iso(),
        "source_type": params.get("source_type", "user"),
        "target_type": params.get("target_type", "item"),
        "hyperparameters": hyperparameters,
        "evaluation": params.get("evaluation", {}),
        "interaction_weights": params.get("interaction_weights", {}),
        "use_metadata_features": trained.metadata_features,
        "training": trained.training_choice(),
        "no_components": int(trained.source_repr.shape[1] - 2),
        "n_sources": dataset.n_sources,
        "n_targets": dataset.n_targets,
        "counts": dict(dataset.counts),
        "data_batch_ids": batch_ids,
        "data_hash": dataset.data_hash(),
        "metrics": trained.metrics,
        "source_features": None if features is None else {
            "names": features.names, "numeric_scales": features.numeric_scales,
            "metadata_weight": features.metadata_weight},
        "target_features": None if targets is None else {
            "names": targets.names, "numeric_scales": targets.numeric_scales,
            "metadata_weight": targets.metadata_weight},
    }
