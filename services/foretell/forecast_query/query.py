"""QueryForecast's rules and its answer, over one loaded forecast table.

Request rules beyond the proto comments:
- Series come in table order (the order the forecast stored them); pages resume after the last
  row sent, and a token is bound to the forecast and the filters of the request that got it.
- Every matching series is returned, with empty point lists when none of its steps falls in the
  window. Quantiles come in the order asked for (repeats count once), all levels when none is.
- A window bound with nanos keeps only whole-second steps inside it (steps are whole seconds).

The answer is encoded straight to protobuf wire format with numpy and sent as those bytes (the
service's serializer passes them through): building one DataPoint message per point costs
microseconds each, and a series of 48 steps with 3 quantiles has 192 of them. Each series is one
copy of a pre-filled template (tags and lengths) with its timestamps and values written in.
"""

from __future__ import annotations

import bisect
import functools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from google.protobuf import timestamp_pb2

from foretell.core import names, pagination
from foretell.core.errors import InvalidArgument, NotFound, Violations, invalid
from foretell.forecasting.table import ForecastIndex, ForecastTable
from foretell.v1 import forecast_query_service_pb2 as api

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Wire tags (field number << 3 | wire type) of the messages the encoder writes.
_SERIES = 0x0A  # QueryForecastResponse.series (1, LEN)
_TOKEN = 0x12  # QueryForecastResponse.next_page_token (2, LEN)
_ITEM = 0x0A  # SeriesForecast.item_id (1, LEN)
_DIMENSION = 0x12  # SeriesForecast.dimensions (2, LEN): a map entry, key (1) and value (2)
_QUANTILE = 0x1A  # SeriesForecast.quantiles (3, LEN)
_MEAN = 0x22  # SeriesForecast.mean (4, LEN)
_LEVEL = 0x09  # QuantilePrediction.quantile (1, I64)
_POINT = 0x12  # QuantilePrediction.points (2, LEN)
_STAMP = 0x0A  # DataPoint.timestamp (1, LEN)
_VALUE = 0x11  # DataPoint.value (2, I64)
_SECONDS = 0x08  # Timestamp.seconds (1, VARINT)
_SERIES_TAG = bytes((_SERIES,))
_QUANTILE_TAG = bytes((_QUANTILE,))


class ItemNotFound(NotFound):
    def __init__(self, item_id: str, forecast: str) -> None:
        super().__init__(forecast, "forecast")
        self.message = f"item {item_id!r} is not in forecast {forecast!r}"
        self.args = (self.message,)
        self.metadata["item_id"] = item_id


@dataclass(frozen=True)
class Filters:
    """The table-independent part of a request, checked."""

    forecast: str
    item_id: str | None
    dimensions: Mapping[str, str]
    start: int | None  # inclusive epoch seconds
    end: int | None
    quantiles: tuple[float, ...]  # empty: all levels
    page_size: int
    after: int  # rows up to this one were sent already (-1: first page)
    scope: str  # what a page token is bound to
    tokens: pagination.PageTokens  # issues the next page's token


# Page tokens of callers that have no server's (pure uses of the query rules): valid in this process only.
_LOCAL_TOKENS = pagination.PageTokens.ephemeral()


def parse_request(request: api.QueryForecastRequest, tokens: pagination.PageTokens = _LOCAL_TOKENS) -> Filters:
    """Checks what needs no table; INVALID_ARGUMENT naming every bad field."""
    problems = Violations()
    try:
        _check_forecast(request.forecast)
    except InvalidArgument as exc:
        problems.items.extend(exc.violations)
    item_id, dimensions = request.item_id, dict(request.dimensions) if request.dimensions else {}
    if not item_id and not dimensions:
        problems.add("item_id", "is required unless dimension filters narrow the query")
    start = end = None
    if request.HasField("start_time"):
        start = request.start_time.seconds + (1 if request.start_time.nanos > 0 else 0)  # steps are whole seconds
    if request.HasField("end_time"):
        end = request.end_time.seconds
        if start is not None and (request.start_time.seconds, request.start_time.nanos) > (end, request.end_time.nanos):
            problems.add("end_time", "must not be before start_time")
    quantiles: tuple[float, ...] = ()
    if request.quantiles:
        for i, q in enumerate(request.quantiles):
            if not 0 < q < 1:
                problems.add(f"quantiles[{i}]", f"{q!r} is not a quantile level in (0, 1)")
        quantiles = tuple(dict.fromkeys(request.quantiles))
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        problems.add("page_size", f"must be 0 (meaning {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}")
    if problems.items:
        problems.raise_if_any()
    scope, after = "", -1
    if request.page_token:
        scope = _scope(request.forecast, item_id, dimensions, start, end, quantiles)
        token = tokens.decode(request.page_token, scope)
        if token is None or not token.isdigit():
            raise invalid("page_token", "is not a token this server issued")
        after = int(token)
    return Filters(
        request.forecast,
        item_id or None,
        dimensions,
        start,
        end,
        quantiles,
        request.page_size or DEFAULT_PAGE_SIZE,
        after,
        scope,
        tokens,
    )


@functools.lru_cache(maxsize=1024)
def _check_forecast(name: str) -> None:
    """Remembers names that passed (a bad one raises, and is not cached)."""
    names.check_name(name, "forecast", "forecasts")


def _scope(
    forecast: str, item_id: str, dimensions: Mapping[str, str], start: int | None, end: int | None,
    quantiles: tuple[float, ...],
) -> str:  # fmt: skip
    return json.dumps([forecast, item_id, sorted(dimensions.items()), start, end, list(quantiles)])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes (..., width) of int64 values and each one's length (negatives take 10 bytes, as in proto)."""
    x = values.astype(np.int64).view(np.uint64)
    lengths = np.ones(x.shape, dtype=np.int64)
    for k in range(1, 10):
        lengths += x >= np.uint64(1 << (7 * k))
    width = int(lengths.max(initial=1))
    out = np.empty((*x.shape, width), dtype=np.uint8)
    for i in range(width):
        more = (lengths > i + 1).astype(np.uint8) << 7
        out[..., i] = ((x >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8) | more
    return out, lengths


class ServedForecast:
    """A loaded forecast ready to answer: the table, its index and the parts of answers that never change."""

    def __init__(self, name: str, table: ForecastTable) -> None:
        n, q, h = table.values.shape
        # Each line's values (quantiles, then the mean) in one little-endian float64 array; the
        # served table's values and mean are views of it, so the numbers are held once.
        lines = np.concatenate([table.values, table.mean[:, None, :]], axis=1).astype("<f8", copy=False)
        table = replace(table, values=lines[:, :q], mean=lines[:, q])
        self.name = name
        self.table = table
        self.index = ForecastIndex(table)
        self.levels: list[float] = table.levels.tolist()
        self.dimension_names = sorted(self.index.by_dimension)
        # item_id and dimensions of each series, already encoded.
        self._headers = [
            _field(_ITEM, item.encode())
            + b"".join(
                _field(_DIMENSION, _field(0x0A, k.encode()) + _field(0x12, v.encode())) for k, v in sorted(dims.items())
            )
            for item, dims in zip(table.item_ids, table.dimensions, strict=True)
        ]
        self._level_prefix = [bytes((_LEVEL,)) + struct.pack("<d", level) for level in self.levels]
        # The varint seconds of every step, and each series' varint width; a series whose steps
        # differ in width (it would have to cross 1978 or 3058) is built with messages (width 0).
        stamps, lengths = _varints(table.timestamps)
        self._stamps = stamps
        uniform = (lengths.min(axis=1, initial=1 << 20) == lengths.max(axis=1, initial=0)) | (h == 0)
        self._stamp_width: list[int] = np.where(uniform, lengths[:, 0] if h else 1, 0).tolist()
        self._value_bytes = lines.view(np.uint8).reshape(n, q + 1, h, 8)
        self._templates = {w: _template(q, h, w) for w in set(self._stamp_width) - {0}}
        self._all_lines = list(range(q))
        self._template_rows = [np.array([*range(k), q]) for k in range(q + 1)]  # k quantile lines, then the mean
        # Most tables share one set of steps (every series ends together): windows bisect one list.
        same = n > 0 and bool(np.all(table.timestamps == table.timestamps[:1]))
        self._shared_steps: list[int] | None = table.timestamps[0].tolist() if same else None
        self._horizon = h

    def answer(self, filters: Filters) -> bytes:
        """The page of matching series as an encoded QueryForecastResponse.

        Table-dependent checks raise INVALID_ARGUMENT (dimension names, quantiles) and NOT_FOUND (item id).
        """
        for name in filters.dimensions:
            if name not in self.index.by_dimension:
                known = ", ".join(self.dimension_names) or "none"
                raise invalid(f"dimensions[{name}]", f"is not a dimension of this forecast (its dimensions: {known})")
        lines = self._lines(filters.quantiles)
        if filters.item_id is not None and filters.item_id not in self.index.by_item:
            raise ItemNotFound(filters.item_id, self.name)
        if filters.item_id is not None and not filters.dimensions:
            rows: Sequence[int] = self.index.by_item[filters.item_id]
        else:
            rows = self.index.rows(filters.item_id, filters.dimensions)
        if filters.after >= 0:
            rows = rows[bisect.bisect_right(rows, filters.after) :]
        page = rows[: filters.page_size]
        out: list[bytes] = []
        for row in page:
            lo, hi = self._window(row, filters.start, filters.end)
            series = self._series(row, lo, hi, lines)
            out += (_SERIES_TAG, _varint(len(series)), series)
        if len(rows) > len(page):
            scope = filters.scope or _scope(
                filters.forecast, filters.item_id or "", filters.dimensions, filters.start, filters.end,
                filters.quantiles,
            )  # fmt: skip
            out.append(_field(_TOKEN, filters.tokens.encode(str(page[-1]), scope).encode()))
        return b"".join(out)

    def _lines(self, quantiles: tuple[float, ...]) -> list[int]:
        if not quantiles:
            return self._all_lines
        lines = []
        for i, q in enumerate(quantiles):
            line = self.index.level_index.get(q)
            if line is None:  # levels come from float arithmetic upstream: accept a rounding's difference
                close = np.flatnonzero(np.isclose(self.table.levels, q, rtol=0, atol=1e-9))
                if not len(close):
                    available = ", ".join(f"{x:g}" for x in self.levels) or "none"
                    raise invalid(
                        f"quantiles[{i}]", f"{q:g} is not a quantile of this forecast (available: {available})"
                    )
                line = int(close[0])
            lines.append(line)
        return list(dict.fromkeys(lines))

    def _window(self, row: int, start: int | None, end: int | None) -> tuple[int, int]:
        if start is None and end is None:
            return 0, self._horizon
        steps = self._shared_steps if self._shared_steps is not None else self.table.timestamps[row].tolist()
        lo = 0 if start is None else bisect.bisect_left(steps, start)
        hi = self._horizon if end is None else bisect.bisect_right(steps, end)
        return lo, max(lo, hi)

    def _series(self, row: int, lo: int, hi: int, lines: list[int]) -> bytes:
        """One SeriesForecast, encoded: steps lo..hi-1 of the quantile `lines` and the mean."""
        width = self._stamp_width[row]
        if width == 0:
            return self.series_message(row, lo, hi, lines).SerializeToString()
        template, values = self._templates[width], self._value_bytes[row]
        if len(lines) == len(self.levels) and lines == self._all_lines:  # every quantile: plain slices, no gather
            buf = template[:, lo:hi].copy()
            buf[:, :, 6 + width :] = values[:, lo:hi]
        else:  # np.take with index arrays: a third of the cost of fancy indexing with lists
            q = len(self.levels)
            buf = template[:, lo:hi].take(self._template_rows[len(lines)], axis=0)
            buf[:, :, 6 + width :] = values[:, lo:hi].take(np.array([*lines, q]), axis=0)  # the mean is last
        buf[:, :, 5 : 5 + width] = self._stamps[row, lo:hi, :width]
        parts = [self._headers[row]]
        size = 9 + buf.shape[1] * buf.shape[2]  # the level (tag + double) and the points
        length = _varint(size)
        for i, line in enumerate(lines):
            parts += (_QUANTILE_TAG, length, self._level_prefix[line], buf[i].tobytes())
        parts.append(buf[-1].tobytes())
        return b"".join(parts)

    def series_message(self, row: int, lo: int, hi: int, lines: list[int]) -> api.SeriesForecast:
        """The same series built as messages (the encoder's fallback, and its reference in tests)."""
        stamps = [timestamp_pb2.Timestamp(seconds=s) for s in self.table.timestamps[row, lo:hi].tolist()]

        def points(values: np.ndarray) -> list[api.DataPoint]:
            return [api.DataPoint(timestamp=t, value=v) for t, v in zip(stamps, values.tolist(), strict=True)]

        return api.SeriesForecast(
            item_id=self.table.item_ids[row],
            dimensions=self.table.dimensions[row],
            quantiles=[
                api.QuantilePrediction(quantile=self.levels[line], points=points(self.table.values[row, line, lo:hi]))
                for line in lines
            ],
            mean=points(self.table.mean[row, lo:hi]),
        )


def _template(q: int, h: int, width: int) -> np.ndarray:
    """(q + 1, h, 14 + width) points as fields of their parent, timestamps and values left to fill.

    A point: tag, length, then DataPoint {timestamp (tag, length, {seconds: tag, varint}), value: tag, double}.
    Lines 0..q-1 are quantile points, line q the mean's.
    """
    out = np.zeros((q + 1, h, 14 + width), dtype=np.uint8)
    out[:, :, 0] = _POINT
    out[q, :, 0] = _MEAN
    out[:, :, 1] = 12 + width
    out[:, :, 2] = _STAMP
    out[:, :, 3] = 1 + width
    out[:, :, 4] = _SECONDS
    out[:, :, 5 + width] = _VALUE
    return out
