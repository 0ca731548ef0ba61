"""Warm start vs full retrain: time and holdout precision@10, side by side in one run.

A model is trained on 1,000,000 synthetic interactions (clustered tastes,
power-law popularity), then 5% more interactions arrive, from existing users
and from new users, on existing and new items. Both contenders fit the grown
data (old and new together, minus the same holdout) with the service's own
code (:func:`worker.training.fit`, :mod:`worker.warm_start`,
:func:`worker.evaluation.evaluate`):

- full retrain: a fresh model, ``--full-epochs`` epochs (the default 10);
- warm start: the parent's state grown to the new ids, ``--warm-epochs`` epochs.

The holdout is each source's most recent 10% (so mostly the new data); the
parent never saw it. Target: the warm start takes at most 30% of the full
retrain's time at 97% or more of its precision@10; the last lines say plainly
whether each target was met, and by how much it was missed.

Run: ``.venv/bin/python bench/fresh.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.data.assembly import Dataset, DatasetOptions, build_dataset  # noqa: E402
from shared.ingest.columns import ENTITY_SCHEMA  # noqa: E402
from worker.evaluation import EvaluationSettings, evaluate, holdout_split  # noqa: E402
from worker.fitting import Hyperparameters, fit, representations  # noqa: E402
from worker.warm_start import grow, state_of  # noqa: E402

if TYPE_CHECKING:
    from lightfm import LightFM

T0 = 1_700_000_000_000_000  # µs


def interactions(n: int, users: np.ndarray, items: np.ndarray, user_cluster: np.ndarray,
                 item_cluster: np.ndarray, n_clusters: int, t_start: int, t_end: int,
                 rng: np.random.Generator) -> pa.Table:
    """``n`` interactions: 80% within the user's cluster, by power-law popularity; 20% any."""
    src = rng.integers(0, users.size, n)
    own = rng.random(n) < 0.8
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    tgt = np.empty(n, dtype=np.int64)
    for c in range(n_clusters):  # one vectorised draw per cluster
        rows = np.flatnonzero(own & (user_cluster[src] == c))
        pool = by_cluster[c]
        weights = 1.0 / np.arange(1, pool.size + 1) ** 0.8
        tgt[rows] = pool[rng.choice(pool.size, rows.size, p=weights / weights.sum())]
    rest = np.flatnonzero(~own)
    weights = 1.0 / np.arange(1, items.size + 1) ** 1.0
    tgt[rest] = rng.choice(items.size, rest.size, p=weights / weights.sum())
    times = np.sort(rng.integers(t_start, t_end, n))
    return pa.table({
        "type": pa.array(np.full(n, "view")),
        "source_id": pa.array(users[src]),
        "target_id": pa.array(items[tgt]),
        "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "metadata": pa.array(np.full(n, "{}")),
    })


def make_data(n: int, growth: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(base, new): ``n`` interactions, then ``growth * n`` more with new users and items."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_clusters = n // 20, n // 100, 40
    new_users, new_items = int(n_users * growth * 2), int(n_items * growth)
    users = np.array([f"u{i}" for i in range(n_users + new_users)])
    items = np.array([f"i{i}" for i in range(n_items + new_items)])
    user_cluster = rng.integers(0, n_clusters, users.size)
    item_cluster = rng.integers(0, n_clusters, items.size)
    day = 86_400_000_000
    base = interactions(n, users[:n_users], items[:n_items], user_cluster[:n_users],
                        item_cluster[:n_items], n_clusters, T0, T0 + 300 * day, rng)
    n_new = int(n * growth)
    # half of the new interactions come from new users; every item, new ones included
    old = interactions(n_new // 2, users[:n_users], items, user_cluster[:n_users],
                       item_cluster, n_clusters, T0 + 300 * day, T0 + 310 * day, rng)
    fresh = interactions(n_new - n_new // 2, users[n_users:], items, user_cluster[n_users:],
                         item_cluster, n_clusters, T0 + 300 * day, T0 + 310 * day, rng)
    return base, pa.concat_tables([old, fresh])


def subset(dataset: Dataset, mask: np.ndarray) -> pa.Table:
    """The interactions of ``dataset``'s pairs under ``mask``, as a table."""
    n = int(mask.sum())
    return pa.table({
        "type": pa.array(np.full(n, "view")),
        "source_id": pa.array(dataset.source_ids[dataset.rows[mask]]),
        "target_id": pa.array(dataset.target_ids[dataset.cols[mask]]),
        "timestamp": pa.array(dataset.times[mask], pa.timestamp("us", tz="UTC")),
        "metadata": pa.array(np.full(n, "{}")),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--growth", type=float, default=0.05)
    parser.add_argument("--full-epochs", type=int, default=10)
    parser.add_argument("--warm-epochs", default="1,2",
                        help="comma-separated: one warm start per value")
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    base, new = make_data(args.interactions, args.growth, args.seed)
    no_entities = ENTITY_SCHEMA.empty_table()
    options = DatasetOptions(use_metadata_features=False)
    full = build_dataset(no_entities, pa.concat_tables([base, new]), options)
    test = holdout_split(full, 0.1)
    is_base = full.times < T0 + 300 * 86_400_000_000
    parent_data = build_dataset(no_entities, subset(full, is_base & ~test), options)
    print(f"data: {base.num_rows:,} interactions, then {new.num_rows:,} more; "
          f"{full.n_sources:,} sources ({full.n_sources - parent_data.n_sources:,} new), "
          f"{full.n_targets:,} targets ({full.n_targets - parent_data.n_targets:,} new); "
          f"holdout {int(test.sum()):,} pairs (each source's newest 10%)")

    def hp(epochs: int) -> Hyperparameters:
        return Hyperparameters(epochs=epochs, no_components=args.components)

    started = time.perf_counter()
    parent = fit(parent_data, hp(args.full_epochs), args.threads, lambda _: None,
                 lambda: False)
    print(f"parent: {args.full_epochs} epochs on the first {base.num_rows:,} interactions "
          f"in {time.perf_counter() - started:.1f} s")
    parent_state = state_of(parent, parent_data, "warp")
    settings = EvaluationSettings(holdout=0.1, max_sources=20_000, k=10)

    rows = []
    contenders = [("full retrain", args.full_epochs, False)] + [
        ("warm start", int(e), True) for e in args.warm_epochs.split(",")]
    for name, epochs, warm in contenders:
        started = time.perf_counter()
        start: Callable[[Dataset], LightFM] | None = None
        growth = 0.0
        if warm:
            grown = grow(parent_state, full, hp(epochs))
            growth = time.perf_counter() - started
            start = lambda _data, grown=grown: grown  # noqa: E731  (counted in its time)
        model = fit(full, hp(epochs), args.threads, lambda _: None, lambda: False,
                    mask=~test, start=start)
        seconds = time.perf_counter() - started
        if warm:
            print(f"warm start, {epochs} epochs: growing the parent's state took {growth:.2f} s")
        source_repr, target_repr = representations(model, full)
        metrics = evaluate(full, test, source_repr, target_repr, settings, args.seed)
        rows.append((name, epochs, seconds, metrics["precision_at_k"],
                     metrics["baseline_precision_at_k"]))

    print(f"\n{'':14}{'epochs':>8}{'seconds':>10}{'precision@10':>14}{'most popular':>14}")
    for name, epochs, seconds, precision, baseline in rows:
        print(f"{name:14}{epochs:>8}{seconds:>10.1f}{precision:>14.4f}{baseline:>14.4f}")
    _, _, full_s, full_p, _ = rows[0]
    for _, epochs, warm_s, warm_p, _ in rows[1:]:
        time_ratio, quality = warm_s / full_s, warm_p / full_p if full_p else 0.0
        print(f"\nwarm start, {epochs} epochs: {time_ratio:.0%} of the full retrain's time "
              f"(target <= 30%), {quality:.1%} of its precision@10 (target >= 97%)")
        print("  time target: " + ("met" if time_ratio <= 0.30 else
                                   f"MISSED by {time_ratio - 0.30:.0%} of the full time"))
        print("  quality target: " + ("met" if quality >= 0.97 else
                                      f"MISSED by {0.97 - quality:.1%} of its precision"))


if __name__ == "__main__":
    main()
