"""Start-up refuses secrets left at an example file's placeholder value."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _example_values() -> dict[str, str]:
    values = {}
    for line in (ROOT / "deploy" / "env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip()
    return values


@pytest.mark.parametrize("name", ["RECSYS_FLOWER_PASSWORD", "RECSYS_BOOTSTRAP_KEY"])
def test_the_example_files_secrets_are_refused_by_name(name: str) -> None:
    # Given deploy/env.example copied without editing its secrets
    example = _example_values()
    # when a process starts with it, it stops with a message naming the variable
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: example[name]})


@pytest.mark.parametrize("value", ["change-me", "changeme", "password", "CHANGE-ME-please"])
def test_common_placeholders_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        Settings.from_env({"RECSYS_FLOWER_PASSWORD": value})
    with pytest.raises(ConfigError, match="RECSYS_REDIS_URL"):
        Settings.from_env({"RECSYS_REDIS_URL": f"redis://:{value}@redis:6379/0"})


def test_real_secrets_are_accepted() -> None:
    settings = Settings.from_env({"RECSYS_FLOWER_PASSWORD": "q8V-3kT_x9Lm2Pz",
                                  "RECSYS_BOOTSTRAP_KEY": "deploy-test-key-0123456789",
                                  "RECSYS_REDIS_URL": "redis://:Zp4u-7Hx2kQ9@redis:6379/0"})
    assert settings.flower_password == "q8V-3kT_x9Lm2Pz"
