"""Serving a stored model: cache hits, hot swap, 404/409, blocks for known and unseen sources.

Also holds :func:`make_artifact` and :func:`register`, which the API tests reuse to
put a hand-built model on storage and make it the serving version.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fakeredis
import numpy as np
import pytest

from shared.data.features import METADATA_WEIGHT
from shared.errors import Conflict, DependencyUnavailable, NotFound
from shared.models import blocks as serving_blocks
from shared.models import serving
from shared.runs.ending import finish_run
from shared.runs.lifecycle import create_run
from shared.runs.ref import RunRef
from shared.storage import Storage
from tests.helpers.models import brute, make_artifact, register

T = "acme"


def rows_by_source(blocks: Any) -> dict[str, list[tuple[str, int, float, bool]]]:
    out: dict[str, list[tuple[str, int, float, bool]]] = {}
    for b in blocks:
        for s, t, r, sc, f in zip(b.source_ids.tolist(), b.target_ids.tolist(), b.ranks.tolist(),
                                  b.scores.tolist(), b.fallback.tolist(), strict=True):
            out.setdefault(s, []).append((t, r, sc, f))
    return out


def test_known_sources_match_brute_force_and_exclude_seen(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    art = make_artifact(n_sources=5, n_targets=300, seen={0: [3, 7, 11], 2: list(range(290))})
    register(fake_redis, storage, T, "m", art)
    model = serving.ModelCache().get(fake_redis, storage, T, "m")
    for exclude in (True, False):
        got = rows_by_source(serving_blocks.recommend_ids(model, ["u0", "u2", "u4"], 5, exclude))
        for sid, row in (("u0", 0), ("u2", 2), ("u4", 4)):
            assert [t for t, *_ in got[sid]] == brute(art, row, 5, exclude)
            assert [r for _, r, *_ in got[sid]] == list(range(1, 6))
            assert not any(f for *_, f in got[sid])
    # Every source, streamed in blocks, gives the same as asking for each one.
    everything = rows_by_source(serving_blocks.recommend_all(model, 3, True))
    assert sorted(everything) == [f"u{i}" for i in range(5)]
    assert [t for t, *_ in everything["u2"]] == brute(art, 2, 3, True)


def test_unseen_sources_get_popularity_marked_as_fallback(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    art = make_artifact()
    register(fake_redis, storage, T, "pop", art)
    model = serving.ModelCache().get(fake_redis, storage, T, "pop")
    got = rows_by_source(
        serving_blocks.recommend_ids(model, ["nobody", "u1"], 4, True, lambda _: None))
    popular = np.argsort(-art.target_popularity, kind="stable")[:4]
    assert [t for t, *_ in got["nobody"]] == [f"i{c}" for c in popular]
    np.testing.assert_allclose([s for _, _, s, _ in got["nobody"]],
                               art.target_popularity[popular], rtol=1e-6)
    assert all(f for *_, f in got["nobody"])
    assert not any(f for *_, f in got["u1"])


def test_unseen_sources_with_metadata_are_scored_from_their_features(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    art = make_artifact(n_targets=200, features=["country=fr", "country=de", "age"],
                        numeric_scales={"age": 80.0})
    register(fake_redis, storage, T, "cold", art)
    model = serving.ModelCache().get(fake_redis, storage, T, "cold")
    meta = {"a": {"country": "fr"}, "b": {"country": "de", "age": 40}, "c": {"shoe": "big"}}
    got = rows_by_source(serving_blocks.recommend_ids(model, ["a", "b", "c"], 5, True, meta.get))
    assert all(f for rows in got.values() for *_, f in rows)
    assert [t for t, *_ in got["a"]] != [t for t, *_ in got["b"]]
    # "a" has one known feature, at the weight training gives metadata features: its score
    # is that feature's repr, so weighted, against targets.
    emb, bias = art.source_feature_embeddings, art.source_feature_biases
    assert emb is not None and bias is not None
    rep = np.concatenate([METADATA_WEIGHT * emb[0], [METADATA_WEIGHT * bias[0], 1.0]])
    expected = np.argsort(-(rep @ art.target_repr.T.astype(np.float64)), kind="stable")[:5]
    assert [t for t, *_ in got["a"]] == [f"i{c}" for c in expected]
    # "c" has no feature the model knows: most popular instead.
    popular = np.argsort(-art.target_popularity, kind="stable")[:5]
    assert [t for t, *_ in got["c"]] == [f"i{c}" for c in popular]


def test_request_order_is_kept_across_known_cold_and_popular_sources(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    art = make_artifact(features=["x=1"])
    register(fake_redis, storage, T, "order", art)
    model = serving.ModelCache().get(fake_redis, storage, T, "order")
    ids = ["zz", "u3", "cold", "u0"]
    blocks = list(serving_blocks.recommend_ids(model, ids, 2, True,
                                        lambda s: {"x": "1"} if s == "cold" else None))
    seq = [s for b in blocks for s in b.source_ids.tolist()]
    assert list(dict.fromkeys(seq)) == ids


def test_cache_serves_the_new_version_as_soon_as_it_is_current(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    cache = serving.ModelCache()
    register(fake_redis, storage, T, "swap", make_artifact(seed=1))
    first = cache.get(fake_redis, storage, T, "swap")
    assert cache.get(fake_redis, storage, T, "swap") is first
    register(fake_redis, storage, T, "swap", make_artifact(seed=2))
    second = cache.get(fake_redis, storage, T, "swap")
    assert (first.version, second.version) == (1, 2)
    assert len(cache) == 1


def test_unknown_model_is_404_and_first_training_is_409(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    cache = serving.ModelCache()
    with pytest.raises(NotFound) as missing:
        cache.get(fake_redis, storage, T, "nope")
    assert missing.value.code == "model_not_found"
    create_run(fake_redis, T, "busy", {}, None)
    with pytest.raises(Conflict) as busy:
        cache.get(fake_redis, storage, T, "busy")
    assert busy.value.details["status"] == "running"
    assert busy.value.details["phase"] == "queued"
    # A first training that failed leaves nothing to serve: still 409, saying so.
    finish_run(fake_redis, None, RunRef(T, "busy", 1), phase="failed",
               message="Out of data.")
    with pytest.raises(Conflict) as failed:
        cache.get(fake_redis, storage, T, "busy")
    assert failed.value.details["status"] == "error"
    assert "error" in failed.value.message
    # Another tenant's model does not exist for this one.
    register(fake_redis, storage, "other", "theirs", make_artifact())
    with pytest.raises(NotFound):
        cache.get(fake_redis, storage, T, "theirs")


def test_clean_scores_keep_seven_significant_digits() -> None:
    raw = np.array([0.1, 1 / 3, -2.5e-6, 12345678.9, 0.0, -np.inf], dtype=np.float32)
    cleaned = serving_blocks.clean_scores(raw)
    assert cleaned[:5] == [0.1, 0.3333333, -2.5e-06, 12345680.0, 0.0]
    assert cleaned[5] == float("-inf")


def test_rows_of_finds_known_ids_of_any_length_and_flags_unknown(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    register(fake_redis, storage, T, "ids", make_artifact(n_sources=12))
    model = serving.ModelCache().get(fake_redis, storage, T, "ids")
    query = np.array(["u11", "a", "u1", "u10x", "zzzzzzzzzzzz", "u0", ""])
    assert model.rows_of(query).tolist() == [11, -1, 1, -1, -1, 0, -1]


def test_missing_files_of_the_serving_version_are_503_not_a_crash(
    fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    register(fake_redis, storage, T, "gone", make_artifact())
    storage.delete_tree("tenants/acme/models/gone/v1")
    with pytest.raises(DependencyUnavailable) as exc:
        serving.ModelCache().get(fake_redis, storage, T, "gone")
    assert exc.value.status == 503 and exc.value.code == "model_artifact_missing"


def test_a_version_pruned_between_lookup_and_load_is_retried_with_the_new_one(
    fake_redis: fakeredis.FakeRedis, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(fake_redis, storage, T, "race", make_artifact(seed=1))
    register(fake_redis, storage, T, "race", make_artifact(seed=2))
    storage.delete_tree("tenants/acme/models/race/v1")
    answers = iter([1, 2, 2])
    monkeypatch.setattr(serving.runs, "serving_version", lambda r, t, m: next(answers))
    assert serving.ModelCache().get(fake_redis, storage, T, "race").version == 2


def test_blocks_scored_on_threads_come_back_in_order_and_equal(
    fake_redis: fakeredis.FakeRedis, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given blocks of 3 sources, so 20 sources take 7 blocks
    art = make_artifact(n_sources=20, n_targets=500, seen={3: [1, 2], 17: [5]})
    register(fake_redis, storage, T, "par", art)
    model = serving.ModelCache().get(fake_redis, storage, T, "par")
    monkeypatch.setattr("shared.models.scoring.BLOCK_BUDGET_BYTES", 3 * 500 * 4)
    ids = [f"u{i}" for i in reversed(range(20))] + ["stranger"]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(serving_blocks.recommend_ids(model, ids, 4, True, None, pool))
        everything = list(serving_blocks.recommend_all(model, 4, True, pool))
        # An abandoned stream stops early without error.
        stream = serving_blocks.recommend_all(model, 4, True, pool)
        next(stream)
        stream.close()  # type: ignore[attr-defined]
    sequential = list(serving_blocks.recommend_ids(model, ids, 4, True, None))
    assert len(parallel) == 7
    for a, b in zip(parallel, sequential, strict=True):
        assert a.source_ids.tolist() == b.source_ids.tolist()
        assert a.target_ids.tolist() == b.target_ids.tolist()
    seq = [s for block in parallel for s in block.source_ids.tolist()]
    assert list(dict.fromkeys(seq)) == ids
    got = rows_by_source(everything)
    assert [t for t, *_ in got["u3"]] == brute(art, 3, 4, True)
