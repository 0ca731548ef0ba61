"""POST /data_batch with CSV files (multipart): kinds, conversions, line-exact errors, limits."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.config import Settings
from shared.storage import batch_path

URL = "/v1/recommender/data_batch"
ENT = b"id,type,name,metadata,media_url\n"
INT = b"type,source_id,target_id,timestamp,metadata\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small limits so the limit tests stay fast."""
    return Settings(data_dir=tmp_path / "var", callback_allow_private=True,
                    max_file_bytes=64 * 1024, max_file_rows=1000, max_files_per_request=3)


def post(client: FlaskClient, auth: dict[str, str], *files: tuple[str, bytes],
         tags: Any = None) -> Any:
    data: dict[str, Any] = {"files": [(io.BytesIO(body), name) for name, body in files]}
    if tags is not None:
        data["tags"] = tags
    return client.post(URL, data=data, headers=auth, content_type="multipart/form-data")


def stored(app: Flask, batch_id: str) -> list[dict[str, Any]]:
    storage = app.extensions["recsys"].storage
    rows: list[dict[str, Any]] = pq.read_table(
        storage.full_path(batch_path("acme", batch_id)), filesystem=storage.fs).to_pylist()
    return rows


def nothing_stored(app: Flask, client: FlaskClient, auth: dict[str, str]) -> bool:
    storage = app.extensions["recsys"].storage
    settings = app.extensions["recsys"].settings
    leftovers = list((settings.data_dir / "tmp" / "uploads").glob("*"))
    return (client.get(URL, headers=auth).json == []
            and storage.list_dir("tenants/acme/batches") == [] and leftovers == [])


def test_spreadsheet_export_with_bom_crlf_multiline_and_extra_columns(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    # given an entities file the way a spreadsheet saves it, columns in another order
    ents = ("\ufeffname,ID,extra,type,media_url,metadata\r\n"
            '"Lamp, big",i1,x,item,http://m/1.png,"{""colour"": ""red""}"\r\n'
            '"Two\r\nlines",i2,,,,\r\n'
            "\r\n"
            ",u1,,user,,\r\n").encode()
    inter = INT + (b"view,u1,i1,2024-01-02T03:04:05+02:00,\n"
                   b",u1,i2,1700000000,{}\n"
                   b"buy,u1,i2,,\"{\"\"n\"\": 2}\"\n")
    # when both are uploaded with comma-separated and repeated tags
    res = post(client, auth, ("ents.csv", ents), ("inter.csv", inter), tags=["a,b", "c"])
    # then each file is a batch of the right kind
    assert res.status_code == 201, res.json
    e, i = res.json
    assert (e["kind"], e["entity_count"], e["interaction_count"]) == ("entities", 3, 0)
    assert (i["kind"], i["entity_count"], i["interaction_count"]) == ("interactions", 0, 3)
    assert e["tags"] == ["a", "b", "c"]
    # and the cells are stored as given, with the documented defaults
    rows = stored(app, e["batch_id"])
    assert rows[0] == {"id": "i1", "type": "item", "name": "Lamp, big",
                       "metadata": '{"colour": "red"}', "media_url": "http://m/1.png"}
    assert rows[1] == {"id": "i2", "type": "default", "name": "Two\r\nlines",
                       "metadata": "{}", "media_url": None}
    irows = stored(app, i["batch_id"])
    assert [r["timestamp"].isoformat() for r in irows[:2]] == [
        "2024-01-02T01:04:05+00:00", "2023-11-14T22:13:20+00:00"]
    assert irows[2]["timestamp"] is None and irows[1]["type"] == "default"


def _errors(res: Any) -> list[tuple[Any, Any]]:
    assert res.status_code == 422, res.json
    return [(e["line"], e["column"]) for e in res.json["error"]["details"]["errors"]]


@pytest.mark.parametrize(("body", "expected"), [
    # ragged rows: the line of each
    (INT + b"v,u1,i1,,\nv,u1,i1,,,extra\nv,u1\n", [(3, None), (4, None)]),
    # an empty id, after a quoted record spanning two lines
    (ENT + b'a,,"multi\nline",,\n,item,,,\n', [(4, "id")]),
    # broken and non-object JSON metadata
    (ENT + b'a,,,{"x": 1,\nb,,,"[1, 2]",\nc,,,"""text""",\n',
     [(2, "metadata"), (3, "metadata"), (4, "metadata")]),
    # bad timestamps, and milliseconds
    (INT + b"v,u,i,yesterday,\nv,u,i,2024-13-45,\nv,u,i,1700000000000,\nv,u,i,1700000000,\n",
     [(2, "timestamp"), (3, "timestamp"), (4, "timestamp")]),
    # empty source and target ids
    (INT + b"v,,i,,\nv,u,,,\n", [(2, "source_id"), (3, "target_id")]),
    # bytes that are not UTF-8
    (ENT + b"a,,ok,,\nb,,caf\xe9,,\n", [(3, None)]),
    # old Mac line ends (a lone CR), and a header read past its end
    (ENT.replace(b"\n", b"\r") + b"a,,,,\r,,,,\rb,,,,\r", [(3, "id")]),
])
def test_bad_rows_give_422_with_lines_and_store_nothing(
    app: Flask, client: FlaskClient, auth: dict[str, str], body: bytes,
    expected: list[tuple[Any, Any]],
) -> None:
    res = post(client, auth, ("good.csv", ENT + b"x,,,,\n"), ("bad.csv", body))
    assert _errors(res) == expected
    assert {e["file"] for e in res.json["error"]["details"]["errors"]} == {"bad.csv"}
    assert nothing_stored(app, client, auth)


def test_a_field_larger_than_any_sane_limit(
    app: Flask, client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    big = dataclasses.replace(settings, max_file_bytes=8 << 20)
    app.extensions["recsys"] = dataclasses.replace(app.extensions["recsys"], settings=big)
    body = ENT + b"a,,,,\nb,," + b"n" * (2 << 20) + b",,\n"
    assert _errors(post(client, auth, ("big.csv", body))) == [(3, "name")]
    assert nothing_stored(app, client, auth)


@pytest.mark.parametrize(("body", "code"), [
    (b"", "empty_file"),
    (b"\xef\xbb\xbf\r\n", "empty_file"),
    (b"\r\nid,type,name,metadata,media_url\r\nx,,,,\r\n", "missing_header"),
    (b"user,item,rating\nu,i,5\n", "unknown_header"),
    (b"id,type,name,metadata\nu,,,\n", "unknown_header"),
    (b"id,type,name,metadata,media_url,source_id,target_id,timestamp\n", "ambiguous_header"),
    (b"id,id,type,name,metadata,media_url\n", "duplicate_columns"),
    (ENT, "invalid_rows"),  # a header with no rows
    (ENT + b"\r\n\r\n", "invalid_rows"),
])
def test_bad_files_are_refused(
    app: Flask, client: FlaskClient, auth: dict[str, str], body: bytes, code: str
) -> None:
    res = post(client, auth, ("f.csv", body))
    assert res.status_code == 422, res.json
    assert res.json["error"]["code"] == code
    assert nothing_stored(app, client, auth)


def test_unknown_header_names_the_missing_columns(client: FlaskClient,
                                                  auth: dict[str, str]) -> None:
    res = post(client, auth, ("f.csv", b"id,type,name,metadata\nu,,,\n"))
    missing = res.json["error"]["details"]["missing"]
    assert missing["entities"] == ["media_url"]
    assert "source_id" in missing["interactions"] and "media_url" in res.json["error"]["message"]


def test_limits_give_413_and_store_nothing(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    too_big = ENT + b"x,,,,\n" * 20_000  # over 64 KiB
    res = post(client, auth, ("ok.csv", ENT + b"x,,,,\n"), ("big.csv", too_big))
    assert res.status_code == 413 and res.json["error"]["code"] == "file_too_large"
    assert nothing_stored(app, client, auth)
    too_many_rows = ENT + b"x,,,,\n" * 1001
    res = post(client, auth, ("rows.csv", too_many_rows))
    assert res.status_code == 413 and res.json["error"]["code"] == "too_many_rows"
    assert nothing_stored(app, client, auth)
    res = post(client, auth, *[(f"{n}.csv", ENT + b"x,,,,\n") for n in range(4)])
    assert res.status_code == 413 and res.json["error"]["code"] == "too_many_files"
    assert nothing_stored(app, client, auth)


def test_bad_tags_and_fields_in_a_multipart_upload(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    ok = ("f.csv", ENT + b"x,,,,\n")
    assert post(client, auth, ok, tags="a\nb").status_code == 422
    assert post(client, auth, ok, tags=",".join(f"t{n}" for n in range(65))).status_code == 422
    res = client.post(URL, data={"tag": "x", "files": [(io.BytesIO(ok[1]), ok[0])]},
                      headers=auth, content_type="multipart/form-data")
    assert res.status_code == 422 and "tag" in res.json["error"]["message"]
    res = client.post(URL, data={"tags": "x"}, headers=auth, content_type="multipart/form-data")
    assert res.status_code == 422 and res.json["error"]["code"] == "no_files"
    res = client.post(URL, data=b"--x\r\n", headers=auth, content_type="multipart/form-data")
    assert res.status_code == 400
    assert nothing_stored(app, client, auth)


def test_redis_failure_while_recording_removes_the_files(
    app: Flask, client: FlaskClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    import shared.data.batches

    def broken(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(shared.data.batches.redis.Redis, "pipeline", broken)
    monkeypatch.setattr(shared.data.batches.redis.client.Pipeline, "execute", broken)
    res = post(client, auth, ("f.csv", ENT + b"x,,,,\n"))
    assert res.status_code == 503
    monkeypatch.undo()
    assert nothing_stored(app, client, auth)


def test_a_large_file_with_a_bad_header_is_refused_while_it_arrives(
    app: Flask, client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    big = dataclasses.replace(settings, max_file_bytes=64 << 20, max_file_rows=10_000_000)
    app.extensions["recsys"] = dataclasses.replace(app.extensions["recsys"], settings=big)
    body = b"user,item\n" + b"u1,i1\n" * 1_000_000  # 6 MB: many chunks after the header
    res = post(client, auth, ("wrong.csv", body), ("ok.csv", ENT + b"x,,,,\n"))
    assert res.status_code == 422 and res.json["error"]["code"] == "unknown_header"
    assert nothing_stored(app, client, auth)
    rows = ENT + b"x,,,,\n" * 1_000_001  # one row over the limit, streamed
    limited = dataclasses.replace(big, max_file_rows=1_000_000)
    app.extensions["recsys"] = dataclasses.replace(app.extensions["recsys"], settings=limited)
    res = post(client, auth, ("rows.csv", rows))
    assert res.status_code == 413 and res.json["error"]["code"] == "too_many_rows"
    assert nothing_stored(app, client, auth)


def test_csv_as_a_plain_field_and_the_file_alias(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    # curl -F 'files=<items.csv' sends the text as a field; -F file=@x.csv names it 'file'
    res = client.post(URL, data={"files": (ENT + b"x,,,,\n").decode(),
                                 "file": (io.BytesIO(INT + b"v,u,i,,\n"), "i.csv")},
                      headers=auth, content_type="multipart/form-data")
    assert res.status_code == 201, res.json
    assert sorted(b["kind"] for b in res.json) == ["entities", "interactions"]


def test_a_full_disk_is_a_503_and_stores_nothing(
    app: Flask, client: FlaskClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.ingest.csv_reader
    import shared.ingest.store

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared.ingest.store, "parquet_writer", full)
    monkeypatch.setattr(shared.ingest.csv_reader, "parquet_writer", full)
    res = post(client, auth, ("f.csv", ENT + b"x,,,,\n"))
    assert res.status_code == 503 and res.json["error"]["details"]["dependency"] == "disk"
    res = client.post(URL, json={"entities": [{"id": "x"}]}, headers=auth)
    assert res.status_code == 503
    monkeypatch.undo()
    assert nothing_stored(app, client, auth)
