"""Data import through the real HTTP API: curl multipart uploads, listing, summary, delete."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.stack import Stack

pytestmark = pytest.mark.integration

ENTITIES = (
    "\ufeffid,type,name,metadata,media_url\r\n"
    'u1,user,Ann,"{""tier"": ""gold""}",\r\n'
    "u2,user,Bob,,\r\n"
    'i1,item,"Lamp\r\nwith two lines","{""colour"": ""red""}",http://img/1.png\r\n'
    'i2,item,Chair,"{""colour"": ""blue""}",\r\n'
)
INTERACTIONS = (
    "type,source_id,target_id,timestamp,metadata\n"
    "view,u1,i1,2024-01-01T10:00:00Z,\n"
    "buy,u1,i2,1704103200,\n"
    "view,u2,i2,,\n"
    "view,u3,i1,2024-01-02 08:00:00,\n"
)


def curl(stack: Stack, *args: str) -> tuple[int, Any]:
    """Run curl against the live API; returns (status, parsed JSON body)."""
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"apikey: {stack.api_key}", *args],
        capture_output=True, check=True, text=True, timeout=60,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def test_upload_list_summarise_delete_with_curl(stack: Stack, tmp_path: Path) -> None:
    ents, inter = tmp_path / "ents.csv", tmp_path / "inter.csv"
    ents.write_bytes(ENTITIES.encode())
    inter.write_text(INTERACTIONS)
    # upload two files with tags, as the README shows
    status, batches = curl(stack, "-F", f"files=@{ents}", "-F", f"files=@{inter}",
                           "-F", "tags=curl-shop,2024", stack.url("/data_batch"))
    assert status == 201, batches
    assert [(b["kind"], b["entity_count"], b["interaction_count"]) for b in batches] == [
        ("entities", 4, 0), ("interactions", 0, 4)]
    ids = [b["batch_id"] for b in batches]
    # list by tags (all must match), repeated or comma-separated
    status, listed = curl(stack, stack.url("/data_batch?tags=curl-shop&tags=2024"))
    assert status == 200 and [b["batch_id"] for b in listed] == ids
    status, listed = curl(stack, stack.url("/data_batch?tags=curl-shop,nope"))
    assert listed == []
    # summarise with a filter given as URL-encoded JSON
    filters = urllib.parse.quote(json.dumps(
        {"entities": [{"field": "metadata.colour", "op": "ne", "value": "blue"}]}))
    status, summary = curl(stack, stack.url(f"/dataset?data_tags=curl-shop&data_filters={filters}"))
    assert status == 200, summary
    assert summary["batch_count"] == 2
    assert summary["entities"] == {"total": 3, "by_type": {"item": 1, "user": 2}}
    assert summary["interactions"]["total"] == 2  # both touching i2 dropped
    assert summary["implied_entities"] == {"sources": 1, "targets": 0}
    # POST /dataset takes the same selection as a JSON body
    status, summary = curl(stack, "-H", "Content-Type: application/json", "-d",
                           json.dumps({"data_tags": ["curl-shop"], "model_id": "m"}),
                           stack.url("/dataset"))
    assert status == 200 and summary["interactions"]["total"] == 4
    assert summary["timestamps"]["min"] == "2024-01-01T10:00:00Z"
    # delete by tag: the batches and their files go
    status, deleted = curl(stack, "-X", "DELETE", stack.url("/data_batch?tags=curl-shop"))
    assert status == 200 and [b["batch_id"] for b in deleted] == ids
    batch_dir = stack.data_dir / "storage" / "tenants" / stack.tenant / "batches"
    assert not any(batch_dir.glob("b_*"))
    status, listed = curl(stack, stack.url("/data_batch?tags=curl-shop"))
    assert listed == []


def test_bad_file_is_refused_with_lines_over_http(stack: Stack, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(INTERACTIONS)
    bad.write_text("type,source_id,target_id,timestamp,metadata\n"
                   "view,u1,i1,,\n"
                   "view,u1,i1,1700000000000,\n"
                   'view,u1,i1,,"{broken"\n')
    status, body = curl(stack, "-F", f"files=@{good}", "-F", f"files=@{bad}",
                        "-F", "tags=curl-bad", stack.url("/data_batch"))
    assert status == 422
    assert [(e["file"], e["line"], e["column"]) for e in body["error"]["details"]["errors"]] == [
        ("bad.csv", 3, "timestamp"), ("bad.csv", 4, "metadata")]
    status, listed = curl(stack, stack.url("/data_batch?tags=curl-bad"))
    assert listed == []


def test_chunked_streaming_upload(stack: Stack, http: requests.Session) -> None:
    # a client streaming its body without a Content-Length (Transfer-Encoding: chunked)
    boundary = "xYzBoundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\nchunked\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n"
            "type,source_id,target_id,timestamp,metadata\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for block in range(20):
            yield b"".join(b"view,u%d,i%d,%d,\n" % (block, n, 1_700_000_000 + n)
                           for n in range(5000))
        yield f"\r\n--{boundary}--\r\n".encode()

    res = http.post(stack.url("/data_batch"), data=body(), headers={
        **stack.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert res.status_code == 201, res.text
    assert res.json()[0]["interaction_count"] == 100_000
