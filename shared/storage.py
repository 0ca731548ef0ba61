"""Where batches and model artifacts live: a local directory, or S3-compatible storage.

Built on :mod:`pyarrow.fs` so that Parquet reads and writes go straight to
either backend and callers never branch on which one is in use. Writes are
atomic: a local file is written under a temporary name, fsynced and renamed;
an S3 object only becomes visible when its upload completes.

Layout (relative paths)::

    tenants/<tenant>/batches/<batch_id>.parquet
    tenants/<tenant>/models/<model_id>/v<version>/<artifact files>
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from shared.errors import DependencyUnavailable


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
            fs, base = pafs.FileSystem.from_uri(root)
            self.fs: pafs.FileSystem = fs
            self.base = base.rstrip("/")
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
        return f"{self.base}/{rel.lstrip('/')}"

    def local_path(self, rel: str) -> Path | None:
        """A local filesystem path when the backend is local (for memory mapping)."""
        return Path(self.full_path(rel)) if self.is_local else None

    # -- writes --------------------------------------------------------------
    def put_file(self, rel: str, source: Path) -> None:
        """Move (local) or upload (S3) a finished file into place atomically."""
        target = self.full_path(rel)
        try:
            if self.is_local:
                dest = Path(target)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
                with open(source, "rb") as fh:
                    os.fsync(fh.fileno())
                try:
                    os.replace(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            else:
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(source), target, destination_filesystem=self.fs)
        except OSError as exc:
            raise DependencyUnavailable(
                f"Storage refused a write of {rel}: {exc.strerror or exc}",
                details={"dependency": "storage"},
            ) from exc

    def put_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file atomically."""
        target = self.full_path(rel)
        try:
            if self.is_local:
                dest = Path(target)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
                _fsync_dir(dest.parent)
            else:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
        except OSError as exc:
            raise DependencyUnavailable(
                f"Storage refused a write of {rel}: {exc}", details={"dependency": "storage"}
            ) from exc

    # -- reads ---------------------------------------------------------------
    def get_bytes(self, rel: str) -> bytes:
        """Read a whole (small) file."""
        with self.fs.open_input_stream(self.full_path(rel)) as fh:
            data: bytes = fh.read()
        return data

    def exists(self, rel: str) -> bool:
        """True when a file exists at ``rel``."""
        info = self.fs.get_file_info(self.full_path(rel))
        return bool(info.type == pafs.FileType.File)

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        selector = pafs.FileSelector(self.full_path(rel), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

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
            raise DependencyUnavailable(
                f"Storage at {self.root} is unreachable: {exc}", details={"dependency": "storage"}
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
