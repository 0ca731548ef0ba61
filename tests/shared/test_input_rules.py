"""Input rules at the edges: id length and control characters, tags, ages, regexes, tenants."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pyarrow as pa
import pytest

from shared.client.cli.output import cell
from shared.config import Settings
from shared.contracts import is_model_id
from shared.data.batches import list_batches, validate_tags
from shared.data.selection import DataSpec, _keep_interactions
from shared.errors import ValidationFailed
from shared.ingest.columns import convert, is_numeric_text, is_offset_text, parse_timestamps
from shared.ingest.csv_reader import prepare_csv
from shared.keys import SCOPES, create_key, validate_tenant

INTERACTIONS_HEADER = "type,source_id,target_id,timestamp,metadata\n"


def _interactions(source_ids: list[str]) -> pa.Table:
    n = len(source_ids)
    return pa.table({
        "type": pa.array(["view"] * n), "source_id": pa.array(source_ids),
        "target_id": pa.array(["i1"] * n), "timestamp": pa.array([""] * n),
        "metadata": pa.array([""] * n),
    })


def test_an_id_over_the_limit_is_a_problem_of_its_row() -> None:
    # given ids of 256 and 257 characters
    table = _interactions(["u" * 256, "ok", "u" * 257])
    # when converted with the default limit
    _, problems = convert("interactions", table)
    # then only the longer one is refused, on its own row, saying the limit
    assert [(p.row, p.column) for p in problems] == [(2, "source_id")]
    assert "257 characters" in problems[0].message and "256" in problems[0].message


def test_the_id_limit_is_configurable() -> None:
    _, problems = convert("interactions", _interactions(["abcdef"]), max_id_length=5)
    assert problems and problems[0].column == "source_id"
    assert convert("interactions", _interactions(["abcde"]), max_id_length=5)[1] == []


@pytest.mark.parametrize("bad", ["nul\x00id", "tab\tid", "line\nbreak", "del\x7f", "c1\x85"])
def test_ids_with_control_characters_are_refused(bad: str) -> None:
    _, problems = convert("interactions", _interactions(["fine", bad]))
    assert [(p.row, p.column) for p in problems] == [(1, "source_id")]
    assert "control character" in problems[0].message


def test_ordinary_unicode_ids_pass() -> None:
    table, problems = convert("interactions", _interactions(["café", "東京", "a b-c_d.e"]))
    assert problems == [] and table.num_rows == 3


def test_csv_upload_reports_long_and_nul_ids_with_their_lines(tmp_path: Path) -> None:
    # given a CSV whose third data row has a 300-character target id, the fifth a NUL
    rows = ["view,u1,i1,,", "view,u2,i2,,", f"view,u3,{'x' * 300},,", "view,u4,i4,,",
            "view,u\x005,i5,,"]
    path = tmp_path / "in.csv"
    path.write_text(INTERACTIONS_HEADER + "\n".join(rows) + "\n")
    # when it is prepared
    result = prepare_csv(path, "in.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    # then both are line errors, with physical lines (the header is line 1)
    assert isinstance(result, list)
    assert [(e["line"], e["column"]) for e in result] == [(4, "target_id"), (6, "source_id")]


def test_a_10_mb_cell_is_reported_on_its_real_line(tmp_path: Path) -> None:
    # given a CSV whose fourth line carries a 10 MB metadata cell
    big = '"{""k"": ""' + "x" * (10 << 20) + '""}"'
    path = tmp_path / "big.csv"
    path.write_text(INTERACTIONS_HEADER + "view,u1,i1,,\nview,u2,i2,,\n"
                    f"view,u3,i3,,{big}\nview,u4,i4,,\n")
    # when it is prepared
    result = prepare_csv(path, "big.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    # then the error names line 4, not null
    assert isinstance(result, list) and len(result) == 1
    assert result[0]["line"] == 4 and result[0]["column"] == "metadata"
    assert "larger than" in result[0]["message"]


def test_50000_tags_fail_fast() -> None:
    tags = [f"tag{i}" for i in range(50_000)]
    started = time.perf_counter()
    with pytest.raises(ValidationFailed) as caught:
        validate_tags(tags, 64)
    # quadratic de-duplication took seconds here; a count check first takes microseconds
    assert time.perf_counter() - started < 0.5
    assert caught.value.code == "too_many_tags"
    assert caught.value.details == {"count": 50_000, "max_tags": 64}


def test_tags_keep_order_and_drop_repeats() -> None:
    assert validate_tags(["b", "a", " b ", "c"], 64) == ("b", "a", "c")


@pytest.mark.parametrize("age", [0, 36_501, 800_000, 10**12, True, 1.5])
def test_a_huge_or_bad_age_is_a_validation_error(age: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        DataSpec.from_request({"maximum_interaction_age_days": age})
    assert "maximum_interaction_age_days" in caught.value.details["fields"]


def test_the_largest_age_is_accepted() -> None:
    spec = DataSpec.from_request({"maximum_interaction_age_days": 36_500})
    assert spec.maximum_interaction_age_days == 36_500


@pytest.mark.parametrize("days", [800_000, 10**12])
def test_a_huge_age_given_programmatically_never_overflows(days: int) -> None:
    # given interactions with and without timestamps, and a spec built without validation
    ts = pa.array([datetime(2001, 1, 1, tzinfo=UTC), None], pa.timestamp("us", tz="UTC"))
    table = pa.table({"type": ["v", "v"], "source_id": ["u1", "u2"], "target_id": ["i", "i"],
                      "timestamp": ts, "metadata": ["{}", "{}"]})
    spec = DataSpec(maximum_interaction_age_days=days)
    # when the age cut runs, then it keeps everything (no OverflowError)
    kept = _keep_interactions(table, spec, datetime.now(UTC), None)  # type: ignore[arg-type]
    assert kept.num_rows == 2


def test_model_ids_with_a_trailing_newline_are_refused() -> None:
    assert is_model_id("shop") and not is_model_id("shop\n")


def test_batch_ids_with_a_trailing_newline_match_nothing(fake_redis: fakeredis.FakeRedis
                                                         ) -> None:
    assert list_batches(fake_redis, "acme", ["b_00000000000000000aaaaaaaa\n"], None) == []


def test_timestamp_text_helpers_match_whole_strings() -> None:
    assert is_numeric_text("12") and not is_numeric_text("12\nx")
    assert is_offset_text("2024-01-01T00:00:00Z") and not is_offset_text("2024-01-01T00:00:00Z\n")
    assert parse_timestamps(pa.array(["2024-01-01T00:00:00Z"]))[1] == []


def test_cli_cells_shorten_only_whole_iso_timestamps() -> None:
    assert cell("2024-01-01T00:00:00.123456Z") == "2024-01-01T00:00:00Z"
    assert cell("2024-01-01T00:00:00.123456Z\n") == "2024-01-01T00:00:00.123456Z\n"


@pytest.mark.parametrize("name", [".", "..", "a.b", "Acme", "-lead", "_lead", "a/b", "a b",
                                  "x" * 65, "", "shop\n"])
def test_bad_tenant_names_are_refused(fake_redis: fakeredis.FakeRedis, name: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        create_key(fake_redis, name, list(SCOPES))
    assert caught.value.code == "invalid_tenant"
    assert fake_redis.keys("*") == []


@pytest.mark.parametrize("name", ["default", "acme", "shop-1", "a_b", "0", "x" * 64])
def test_good_tenant_names_pass(name: str) -> None:
    assert validate_tenant(name) == name
