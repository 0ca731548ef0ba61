"""``recsys recommend`` shaping flags and ``recsys similar`` against the real API over HTTP
(the Flask app on fakeredis, served by werkzeug in a thread)."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator

import fakeredis
import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from shared.client.cli import cli
from shared.storage import Storage
from tests.helpers.models import make_artifact, register


@pytest.fixture
def served(app: Flask, fake_redis: fakeredis.FakeRedis, client: FlaskClient,
           auth: dict[str, str]) -> Iterator[str]:
    """Model "m" (12 items, i0-i5 red) behind a real HTTP server; yields its base URL."""
    storage: Storage = app.extensions["recsys"].storage
    register(fake_redis, storage, "acme", "m", make_artifact(n_targets=12, seen={0: [1]}))
    items = [{"id": f"i{i}", "type": "item", "name": f"Item {i}",
              "metadata": {"color": "red" if i < 6 else "blue"}} for i in range(12)]
    assert client.post("/v1/recommender/data_batch", json={"entities": items},
                       headers=auth).status_code == 201
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def run(url: str, key: str, *args: str) -> Result:
    env = {"RECSYS_API_KEY": "", "RECSYS_URL": "", "RECSYS_HOST": "", "RECSYS_PORT": ""}
    return CliRunner().invoke(cli, ["--url", url, "--api-key", key, *args], env=env)


def test_recommend_with_filter_include_exclude_and_explain(served: str, api_key: str) -> None:
    red = '{"field": "metadata.color", "op": "eq", "value": "red"}'
    result = run(served, api_key, "--json", "recommend", "m", "--source", "u0",
                 "--filter", red, "--include", "i0,i2,i7", "--include", "nope",
                 "--exclude", "i2", "--explain", "--with-entities")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert [r["target_id"] for r in body["recommendations"]] == ["i0"]
    assert body["recommendations"][0]["because"] == ["i1"]
    assert body["recommendations"][0]["name"] == "Item 0"
    assert body["unknown_ids"] == ["nope"]
    table = run(served, api_key, "recommend", "m", "--source", "u0", "--filter", red,
                "--explain")
    assert table.exit_code == 0 and "because" in table.output


def test_recommend_new_targets_without_features_is_an_api_error(served: str,
                                                                api_key: str) -> None:
    result = run(served, api_key, "recommend", "m", "--source", "u0", "--new-targets")
    assert result.exit_code == 1
    assert "no_target_features" in result.output


def test_similar_as_table_json_and_csv(served: str, api_key: str) -> None:
    as_json = run(served, api_key, "--json", "similar", "m", "--target", "i3", "--max", "4",
                  "--filter", '[{"field": "metadata.color", "op": "eq", "value": "blue"}]')
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.output)["similar_items"]
    assert len(rows) == 4 and all(int(r["similar_id"][1:]) >= 6 for r in rows)
    as_csv = run(served, api_key, "similar", "m", "--target", "i3", "--csv")
    lines = list(csv.reader(io.StringIO(as_csv.output)))
    assert lines[0] == ["target_id", "similar_id", "rank", "score"] and len(lines) == 11
    assert "i3" not in {line[1] for line in lines[1:]}
    assert "similar_id" in run(served, api_key, "similar", "m", "--target", "i3").output
    bad = run(served, api_key, "similar", "m", "--target", "i3", "--filter", "nope")
    assert bad.exit_code == 2
