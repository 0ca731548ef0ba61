"""The search's shared state in Optuna: one study per run, journaled in the service's Redis.

Every trial task, on any worker or host, loads the study from
``optuna.storages.JournalStorage`` on a Redis journal backend and asks it for
its parameters, so the TPE sampler sees every finished trial (and, with
``constant_liar``, the running ones) wherever they ran. The backend is
Optuna's :class:`~optuna.storages.journal.JournalRedisBackend` with two
changes: it uses the service's own Redis client (password, timeouts; fakeredis
in tests), and it never saves or loads snapshots, because Optuna's snapshots
are pickles and this service never loads a pickle from storage (the journal
itself is JSON). Optuna is imported inside the functions, so the API and
module imports stay light.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from typing import TYPE_CHECKING, Any

import redis

from shared.registry import tenant_key
from shared.runs.ref import RunRef

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def journal_prefix(ref: RunRef) -> str:
    """The Redis key prefix of a run's journal (deleted when the search ends)."""
    return tenant_key(ref.tenant, "tune", ref.model_id, str(ref.version))


def study_name(ref: RunRef) -> str:
    """The study of a run: one per model version."""
    return f"{ref.tenant}/{ref.model_id}/v{ref.version}"


def _storage(r: redis.Redis, ref: RunRef) -> optuna.storages.BaseStorage:
    import optuna
    from optuna.storages.journal import JournalRedisBackend

    class ServiceJournal(JournalRedisBackend):
        """Optuna's Redis journal on a given client, without (pickled) snapshots."""

        def __init__(self, client: redis.Redis, prefix: str) -> None:
            super().__init__("redis://", prefix=prefix)  # a lazy client, never connected
            self._redis = client

        def save_snapshot(self, snapshot: bytes) -> None:
            """Snapshots are pickles: not kept."""

        def load_snapshot(self) -> bytes | None:
            """No snapshot: the study is replayed from the JSON journal."""
            return None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.storages.JournalStorage(ServiceJournal(r, journal_prefix(ref)))


def startup_trials(total: int) -> int:
    """Random trials before TPE models the history: a third of the search, 3 to 10."""
    return max(3, min(10, total // 3))


def create_study(r: redis.Redis, ref: RunRef, first: dict[str, Any]) -> None:
    """Create the run's study (once); ``first`` is enqueued as its first trial when non-empty."""
    import optuna

    storage = _storage(r, ref)
    names = optuna.study.get_all_study_names(storage)
    if study_name(ref) in names:
        return  # a duplicate delivery of the parent task
    study = optuna.create_study(storage=storage, study_name=study_name(ref),
                                direction="maximize")
    if first:
        study.enqueue_trial(first, skip_if_exists=True)


def load_study(r: redis.Redis, ref: RunRef, total: int, seed_of: int) -> optuna.Study:
    """The run's study with a TPE sampler seeded for one trial (``seed_of``: its index)."""
    import optuna

    seed = zlib.crc32(f"{study_name(ref)}#{seed_of}".encode())
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=startup_trials(total), multivariate=True, constant_liar=True,
        seed=seed)
    return optuna.load_study(study_name=study_name(ref), storage=_storage(r, ref),
                             sampler=sampler)


def tell_failed(r: redis.Redis, ref: RunRef, numbers: list[int]) -> None:
    """Tell the study that trials lost with their worker failed (best effort)."""
    if not numbers:
        return
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(ref), storage=_storage(r, ref))
        for number in numbers:
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    except Exception:  # the search goes on from the run record; the study is advisory here
        log.warning("could not tell the study of %s that trials %s failed", ref, numbers,
                    exc_info=True)


def drop_study(r: redis.Redis, ref: RunRef) -> None:
    """Delete the run's journal once the search ended (the run record keeps the trials)."""
    prefix = journal_prefix(ref)
    try:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=500))
        for start in range(0, len(keys), 500):
            r.delete(*keys[start:start + 500])
    except redis.RedisError:
        log.warning("could not delete the journal of %s; it stays in Redis", ref)
