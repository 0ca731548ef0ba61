"""Synthetic data with planted structure for the training tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa


def clustered(
    n_users: int = 300, n_items: int = 200, n_clusters: int = 5, per_user: int = 20,
    seed: int = 0, with_metadata: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """(entities, interactions): users like items of their own cluster; popularity is flat.

    Item ``i`` belongs to cluster ``i % n_clusters``; a few global "hits" are liked by
    everyone (so the popularity baseline has something to find, but less than the clusters).
    """
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    items = np.arange(n_items)
    hits = items[:3]
    src, tgt, ts = [], [], []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for u in range(n_users):  # test-data generation: small table, a loop is fine
        own = items[(items % n_clusters) == user_cluster[u]]
        chosen = rng.choice(own, per_user, replace=False)
        for j, item in enumerate([*chosen.tolist(), *hits.tolist()]):
            src.append(f"u{u}")
            tgt.append(f"i{item}")
            ts.append(start + timedelta(hours=int(rng.integers(0, 1000)) + j))
    interactions = pa.table({
        "type": pa.array(["view"] * len(src)),
        "source_id": pa.array(src),
        "target_id": pa.array(tgt),
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "metadata": pa.array(["{}"] * len(src)),
    })
    ids = [f"u{u}" for u in range(n_users)] + [f"i{i}" for i in range(n_items)]
    types = ["user"] * n_users + ["item"] * n_items
    metas = ([json.dumps({"segment": f"s{c}", "age": int(20 + c)}) for c in user_cluster]
             + [json.dumps({"genre": f"g{i % n_clusters}"}) for i in range(n_items)])
    if not with_metadata:
        metas = ["{}"] * len(ids)
    entities = pa.table({
        "id": pa.array(ids), "type": pa.array(types), "name": pa.array([""] * len(ids)),
        "metadata": pa.array(metas), "media_url": pa.array([None] * len(ids), pa.string()),
    })
    return entities, interactions
