"""The real ``recsys`` console script against a running stack: keys, upload, train --wait,
recommend, and the exit codes a script relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers.stack import Stack

RECSYS = str(Path(sys.executable).parent / "recsys")


def recsys(stack: Stack, *args: str, key: str | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script with the stack's URL and key (unless ``key`` overrides)."""
    environ = {**stack.env, "RECSYS_URL": stack.api_url,
               "RECSYS_API_KEY": stack.api_key if key is None else key,
               "COLUMNS": "200", **(env or {})}
    return subprocess.run([RECSYS, *args], env=environ, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def has_training(stack: Stack) -> None:
    """Skip until the training endpoints exist in this checkout."""
    paths = requests.get(stack.url("/openapi.json"), timeout=10).json().get("paths", {})
    if "/v1/recommender/train" not in paths or "/v1/recommender/status/{model_id}" not in paths:
        pytest.skip("POST /train and GET /status/<model_id> are not implemented yet")


def write_shop(directory: Path) -> list[Path]:
    """A small shop where users 0-19 like items 0-9 and users 20-39 like items 10-19."""
    users = directory / "users.csv"
    users.write_text("id,type,name,metadata,media_url\n" + "".join(
        f'u{u},user,,"{{""group"": ""{"a" if u < 20 else "b"}""}}",\n' for u in range(40)))
    items = directory / "items.csv"
    items.write_text("id,type,name,metadata,media_url\n" + "".join(
        f'i{i},item,Item {i},"{{""shelf"": ""{"a" if i < 10 else "b"}""}}",\n'
        for i in range(20)))
    rows = []
    for u in range(40):
        base = 0 if u < 20 else 10
        for j in range(8):
            item = base + (u + j * 3) % 10
            rows.append(f"{'purchase' if j % 4 == 0 else 'view'},u{u},i{item},"
                        f"2026-0{1 + j % 9}-1{j}T10:00:00,\n")
    events = directory / "events.csv"
    events.write_text("type,source_id,target_id,timestamp,metadata\n" + "".join(rows))
    return [users, items, events]


def test_keys_create_list_revoke_through_real_redis(stack: Stack) -> None:
    # when an operator creates a key for tenant "cli-keys" with one scope
    created = recsys(stack, "keys", "create", "--tenant", "cli-keys", "--scope", "data:read")
    assert created.returncode == 0, created.stderr
    raw = created.stdout.strip().splitlines()[-1]
    # then it authenticates against the API with exactly that scope
    ok = requests.get(stack.url("/data_batch"), headers={"apikey": raw}, timeout=10)
    assert ok.status_code == 200 and ok.json() == []
    denied = requests.delete(stack.url("/data_batch"), params={"tags": "x"},
                             headers={"apikey": raw}, timeout=10)
    assert denied.status_code == 403
    # and it is listed (without the raw key) and can be revoked
    listed = recsys(stack, "--json", "keys", "list", "--tenant", "cli-keys")
    rows = json.loads(listed.stdout)
    assert len(rows) == 1 and raw not in listed.stdout
    assert recsys(stack, "keys", "revoke", rows[0]["key_id"]).returncode == 0
    gone = requests.get(stack.url("/data_batch"), headers={"apikey": raw}, timeout=10)
    assert gone.status_code == 401


def test_wrong_key_is_exit_1_with_the_api_message(stack: Stack) -> None:
    result = recsys(stack, "data", "list", key="rk_not_a_key")
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_nothing_listening_is_exit_3(stack: Stack) -> None:
    result = recsys(stack, "data", "list", env={"RECSYS_URL": "http://127.0.0.1:9"})
    assert result.returncode == 3 and "make run" in result.stderr


def test_bad_upload_is_exit_1_naming_the_line(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("type,source_id,target_id,timestamp,metadata\nview,u1,i1,not-a-time,\n")
    result = recsys(stack, "data", "upload", str(bad), "--tag", "cli-bad")
    assert result.returncode == 1
    assert "HTTP 422" in result.stderr and "bad.csv" in result.stderr
    listed = recsys(stack, "--json", "data", "list", "--tag", "cli-bad")
    assert json.loads(listed.stdout) == []


def test_upload_train_wait_recommend(stack: Stack, has_training: None, tmp_path: Path) -> None:
    # given a small shop uploaded with the CLI
    files = write_shop(tmp_path)
    up = recsys(stack, "--json", "data", "upload", *map(str, files), "--tag", "cli-flow")
    assert up.returncode == 0, up.stderr
    batches = json.loads(up.stdout)
    assert sorted(b["kind"] for b in batches) == ["entities", "entities", "interactions"]
    assert sum(b["interaction_count"] for b in batches) == 320
    listed = json.loads(recsys(stack, "--json", "data", "list", "--tag", "cli-flow").stdout)
    assert {b["batch_id"] for b in listed} == {b["batch_id"] for b in batches}
    summary = recsys(stack, "dataset", "--tag", "cli-flow")
    assert summary.returncode == 0, summary.stderr
    # when it is trained with --wait
    trained = recsys(stack, "train", "--model-id", "cli-model", "--tag", "cli-flow",
                     "--weight", "purchase=3", "--epochs", "5", "--components", "8",
                     "--holdout", "0.25", "--wait", timeout=240)
    # then the run completes and the user saw it end with the metrics vs the baseline
    # (a run this small can finish between two polls: each phase shown is unit-tested)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "done" in trained.stdout
    assert "popularity baseline" in trained.stdout
    status = json.loads(recsys(stack, "--json", "status", "cli-model").stdout)
    assert status["status"] == "completed" and status["progress"] == 100
    # and recommendations come back as a table, JSON and CSV
    table = recsys(stack, "recommend", "cli-model", "--source", "u3", "--max", "3")
    assert table.returncode == 0, table.stderr
    recs = json.loads(recsys(stack, "--json", "recommend", "cli-model", "--source", "u3",
                             "--source", "u25", "--max", "3").stdout)["recommendations"]
    assert {r["source_id"] for r in recs} == {"u3", "u25"}
    assert [r["rank"] for r in recs if r["source_id"] == "u3"] == [1, 2, 3]
    csv = recsys(stack, "recommend", "cli-model", "--source", "u3", "--max", "2", "--csv")
    lines = csv.stdout.strip().splitlines()
    assert lines[0] == "source_id,target_id,rank,score" and len(lines) == 3
    every = recsys(stack, "recommend", "cli-model", "--csv", "--max", "2").stdout
    rows = every.strip().splitlines()
    assert rows[0] == "source_id,target_id,rank,score"
    assert {row.split(",")[0] for row in rows[1:]} == {f"u{u}" for u in range(40)}
    models = recsys(stack, "models")
    assert models.returncode == 0 and "cli-model" in models.stdout
    # and an unknown model is a one-line 404, exit 1
    missing = recsys(stack, "recommend", "no-such-model", "--source", "u3")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    # and deleting the batches by tag removes them
    deleted = recsys(stack, "--json", "data", "delete", "--tag", "cli-flow")
    assert len(json.loads(deleted.stdout)) == 3
