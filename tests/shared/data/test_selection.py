"""select_data, DataSpec.from_request, summarise_data and latest_entity on stored batches."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from shared.config import Settings
from shared.data.batches import BatchMeta
from shared.data.entity_index import EntityIndex
from shared.data.selection import (
    Condition,
    DataSpec,
    latest_entity,
    select_data,
)
from shared.data.summary import summarise_data
from shared.errors import ValidationFailed
from shared.ingest.store import prepare_json, store, workspace
from shared.storage import Storage

NOW = datetime(2024, 6, 1, tzinfo=UTC)


class Uploader:
    """Stores JSON-form batches as the API would."""

    def __init__(self, storage: Storage, r: fakeredis.FakeRedis, settings: Settings) -> None:
        self.storage, self.r, self.settings = storage, r, settings
        self.tick = 0

    def __call__(self, tenant: str = "acme", tags: tuple[str, ...] = (), **body: Any
                 ) -> list[BatchMeta]:
        self.tick += 1
        with workspace(self.settings) as workdir:
            prepared, _ = prepare_json(body, workdir, self.settings)
            return store(self.storage, self.r, tenant, prepared, tags,
                         datetime(2024, 1, 1, 0, 0, self.tick, tzinfo=UTC))


@pytest.fixture
def upload(storage: Storage, fake_redis: fakeredis.FakeRedis, settings: Settings) -> Uploader:
    return Uploader(storage, fake_redis, settings)


def _select(storage: Storage, r: fakeredis.FakeRedis, spec: DataSpec, tenant: str = "acme"
            ) -> Any:
    return select_data(storage, r, tenant, spec, NOW)


def _pairs(selected: Any) -> list[tuple[str, str]]:
    t = selected.interactions
    return list(zip(t.column("source_id").to_pylist(), t.column("target_id").to_pylist(),
                    strict=True))


def test_newest_entity_version_wins(storage: Storage, fake_redis: Any, upload: Uploader) -> None:
    upload(entities=[{"id": "i1", "name": "old"}, {"id": "i2", "name": "a"},
                     {"id": "i2", "name": "b"}])
    upload(entities=[{"id": "i1", "name": "new", "metadata": {"c": "red"}}])
    sel = _select(storage, fake_redis, DataSpec())
    names = dict(zip(sel.entities.column("id").to_pylist(),
                     sel.entities.column("name").to_pylist(), strict=True))
    assert names == {"i1": "new", "i2": "b"}
    assert len(sel.batch_ids) == 2 and sel.batch_ids == sorted(sel.batch_ids)
    latest = latest_entity(storage, fake_redis, "acme", "i1")
    assert latest == {"id": "i1", "type": "default", "name": "new",
                      "metadata": {"c": "red"}, "media_url": None}
    assert latest_entity(storage, fake_redis, "acme", "nope") is None
    assert latest_entity(storage, fake_redis, "globex", "i1") is None


def test_tags_select_batches_with_any_tag(storage: Storage, fake_redis: Any,
                                          upload: Uploader) -> None:
    a = upload(tags=("a",), interactions=[{"source_id": "u1", "target_id": "i1"}])
    b = upload(tags=("b", "c"), interactions=[{"source_id": "u2", "target_id": "i2"}])
    upload(tags=("d",), interactions=[{"source_id": "u3", "target_id": "i3"}])
    sel = _select(storage, fake_redis, DataSpec(data_tags=("a", "c")))
    assert sel.batch_ids == [a[0].batch_id, b[0].batch_id]
    assert _pairs(sel) == [("u1", "i1"), ("u2", "i2")]
    assert _select(storage, fake_redis, DataSpec(data_tags=("zzz",))).interactions.num_rows == 0


def test_age_cut_keeps_rows_without_timestamp(storage: Storage, fake_redis: Any,
                                              upload: Uploader) -> None:
    upload(interactions=[
        {"source_id": "u1", "target_id": "old", "timestamp": "2024-01-01T00:00:00Z"},
        {"source_id": "u1", "target_id": "new", "timestamp": "2024-05-30T00:00:00"},
        {"source_id": "u1", "target_id": "none"},
    ])
    sel = _select(storage, fake_redis, DataSpec(maximum_interaction_age_days=7))
    assert [t for _, t in _pairs(sel)] == ["new", "none"]


def test_entity_filters_drop_interactions_and_apply_to_implied_entities(
    storage: Storage, fake_redis: Any, upload: Uploader
) -> None:
    upload(entities=[
        {"id": "i1", "type": "item", "metadata": {"colour": "red", "price": 10}},
        {"id": "i2", "type": "item", "metadata": {"colour": "blue", "price": "10"}},
    ])
    upload(interactions=[
        {"source_id": "u1", "target_id": "i1"},
        {"source_id": "u1", "target_id": "i2"},
        {"source_id": "u1", "target_id": "i3"},  # i3 is implied: only id and type
    ])
    spec = DataSpec(entity_filters=(Condition("metadata.colour", "ne", "blue"),))
    sel = _select(storage, fake_redis, spec)
    assert sel.entities.column("id").to_pylist() == ["i1"]
    assert _pairs(sel) == [("u1", "i1"), ("u1", "i3")]  # ne is true for a lacking field
    # a numeric comparison never matches a string value, nor a lacking one
    spec = DataSpec(entity_filters=(Condition("metadata.price", "gte", 10),))
    sel = _select(storage, fake_redis, spec)
    assert sel.entities.column("id").to_pylist() == ["i1"]
    assert _pairs(sel) == []  # u1 is implied too, lacks price, so all its interactions go
    # exists false keeps only those lacking the key
    spec = DataSpec(entity_filters=(Condition("metadata.colour", "exists", False),))
    assert _pairs(_select(storage, fake_redis, spec)) == [("u1", "i3")]
    # implied entities take their type from their role
    spec = DataSpec(entity_filters=(Condition("type", "in", ("user", "item")),))
    assert len(_pairs(_select(storage, fake_redis, spec))) == 3
    spec = DataSpec(entity_filters=(Condition("type", "eq", "item"),))
    assert _pairs(_select(storage, fake_redis, spec)) == []


def test_interaction_filters(storage: Storage, fake_redis: Any, upload: Uploader) -> None:
    upload(interactions=[
        {"type": "view", "source_id": "u1", "target_id": "i1", "timestamp": 1_700_000_000},
        {"type": "buy", "source_id": "u2", "target_id": "i2", "metadata": {"n": 2}},
        {"type": "view", "source_id": "u3", "target_id": "i3", "timestamp": 1_600_000_000},
    ])

    def targets(*conds: Condition) -> list[str]:
        sel = _select(storage, fake_redis, DataSpec(interaction_filters=conds))
        return [t for _, t in _pairs(sel)]

    assert targets(Condition("type", "eq", "view")) == ["i1", "i3"]
    assert targets(Condition("type", "not_in", ("view",))) == ["i2"]
    assert targets(Condition("timestamp", "gt", "2022-01-01T00:00:00Z")) == ["i1"]
    assert targets(Condition("timestamp", "lt", 1_650_000_000)) == ["i3"]
    assert targets(Condition("timestamp", "ne", 1_600_000_000)) == ["i1", "i2"]
    assert targets(Condition("metadata.n", "in", (1, 2))) == ["i2"]
    assert targets(Condition("name", "exists", True)) == []  # interactions have no name
    assert targets(Condition("id", "ne", "x")) == ["i1", "i2", "i3"]
    assert targets(Condition("type", "eq", 3)) == []  # type mismatch never matches
    assert targets(Condition("type", "eq", "view"), Condition("source_id", "eq", "u3")) == ["i3"]


def test_summary(storage: Storage, fake_redis: Any, upload: Uploader) -> None:
    upload(entities=[{"id": "u1", "type": "user"}, {"id": "i1", "type": "item"}])
    upload(interactions=[
        {"type": "view", "source_id": "u1", "target_id": "i1", "timestamp": 1_700_000_000},
        {"type": "view", "source_id": "u2", "target_id": "i1"},
        {"type": "buy", "source_id": "u1", "target_id": "i2", "timestamp": 1_600_000_000},
    ])
    s = summarise_data(storage, fake_redis, "acme", DataSpec(), NOW)
    assert s["batch_count"] == 2 and s["bytes"] > 0
    assert s["entities"] == {"total": 2, "by_type": {"item": 1, "user": 1}}
    assert s["interactions"] == {"total": 3, "by_type": {"buy": 1, "view": 2}}
    assert s["sources"] == 2 and s["targets"] == 2
    assert s["implied_entities"] == {"sources": 1, "targets": 1}
    assert s["timestamps"] == {"min": "2020-09-13T12:26:40Z", "max": "2023-11-14T22:13:20Z",
                               "without_timestamp": 1}
    empty = summarise_data(storage, fake_redis, "nobody", DataSpec(), NOW)
    assert empty["batch_count"] == 0 and empty["timestamps"]["min"] is None


def test_spec_from_request_valid() -> None:
    spec = DataSpec.from_request({
        "data_tags": ["a", "b"], "maximum_interaction_age_days": 30,
        "data_filters": {"entities": [{"field": "metadata.x", "op": "in", "value": [1, "a"]}],
                         "interactions": [{"field": "timestamp", "op": "gte",
                                           "value": "2024-01-01"},
                                          {"field": "type", "op": "exists"}]},
        "source_type": "customer", "model_id": "ignored", "hyperparameters": {"epochs": 3},
    })
    assert spec.data_tags == ("a", "b") and spec.maximum_interaction_age_days == 30
    assert spec.entity_filters == (Condition("metadata.x", "in", (1, "a")),)
    assert spec.interaction_filters[1] == Condition("type", "exists", True)
    assert spec.source_type == "customer" and spec.target_type == "item"
    assert DataSpec.from_request({}) == DataSpec()


@pytest.mark.parametrize("body", [
    {"data_tags": "a"}, {"data_tags": [1]}, {"data_tags": [""]}, {"data_tags": []},
    {"maximum_interaction_age_days": 0}, {"maximum_interaction_age_days": True},
    {"maximum_interaction_age_days": "3"},
    {"data_filters": []}, {"data_filters": {"users": []}},
    {"data_filters": {"entities": {}}},
    {"data_filters": {"entities": [{"field": "colour", "op": "eq", "value": "x"}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "like", "value": "x"}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "eq"}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "in", "value": "x"}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "eq", "value": {"a": 1}}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "gt", "value": True}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "exists", "value": "yes"}]}},
    {"data_filters": {"interactions": [{"field": "timestamp", "op": "gt", "value": "soon"}]}},
    {"data_filters": {"interactions": [{"field": "type", "op": "eq", "value": "a", "x": 1}]}},
    {"source_type": ""}, {"target_type": 5},
])
def test_spec_from_request_invalid(body: dict[str, Any]) -> None:
    if body == {"data_tags": "a"}:  # a single comma-separated string is accepted
        assert DataSpec.from_request(body).data_tags == ("a",)
        return
    with pytest.raises(ValidationFailed) as info:
        DataSpec.from_request(body)
    assert info.value.details["fields"]


def test_a_batch_whose_file_vanished_is_skipped(storage: Storage, fake_redis: Any,
                                                upload: Uploader) -> None:
    gone = upload(interactions=[{"source_id": "u1", "target_id": "i1"}])
    kept = upload(interactions=[{"source_id": "u2", "target_id": "i2"}])
    storage.delete(f"tenants/acme/batches/{gone[0].batch_id}.parquet")
    sel = _select(storage, fake_redis, DataSpec())
    assert sel.batch_ids == [kept[0].batch_id] and _pairs(sel) == [("u2", "i2")]


def test_latest_entity_forgets_deleted_batches(storage: Storage, fake_redis: Any,
                                               upload: Uploader) -> None:
    from shared.data.batches import forget_batches

    old = upload(entities=[{"id": "i1", "name": "old"}])
    new = upload(entities=[{"id": "i1", "name": "new"}])
    forget_batches(fake_redis, "acme", new)
    latest = latest_entity(storage, fake_redis, "acme", "i1")
    assert latest is not None and latest["name"] == "old"
    forget_batches(fake_redis, "acme", old)
    assert latest_entity(storage, fake_redis, "acme", "i1") is None


@pytest.mark.parametrize("body", [
    {},
    {"data_tags": ["a"]},
    {"maximum_interaction_age_days": 200},
    {"data_filters": {"interactions": [{"field": "type", "op": "eq", "value": "view"}]}},
    {"data_filters": {"entities": [{"field": "metadata.colour", "op": "eq", "value": "red"}]}},
    {"data_filters": {"entities": [{"field": "type", "op": "in", "value": ["user", "item"]}],
                      "interactions": [{"field": "metadata.n", "op": "gte", "value": 2}]},
     "maximum_interaction_age_days": 400},
])
def test_summary_counts_what_a_run_would_select(storage: Storage, fake_redis: Any,
                                                upload: Uploader, body: dict[str, Any]) -> None:
    # interactions over several batches (summaries read them one at a time)
    upload(tags=("a",), entities=[{"id": "u1", "type": "user"},
                                  {"id": "i1", "type": "item", "metadata": {"colour": "red"}},
                                  {"id": "i2", "type": "item", "metadata": {"colour": "blue"}}])
    upload(tags=("a",), interactions=[
        {"type": "view", "source_id": "u1", "target_id": "i1", "timestamp": "2024-05-01",
         "metadata": {"n": 1}},
        {"type": "buy", "source_id": "u2", "target_id": "i2", "timestamp": "2023-01-01",
         "metadata": {"n": 3}},
    ])
    upload(tags=("b",), interactions=[
        {"type": "view", "source_id": "u3", "target_id": "i1", "metadata": {"n": 2}},
        {"type": "view", "source_id": "u1", "target_id": "i9", "timestamp": "2024-03-01"},
        {"type": "buy", "source_id": "u1", "target_id": "i1", "timestamp": "2024-05-30",
         "metadata": {"n": 5}},
    ])
    spec = DataSpec.from_request(body)
    selected = select_data(storage, fake_redis, "acme", spec, NOW)
    summary = summarise_data(storage, fake_redis, "acme", spec, NOW)
    inter = selected.interactions
    assert summary["batch_ids"] == selected.batch_ids
    assert summary["entities"]["total"] == selected.entities.num_rows
    assert summary["interactions"]["total"] == inter.num_rows
    assert sum(summary["interactions"]["by_type"].values()) == inter.num_rows
    assert summary["sources"] == len(set(inter.column("source_id").to_pylist()))
    assert summary["targets"] == len(set(inter.column("target_id").to_pylist()))
    assert summary["implied_entities"] == {"sources": selected.implied["source_id"],
                                           "targets": selected.implied["target_id"]}
    assert summary["timestamps"]["without_timestamp"] == inter.column("timestamp").null_count


def test_entity_index_answers_as_reading_every_batch(storage: Storage, fake_redis: Any,
                                                     upload: Uploader) -> None:
    for n in range(12):  # many small batches, ids repeated across them
        upload(entities=[{"id": f"e{n % 4}", "metadata": {"v": n}}, {"id": f"only{n}"}])
    for max_bytes, collide in ((100_000, False), (300, False), (100_000, True)):
        index = EntityIndex(max_bytes=max_bytes)
        if collide:  # every batch seems to hold every id: answers must not change
            index.hash = lambda _id: 7
        for _ in range(2):  # cold, then from what it kept
            assert index.latest(storage, fake_redis, "acme", "e1")["metadata"] == {"v": 9}
            assert index.latest(storage, fake_redis, "acme", "only0")["metadata"] == {}
            assert index.latest(storage, fake_redis, "acme", "nope") is None
            assert index.size <= max_bytes
