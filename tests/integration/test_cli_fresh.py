"""The real ``recsys`` console script keeps a model fresh: a warm start with --wait,
``schedule set|show|delete`` and ``serve`` against a running stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.stack import Stack
from tests.integration.test_cli import recsys, write_shop

pytestmark = pytest.mark.integration


def test_warm_start_schedule_and_serve_through_the_cli(stack: Stack, tmp_path: Path) -> None:
    # Given a shop uploaded and trained once
    files = [str(p) for p in write_shop(tmp_path)]
    assert recsys(stack, "data", "upload", *files, "--tag", "cli-fresh").returncode == 0
    first = recsys(stack, "train", "--model-id", "cli-fresh", "--tag", "cli-fresh",
                   "--epochs", "5", "--wait")
    assert first.returncode == 0, first.stderr

    # When a warm start runs from the command line
    warm = recsys(stack, "--json", "train", "--model-id", "cli-fresh", "--tag", "cli-fresh",
                  "--epochs", "2", "--warm-start", "--wait")
    # Then it completes as version 2, continuing version 1
    assert warm.returncode == 0, warm.stderr
    status = json.loads(warm.stdout)
    assert status["version"] == 2 and status["training"]["parent_version"] == 1

    # When a schedule is set, shown and deleted
    put = recsys(stack, "--json", "schedule", "set", "cli-fresh", "--cron", "0 3 * * *",
                 "--tag", "cli-fresh", "--epochs", "3", "--warm-start")
    assert put.returncode == 0, put.stderr
    schedule = json.loads(put.stdout)
    assert schedule["cron"] == "0 3 * * *" and schedule["warm_start"] is True
    assert schedule["train"] == {"data_tags": ["cli-fresh"], "hyperparameters": {"epochs": 3}}
    shown = recsys(stack, "schedule", "show", "cli-fresh")
    assert shown.returncode == 0 and "0 3 * * *" in shown.stdout
    assert recsys(stack, "schedule", "delete", "cli-fresh").returncode == 0
    gone = recsys(stack, "schedule", "show", "cli-fresh")
    assert gone.returncode == 1 and "schedule_not_found" in gone.stderr
    bad = recsys(stack, "schedule", "set", "cli-fresh", "--every", "5", "--cron", "* * * * *")
    assert bad.returncode == 2

    # When the operator rolls back to version 1
    served = recsys(stack, "serve", "cli-fresh", "1")
    assert served.returncode == 0, served.stderr
    assert "serves version 1 (pinned)" in served.stdout
    model = json.loads(recsys(stack, "--json", "models", "cli-fresh").stdout)
    assert model["serving_version"] == 1 and model["pinned"] is True
