"""Settings come from RECSYS_ variables once, and a bad value names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.flower_port) == ("127.0.0.1", 8000, 5555)
    assert settings.flower_user == "admin"
    assert settings.data_dir == Path("var").resolve()
    assert settings.redis_url is None and settings.embedded_redis
    assert settings.callback_allow_private is False
    assert settings.api_url == "http://127.0.0.1:8000"
    assert settings.max_file_bytes == 1 << 30 and settings.max_file_rows == 10_000_000


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "RECSYS_PORT": "9000",
            "RECSYS_DATA_DIR": str(tmp_path),
            "RECSYS_REDIS_URL": "redis://db:6379/2",
            "RECSYS_CALLBACK_ALLOW_PRIVATE": "true",
            "RECSYS_WORKER_CONCURRENCY": "4",
        }
    )
    assert settings.port == 9000
    assert settings.data_dir == tmp_path.resolve()
    assert settings.effective_redis_url() == "redis://db:6379/2"
    assert not settings.embedded_redis
    assert settings.callback_allow_private is True
    assert settings.worker_concurrency == 4


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECSYS_PORT", "eighty"),
        ("RECSYS_PORT", "70000"),
        ("RECSYS_FLOWER_PORT", "0"),
        ("RECSYS_REDIS_URL", "http://localhost:6379"),
        ("RECSYS_CALLBACK_ALLOW_PRIVATE", "maybe"),
        ("RECSYS_WORKER_CONCURRENCY", "-1"),
        ("RECSYS_STORAGE_URL", "ftp://host/x"),
        ("RECSYS_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in info.value.message


def test_embedded_server_url_comes_from_the_port_recorded_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"RECSYS_DATA_DIR": str(tmp_path)})
    settings.embedded_dir.mkdir(parents=True)
    (settings.embedded_dir / "port").write_text("45678\n")
    assert settings.effective_redis_url() == "redis://127.0.0.1:45678/0"


def test_visibility_timeout_exceeds_the_hard_time_limit() -> None:
    settings = Settings.from_env({})
    assert settings.visibility_timeout > settings.train_hard_time_limit


def test_every_setting_in_docs_configuration_is_read_from_the_environment() -> None:
    import re

    from shared import config

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(RECSYS_[A-Z0-9_]+)`", page))
    read = set(re.findall(r'"(RECSYS_[A-Z0-9_]+)"', Path(config.__file__).read_text()))
    assert documented - read == set(), "documented but never read"
    assert read - documented == set(), "read but never documented in docs/configuration.md"
