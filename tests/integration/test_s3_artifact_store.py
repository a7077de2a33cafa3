"""The S3 artifact store against a real S3-compatible server: moto's standalone server on a free
local port (no network), with boto3 pointed at its endpoint_url."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from foretell.core.artifact_store import MARKER, ArtifactNotFound, S3Store, cache_dir_for, fetch_dir, store_for
from foretell.core.errors import FailedPrecondition, InvalidArgument
from foretell.core.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, endpoint: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", s3_endpoint_url=endpoint, s3_region="us-east-1")


class Recording:
    """The store's client, counting downloads and able to crash after some uploads."""

    def __init__(self, client: Any, crash_after: int | None = None) -> None:
        self._client = client
        self._crash_after = crash_after
        self.uploads = 0
        self.downloads = 0

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        if self._crash_after is not None and self.uploads >= self._crash_after:
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing may clean up after it
        self.uploads += 1
        self._client.upload_file(*args, **kwargs)

    def download_file(self, *args: Any, **kwargs: Any) -> None:
        self.downloads += 1
        self._client.download_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def make_tree(root: Path, seed: int = 0) -> Path:
    (root / "model" / "deep").mkdir(parents=True)
    (root / "meta.json").write_text(f'{{"seed": {seed}}}')
    (root / "model" / "weights.bin").write_bytes(bytes((i + seed) % 256 for i in range(70_000)))
    (root / "model" / "deep" / "x.npz").write_bytes(b"\x00\xff\x10" * 3 + bytes([seed]))
    (root / "empty.txt").write_bytes(b"")
    return root


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def keys(raw: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_round_trip_of_a_nested_binary_directory(tmp_path: Path, settings: Settings, bucket: str, raw: Any) -> None:
    source = make_tree(tmp_path / "work")
    uri = f"s3://{bucket}/models/solutions/s1/versions/v1"
    store = store_for(uri, settings)
    assert isinstance(store, S3Store)
    assert not store.exists(uri)
    store.put_dir(source, uri)
    assert store.exists(uri)
    prefix = "models/solutions/s1/versions/v1/"
    assert keys(raw, bucket) == [
        prefix + n for n in sorted([MARKER, "empty.txt", "meta.json", "model/deep/x.npz", "model/weights.bin"])
    ]
    got = fetch_dir(uri, settings)
    assert got == cache_dir_for(uri, settings.artifacts / "cache")
    assert tree_of(got) == tree_of(source)
    assert store.read_bytes(uri, "model/deep/x.npz") == (source / "model" / "deep" / "x.npz").read_bytes()
    with pytest.raises(ArtifactNotFound, match="no file 'nope'"):
        store.read_bytes(uri, "nope")
    assert [p.name for p in got.parent.iterdir()] == [got.name]  # no temp dirs left in the cache


def test_marker_is_written_last_and_a_crash_leaves_no_artifact(
    tmp_path: Path, settings: Settings, bucket: str, raw: Any
) -> None:
    uri = f"s3://{bucket}/forecasts/f1"
    client = store_for(uri, settings)._s3  # type: ignore[attr-defined]
    S3Store(client).put_dir(make_tree(tmp_path / "old", seed=1), uri)  # a complete earlier artifact
    crashing = Recording(client, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        S3Store(crashing).put_dir(make_tree(tmp_path / "new", seed=2), uri)
    assert crashing.uploads == 2
    assert len(keys(raw, bucket)) == 2  # two files made it, the marker did not
    store = S3Store(client)
    assert not store.exists(uri)
    with pytest.raises(ArtifactNotFound, match=f"no complete artifact at '{uri}': no {MARKER} marker"):
        store.get_dir(uri, tmp_path / "cache")
    with pytest.raises(ArtifactNotFound):
        store.read_bytes(uri, "meta.json")
    assert not (tmp_path / "cache").exists()


def test_a_file_missing_behind_the_marker_is_refused(tmp_path: Path, settings: Settings, bucket: str, raw: Any) -> None:
    uri = f"s3://{bucket}/a/b"
    store = store_for(uri, settings)
    store.put_dir(make_tree(tmp_path / "work"), uri)
    raw.delete_object(Bucket=bucket, Key="a/b/model/weights.bin")
    with pytest.raises(ArtifactNotFound, match="'model/weights.bin' is listed in the marker but missing"):
        store.get_dir(uri, tmp_path / "cache" / "x")
    assert list((tmp_path / "cache").iterdir()) == []  # the partial download is gone


def test_cache_hit_by_etag_and_miss_after_a_rewrite(tmp_path: Path, settings: Settings, bucket: str) -> None:
    uri = f"s3://{bucket}/models/v1"
    counting = Recording(store_for(uri, settings)._s3)  # type: ignore[attr-defined]
    store = S3Store(counting)
    store.put_dir(make_tree(tmp_path / "one", seed=1), uri)
    cache = tmp_path / "cache" / "v1"
    assert tree_of(store.get_dir(uri, cache)) == tree_of(tmp_path / "one")
    assert counting.downloads == 4
    assert store.get_dir(uri, cache) == cache
    assert counting.downloads == 4  # hit: only the marker was read
    store.put_dir(make_tree(tmp_path / "two", seed=2), uri)  # same names and sizes, new bytes
    assert tree_of(store.get_dir(uri, cache)) == tree_of(tmp_path / "two")
    assert counting.downloads == 8  # miss: the marker's ETag changed
    assert sorted(p.name for p in cache.parent.iterdir()) == ["v1"]
    # A fetched directory can be published again; its cache marker is not uploaded as data.
    store.put_dir(cache, f"s3://{bucket}/copies/v1")
    assert tree_of(store.get_dir(f"s3://{bucket}/copies/v1", tmp_path / "c2")) == tree_of(tmp_path / "two")


def test_delete_removes_the_prefix_only(tmp_path: Path, settings: Settings, bucket: str, raw: Any) -> None:
    store = store_for(f"s3://{bucket}/m", settings)
    for name in ("v1", "v10"):
        store.put_dir(make_tree(tmp_path / name), f"s3://{bucket}/models/{name}")
    store.delete(f"s3://{bucket}/models/v1/")
    assert not store.exists(f"s3://{bucket}/models/v1")
    assert store.exists(f"s3://{bucket}/models/v10")  # v1 is not a key prefix of v10's directory
    assert all(k.startswith("models/v10/") for k in keys(raw, bucket))
    store.delete(f"s3://{bucket}/models/v1")  # nothing there: fine
    store.delete(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")


def test_missing_bucket_and_bad_uris_are_clear(tmp_path: Path, settings: Settings) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/models/v1"
    store = store_for(uri, settings, field="destination_uri")
    with pytest.raises(FailedPrecondition, match="destination_uri: S3 bucket .* does not exist"):
        store.put_dir(make_tree(tmp_path / "work"), uri)
    assert not store.exists(uri)
    with pytest.raises(ArtifactNotFound):
        store.get_dir(uri, tmp_path / "cache")
    with pytest.raises(InvalidArgument, match="artifact_uri: .* needs a key prefix") as caught:
        store_for("s3://bucket-1/", settings, field="artifact_uri")
    assert caught.value.violations[0].field == "artifact_uri"
    with pytest.raises(InvalidArgument, match="destination_uri: 'UPPER' is not a valid S3 bucket"):
        store.get_dir("s3://UPPER/x", tmp_path / "cache")  # checked on every call, not only in store_for


def test_settings_endpoint_is_used(settings: Settings, endpoint: str) -> None:
    client = store_for("s3://bucket-1/x", settings)._s3  # type: ignore[attr-defined]
    assert client.meta.endpoint_url == endpoint
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_forecast_query_loads_a_table_from_s3(tmp_path: Path, settings: Settings, bucket: str) -> None:
    import numpy as np

    from foretell.forecast_query.forecasts import table_loader
    from foretell.forecasting.table import ForecastTable

    n, h = 2, 3
    table = ForecastTable(
        item_ids=["a", "b"],
        dimensions=[{}, {}],
        timestamps=1_704_067_200 + 86400 * np.arange(h)[None, :].repeat(n, 0),
        mean=np.arange(n * h, dtype=np.float64).reshape(n, h),
        levels=np.array([0.1, 0.5, 0.9]),
        values=np.arange(n * 3 * h, dtype=np.float64).reshape(n, 3, h),
    )
    table.save(tmp_path / "forecast")
    uri = f"s3://{bucket}/forecasts/f1"
    store_for(uri, settings).put_dir(tmp_path / "forecast", uri)
    load = table_loader(settings)
    served = load("forecasts/f1", uri)
    assert served.table.item_ids == ["a", "b"]
    np.testing.assert_array_equal(served.table.values, table.values)
    assert (cache_dir_for(uri, settings.artifacts / "cache") / "forecast.json").exists()
    store_for(uri, settings).delete(uri)
    with pytest.raises(FailedPrecondition, match="has no readable table"):
        load("forecasts/f1", uri)
