"""What the API and the workers agree on: task names, queues, states and payload types.

The API enqueues by task *name* (``send_task``) so it never imports worker
code; these constants are the only link between the two sides.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

#: Long-running training tasks. Prefetch 1, late acks.
#: What a model id looks like (docs/api.md): 1 to 128 letters, digits, '_', '.' or '-', but
#: not only dots ("." and ".." would name the parent directories of the model's storage
#: path). The one rule for every endpoint; checked with :func:`is_model_id` (a full match,
#: so no trailing newline slips through ``$``).
MODEL_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9_.-]{1,128}$"
MODEL_ID_RULE = "must be 1 to 128 letters, digits, '_', '.' or '-', and not only dots"
_MODEL_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.-]{1,128}")


def is_model_id(value: str) -> bool:
    """Whether ``value`` is a valid model id."""
    return _MODEL_ID.fullmatch(value) is not None


QUEUE_TRAIN = "train"
#: Short webhook deliveries and periodic housekeeping, so a slow receiver never holds training.
QUEUE_CALLBACKS = "callbacks"

TASK_TRAIN = "recsys.train"
TASK_DELIVER_CALLBACK = "recsys.deliver_callback"
TASK_SCAN_CALLBACKS = "recsys.scan_callbacks"
TASK_RECONCILE_RUNS = "recsys.reconcile_runs"
#: Tuning (docs/tuning.md): the search's parent, one trial, and the beat-driven check.
TASK_TUNE = "recsys.tune"
TASK_TUNE_TRIAL = "recsys.tune_trial"
TASK_TUNE_CHECK = "recsys.tune_check"
#: One tick of a model's schedule: decide (new data? training? quota?), then submit a run.
TASK_SCHEDULE_TICK = "recsys.schedule_tick"
#: A trivial task that walks through PROGRESS states; proves the queue end to end.
TASK_PROGRESS_PROBE = "recsys.progress_probe"

#: Custom Celery state a task reports while it works; its meta is a :class:`ProgressMeta`.
PROGRESS_STATE = "PROGRESS"

#: Training defaults (docs/api.md, "Training"); the API fills requests with them and the
#: worker's parameter types default to them, so both sides always agree.
HYPERPARAMETER_DEFAULTS: dict[str, Any] = {
    "loss": "warp",
    "no_components": 32,
    "epochs": "auto",
    "max_epochs": 100,
    "learning_rate": 0.05,
    "item_alpha": 0.0,
    "user_alpha": 0.0,
    "max_sampled": 10,
    "random_state": 42,
}
EVALUATION_DEFAULTS: dict[str, Any] = {"holdout": 0.1, "max_sources": 10_000, "k": 10}
#: ``use_metadata_features`` default: compare with and without on the holdout.
METADATA_FEATURES_DEFAULT: bool | Literal["auto"] = "auto"
#: What ``epochs: "auto"`` trains when there is no holdout to stop on (``{"holdout": 0}``).
AUTO_EPOCHS_WITHOUT_HOLDOUT = 20

Phase = Literal[
    "queued", "loading_data", "training", "evaluating", "saving", "done", "failed", "cancelled",
    "tuning",
]
RunState = Literal["running", "completed", "error"]
CallbackDeliveryState = Literal["pending", "delivered", "failed"]


class ProgressMeta(TypedDict):
    """Meta of the ``PROGRESS`` state; also mirrored into the run record."""

    phase: Phase
    progress: int
    message: str


class CallbackStatus(TypedDict):
    """The ``callback`` field of the status object."""

    state: CallbackDeliveryState
    attempts: int
    last_response_code: int | None
    next_attempt_at: str | None


class Counts(TypedDict):
    """What a run actually used."""

    entities: int
    interactions: int
    sources: int
    targets: int


class Metrics(TypedDict):
    """Holdout metrics of a run, each ranking metric beside the most-popular baseline's."""

    k: int
    precision_at_k: float
    recall_at_k: float
    auc: float
    ndcg_at_k: float
    map_at_k: float
    coverage: float
    baseline_precision_at_k: float
    baseline_ndcg_at_k: float
    baseline_map_at_k: float
    baseline_coverage: float
    evaluated_sources: int


class CurvePoint(TypedDict):
    """One point of the validation curve: the holdout precision after ``epoch`` epochs."""

    epoch: int
    precision_at_k: float


class Candidates(TypedDict):
    """Holdout precision@k of the two settings ``use_metadata_features: "auto"`` compared."""

    with_metadata: float
    without_metadata: float


class _TrainingChoiceBase(TypedDict):
    epochs: int
    metadata_features: bool
    curve: list[CurvePoint]


class TrainingChoice(_TrainingChoiceBase, total=False):
    """The status object's ``training`` field: what was chosen from the data (API.md).

    ``candidates`` only when ``"auto"`` compared them; ``parent_version`` only for a
    warm start (set by whoever runs it).
    """

    candidates: Candidates
    parent_version: int | None


class RunStatus(TypedDict):
    """The status object of ``GET /status`` and of callbacks (docs/api.md, "Status")."""

    model_id: str
    version: int
    start_timestamp: str | None
    end_timestamp: str | None
    status: RunState
    phase: Phase
    message: str
    progress: int
    data_batch_ids: list[str]
    counts: Counts | None
    metrics: Metrics | None
    callback: CallbackStatus | None
    #: A search's trials and best so far (docs/tuning.md); None for a plain training run.
    tuning: dict[str, Any] | None
    #: What was chosen from the data (epochs, metadata features, curve); None until known.
    training: TrainingChoice | None
