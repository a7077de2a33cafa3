"""ForecastQueryService over a real server on port 0 and a real SQLite file.

The training service does not store forecasts yet (CreateForecast lands in parallel), so the
forecasts are answered by a small fake TrainingService on a second real server on port 0, which
the Foretell server reaches through `training_target`; the tables are written with ForecastTable.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from foretell.core.artifacts import uri_of
from foretell.core.errors import FailedPrecondition, NotFound
from foretell.core.settings import Settings
from foretell.forecast_query import forecasts as forecasts_module
from foretell.forecast_query.forecasts import Forecasts, Unavailable
from foretell.forecast_query.query import ServedForecast, parse_request
from foretell.forecasting.table import ForecastTable
from foretell.v1 import forecast_query_service_pb2 as api
from foretell.v1 import forecast_query_service_pb2_grpc, training_pb2, training_service_pb2_grpc

from errors import expect_error
from support import Stubs, start_stubs

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DAY = 86400
START = 1_704_067_200  # 2024-01-01T00:00:00Z
H = 6
LEVELS = [0.1, 0.5, 0.9]
FORECAST = "forecasts/sales"
RECHECK = 1.0  # seconds the server trusts a cached forecast (shortened from 5 for the staleness test)
OLD_START = (1 << 28) - 2 * DAY  # 1978: the varint of seconds grows by a byte within this series


class FakeTraining(training_service_pb2_grpc.TrainingServiceServicer):
    """Answers GetForecast from a dict, as the training service will once it stores forecasts."""

    def __init__(self) -> None:
        self.forecasts: dict[str, training_pb2.Forecast] = {}
        self.calls = 0

    def GetForecast(self, request: Any, context: grpc.ServicerContext) -> training_pb2.Forecast:  # noqa: N802
        self.calls += 1
        found = self.forecasts.get(request.name)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"forecast {request.name!r} not found")
        return found

    def add(self, name: str, uri: str, state: int = training_pb2.TRAINING_STATE_SUCCEEDED) -> None:
        self.forecasts[name] = training_pb2.Forecast(name=name, state=state, artifact_uri=uri)


def sales_table() -> ForecastTable:
    """Item "a" in stores 1 and 2, "b" in store 1, 250 items "s{k}" in store 9, "old" (1978) in store 8."""
    keys = [("a", "1"), ("a", "2"), ("b", "1"), *((f"s{k}", "9") for k in range(250)), ("old", "8")]
    n = len(keys)
    stamps = START + DAY * np.arange(H)[None, :].repeat(n, 0)
    stamps[-1] = OLD_START + DAY * np.arange(H)
    rng = np.random.default_rng(0)
    mean = rng.normal(100, 10, (n, H))
    spread = np.array([-10.0, 0.0, 10.0])[None, :, None]
    return ForecastTable(
        item_ids=[k for k, _ in keys],
        dimensions=[{"store": s, "region": "north" if s != "2" else "south"} for _, s in keys],
        timestamps=stamps,
        mean=mean,
        levels=np.array(LEVELS),
        values=mean[:, None, :] + spread,
    )


@dataclass
class Env:
    stubs: Stubs
    query: Any  # ForecastQueryService.QueryForecast
    fake: FakeTraining
    table: ForecastTable
    root: Path
    training_target: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("forecast-query")
    table = sales_table()
    table.save(root / "sales")
    fake = FakeTraining()
    fake.add(FORECAST, uri_of(root / "sales"))
    training = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(fake, training)
    port = training.add_insecure_port("127.0.0.1:0")
    training.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forecasts_module, "RECHECK_SECONDS", RECHECK)
        stubs = start_stubs(Settings(port=0, data_dir=root / "data", training_target=f"127.0.0.1:{port}"))
    query = forecast_query_service_pb2_grpc.ForecastQueryServiceStub(stubs.channel).QueryForecast
    yield Env(stubs, query, fake, table, root, f"127.0.0.1:{port}")
    stubs.channel.close()
    stubs.app.stop(None)
    training.stop(None)


def ask(env: Env, **fields: Any) -> api.QueryForecastResponse:
    fields.setdefault("forecast", FORECAST)
    response: api.QueryForecastResponse = env.query(api.QueryForecastRequest(**fields), timeout=10)
    return response


def at(day: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=START + day * DAY, nanos=nanos)


def stamps(points: Any) -> list[int]:
    return [p.timestamp.seconds for p in points]


def values(points: Any) -> list[float]:
    return [p.value for p in points]


# ---- answers ------------------------------------------------------------------------------


def test_by_item_id_returns_every_quantile_and_the_mean(env: Env) -> None:
    response = ask(env, item_id="b")
    assert len(response.series) == 1 and not response.next_page_token
    series, row = response.series[0], 2
    assert series.item_id == "b" and dict(series.dimensions) == {"store": "1", "region": "north"}
    assert [q.quantile for q in series.quantiles] == LEVELS
    for line, q in enumerate(series.quantiles):
        assert stamps(q.points) == env.table.timestamps[row].tolist()
        assert values(q.points) == env.table.values[row, line].tolist()
    assert stamps(series.mean) == env.table.timestamps[row].tolist()
    assert values(series.mean) == env.table.mean[row].tolist()


def test_an_item_in_several_series_and_dimension_filters(env: Env) -> None:
    both = ask(env, item_id="a")
    assert [dict(s.dimensions)["store"] for s in both.series] == ["1", "2"]
    assert values(both.series[1].mean) == env.table.mean[1].tolist()
    one = ask(env, item_id="a", dimensions={"region": "south"})
    assert [dict(s.dimensions)["store"] for s in one.series] == ["2"]
    assert ask(env, item_id="b", dimensions={"store": "2"}).series == []
    by_store = ask(env, dimensions={"store": "1"})
    assert [s.item_id for s in by_store.series] == ["a", "b"]
    assert ask(env, dimensions={"store": "1", "region": "south"}).series == []
    assert ask(env, dimensions={"store": "404"}).series == []


def test_the_window_is_inclusive(env: Env) -> None:
    def window(**fields: Any) -> list[int]:
        series = ask(env, item_id="b", **fields).series[0]
        assert all(stamps(q.points) == stamps(series.mean) for q in series.quantiles)
        return [(s - START) // DAY for s in stamps(series.mean)]

    assert window(start_time=at(1), end_time=at(3)) == [1, 2, 3]
    assert window(start_time=at(4)) == [4, 5]
    assert window(end_time=at(0)) == [0]
    assert window(start_time=at(2), end_time=at(2)) == [2]
    assert window(start_time=at(1, nanos=1), end_time=at(3, nanos=999)) == [2, 3]
    outside = ask(env, item_id="b", start_time=at(10)).series[0]
    assert outside.item_id == "b" and list(outside.mean) == [] and [len(q.points) for q in outside.quantiles] == [0] * 3
    assert values(ask(env, item_id="b", start_time=at(5)).series[0].mean) == [env.table.mean[2, 5]]


def test_a_subset_of_quantiles_in_the_order_asked(env: Env) -> None:
    series = ask(env, item_id="b", quantiles=[0.9, 0.1, 0.9]).series[0]
    assert [q.quantile for q in series.quantiles] == [0.9, 0.1]
    assert values(series.quantiles[0].points) == env.table.values[2, 2].tolist()
    assert values(series.quantiles[1].points) == env.table.values[2, 0].tolist()
    assert len(series.mean) == H
    rounded = ask(env, item_id="b", quantiles=[0.1 + 1e-12]).series[0]
    assert [q.quantile for q in rounded.quantiles] == [0.1]


def test_pages_walk_every_match_once_in_table_order(env: Env) -> None:
    first = ask(env, dimensions={"store": "9"})
    assert len(first.series) == 100 and first.next_page_token  # page_size 0 means 100
    seen, token, pages = [s.item_id for s in first.series], first.next_page_token, 1
    while token:
        page = ask(env, dimensions={"store": "9"}, page_size=70, page_token=token)
        seen += [s.item_id for s in page.series]
        token, pages = page.next_page_token, pages + 1
    assert seen == [f"s{k}" for k in range(250)] and pages == 4  # 100 + 70 + 70 + 10
    everything = ask(env, dimensions={"store": "9"}, page_size=1000)
    assert len(everything.series) == 250 and not everything.next_page_token
    exact = ask(env, dimensions={"store": "9"}, page_size=250)
    assert len(exact.series) == 250 and not exact.next_page_token
    # A token carries the filters: reused with others it is rejected.
    expect_error(
        lambda: ask(env, dimensions={"store": "9"}, quantiles=[0.5], page_token=first.next_page_token),
        INVALID,
        "page_token",
    )
    expect_error(lambda: ask(env, dimensions={"store": "9"}, page_token="bm9wZQ"), INVALID, "page_token")


def test_a_series_crossing_a_varint_length_is_encoded_right(env: Env) -> None:
    series = ask(env, item_id="old").series[0]
    assert (
        stamps(series.mean) == env.table.timestamps[-1].tolist() and values(series.mean) == env.table.mean[-1].tolist()
    )
    assert dict(series.dimensions) == {"store": "8", "region": "north"}


def test_the_encoder_matches_messages_built_field_by_field() -> None:
    table = sales_table()
    served = ServedForecast(FORECAST, table)
    for row in (0, 1, 2, 50, len(table.item_ids) - 1):
        for lo, hi, lines in ((0, H, [0, 1, 2]), (2, 4, [2, 0]), (3, 3, [1]), (0, 0, [])):
            encoded = api.SeriesForecast.FromString(served._series(row, lo, hi, lines))
            assert encoded == served.series_message(row, lo, hi, lines)
    # Odd values survive as doubles (zero, negative, NaN, huge) and ids as UTF-8.
    odd = ForecastTable(
        ["é🙂"],
        [{"ü": "ß"}],
        np.array([[0, 5]]),
        np.array([[0.0, -1e300]]),
        np.array([0.5]),
        np.array([[[np.nan, 1e-9]]]),
    )
    request = api.QueryForecastRequest(forecast="forecasts/odd", item_id="é🙂")
    answer = api.QueryForecastResponse.FromString(ServedForecast("forecasts/odd", odd).answer(parse_request(request)))
    series = answer.series[0]
    assert series.item_id == "é🙂" and dict(series.dimensions) == {"ü": "ß"}
    assert stamps(series.mean) == [0, 5] and values(series.mean) == [0.0, -1e300]
    assert np.isnan(series.quantiles[0].points[0].value) and series.quantiles[0].points[1].value == 1e-9


def test_windows_agree_whether_series_share_their_steps() -> None:
    shared = ForecastTable(
        ["x", "y"], [{}, {}], START + DAY * np.arange(H)[None, :].repeat(2, 0), np.ones((2, H)), np.array([0.5]),
        np.zeros((2, 1, H)),
    )  # fmt: skip
    apart = ForecastTable(
        ["x", "y", "z"], [{}, {}, {}], np.vstack([shared.timestamps, shared.timestamps[:1] + 7]), np.ones((3, H)),
        np.array([0.5]), np.zeros((3, 1, H)),
    )  # fmt: skip
    one, other = ServedForecast("forecasts/one", shared), ServedForecast("forecasts/one", apart)
    assert one._shared_steps is not None and other._shared_steps is None
    for start, end in ((at(1), at(3)), (at(-5), at(0)), (at(4), at(40)), (at(9), at(10))):
        request = api.QueryForecastRequest(forecast="forecasts/one", item_id="y", start_time=start, end_time=end)
        answer = one.answer(parse_request(request))
        assert answer == other.answer(parse_request(request))
        got = stamps(api.QueryForecastResponse.FromString(answer).series[0].mean)
        assert got == [t for t in shared.timestamps[1].tolist() if start.seconds <= t <= end.seconds]


# ---- errors -------------------------------------------------------------------------------


def test_bad_requests_name_the_field(env: Env) -> None:
    expect_error(lambda: ask(env, forecast="", item_id="b"), INVALID, "forecast")
    expect_error(lambda: ask(env, forecast="predictors/x", item_id="b"), INVALID, "forecast")
    expect_error(lambda: ask(env), INVALID, "item_id")
    expect_error(lambda: ask(env, item_id="b", start_time=at(3), end_time=at(2)), INVALID, "end_time")
    expect_error(lambda: ask(env, item_id="b", start_time=at(3, 2), end_time=at(3, 1)), INVALID, "end_time")
    expect_error(lambda: ask(env, item_id="b", page_size=1001), INVALID, "page_size")
    expect_error(lambda: ask(env, item_id="b", page_size=-1), INVALID, "page_size")
    expect_error(lambda: ask(env, item_id="b", quantiles=[0.5, 1.5]), INVALID, "quantiles[1]")
    status = expect_error(lambda: ask(env, item_id="b", quantiles=[0.5, 0.25]), INVALID, "quantiles[1]")
    assert "0.1, 0.5, 0.9" in status.message
    status = expect_error(lambda: ask(env, dimensions={"store": "1", "color": "red"}), INVALID, "dimensions[color]")
    assert "region, store" in status.message


def test_an_unknown_item_or_forecast_is_not_found(env: Env) -> None:
    status = expect_error(lambda: ask(env, item_id="nope"), NOT_FOUND)
    assert "'nope'" in status.message and FORECAST in status.message
    status = expect_error(lambda: ask(env, forecast="forecasts/missing", item_id="b"), NOT_FOUND)
    assert "forecasts/missing" in status.message


def test_only_succeeded_forecasts_with_a_table_are_served(env: Env) -> None:
    env.fake.add("forecasts/running", uri_of(env.root / "sales"), training_pb2.TRAINING_STATE_RUNNING)
    status = expect_error(lambda: ask(env, forecast="forecasts/running", item_id="b"), FAILED_PRECONDITION)
    assert "RUNNING" in status.message
    env.fake.add("forecasts/empty", uri_of(env.root / "nothing-here"))
    expect_error(lambda: ask(env, forecast="forecasts/empty", item_id="b"), FAILED_PRECONDITION)
    env.fake.add("forecasts/remote", "s3://bucket/table")
    expect_error(lambda: ask(env, forecast="forecasts/remote", item_id="b"), FAILED_PRECONDITION)


def test_a_deleted_forecast_is_served_until_the_next_recheck_only(env: Env) -> None:
    other = ForecastTable(["z"], [{}], np.array([[START]]), np.array([[1.0]]), np.array([0.5]), np.array([[[2.0]]]))
    other.save(env.root / "short-lived")
    env.fake.add("forecasts/short-lived", uri_of(env.root / "short-lived"))
    assert ask(env, forecast="forecasts/short-lived", item_id="z").series[0].mean[0].value == 1.0
    calls = env.fake.calls
    del env.fake.forecasts["forecasts/short-lived"]
    # Within RECHECK the cached table answers without asking training (staleness accepted).
    assert ask(env, forecast="forecasts/short-lived", item_id="z").series[0].mean[0].value == 1.0
    assert env.fake.calls == calls
    time.sleep(RECHECK + 0.05)
    expect_error(lambda: ask(env, forecast="forecasts/short-lived", item_id="z"), NOT_FOUND)
    # Dimension filters on a forecast without dimensions name the unknown dimension.
    env.fake.add("forecasts/short-lived", uri_of(env.root / "short-lived"))
    expect_error(
        lambda: ask(env, forecast="forecasts/short-lived", dimensions={"store": "1"}), INVALID, "dimensions[store]"
    )


def test_concurrent_queries_agree(env: Env) -> None:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(20):
                item = f"s{(k * 20 + i) % 250}"
                assert ask(env, item_id=item).series[0].item_id == item
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# ---- the cache, with a fake clock ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_rechecks_reloads_evicts_and_rides_out_an_outage(env: Env) -> None:
    channels = {"up": grpc.insecure_channel(env.training_target), "down": grpc.insecure_channel("127.0.0.1:1")}
    training = {"now": "up"}
    loads: list[str] = []

    def load(name: str, uri: str) -> ServedForecast:
        loads.append(name)
        return forecasts_module.load_table(name, uri)

    clock = Clock()
    cache = Forecasts(lambda: channels[training["now"]], load, capacity=2, recheck_seconds=5, clock=clock)
    for k in range(3):
        env.fake.add(f"forecasts/c{k}", uri_of(env.root / "sales"))
    cache.get("forecasts/c0")
    cache.get("forecasts/c1")
    cache.get("forecasts/c0")  # c1 is now the least recently used
    cache.get("forecasts/c2")
    cache.get("forecasts/c0")
    cache.get("forecasts/c1")  # was evicted: loaded again
    assert loads == ["forecasts/c0", "forecasts/c1", "forecasts/c2", "forecasts/c1"]
    calls = env.fake.calls
    clock.now = 4.9
    cache.get("forecasts/c1")
    assert env.fake.calls == calls
    clock.now = 10
    cache.get("forecasts/c1")  # re-checked: same artifact, not reloaded
    assert env.fake.calls == calls + 1 and len(loads) == 4
    sales_table().save(env.root / "moved")
    env.fake.add("forecasts/c1", uri_of(env.root / "moved"))
    clock.now = 20
    assert cache.get("forecasts/c1").table.item_ids[0] == "a"  # re-checked: new artifact, reloaded
    assert len(loads) == 5
    # Training down: a cached table keeps serving, an uncached one is UNAVAILABLE.
    training["now"] = "down"
    clock.now = 30
    cache.get("forecasts/c1")
    with pytest.raises(Unavailable):
        cache.get("forecasts/c2")
    training["now"] = "up"
    env.fake.add("forecasts/c1", uri_of(env.root / "sales"), training_pb2.TRAINING_STATE_FAILED)
    clock.now = 40
    with pytest.raises(FailedPrecondition):
        cache.get("forecasts/c1")
    del env.fake.forecasts["forecasts/c1"]
    with pytest.raises(NotFound):
        cache.get("forecasts/c1")
    for channel in channels.values():
        channel.close()


def test_a_table_a_newer_server_wrote_is_refused_with_failed_precondition(env: Env) -> None:
    env.table.save(env.root / "newer")
    meta = json.loads((env.root / "newer" / "forecast.json").read_text())
    (env.root / "newer" / "forecast.json").write_text(json.dumps({**meta, "format": 99}))
    env.fake.add("forecasts/newer", uri_of(env.root / "newer"))
    status = expect_error(lambda: ask(env, forecast="forecasts/newer", item_id="b"), FAILED_PRECONDITION)
    assert status.message == "forecast table format 99 is newer than this server understands (1); upgrade the server"
