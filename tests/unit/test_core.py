"""Core helpers: pagination tokens, resource names, rich statuses, wire-level UTF-8 checks."""

from __future__ import annotations

import base64

import pytest
from google.rpc import code_pb2, error_details_pb2

from foretell.core import names, pagination
from foretell.core.errors import FieldViolation, InvalidArgument, NotFound, fit_trailers, invalid
from foretell.core.settings import Settings, load_settings
from foretell.core.wire import find_bad_field
from foretell.v1 import dataset_pb2, dataset_service_pb2


def test_page_tokens_are_opaque_signed_and_bound_to_their_request() -> None:
    tokens = pagination.PageTokens(b"s" * 32)
    token = tokens.encode("datasetGroups/a", "scope-1")
    assert tokens.decode(token, "scope-1") == "datasetGroups/a"
    assert tokens.decode("", "scope-1") is None
    assert "datasetGroups" not in base64.urlsafe_b64decode(token + "==").decode("latin-1")
    assert tokens.encode("datasetGroups/a", "scope-1") != token  # a fresh nonce each time
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    raw[14] ^= 1  # one bit of the encrypted position
    edited = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    other_server = pagination.PageTokens(b"t" * 32).encode("datasetGroups/a", "scope-1")
    for bad, scope in ((token, "scope-2"), ("%%%", "scope-1"), ("eyJ4IjogMX0", "scope-1"), (edited, "scope-1")):
        with pytest.raises(InvalidArgument) as info:
            tokens.decode(bad, scope)
        assert info.value.violations[0].field == "page_token"
    with pytest.raises(InvalidArgument):
        tokens.decode(other_server, "scope-1")
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(5000) == pagination.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        pagination.page_size(-1)


def test_names() -> None:
    assert names.parse("datasetGroups/a/datasets/b", "name", "datasetGroups", "datasets") == ["a", "b"]
    for bad in ("datasetGroups/a", "datasetGroups/A/datasets/b", "x/a/datasets/b", ""):
        with pytest.raises(InvalidArgument):
            names.parse(bad, "name", "datasetGroups", "datasets")
    with pytest.raises(InvalidArgument):
        names.check_request_id("has space")


def test_a_trailing_newline_is_not_part_of_an_id() -> None:
    # Regression: the patterns ended in "$", which also matches before a final "\n".
    for call in (
        lambda: names.check_id("shop\n", "dataset_group_id"),
        lambda: names.check_name("datasetGroups/shop\n", "name", "datasetGroups"),
        lambda: names.check_request_id("r-1\n"),
    ):
        with pytest.raises(InvalidArgument):
            call()


def test_a_status_quoting_huge_input_is_cut_to_fit_grpc_trailers() -> None:
    huge = InvalidArgument([FieldViolation(f"events[{i}].{'k' * 900}", "é" * 900) for i in range(100)])
    status = fit_trailers(huge.to_status())
    assert status.code == code_pb2.INVALID_ARGUMENT and len(status.message) <= 250
    assert status.ByteSize() <= 4000  # base64 in the trailers: well under gRPC's default 8 KiB
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad) and bad.field_violations[0].field.startswith("events[0].kkk")
    small = invalid("name", "is required").to_status()
    assert fit_trailers(small) == small


def test_rich_status_has_error_info_and_bad_request() -> None:
    status = invalid("dataset_group_id", "is required").to_status()
    assert status.code == code_pb2.INVALID_ARGUMENT and "dataset_group_id" in status.message
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and info.domain == "foretell.v1"
    assert status.details[1].Unpack(bad) and bad.field_violations[0].field == "dataset_group_id"
    assert NotFound("schemas/x", "schema").to_status().code == code_pb2.NOT_FOUND


def test_find_bad_field_names_nested_repeated_strings() -> None:
    good = dataset_service_pb2.PutEventsRequest(
        dataset_group="datasetGroups/g",
        session_id="s",
        events=[dataset_pb2.Event(event_type="click"), dataset_pb2.Event(event_type="view", item_id="X")],
    ).SerializeToString()
    assert find_bad_field(dataset_service_pb2.PutEventsRequest.DESCRIPTOR, good) == ""
    broken = good.replace(b"X", b"\xff")
    assert find_bad_field(dataset_service_pb2.PutEventsRequest.DESCRIPTOR, broken) == "events[1].item_id"
    # Regression: broken structure (truncated, bad wire type) was reported as invalid UTF-8 in "request".
    for structure in (good[:-3] + b"\x12\x7f", b"\x0f", b"\xff" * 11):
        assert find_bad_field(dataset_service_pb2.PutEventsRequest.DESCRIPTOR, structure) == ""


def test_settings_defaults_and_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = Settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'foretell.db'}" and s.artifacts == tmp_path / "artifacts"
    monkeypatch.setenv("FORETELL_PORT", "not-a-port")
    with pytest.raises(SystemExit) as info:
        load_settings()
    assert "FORETELL_PORT" in str(info.value)


def test_concurrent_first_calls_with_one_request_id_run_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    from foretell.core.db import make_engine
    from foretell.core.idempotency import IdempotencyStore

    store = IdempotencyStore(make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    calls: list[int] = []

    def request(request_id: str) -> dataset_service_pb2.CreateDatasetGroupRequest:
        return dataset_service_pb2.CreateDatasetGroupRequest(dataset_group_id="g", request_id=request_id)

    def slow_call() -> dataset_pb2.DatasetGroup:
        calls.append(1)
        time.sleep(0.3)  # long enough for every thread to arrive while the first runs
        return dataset_pb2.DatasetGroup(name=f"datasetGroups/g{len(calls)}")

    answers: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(store.run("M", request("req-1"), dataset_pb2.DatasetGroup, slow_call).name)
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert answers == ["datasetGroups/g1"] * 4

    def failing() -> dataset_pb2.DatasetGroup:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.run("M", request("req-2"), dataset_pb2.DatasetGroup, failing)
    # A failed first call releases the id: the retry runs.
    assert store.run("M", request("req-2"), dataset_pb2.DatasetGroup, slow_call).name == "datasetGroups/g2"


def test_request_fingerprints_ignore_the_request_id_only() -> None:
    from foretell.core.idempotency import fingerprint

    first = dataset_service_pb2.CreateDatasetGroupRequest(dataset_group_id="g", request_id="r-1")
    retry = dataset_service_pb2.CreateDatasetGroupRequest(dataset_group_id="g", request_id="r-2")
    other = dataset_service_pb2.CreateDatasetGroupRequest(dataset_group_id="h", request_id="r-1")
    assert fingerprint(first) == fingerprint(retry) != fingerprint(other)
    assert fingerprint(first, b"upload-1") != fingerprint(first, b"upload-2")
    assert first.request_id == "r-1"  # the caller's message is left as it was
