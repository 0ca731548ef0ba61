"""Typed settings, read from the ``RECSYS_`` environment once at start.

Nothing reads ``os.environ`` at import time: a process calls
:meth:`Settings.from_env` once and passes the result down explicitly. A bad
value raises :class:`~shared.errors.ConfigError` naming the variable, which
stops start-up with a one-line message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from shared.errors import ConfigError

#: Name of the file, inside ``<data_dir>/redis``, that records the embedded server's port.
EMBEDDED_PORT_FILE = "port"
#: Name of the file, inside ``<data_dir>/redis``, holding the embedded server's password (0600).
EMBEDDED_PASSWORD_FILE = "password"  # noqa: S105 - a file name, not a password

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_port(raw: str) -> int:
    port = int(raw)
    if not 0 < port < 65536:
        raise ValueError("expected a port number from 1 to 65535")
    return port


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected a whole number of 0 or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value


def _delays(raw: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in raw.split(",") if part.strip())
    if not values or any(not v >= 0 for v in values):
        raise ValueError("expected a comma-separated list of non-negative seconds")
    return values


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://")):
        raise ValueError("expected a redis:// or rediss:// URL")
    return raw


def _storage_url(raw: str) -> str:
    if raw.startswith("s3://"):
        if len(raw) <= len("s3://") or raw[len("s3://")] == "/":
            raise ValueError("expected s3://bucket/prefix")
        return raw
    if "://" in raw and not raw.startswith("file://"):
        raise ValueError("expected a local path, file:// or s3://bucket/prefix")
    return raw


def _rate_limit(raw: str) -> str:
    value = raw.strip()
    if value.lower() in {"off", "none", "0"}:
        return "off"
    from limits import parse_many  # flask-limiter's parser; imported only when configured

    try:
        parse_many(value)
    except ValueError as exc:
        raise ValueError("expected e.g. '600 per minute' or 'off'") from exc
    return value


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "text"}:
        raise ValueError("expected json or text")
    return value


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _memory_size(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[0-9]{1,15}(?:[kmg]b?)?", value):
        raise ValueError("expected bytes or a size such as 512mb or 2gb (0: no limit)")
    return value


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names or not all(re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", n) for n in names):
        raise ValueError("expected a comma-separated list of Procfile process names")
    return names


#: Values of example files and tutorials that must never guard a real deployment.
PLACEHOLDER_SECRETS = frozenset({
    "change-me", "changeme", "change_me", "change-me-too", "change-me-to-a-long-random-string",
    "password", "passw0rd", "secret", "admin", "example",
})


def _placeholder(value: str | None) -> bool:
    text = (value or "").strip().lower()
    return text in PLACEHOLDER_SECRETS or text.startswith(("change-me", "changeme", "replace-me"))


def refuse_placeholders(settings: Settings) -> None:
    """Raise ConfigError naming each secret still set to an example value."""
    password = urlsplit(settings.redis_url).password if settings.redis_url else None
    named = [name for name, value in (("RECSYS_FLOWER_PASSWORD", settings.flower_password),
                                      ("RECSYS_BOOTSTRAP_KEY", settings.bootstrap_key),
                                      ("the password in RECSYS_REDIS_URL", password))
             if _placeholder(value)]
    if named:
        raise ConfigError(
            f"{' and '.join(named)} still holds a placeholder from an example file; set a "
            "long random value, e.g. from: python -c 'import secrets; "
            "print(secrets.token_urlsafe(24))'"
        )


#: Every ``RECSYS_`` variable: the setting it fills and how its text is parsed.
_ENV_VARS: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("RECSYS_HOST", "host", str),
    ("RECSYS_PORT", "port", _parse_port),
    ("RECSYS_FLOWER_PORT", "flower_port", _parse_port),
    ("RECSYS_FLOWER_USER", "flower_user", str),
    ("RECSYS_FLOWER_PASSWORD", "flower_password", str),
    ("RECSYS_DATA_DIR", "data_dir", lambda raw: Path(raw).expanduser().resolve()),
    ("RECSYS_REDIS_URL", "redis_url", _redis_url),
    ("RECSYS_STORAGE_URL", "storage_url", _storage_url),
    ("RECSYS_BOOTSTRAP_KEY", "bootstrap_key", str),
    ("RECSYS_CALLBACK_ALLOW_PRIVATE", "callback_allow_private", _parse_bool),
    ("RECSYS_URL", "api_url", str),
    ("RECSYS_API_KEY", "api_key", str),
    ("RECSYS_LOG_LEVEL", "log_level", lambda raw: raw.upper()),
    ("RECSYS_WORKER_CONCURRENCY", "worker_concurrency", _positive_int),
    ("RECSYS_TRAIN_THREADS", "train_threads", _positive_int),
    ("RECSYS_WEB_WORKERS", "web_workers", _positive_int),
    ("RECSYS_WEB_THREADS", "web_threads", _positive_int),
    ("RECSYS_WEB_TIMEOUT", "web_timeout", _positive_int),
    ("RECSYS_MAX_FILE_BYTES", "max_file_bytes", _positive_int),
    ("RECSYS_MAX_FILE_ROWS", "max_file_rows", _positive_int),
    ("RECSYS_MAX_FILES_PER_REQUEST", "max_files_per_request", _positive_int),
    ("RECSYS_MAX_JSON_BODY_BYTES", "max_json_body_bytes", _positive_int),
    ("RECSYS_MAX_TAGS", "max_tags", _positive_int),
    ("RECSYS_MAX_ID_LENGTH", "max_id_length", _positive_int),
    ("RECSYS_WEBHOOK_SECRET_GRACE_SECONDS", "webhook_secret_grace_seconds", _non_negative_int),
    ("RECSYS_TRAIN_SOFT_TIME_LIMIT", "train_soft_time_limit", _positive_int),
    ("RECSYS_TRAIN_HARD_TIME_LIMIT", "train_hard_time_limit", _positive_int),
    ("RECSYS_HEARTBEAT_INTERVAL", "heartbeat_interval", _positive_float),
    ("RECSYS_HEARTBEAT_STALE_AFTER", "heartbeat_stale_after", _positive_float),
    ("RECSYS_MAX_RUN_ATTEMPTS", "max_run_attempts", _positive_int),
    ("RECSYS_RECONCILE_INTERVAL", "reconcile_interval", _positive_float),
    ("RECSYS_KEEP_VERSIONS", "keep_versions", _positive_int),
    ("RECSYS_SCHEDULE_MIN_INTERVAL_MINUTES", "schedule_min_interval_minutes", _positive_float),
    ("RECSYS_BEAT_MAX_LOOP_INTERVAL", "beat_max_loop_interval", _positive_float),
    ("RECSYS_MAX_RECOMMEND_SOURCE_IDS", "max_recommend_source_ids", _positive_int),
    ("RECSYS_MAX_COLD_START_LOOKUPS", "max_cold_start_lookups", _positive_int),
    ("RECSYS_SERVE_BLAS_THREADS", "serve_blas_threads", _positive_int),
    ("RECSYS_SERVE_THREADS", "serve_threads", _positive_int),
    ("RECSYS_CALLBACK_CONNECT_TIMEOUT", "callback_connect_timeout", _positive_float),
    ("RECSYS_CALLBACK_READ_TIMEOUT", "callback_read_timeout", _positive_float),
    ("RECSYS_CALLBACK_RETRY_DELAYS", "callback_retry_delays", _delays),
    ("RECSYS_LOG_FORMAT", "log_format", _log_format),
    ("RECSYS_RATE_LIMIT", "rate_limit", _rate_limit),
    ("RECSYS_RATE_LIMIT_RECOMMEND", "rate_limit_recommend", _rate_limit),
    ("RECSYS_S3_ENDPOINT_URL", "s3_endpoint_url", _http_url),
    ("RECSYS_REDIS_MAXMEMORY", "redis_maxmemory", _memory_size),
    ("RECSYS_RUN_PROCESSES", "run_processes", _names),
    ("RECSYS_QUOTA_ACTIVE_RUNS", "quota_active_runs", _positive_int),
    ("RECSYS_QUOTA_MODELS", "quota_models", _positive_int),
    ("RECSYS_QUOTA_BATCHES", "quota_batches", _positive_int),
    ("RECSYS_QUOTA_STORAGE_BYTES", "quota_storage_bytes", _positive_int),
    ("RECSYS_TENANT_CONCURRENCY", "tenant_concurrency", _positive_int),
    ("RECSYS_DATA_SUMMARY_TIME_LIMIT", "data_summary_time_limit", _positive_float),
    ("RECSYS_BODY_READ_TIMEOUT", "body_read_timeout", _positive_float),
    ("RECSYS_STREAM_WRITE_TIMEOUT", "stream_write_timeout", _positive_float),
    ("RECSYS_TRUSTED_PROXIES", "trusted_proxies", _non_negative_int),
)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service. Build with :meth:`from_env`; never mutate."""

    host: str = "127.0.0.1"
    port: int = 8000
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("var").resolve())
    redis_url: str | None = None
    storage_url: str | None = None
    bootstrap_key: str | None = None
    callback_allow_private: bool = False
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    log_level: str = "INFO"
    #: Celery worker processes for training (the callbacks queue gets its own small pool).
    worker_concurrency: int = 2
    #: OpenMP threads one LightFM fit uses.
    train_threads: int = 2
    web_workers: int = 2
    #: Request threads per API process: enough that slow peers never take them all
    #: (bench/abuse.py: 26 slow peers and 64 probe loops against 2 x 32).
    web_threads: int = 32
    #: Seconds a gunicorn worker may spend on one request (large uploads stream for minutes).
    web_timeout: int = 3600
    max_file_bytes: int = 1 << 30
    max_file_rows: int = 10_000_000
    max_files_per_request: int = 32
    max_json_body_bytes: int = 32 << 20
    max_tags: int = 64
    #: Longest id (entity, source, target) an upload may carry, in characters (docs/api.md).
    max_id_length: int = 256
    #: Seconds the previous webhook secret still signs deliveries after a rotation.
    webhook_secret_grace_seconds: int = 24 * 3600
    train_soft_time_limit: int = 6 * 3600
    train_hard_time_limit: int = 6 * 3600 + 300
    heartbeat_interval: float = 5.0
    heartbeat_stale_after: float = 90.0
    max_run_attempts: int = 3
    reconcile_interval: float = 15.0
    keep_versions: int = 3
    #: Shortest ``interval_minutes`` a schedule may take (the contract's 1; tests lower it).
    schedule_min_interval_minutes: float = 1.0
    #: Longest beat sleeps between looks at the schedules in Redis (a new schedule's
    #: first tick may be late by up to this).
    beat_max_loop_interval: float = 5.0
    #: Most source ids one recommendations request may list.
    max_recommend_source_ids: int = 100_000
    #: Unseen sources per recommendations request whose uploaded entity record is read for
    #: cold start (each read scans the entity batches); the rest get the most popular items.
    max_cold_start_lookups: int = 100
    #: BLAS threads of an API process scoring recommendations (requests already run in
    #: parallel; more threads spin on busy cores and double single-request CPU).
    serve_blas_threads: int = 1
    #: Threads of an API process that score the blocks of bulk recommendation requests.
    serve_threads: int = 2
    callback_connect_timeout: float = 3.0
    callback_read_timeout: float = 15.0
    #: Seconds between callback attempts after the first (docs/api.md: 5 s, 5 min, 30 min, 2 h,
    #: 5 h, 10 h, 10 h); one retry per entry, jittered.
    callback_retry_delays: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0,
                                                36000.0)
    #: Log lines as JSON objects (default) or plain text for local reading.
    log_format: str = "json"
    #: Requests per tenant (API key; client address without one) across the API, or "off".
    rate_limit: str = "600 per minute"
    #: Requests per tenant to /recommended_items (its own budget: serving is the hot path).
    rate_limit_recommend: str = "6000 per minute"
    #: An S3-compatible endpoint (MinIO, Ceph, moto), e.g. http://127.0.0.1:9000; unset = AWS.
    s3_endpoint_url: str | None = None
    #: The embedded server's ``maxmemory`` (Valkey syntax; "0" = no limit). See
    #: docs/operations.md for sizing it with headroom.
    redis_maxmemory: str = "1gb"
    #: Procfile processes ``make run`` starts (empty: all of them).
    run_processes: tuple[str, ...] = ()
    #: Per tenant: runs queued or running at once (docs/quotas.md).
    quota_active_runs: int = 10
    #: Per tenant: models.
    quota_models: int = 1000
    #: Per tenant: stored data batches.
    quota_batches: int = 100_000
    #: Per tenant: stored batch bytes (Parquet); None = no limit.
    quota_storage_bytes: int | None = None
    #: Training tasks of one tenant running at once; the rest wait in ``queued``.
    tenant_concurrency: int = 2
    #: Seconds the API spends on a /dataset summary or a dry run before answering 503.
    data_summary_time_limit: float = 10.0
    #: Seconds an upload body may go without a byte arriving before the API cuts it off.
    body_read_timeout: float = 30.0
    #: Seconds a streamed response may wait on a reader that does not read.
    stream_write_timeout: float = 30.0
    #: Reverse proxies in front of the API whose X-Forwarded-For/-Proto it believes (0: none,
    #: the peer is the client). deploy/docker-compose.yml's nginx: 1.
    trusted_proxies: int = 0

    @property
    def visibility_timeout(self) -> int:
        """Broker re-delivery delay: above the hard limit, so a running task is never re-sent."""
        return self.train_hard_time_limit + 3600

    @property
    def embedded_redis(self) -> bool:
        """True when the launcher owns a private server in the data directory."""
        return self.redis_url is None

    @property
    def embedded_dir(self) -> Path:
        """Where the embedded server keeps its data (AOF, RDB, log, port file)."""
        return self.data_dir / "redis"

    def effective_redis_url(self) -> str:
        """The Redis URL every component connects to.

        An explicit ``RECSYS_REDIS_URL`` wins; otherwise the embedded server's
        port and password recorded in the data directory (db 0 on loopback).
        """
        if self.redis_url is not None:
            return self.redis_url
        port_file = self.embedded_dir / EMBEDDED_PORT_FILE
        try:
            port = int(port_file.read_text().strip())
        except (OSError, ValueError):
            port = 6379
        try:  # the embedded server's password (shared/stack/embedded.py); never log this URL
            password = (self.embedded_dir / EMBEDDED_PASSWORD_FILE).read_text().strip()
        except OSError:
            password = ""
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{port}/0"

    def storage_root(self) -> str:
        """The storage URL: ``s3://...`` or a local directory path."""
        if self.storage_url is None:
            return str(self.data_dir / "storage")
        if self.storage_url.startswith("file://"):
            return self.storage_url[len("file://") :]
        if self.storage_url.startswith("s3://") and self.s3_endpoint_url is not None:
            # pyarrow's S3 URIs take the endpoint as query options; an explicit one in
            # RECSYS_STORAGE_URL wins over RECSYS_S3_ENDPOINT_URL.
            scheme, _, hostport = self.s3_endpoint_url.partition("://")
            if "endpoint_override=" not in self.storage_url:
                sep = "&" if "?" in self.storage_url else "?"
                return f"{self.storage_url}{sep}endpoint_override={hostport}&scheme={scheme}"
        return self.storage_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``RECSYS_`` variable; raise ConfigError naming a bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, attr, parse in _ENV_VARS:
            raw = env.get(name)
            if raw is None or (raw == "" and attr != "callback_allow_private"):
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc

        settings = cls(**values)  # type: ignore[arg-type]
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"RECSYS_LOG_LEVEL={settings.log_level!r} is invalid: "
                "expected DEBUG, INFO, WARNING or ERROR"
            )
        refuse_placeholders(settings)
        if settings.train_hard_time_limit <= settings.train_soft_time_limit:
            raise ConfigError(
                "RECSYS_TRAIN_HARD_TIME_LIMIT must be above RECSYS_TRAIN_SOFT_TIME_LIMIT"
            )
        return settings
