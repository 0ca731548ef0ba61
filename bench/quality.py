"""Quality benchmark: the service's defaults against the best fixed setting, and their cost.

A synthetic generator with the shape of real behaviour data (issue #13):
long-tail item popularity, latent taste clusters, noise, many users with few
interactions, and item and user metadata that partly explains taste
(``--variant signal``) or explains nothing (``noise``: the same taste, but
genres and segments drawn at random).

For each dataset it holds out each user's most recent interaction as a final
test the service never sees, then compares on it (precision@10):

- the defaults: :func:`worker.training.train` with the parameters a bare
  ``POST /train`` resolves to (``epochs`` and ``use_metadata_features``
  ``"auto"``, holdout 0.1 for the choices), the same call the worker makes;
- bare LightFM at the same hyperparameters for every cell of the grid epochs
  5/10/20/30/50 x metadata on/off; the table shows the best cell (chosen on
  the final test itself, so a bar the defaults cannot see).

Then the cost: a default run on about 1,000,000 interactions against bare
LightFM's fit, on the same matrices and threads, at the epoch count the run
chose (target: at most 2.5x), as the median of ``--repeats`` runs. The run
fits its two candidates as the worker would on this host (see :func:`cost`);
``--two-tasks`` offers the second to a second process instead.

Run: ``.venv/bin/python bench/quality.py`` (``--quick`` for small sizes,
``--skip-cost`` to skip the 1M run).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from shared.data.assembly import Dataset, DatasetOptions, build_dataset
from worker.evaluation import EvaluationSettings, evaluate
from worker.fitting import (
    TrainParams,
    check_finite,
    fit_epoch,
    fit_inputs,
    new_model,
    representations,
)
from worker.params import train_params
from worker.training import train

GRID_EPOCHS = (5, 10, 20, 30, 50)
K = 10


def generate(n_users: int, n_items: int, n_interactions: int, variant: str = "signal",
             n_clusters: int = 20, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """(entities, interactions) with planted taste; see the module docstring.

    - items: a taste cluster each, Zipf-like popularity (exponent 1.0, shuffled);
    - users: a main taste cluster and a second one; activity log-normal, so
      most users have a handful of interactions and a few have hundreds;
    - an interaction: 60% the main cluster, 15% the second, 25% anywhere
      (popularity-weighted noise); within a cluster, popularity-weighted;
    - metadata: an item's ``genre`` is its cluster's with probability 0.7
      (else random) and a ``year`` number that carries nothing; a user's
      ``segment`` is its main cluster with probability 0.6. In ``noise`` they
      are all random.
    """
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, n_clusters, n_items)
    popularity = 1.0 / (np.arange(n_items) + 1.0)
    rng.shuffle(popularity)
    activity = rng.lognormal(0.0, 1.2, n_users)
    per_user = np.maximum(1, np.round(activity / activity.sum() * n_interactions)).astype(int)
    users = np.repeat(np.arange(n_users), per_user)
    main = rng.integers(0, n_clusters, n_users)
    second = rng.integers(0, n_clusters, n_users)
    draw = rng.random(users.size)
    cluster = np.where(draw < 0.6, main[users], second[users])
    anywhere = draw >= 0.75
    # popularity-weighted choice within a cluster: inverse CDF per cluster
    order = np.lexsort((np.arange(n_items), item_cluster))
    sorted_cluster = item_cluster[order]
    cum = np.cumsum(popularity[order])
    starts = np.searchsorted(sorted_cluster, np.arange(n_clusters))
    ends = np.searchsorted(sorted_cluster, np.arange(n_clusters), side="right")
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    width = cum[np.maximum(ends - 1, 0)] - base
    u = base[cluster] + rng.random(users.size) * width[cluster]
    items = order[np.minimum(np.searchsorted(cum, u), n_items - 1)]
    global_cum = np.cumsum(popularity) / popularity.sum()
    noise_items = np.minimum(np.searchsorted(global_cum, rng.random(users.size)), n_items - 1)
    items = np.where(anywhere, noise_items, items)
    times = rng.integers(1_600_000_000, 1_700_000_000, users.size)
    interactions = pa.table({
        "type": pa.array(["view"] * users.size),
        "source_id": pa.array(np.char.add("u", users.astype(str))),
        "target_id": pa.array(np.char.add("i", items.astype(str))),
        "timestamp": pa.array(times * 1_000_000, pa.timestamp("us", tz="UTC")),
        "metadata": pa.array(["{}"] * users.size),
    })
    signal = variant == "signal"
    genre = np.where(signal & (rng.random(n_items) < 0.7), item_cluster,
                     rng.integers(0, n_clusters, n_items))
    segment = np.where(signal & (rng.random(n_users) < 0.6), main,
                       rng.integers(0, n_clusters, n_users))
    years = rng.integers(1950, 2024, n_items)
    metas = ([json.dumps({"segment": f"s{s}"}) for s in segment.tolist()]
             + [json.dumps({"genre": f"g{g}", "year": int(y)})
                for g, y in zip(genre.tolist(), years.tolist(), strict=True)])
    ids = [f"u{i}" for i in range(n_users)] + [f"i{i}" for i in range(n_items)]
    entities = pa.table({
        "id": pa.array(ids), "type": pa.array(["user"] * n_users + ["item"] * n_items),
        "name": pa.array([""] * len(ids)), "metadata": pa.array(metas),
        "media_url": pa.array([None] * len(ids), pa.string()),
    })
    return entities, interactions


def final_split(dataset: Dataset) -> np.ndarray:
    """Mask of each source's most recent pair (sources with 2+ pairs): the final test."""
    n = dataset.rows.size
    order = np.lexsort((np.arange(n), dataset.times, dataset.rows))
    rows = dataset.rows[order]
    last = np.r_[rows[1:] != rows[:-1], True]
    counts = np.bincount(dataset.rows, minlength=dataset.n_sources)
    mask = np.zeros(n, dtype=bool)
    mask[order[last & (counts[rows] >= 2)]] = True
    return mask


def subset(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """The dataset restricted to the ``keep`` pairs (same ids and features)."""
    return replace(dataset, rows=dataset.rows[keep], cols=dataset.cols[keep],
                   weights=dataset.weights[keep], times=dataset.times[keep])


def grid(train_data: Dataset, full: Dataset, test: np.ndarray, params: TrainParams,
         ) -> dict[tuple[int, bool], float]:
    """Bare LightFM precision@10 on the final test per (epochs, metadata)."""
    settings = EvaluationSettings(holdout=0.0, max_sources=10_000, k=K)
    out: dict[tuple[int, bool], float] = {}
    for metadata in (True, False):
        data = train_data if metadata else train_data.without_metadata()
        scored = full if metadata else full.without_metadata()
        model = new_model(params.hyperparameters)
        interactions, weights = fit_inputs(data, params.hyperparameters, None)
        for epoch in range(1, max(GRID_EPOCHS) + 1):
            fit_epoch(model, data, interactions, weights, params.threads, lambda: False)
            if epoch in GRID_EPOCHS:
                check_finite(model)
                metrics = evaluate(scored, test, *representations(model, scored), settings,
                                   params.hyperparameters.random_state)
                out[(epoch, metadata)] = metrics["precision_at_k"]
    return out


def quality(name: str, entities: pa.Table, interactions: pa.Table, threads: int) -> str:
    """One table row: defaults vs the best fixed cell on the final test."""
    full = build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))
    test = final_split(full)
    train_data = subset(full, ~test)
    params = train_params({}, threads)  # exactly what a bare POST /train resolves to
    started = time.perf_counter()
    trained = train(train_data, params, lambda p, f: None, lambda: False)
    seconds = time.perf_counter() - started
    settings = EvaluationSettings(holdout=0.0, max_sources=10_000, k=K)
    defaults = evaluate(full, test, trained.source_repr, trained.target_repr, settings,
                        params.hyperparameters.random_state)["precision_at_k"]
    cells = grid(train_data, full, test, params)
    (best_epochs, best_meta), best = max(cells.items(), key=lambda item: item[1])
    same = cells.get((trained.epochs, trained.metadata_features))
    cand = trained.candidates or {}
    grid_text = " ".join(f"{e}{'m' if m else ''}={v:.4f}" for (e, m), v in sorted(cells.items()))
    print(f"  {name}: grid {grid_text}", flush=True)
    return (f"| {name} | {full.counts['interactions']:,} | {defaults:.4f} | "
            f"{trained.epochs}, {'on' if trained.metadata_features else 'off'} | "
            f"{cand.get('with_metadata', float('nan')):.4f} / "
            f"{cand.get('without_metadata', float('nan')):.4f} | "
            f"{best:.4f} ({best_epochs}, {'on' if best_meta else 'off'}) | "
            f"{'-' if same is None else f'{same:.4f}'} | {defaults / best:.3f} | "
            f"{seconds:.1f} |")


def _helper(n_interactions: int, threads: int, out: Any) -> None:
    """A second process standing in for a free worker: load the data, fit without metadata."""
    from worker.candidates import result_json
    from worker.evaluation import holdout_split
    from worker.selection import evaluation_fit

    entities, interactions = generate(n_interactions // 20, 20_000, n_interactions, seed=7)
    dataset = build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))
    params = train_params({}, threads)
    result = evaluation_fit(dataset.without_metadata(), params,
                            holdout_split(dataset, params.evaluation.holdout),
                            params.max_epochs, True, lambda e: None, lambda: False)
    out.put(json.dumps(result_json(result, dataset.data_hash())))


class ProcessOffload:
    """:class:`worker.choice.Offload` on a spawned process (the bench's "free worker")."""

    def __init__(self, n_interactions: int, threads: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.queue = ctx.Queue()
        self.proc = ctx.Process(target=_helper, args=(n_interactions, threads, self.queue))

    def offer(self) -> None:
        self.proc.start()

    def fraction(self) -> float:
        return 0.0

    def take(self) -> bool:
        return False

    def collect(self, data_hash: str, on_wait: Any) -> Any:
        from worker.candidates import result_from_json

        raw = json.loads(self.queue.get())
        self.proc.join()
        assert raw["data_hash"] == data_hash
        return result_from_json(raw)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the bench's helper process)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _bare(data: Dataset, params: TrainParams, epochs: int) -> tuple[float, float]:
    """(wall, CPU) seconds of bare LightFM's fit: same matrices, threads and epochs."""
    started, cpu_started = time.perf_counter(), _cpu()
    model = new_model(params.hyperparameters)
    inputs = fit_inputs(data, params.hyperparameters, None)
    for _ in range(epochs):
        fit_epoch(model, data, *inputs, params.threads, lambda: False)
    return time.perf_counter() - started, _cpu() - cpu_started


def cost(n_interactions: int, threads: int, two_tasks: bool, repeats: int) -> None:
    """Default run vs bare LightFM's fit at the chosen epochs, same data and threads.

    The run fits its candidates as the worker does on this host
    (:func:`worker.candidates.worth_offering`): offered to a second worker
    when the host has the cores for both, else both in this process at once,
    each with half the threads. ``two_tasks`` forces the offer, to a second
    process that loads the data itself, as a second free worker does. Each
    repeat times the run, then the bare fit at the epochs it chose; the
    ratios' medians are the figures. CPU time (the work done) is steadier on
    a shared machine than wall time.
    """
    from worker.candidates import worth_offering

    entities, interactions = generate(n_interactions // 20, 20_000, n_interactions, seed=7)
    dataset = build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))
    params = train_params({}, threads)
    two_tasks = two_tasks or worth_offering(threads)
    mode = ("the candidates as two tasks at once" if two_tasks else
            "both candidates in this process at once, half the threads each")
    print(f"\nCost: {dataset.counts['interactions']:,} interactions, {dataset.rows.size:,} "
          f"pairs, {threads} threads; {mode}; {repeats} repeats")
    walls, cpus = [], []
    for repeat in range(repeats):
        offload = ProcessOffload(n_interactions, threads) if two_tasks else None
        started, cpu_started = time.perf_counter(), _cpu()
        trained = train(dataset, params, lambda p, f: None, lambda: False, offload=offload)
        service, service_cpu = time.perf_counter() - started, _cpu() - cpu_started
        data = dataset if trained.metadata_features else dataset.without_metadata()
        bare, bare_cpu = _bare(data, params, trained.epochs)
        walls.append(service / bare)
        cpus.append(service_cpu / bare_cpu)
        served = trained.epoch_seconds * trained.epochs
        print(f"  {repeat + 1}: chose {trained.epochs} epochs, metadata "
              f"{'on' if trained.metadata_features else 'off'} ({trained.candidates}); run "
              f"{service:.1f} s wall / {service_cpu:.1f} s CPU (evaluation "
              f"{trained.evaluation_seconds:.1f} s, of it scoring "
              f"{trained.scoring_seconds:.1f} s; served fit {served:.1f} s); bare fit "
              f"{bare:.1f} s wall / {bare_cpu:.1f} s CPU; ratio {walls[-1]:.2f}x wall, "
              f"{cpus[-1]:.2f}x CPU", flush=True)
        print(f"     candidate fits: {trained.candidate_fits}")
        print(f"     curve: {[(p['epoch'], p['precision_at_k']) for p in trained.curve]}")
    print(f"  ratio, median of {repeats}: {float(np.median(walls)):.2f}x wall (target <= 2.5x), "
          f"{float(np.median(cpus)):.2f}x CPU")


def main() -> None:
    """Print the quality table and the cost."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small datasets only")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--cost-interactions", type=int, default=1_000_000)
    parser.add_argument("--two-tasks", action="store_true",
                        help="cost: offer the second candidate to a second process even on a "
                             "host without the cores for both")
    parser.add_argument("--repeats", type=int, default=3, help="cost: runs (medians)")
    args = parser.parse_args()
    if args.cost_only:
        cost(args.cost_interactions, args.threads, args.two_tasks, args.repeats)
        return
    scale = 0.25 if args.quick else 1.0
    datasets = [
        ("metadata explains taste", 20_000, 5_000, 300_000, "signal"),
        ("metadata is noise", 20_000, 5_000, 300_000, "noise"),
        ("sparse users, long tail", 40_000, 20_000, 200_000, "signal"),
    ]
    print("| dataset | interactions | defaults p@10 | chosen (epochs, metadata) | "
          "candidates with / without | best fixed p@10 (epochs, metadata) | "
          "fixed at chosen | defaults / best | defaults s |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, users, items, n, variant in datasets:
        entities, interactions = generate(int(users * scale), int(items * scale),
                                          int(n * scale), variant)
        rows.append(quality(name, entities, interactions, args.threads))
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    if not args.skip_cost:
        cost(args.cost_interactions, args.threads, args.two_tasks, args.repeats)


if __name__ == "__main__":
    main()
