"""The ``recsys`` CLI and its HTTP client against a tiny fake API served on a real socket.

The fake answers canned responses per (method, path) and records every
request, so these tests check what the CLI sends and what a user sees, with
no broker and no real API.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import fakeredis
import pytest
from click.testing import CliRunner

from shared.client.cli import cli
from shared.client.cli import keys as cli_keys
from shared.client.http import ApiError, RecsysClient
from shared.client.multipart_encoder import CHUNK_BYTES, MultipartFiles
from tests.helpers.fake_api import FakeApi, Seen, run

BATCH = {"batch_id": "b1", "timestamp": "2026-01-01T00:00:00Z", "tags": ["t1"],
         "kind": "interactions", "entity_count": 0, "interaction_count": 2, "bytes": 99}
ERROR_422 = {"error": {"code": "invalid_rows", "message": "The file has bad rows.",
                       "details": {"errors": [{"file": "x.csv", "line": 3, "column": "timestamp",
                                               "message": "bad timestamp"}]}}}


def _multipart(seen: Seen) -> list[tuple[str, str | None, bytes]]:
    raw = b"Content-Type: " + seen.headers["content-type"].encode() + b"\r\n\r\n" + seen.body
    message = BytesParser(policy=HTTP).parsebytes(raw)
    return [(part.get_param("name", header="content-disposition"), part.get_filename(),
             part.get_payload(decode=True)) for part in message.iter_parts()]


def test_upload_streams_files_and_tags_as_multipart(fake_api: FakeApi, tmp_path: Path) -> None:
    # given two CSV files
    a = tmp_path / "events.csv"
    a.write_text("type,source_id,target_id,timestamp,metadata\nview,u1,i1,,\nbuy,u1,i2,,\n")
    b = tmp_path / "items.csv"
    b.write_bytes(b"id,type,name,metadata,media_url\r\ni1,item,One,\"{\"\"c\"\": 1}\",\r\n")
    fake_api.on("POST", "/data_batch", (201, [BATCH, {**BATCH, "batch_id": "b2",
                                                        "kind": "entities", "entity_count": 1,
                                                        "interaction_count": 0}]))
    # when they are uploaded with two tags (one comma-separated)
    result = run(fake_api, "data", "upload", str(a), str(b), "--tag", "t1,t2", "--tag", "t3")
    # then the server got both files byte for byte, the tags, and a Content-Length
    assert result.exit_code == 0, result.output
    seen = fake_api.last("POST", "/data_batch")
    assert seen.headers["apikey"] == "rk_test"
    assert int(seen.headers["content-length"]) == len(seen.body)
    parts = _multipart(seen)
    assert [(n, f) for n, f, _ in parts] == [("tags", None), ("tags", None), ("tags", None),
                                             ("files", "events.csv"), ("files", "items.csv")]
    assert [p for _, _, p in parts[:3]] == [b"t1", b"t2", b"t3"]
    assert parts[3][2] == a.read_bytes() and parts[4][2] == b.read_bytes()
    # and the user sees the batches and the totals
    assert "b1" in result.output and "b2" in result.output
    assert "2 batch(es): 1 entities, 2 interactions." in result.output


def test_multipart_length_matches_streamed_bytes(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * (3 * (1 << 20) + 7))
    body = MultipartFiles([big], ["a"])
    sizes = [len(chunk) for chunk in body]
    assert sum(sizes) == len(body)
    assert max(sizes) <= CHUNK_BYTES  # read a chunk at a time, never the whole file


def test_api_error_is_one_line_on_stderr_with_exit_1(fake_api: FakeApi, tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("type,source_id,target_id,timestamp,metadata\nview,u,i,nope,\n")
    fake_api.on("POST", "/data_batch", (422, ERROR_422))
    result = run(fake_api, "data", "upload", str(f))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "The file has bad rows." in lines[0] and "invalid_rows" in lines[0]
    assert "x.csv:3" in lines[0] and "HTTP 422" in lines[0]
    assert result.stdout == ""


def test_non_json_error_still_readable(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/models", (502, "Bad gateway from proxy"))
    result = run(fake_api, "models")
    assert result.exit_code == 1
    assert "HTTP 502" in result.stderr and "Bad gateway" in result.stderr


def test_connection_refused_exits_3_with_hint() -> None:
    api = FakeApi(url="http://127.0.0.1:9")  # discard port: nothing listens
    result = run(api, "models")
    assert result.exit_code == 3
    assert "connection refused" in result.stderr and "make run" in result.stderr


def test_missing_key_is_a_usage_error(fake_api: FakeApi, tmp_path: Path) -> None:
    result = run(fake_api, "models", key=None, env={"RECSYS_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "No API key" in result.stderr
    assert fake_api.seen == []


def test_local_key_file_is_the_fallback(fake_api: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "local-api-key").write_text("rk_from_file\n")
    fake_api.on("GET", "/models", (200, {"models": []}))
    result = run(fake_api, "models", key=None, env={"RECSYS_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert fake_api.last("GET", "/models").headers["apikey"] == "rk_from_file"
    assert "No models yet." in result.output


def test_env_key_wins_over_file(fake_api: FakeApi, tmp_path: Path) -> None:
    (tmp_path / "local-api-key").write_text("rk_from_file\n")
    fake_api.on("GET", "/models", (200, []))
    result = run(fake_api, "models", key=None,
                 env={"RECSYS_DATA_DIR": str(tmp_path), "RECSYS_API_KEY": "rk_env"})
    assert result.exit_code == 0
    assert fake_api.last("GET", "/models").headers["apikey"] == "rk_env"


def test_list_and_delete_send_list_parameters(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/data_batch", (200, [BATCH]))
    fake_api.on("DELETE", "/data_batch", (200, [BATCH]))
    assert run(fake_api, "data", "list", "--tag", "a,b", "--batch-id", "b1").exit_code == 0
    seen = fake_api.last("GET", "/data_batch")
    assert seen.query == {"tags": ["a", "b"], "batch_id": ["b1"]}
    result = run(fake_api, "data", "delete", "--tag", "a")
    assert result.exit_code == 0 and "Deleted 1 batch(es)." in result.output
    assert fake_api.last("DELETE", "/data_batch").query == {"tags": ["a"]}


def test_delete_without_selection_is_refused_locally(fake_api: FakeApi) -> None:
    result = run(fake_api, "data", "delete")
    assert result.exit_code == 2
    assert fake_api.seen == []


def test_dataset_passes_filters_as_json(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/dataset", (200, {"entities": {"user": 3}, "interactions": {"view": 5},
                                          "batches": 2}))
    filters = '{"entities": [{"field": "type", "op": "eq", "value": "item"}]}'
    result = run(fake_api, "dataset", "--tag", "x", "--max-age-days", "30", "--filters", filters)
    assert result.exit_code == 0, result.output
    seen = fake_api.last("GET", "/dataset")
    assert seen.query["data_tags"] == ["x"]
    assert seen.query["maximum_interaction_age_days"] == ["30"]
    assert json.loads(seen.query["data_filters"][0]) == json.loads(filters)
    assert "entities.user" in result.output


def test_bad_json_option_is_a_usage_error(fake_api: FakeApi) -> None:
    result = run(fake_api, "dataset", "--filters", "{nope")
    assert result.exit_code == 2
    assert "--filters" in result.stderr


def test_json_flag_prints_raw_json(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/data_batch", (200, [BATCH]))
    result = run(fake_api, "--json", "data", "list")
    assert json.loads(result.stdout) == [BATCH]


def test_client_raises_api_error_with_code() -> None:
    client = RecsysClient("http://127.0.0.1:9/v1/recommender/", "k")
    assert client.url("/status/x") == "http://127.0.0.1:9/v1/recommender/status/x"
    assert client.url("/readyz") == "http://127.0.0.1:9/readyz"
    err = ApiError(409, "already_training", "Model m is already training.")
    assert err.one_line() == "Model m is already training. [already_training, HTTP 409]"


def test_keys_create_list_revoke(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a Redis (fakeredis stands in; the integration test uses a real server)
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    monkeypatch.setattr(cli_keys, "_redis", lambda *_: r)
    runner = CliRunner()
    # when a key is created, it is printed once and works
    created = runner.invoke(cli, ["keys", "create", "--tenant", "shop", "--scope", "recommend",
                                  "--scope", "data:read", "--name", "web"])
    assert created.exit_code == 0, created.output
    raw = created.stdout.strip().splitlines()[-1]
    assert raw.startswith("rk_")
    from shared.keys import lookup
    record = lookup(r, raw)
    assert record is not None and record.tenant == "shop"
    assert record.scopes == {"recommend", "data:read"}
    # then the listing shows it without the raw key
    listed = runner.invoke(cli, ["--json", "keys", "list", "--tenant", "shop"])
    rows = json.loads(listed.stdout)
    assert [row["key_id"] for row in rows] == [record.key_id]
    assert raw not in listed.stdout
    # and revoking removes it; revoking again is a 404-style error with exit 1
    assert runner.invoke(cli, ["keys", "revoke", record.key_id]).exit_code == 0
    assert lookup(r, raw) is None
    again = runner.invoke(cli, ["keys", "revoke", record.key_id])
    assert again.exit_code == 1 and "key_not_found" in again.stderr


def test_keys_bad_scope_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "t", "--scope", "root"])
    assert result.exit_code == 2


def test_keys_with_redis_down_exit_3() -> None:
    result = CliRunner().invoke(
        cli, ["keys", "list"], env={"RECSYS_REDIS_URL": "redis://127.0.0.1:9/0"}
    )
    assert result.exit_code == 3
    assert "Redis is unreachable" in result.stderr


def test_keys_bootstrap_ensures_the_deploy_key(monkeypatch: pytest.MonkeyPatch) -> None:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    monkeypatch.setattr(cli_keys, "_redis", lambda *_: r)
    result = CliRunner().invoke(cli, ["keys", "bootstrap"],
                                env={"RECSYS_BOOTSTRAP_KEY": "deploy-key-123"})
    assert result.exit_code == 0, result.output
    from shared.keys import SCOPES, lookup
    record = lookup(r, "deploy-key-123")
    assert record is not None and record.tenant == "default" and record.scopes == set(SCOPES)
    unset = CliRunner().invoke(cli, ["keys", "bootstrap"], env={"RECSYS_BOOTSTRAP_KEY": ""})
    assert unset.exit_code == 0 and "nothing to do" in unset.output


def test_default_url_follows_make_runs_host_and_port() -> None:
    from shared.client.cli.main import default_url
    assert default_url({}) == "http://127.0.0.1:8000"
    assert default_url({"RECSYS_PORT": "9000"}) == "http://127.0.0.1:9000"
    assert default_url({"RECSYS_HOST": "0.0.0.0", "RECSYS_PORT": "81"}) == "http://127.0.0.1:81"
    assert default_url({"RECSYS_HOST": "10.0.0.5"}) == "http://10.0.0.5:8000"


def test_url_from_recsys_port_when_no_url(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/models", (200, []))
    port = fake_api.url.rsplit(":", 1)[1]
    result = CliRunner().invoke(cli, ["--api-key", "k", "models"],
                                env={"RECSYS_URL": "", "RECSYS_HOST": "", "RECSYS_PORT": port})
    assert result.exit_code == 0, result.output
    assert fake_api.last("GET", "/models").headers["apikey"] == "k"


def test_json_options_read_from_a_file(fake_api: FakeApi, tmp_path: Path) -> None:
    spec = tmp_path / "filters.json"
    spec.write_text('{"interactions": [{"field": "type", "op": "eq", "value": "buy"}]}')
    fake_api.on("GET", "/dataset", (200, {"batches": 0}))
    assert run(fake_api, "dataset", "--filters", f"@{spec}").exit_code == 0
    sent = json.loads(fake_api.last("GET", "/dataset").query["data_filters"][0])
    assert sent == json.loads(spec.read_text())
    missing = run(fake_api, "dataset", "--filters", f"@{tmp_path / 'nope.json'}")
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_keys_bad_tenant_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    monkeypatch.setattr(cli_keys, "_redis", lambda *_: r)
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "no spaces!", "--scope",
                                      "recommend"])
    assert result.exit_code == 2 and "tenant name" in result.stderr
