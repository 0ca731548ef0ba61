"""Where batches and model artifacts live: a local directory, or S3-compatible storage.

Built on :mod:`pyarrow.fs` so that Parquet reads and writes go straight to
either backend and callers never branch on which one is in use. Writes are
atomic: a local file is written under a temporary name, fsynced and renamed;
an S3 object only becomes visible when its upload completes.

Layout (relative paths)::

    tenants/<tenant>/batches/<batch_id>.parquet
    tenants/<tenant>/models/<model_id>/v<version>/<artifact files>

S3: the root is ``s3://bucket/prefix``, optionally with the query options
``endpoint_override=host:port``, ``scheme=http|https``, ``region=...``,
``force_virtual_addressing=true`` and ``allow_bucket_creation=true`` (the
names pyarrow's S3 URIs use). ``RECSYS_S3_ENDPOINT_URL`` adds the first two
(see :meth:`shared.config.Settings.storage_root`). Credentials come from the
AWS SDK's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a
profile, an instance role), never from the URL. The filesystem is built here
rather than with ``FileSystem.from_uri`` so that a dead endpoint fails within
a few seconds (short connect timeout, three attempts) instead of the SDK's
long default retries. Create an S3 storage after forking (the AWS SDK is not
fork-safe): the API and the workers build theirs per process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from shared.errors import ConfigError, DependencyUnavailable

#: Seconds to wait for a TCP connection to the S3 endpoint.
S3_CONNECT_TIMEOUT = 3.0
#: Seconds to wait for data on an open S3 connection (not for a whole transfer).
S3_REQUEST_TIMEOUT = 60.0
#: Attempts per S3 request (the SDK's standard retry strategy, with backoff).
S3_MAX_ATTEMPTS = 3

_S3_TEXT_OPTIONS = {"region", "scheme", "endpoint_override"}
_S3_BOOL_OPTIONS = {"force_virtual_addressing", "allow_bucket_creation"}


def _s3_filesystem(root: str) -> tuple[pafs.S3FileSystem, str]:
    """An S3 filesystem and the ``bucket/prefix`` base path for an ``s3://`` root."""
    parts = urlsplit(root)
    if parts.username or parts.password:
        raise ConfigError(
            "RECSYS_STORAGE_URL must not carry credentials; use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or a profile or instance role)."
        )
    bucket = parts.hostname or ""
    if not bucket:
        raise ConfigError("RECSYS_STORAGE_URL: expected s3://bucket/prefix")
    options: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _S3_TEXT_OPTIONS:
            options[name] = value
        elif name in _S3_BOOL_OPTIONS:
            options[name] = value.strip().lower() in {"1", "true", "yes", "on"}
        else:
            known = ", ".join(sorted(_S3_TEXT_OPTIONS | _S3_BOOL_OPTIONS))
            raise ConfigError(f"RECSYS_STORAGE_URL: unknown S3 option {name!r} (known: {known})")
    if "region" not in options and "endpoint_override" not in options:
        # Real AWS: ask which region the bucket lives in, as pyarrow's from_uri does.
        try:
            options["region"] = pafs.resolve_s3_region(bucket)
        except OSError as exc:
            raise DependencyUnavailable(
                f"Could not find the region of S3 bucket {bucket!r}: {exc}",
                details={"dependency": "storage"},
            ) from exc
    fs = pafs.S3FileSystem(
        connect_timeout=S3_CONNECT_TIMEOUT,
        request_timeout=S3_REQUEST_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
        **options,
    )
    base = f"{bucket}/{parts.path.strip('/')}".rstrip("/")
    return fs, base


def _check_rel(rel: str) -> str:
    """``rel`` without a leading '/'; refuses '..' segments (no escaping the root)."""
    clean = rel.lstrip("/")
    if ".." in clean.split("/"):
        raise ValueError(f"storage paths may not contain '..': {rel!r}")
    return clean


def _unavailable(action: str, rel: str, exc: OSError) -> DependencyUnavailable:
    return DependencyUnavailable(
        f"Storage failed to {action} {rel}: {exc.strerror or exc}",
        details={"dependency": "storage"},
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """Files addressed by relative, '/'-separated paths under one root."""

    def __init__(self, root: str) -> None:
        self.root = root
        if root.startswith("s3://"):
            fs, base = _s3_filesystem(root)
            self.fs: pafs.FileSystem = fs
            self.base = base
            self.is_local = False
        else:
            local = Path(root).resolve()
            local.mkdir(parents=True, exist_ok=True)
            self.fs = pafs.LocalFileSystem()
            self.base = str(local)
            self.is_local = True

    # -- paths ---------------------------------------------------------------
    def full_path(self, rel: str) -> str:
        """The backend path of ``rel`` (for pyarrow readers given ``self.fs``)."""
        return f"{self.base}/{_check_rel(rel)}"

    def local_path(self, rel: str) -> Path | None:
        """A local filesystem path when the backend is local (for memory mapping)."""
        return Path(self.full_path(rel)) if self.is_local else None

    # -- writes --------------------------------------------------------------
    def put_file(self, rel: str, source: Path) -> None:
        """Move (local) or upload (S3) a finished file into place atomically."""
        target = self.full_path(rel)
        try:
            if not self.is_local:
                # S3 has no directories to create; the object appears when the upload completes.
                pafs.copy_files(str(source), target, destination_filesystem=self.fs)
                return
            with open(source, "rb") as fh:
                os.fsync(fh.fileno())
            with _replacing(Path(target)) as tmp:
                try:
                    os.replace(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
        except OSError as exc:
            raise _unavailable("write", rel, exc) from exc

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file atomically."""
        target = self.full_path(rel)
        try:
            if not self.is_local:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
                return
            with _replacing(Path(target)) as tmp, open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _unavailable("write", rel, exc) from exc

    # -- reads ---------------------------------------------------------------
    def get_bytes(self, rel: str) -> bytes:
        """Read a whole (small) file; FileNotFoundError when it does not exist."""
        try:
            with self.fs.open_input_stream(self.full_path(rel)) as fh:
                data: bytes = fh.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _unavailable("read", rel, exc) from exc
        return data

    def exists(self, rel: str) -> bool:
        """True when a file exists at ``rel``."""
        try:
            info = self.fs.get_file_info(self.full_path(rel))
        except OSError as exc:
            raise _unavailable("look up", rel, exc) from exc
        return bool(info.type == pafs.FileType.File)

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        selector = pafs.FileSelector(self.full_path(rel), allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise _unavailable("list", rel, exc) from exc
        return sorted(info.base_name for info in infos)

    # -- deletes -------------------------------------------------------------
    def delete(self, rel: str) -> None:
        """Delete a file; a missing one is not an error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.full_path(rel))

    def delete_tree(self, rel: str) -> None:
        """Delete a directory and everything below it; a missing one is not an error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_dir(self.full_path(rel))

    def check(self) -> None:
        """Raise DependencyUnavailable when the root cannot be listed (for /readyz)."""
        try:
            self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except OSError as exc:
            where = self.root.split("?", 1)[0]
            raise DependencyUnavailable(
                f"Storage at {where} is unreachable: {exc}", details={"dependency": "storage"}
            ) from exc


def batch_path(tenant: str, batch_id: str) -> str:
    """Where a batch's Parquet file lives."""
    return f"tenants/{tenant}/batches/{batch_id}.parquet"


def model_dir(tenant: str, model_id: str, version: int | None = None) -> str:
    """A model's directory, or one version's directory inside it."""
    base = f"tenants/{tenant}/models/{model_id}"
    return base if version is None else f"{base}/v{version}"


def open_storage(root: str) -> Storage:
    """The storage for a root from :meth:`shared.config.Settings.storage_root`."""
    return Storage(root)


@contextlib.contextmanager
def _replacing(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest``, moved onto it (and the directory synced) on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
