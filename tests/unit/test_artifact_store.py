"""The artifact store's local backend, URI checks and backend choice (the S3 backend: tests/integration)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foretell.core.artifact_store import (
    ArtifactNotFound,
    Artifacts,
    LocalStore,
    S3Store,
    _s3_client,
    cache_dir_for,
    evict_cache,
    fetch_dir,
    store_for,
)
from foretell.core.artifacts import parse_s3, uri_of
from foretell.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from foretell.core.settings import Settings


def make_tree(root: Path) -> Path:
    (root / "model" / "deep").mkdir(parents=True)
    (root / "meta.json").write_text('{"ok": true}')
    (root / "model" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (root / "model" / "deep" / "x.npz").write_bytes(b"\x00\x01\xff")
    return root


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_local_round_trip_copies_into_place(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "work")
    uri = uri_of(tmp_path / "store" / "models" / "v1")
    store = LocalStore()
    assert not store.exists(uri)
    store.put_dir(source, uri)
    assert store.exists(uri)
    got = store.get_dir(uri, tmp_path / "cache")
    assert got == tmp_path.resolve() / "store" / "models" / "v1"
    assert tree_of(got) == tree_of(source)
    assert store.read_bytes(uri, "model/deep/x.npz") == b"\x00\x01\xff"
    assert not (tmp_path / "cache").exists()  # local artifacts are read in place, never copied
    assert [p.name for p in (tmp_path / "store" / "models").iterdir()] == ["v1"]  # no temp dirs left


def test_local_put_in_place_is_a_no_op(tmp_path: Path) -> None:
    artifact = make_tree(tmp_path / "artifact")
    before = tree_of(artifact)
    LocalStore().put_dir(artifact, uri_of(artifact))
    LocalStore().put_dir(artifact, str(artifact))  # a plain path is a local URI too
    assert tree_of(artifact) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_local_put_replaces_an_existing_artifact(tmp_path: Path) -> None:
    uri = uri_of(tmp_path / "store" / "a")
    LocalStore().put_dir(make_tree(tmp_path / "one"), uri)
    second = tmp_path / "two"
    second.mkdir()
    (second / "only.txt").write_text("new")
    LocalStore().put_dir(second, uri)
    assert tree_of(tmp_path / "store" / "a") == {"only.txt": b"new"}
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["a"]


def test_local_failure_mid_put_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_tree(tmp_path / "work")
    uri = uri_of(tmp_path / "store" / "v1")
    copied: list[str] = []
    real_copy = shutil.copy2

    def failing_copy(src: Any, dst: Any, **kwargs: Any) -> Any:
        if copied:
            raise OSError("disk full")
        copied.append(str(src))
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        LocalStore().put_dir(source, uri)
    assert copied  # it failed after a file was written
    assert not LocalStore().exists(uri)
    with pytest.raises(ArtifactNotFound, match="no complete artifact"):
        LocalStore().get_dir(uri, tmp_path / "cache")
    assert list((tmp_path / "store").iterdir()) == []  # the partial copy is gone too


def test_local_delete(tmp_path: Path) -> None:
    uri = uri_of(tmp_path / "store" / "v1")
    LocalStore().put_dir(make_tree(tmp_path / "work"), uri)
    LocalStore().delete(uri)
    assert not LocalStore().exists(uri)
    LocalStore().delete(uri)  # deleting nothing is fine
    with pytest.raises(ArtifactNotFound, match="no such directory"):
        LocalStore().read_bytes(uri, "meta.json")


def test_local_read_bytes_refuses_escaping_names(tmp_path: Path) -> None:
    uri = uri_of(make_tree(tmp_path / "a"))
    with pytest.raises(ArtifactNotFound, match="not a path inside"):
        LocalStore().read_bytes(uri, "../a/meta.json")


def test_store_for_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:1", s3_region="us-east-1")
    assert isinstance(store_for(uri_of(tmp_path), settings), LocalStore)
    assert isinstance(store_for(str(tmp_path)), LocalStore)
    assert isinstance(store_for("s3://bucket-1/models/v1", settings), S3Store)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("gs://bucket/x", "only file://"),
        ("s3://", "not a valid S3 bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket"),
        ("s3://ab/x", "not a valid S3 bucket"),
        ("s3://bucket", "needs a key prefix"),
        ("s3://bucket//", "needs a key prefix"),
        ("s3://bucket/a//b", "empty, '.' or '..'"),
        ("s3://bucket/a/../b", "empty, '.' or '..'"),
    ],
)
def test_bad_uris_name_the_field(uri: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as caught:
        store_for(uri, None, field="forecast.artifact_uri")
    assert caught.value.violations[0].field == "forecast.artifact_uri"
    assert caught.value.message.startswith("forecast.artifact_uri: ")


def test_parse_s3_strips_slashes() -> None:
    assert parse_s3("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b")


def test_fetch_dir_reads_local_artifacts_in_place(tmp_path: Path) -> None:
    artifact = make_tree(tmp_path / "a")
    settings = Settings(data_dir=tmp_path / "data")
    assert fetch_dir(uri_of(artifact), settings) == artifact.resolve()
    assert cache_dir_for("s3://b1b/x", tmp_path) != cache_dir_for("s3://b1b/y", tmp_path)
    assert cache_dir_for("s3://b1b/x", tmp_path).parent == tmp_path


@pytest.fixture
def fresh_clients(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AWS configuration but what a test sets; clients built anew (they capture credentials)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe
    _s3_client.cache_clear()
    yield
    _s3_client.cache_clear()


def test_s3_without_credentials_is_a_failed_precondition(tmp_path: Path, fresh_clients: None) -> None:
    settings = Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:1", s3_region="us-east-1")
    with pytest.raises(FailedPrecondition, match="cannot reach 's3://bucket-1/x'.*AWS_ACCESS_KEY_ID"):
        store_for("s3://bucket-1/x", settings).exists("s3://bucket-1/x")


def test_s3_endpoint_down_is_unavailable(tmp_path: Path, fresh_clients: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    settings = Settings(data_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:1", s3_region="us-east-1")
    with pytest.raises(Unavailable, match="did not answer for 's3://bucket-1/x'"):
        fetch_dir("s3://bucket-1/x", settings)


def test_artifacts_publish_in_place_when_local(tmp_path: Path) -> None:
    artifacts = Artifacts(Settings(data_dir=tmp_path))
    work = make_tree(artifacts.local_dir("models", "v1"))
    uri = artifacts.uri("models", "v1")
    assert uri == uri_of(work)
    artifacts.publish(work, uri)
    assert tree_of(artifacts.fetch(uri)) == tree_of(work)  # still there: nothing moved
    artifacts.delete(uri)
    assert not work.exists()


def test_artifacts_under_an_s3_root_name_s3_uris(tmp_path: Path) -> None:
    artifacts = Artifacts(Settings(data_dir=tmp_path, artifact_uri="s3://bucket-1/foretell/"))
    assert artifacts.uri("predictors", "p1") == "s3://bucket-1/foretell/predictors/p1"
    assert artifacts.local_dir("predictors", "p1") == tmp_path / "artifacts" / "predictors" / "p1"
    with pytest.raises(ValueError, match="artifact_uri must be an s3://"):
        Settings(data_dir=tmp_path, artifact_uri="gs://bucket/x")


def test_upload_file_replaces_a_local_destination_whole(tmp_path: Path) -> None:
    artifacts = Artifacts(Settings(data_dir=tmp_path))
    source = tmp_path / "out.csv"
    source.write_text("a,b\n1,2\n")
    target = tmp_path / "exports" / "x.csv"
    artifacts.upload_file(source, uri_of(target))
    assert target.read_text() == "a,b\n1,2\n" and [p.name for p in target.parent.iterdir()] == ["x.csv"]
    assert artifacts.download_file(uri_of(target), tmp_path / "unused") == target


def test_cache_eviction_drops_the_least_recently_fetched_first(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    entries = []
    for i in range(4):
        entry = root / f"e{i}"
        entry.mkdir(parents=True)
        (entry / "blob").write_bytes(b"x" * 1000)
        os.utime(entry, (1000 + i, 1000 + i))
        entries.append(entry)
    (root / ".e9.partial").mkdir()  # a download in progress is never touched
    evict_cache(root, max_bytes=2500, keep=entries[0])  # e0 was just fetched: the newest now
    assert sorted(p.name for p in root.iterdir()) == [".e9.partial", "e0", "e3"]
    evict_cache(root, max_bytes=0, keep=entries[0])
    assert sorted(p.name for p in root.iterdir()) == [".e9.partial", "e0"]
