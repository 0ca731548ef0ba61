"""The demo's closing hint prints a command that works as printed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.client.demo import recsys_command

ROOT = Path(__file__).resolve().parents[2]


def test_the_printed_recsys_command_runs_without_an_activated_venv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a shell in the project directory whose PATH lacks the venv (not activated)
    monkeypatch.chdir(ROOT)
    command = recsys_command()
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    # when the hint's command is typed as printed
    # a shell on purpose: the command is checked exactly as a user would type it
    done = subprocess.run(f"{command} --help", shell=True, cwd=ROOT, env=env,  # noqa: S602
                          capture_output=True, text=True, timeout=120)
    # then it is the recsys CLI
    assert done.returncode == 0, done.stderr
    assert "recommend" in done.stdout and "status" in done.stdout

