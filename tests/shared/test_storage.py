"""Storage behaves the same on a local directory and on S3 (moto's server, started here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.config import Settings
from shared.errors import ConfigError, DependencyUnavailable
from shared.storage import Storage, batch_path, model_dir, open_storage
from tests.helpers.servers import free_port

BUCKET = "recsys-test"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in _AWS_ENV}
    os.environ.update(_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings naming a fresh storage root on each backend, for the ``storage`` fixture
    (S3 roots come from Settings, as in production)."""
    if request.param == "local":
        return Settings(data_dir=tmp_path / "var")
    endpoint = request.getfixturevalue("s3_endpoint")
    return Settings(
        data_dir=tmp_path / "var",
        storage_url=f"s3://{BUCKET}/{tmp_path.name}?region=us-east-1",
        s3_endpoint_url=endpoint,
    )


def test_put_bytes_then_get_bytes_exists_and_list_dir(storage: Storage) -> None:
    storage.put_bytes("tenants/acme/models/m1/v1/manifest.json", b'{"v": 1}')
    storage.put_bytes("tenants/acme/models/m1/v1/arrays.npy", b"\x93NUMPY")
    storage.put_bytes("tenants/acme/models/m1/v2/manifest.json", b'{"v": 2}')

    assert storage.get_bytes("tenants/acme/models/m1/v1/manifest.json") == b'{"v": 1}'
    assert storage.exists("tenants/acme/models/m1/v1/manifest.json")
    assert not storage.exists("tenants/acme/models/m1/v1/missing.json")
    assert not storage.exists("tenants/acme/models/m1/v1"), "a directory is not a file"
    assert storage.list_dir("tenants/acme/models/m1") == ["v1", "v2"]
    assert storage.list_dir("tenants/acme/models/m1/v1") == ["arrays.npy", "manifest.json"]
    assert storage.list_dir("tenants/nobody/models") == []


def test_put_bytes_replaces_an_existing_file(storage: Storage) -> None:
    storage.put_bytes("a/b.json", b"old")
    storage.put_bytes("a/b.json", b"new")
    assert storage.get_bytes("a/b.json") == b"new"
    assert storage.list_dir("a") == ["b.json"], "no temporary files are left behind"


def test_put_file_places_an_uploaded_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(payload)

    storage.put_file(batch_path("acme", "b1"), source)

    assert storage.get_bytes(batch_path("acme", "b1")) == payload
    assert storage.list_dir("tenants/acme/batches") == ["b1.parquet"]


def test_a_missing_file_reads_as_file_not_found(storage: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("tenants/acme/nothing-here.json")


def test_delete_and_delete_tree_tolerate_missing_paths(storage: Storage) -> None:
    storage.put_bytes(f"{model_dir('acme', 'm', 1)}/x.npy", b"1")
    storage.put_bytes(f"{model_dir('acme', 'm', 1)}/y.npy", b"2")
    storage.put_bytes(f"{model_dir('acme', 'm', 2)}/x.npy", b"3")
    storage.put_bytes("tenants/acme/batches/b.parquet", b"4")

    storage.delete(f"{model_dir('acme', 'm', 1)}/x.npy")
    storage.delete(f"{model_dir('acme', 'm', 1)}/x.npy")  # again: not an error
    assert storage.list_dir(model_dir("acme", "m", 1)) == ["y.npy"]

    storage.delete_tree(model_dir("acme", "m", 1))
    storage.delete_tree(model_dir("acme", "m", 1))  # again: not an error
    storage.delete_tree("tenants/acme/never-was")
    assert storage.list_dir(model_dir("acme", "m")) == ["v2"]
    assert storage.get_bytes(f"{model_dir('acme', 'm', 2)}/x.npy") == b"3"
    assert storage.exists("tenants/acme/batches/b.parquet"), "a sibling tree is untouched"


def test_parquet_round_trip_through_storage_fs(storage: Storage) -> None:
    table = pa.table({"id": ["a", "b", "c"], "score": pa.array([1.0, 2.5, -3.0], pa.float32())})
    path = storage.full_path(batch_path("acme", "parquet1"))
    if storage.is_local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, filesystem=storage.fs)

    back = pq.read_table(path, filesystem=storage.fs, columns=["score", "id"])
    assert back.column("id").to_pylist() == ["a", "b", "c"]
    assert back.column("score").to_pylist() == [1.0, 2.5, -3.0]
    assert storage.exists(batch_path("acme", "parquet1"))
    assert (storage.local_path("x") is None) == (not storage.is_local)


def test_check_passes_on_a_reachable_backend(storage: Storage) -> None:
    storage.check()


def test_paths_may_not_escape_the_root(storage: Storage) -> None:
    with pytest.raises(ValueError, match=r"\.\."):
        storage.full_path("tenants/../../etc/passwd")


def test_an_unreachable_s3_endpoint_is_a_quick_dependency_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in _AWS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path,
        storage_url=f"s3://{BUCKET}/x?region=us-east-1",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    storage = open_storage(settings.storage_root())
    with pytest.raises(DependencyUnavailable) as caught:
        storage.check()
    assert caught.value.status == 503
    assert "?" not in caught.value.message, "query options stay out of messages"
    with pytest.raises(DependencyUnavailable):
        storage.get_bytes("a.json")


def test_storage_url_options_and_endpoint_setting() -> None:
    plain = Settings(storage_url="s3://bkt/pre?region=eu-west-1")
    assert plain.storage_root() == "s3://bkt/pre?region=eu-west-1"
    local = Settings(
        storage_url="s3://bkt/pre?region=eu-west-1", s3_endpoint_url="http://minio:9000"
    )
    assert local.storage_root() == (
        "s3://bkt/pre?region=eu-west-1&endpoint_override=minio:9000&scheme=http"
    )
    explicit = Settings(
        storage_url="s3://bkt?endpoint_override=a:1&scheme=http",
        s3_endpoint_url="https://b:2",
    )
    assert explicit.storage_root() == "s3://bkt?endpoint_override=a:1&scheme=http"
    env = Settings.from_env({"RECSYS_S3_ENDPOINT_URL": "http://127.0.0.1:9000/"})
    assert env.s3_endpoint_url == "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="RECSYS_S3_ENDPOINT_URL"):
        Settings.from_env({"RECSYS_S3_ENDPOINT_URL": "127.0.0.1:9000"})


def test_bad_s3_urls_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="credentials"):
        Storage("s3://key:secret@bkt/pre?region=us-east-1")
    with pytest.raises(ConfigError, match="unknown S3 option"):
        Storage("s3://bkt/pre?region=us-east-1&colour=blue")
