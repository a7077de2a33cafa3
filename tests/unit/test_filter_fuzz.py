"""Property tests: the filter language only ever fails with its own positioned error, round-trips through a
printer, treats quoted values as data; ids and names accept exactly their documented grammar."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proto_strategies import INJECTIONS

from foretell.core import names
from foretell.core.errors import InvalidArgument
from foretell.recommendation.engine import ItemCatalog
from foretell.recommendation.filters import (
    MAX_EXPRESSION,
    BoolExpr,
    Clause,
    Condition,
    FilterSyntaxError,
    Value,
    parse_filter,
    parse_values,
)

PROPERTIES = settings(max_examples=80, deadline=None, derandomize=True, database=None)

WORDS = ["EXCLUDE", "INCLUDE", "ItemID", "WHERE", "AND", "OR", "NOT", "IN", "Items", "Interactions", "Users"]
SOUP = [*WORDS, ".", ",", "(", ")", "|", "=", "!=", "<>", "<", ">=", "$P", '"a"', '"', "\\", "1e9", "-.5", "GENRES"]
soup = st.lists(st.sampled_from(SOUP) | st.text(max_size=3), max_size=25).map(" ".join)
texts = st.one_of(st.text(max_size=80), soup, st.sampled_from(INJECTIONS))


def _fails_cleanly(call: Any, text: str) -> None:
    try:
        call(text)
    except FilterSyntaxError as exc:
        assert 0 <= exc.position <= max(len(text), MAX_EXPRESSION), (text, exc.position)
        assert f"position {exc.position}" in str(exc)


@PROPERTIES
@given(texts)
def test_any_text_parses_or_fails_with_a_position(text: str) -> None:
    _fails_cleanly(parse_filter, text)
    _fails_cleanly(parse_values, text)


# ---- a printer, and random well-formed expressions --------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _show_value(value: Value) -> str:
    if value.param:
        return f"${value.param}"
    return _quote(value.literal) if isinstance(value.literal, str) else repr(value.literal)


def _show(expr: BoolExpr) -> str:
    def atom(a: Condition | BoolExpr) -> str:
        if isinstance(a, BoolExpr):
            return f"({_show(a)})"
        values = ", ".join(_show_value(v) for v in a.values)
        if a.op in ("IN", "NOT IN"):
            return f"{a.dataset}.{a.field} {a.op} ({values})"
        return f"{a.dataset}.{a.field} {a.op} {values}"

    return " OR ".join(" AND ".join(atom(a) for a in group) for group in expr.any_of)


def show(clauses: tuple[Clause, ...]) -> str:
    return " | ".join(f"{'INCLUDE' if c.include else 'EXCLUDE'} ItemID WHERE {_show(c.expr)}" for c in clauses)


def _shape(expr: BoolExpr) -> Any:
    """The expression without source positions."""
    return [
        [_shape(a) if isinstance(a, BoolExpr) else (a.dataset, a.field, a.op, a.values) for a in g] for g in expr.any_of
    ]


literals = st.one_of(
    st.text(max_size=12).map(Value), st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Value(f))
)
params = (st.sampled_from(["P", "GENRES"]) | st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)).map(
    lambda p: Value(param=p)
)
fields = st.sampled_from(["GENRES", "ITEM_ID"]) | st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda f: f not in {"EXCLUDE", "INCLUDE", "ITEMID", "WHERE", "AND", "OR", "NOT", "IN"}
)


@st.composite
def item_condition(draw: st.DrawFn) -> Condition:
    op = draw(st.sampled_from(["IN", "NOT IN", "<", ">", "<=", ">=", "=", "!="]))
    if op in ("IN", "NOT IN"):
        values = tuple(draw(st.lists(literals | params, min_size=1, max_size=3)))
    else:
        values = (draw(st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Value(f)) | params),)
    return Condition("Items", draw(fields), op, values, 0)


def _exprs(atoms: st.SearchStrategy[Any]) -> st.SearchStrategy[BoolExpr]:
    groups = st.lists(st.lists(atoms, min_size=1, max_size=3).map(tuple), min_size=1, max_size=3).map(tuple)
    return st.recursive(groups.map(BoolExpr), lambda inner: _exprs_of(atoms | inner), max_leaves=4)


def _exprs_of(atoms: st.SearchStrategy[Any]) -> st.SearchStrategy[BoolExpr]:
    return st.lists(st.lists(atoms, min_size=1, max_size=2).map(tuple), min_size=1, max_size=2).map(
        lambda g: BoolExpr(tuple(g))
    )


clauses = st.lists(
    st.builds(lambda inc, e: Clause(inc, "Items", e), st.booleans(), _exprs(item_condition())), min_size=1, max_size=3
).map(tuple)


@settings(PROPERTIES, max_examples=40)
@given(clauses)
def test_printed_expressions_parse_back_to_the_same_tree(parsed: tuple[Clause, ...]) -> None:
    text = show(parsed)
    if len(text) > MAX_EXPRESSION:
        return
    again = parse_filter(text).clauses
    assert [(c.include, c.dataset, _shape(c.expr)) for c in again] == [
        (c.include, c.dataset, _shape(c.expr)) for c in parsed
    ]
    assert show(again) == text


@settings(PROPERTIES, max_examples=40)
@given(clauses, st.dictionaries(st.sampled_from(["P", "GENRES", "X"]), texts, max_size=3))
def test_any_expression_evaluates_or_names_the_bad_field(parsed: tuple[Clause, ...], values: dict[str, str]) -> None:
    """Binding random values and evaluating over a catalogue fails only with INVALID_ARGUMENT on filter/filter_values."""
    text = show(parsed)
    if len(text) > MAX_EXPRESSION:
        return
    table = _catalog(["a", "b", "c"], ["x|y", "", "z"])
    try:
        bound = parse_filter(text).bind(values)
        bound.check_fields(table)
        mask = bound.item_mask(table)
        assert mask is None or mask.shape == (3,)
    except InvalidArgument as exc:
        assert {v.field for v in exc.violations} <= {"filter", "filter_values"}


# ---- values are data -------------------------------------------------------------------------------

payloads = st.one_of(
    st.sampled_from(['" OR ITEM_ID != "', '") | INCLUDE ItemID WHERE Items.GENRES NOT IN ("', *INJECTIONS[:-1]]),
    st.text(min_size=1, max_size=20),
    st.text(alphabet="\"\\ |()$,.=!<>'OR", min_size=1, max_size=12),
)


def _catalog(ids: list[str], genres: list[str]) -> ItemCatalog:
    item_ids = np.array(ids, dtype=object)
    return ItemCatalog(
        item_ids, {v: i for i, v in enumerate(ids)}, {"GENRES": np.array(genres, dtype=object)}, created=None
    )


class NoUser:
    def items_with_event_types(self, event_types: Collection[str], negate: bool) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)


def _allowed(expression: str, table: ItemCatalog, values: dict[str, str] | None = None) -> list[int]:
    bound = parse_filter(expression).bind(values or {})
    bound.check_fields(table)
    mask = bound.item_mask(table)
    assert mask is not None
    return np.flatnonzero(mask).tolist()


@PROPERTIES
@given(payload=payloads, others=st.lists(st.text(max_size=8), max_size=5))
def test_a_quoted_item_id_matches_only_that_item(payload: str, others: list[str]) -> None:
    ids = list(dict.fromkeys([*others, payload]))
    table = _catalog(ids, ["x"] * len(ids))
    expected = [ids.index(payload)]
    assert _allowed(f"INCLUDE ItemID WHERE Items.ITEM_ID IN ({_quote(payload)})", table) == expected
    assert _allowed(f"INCLUDE ItemID WHERE Items.ITEM_ID = {_quote(payload)}", table) == expected
    # The same value as a parameter, written like Personalize's filter_values.
    assert _allowed("INCLUDE ItemID WHERE Items.ITEM_ID IN ($V)", table, {"V": _quote(payload)}) == expected
    rest = [i for i in range(len(ids)) if i != expected[0]]
    assert _allowed(f"EXCLUDE ItemID WHERE Items.ITEM_ID IN ({_quote(payload)})", table) == rest


@PROPERTIES
# Tokens are "|"-separated and stripped; NUL is left out: numpy's str conversion drops trailing NULs.
@given(payload=payloads.filter(lambda p: p.strip() and "|" not in p and "\x00" not in p and p == p.strip()))
def test_a_quoted_genre_matches_only_items_with_that_genre(payload: str) -> None:
    genres = [payload, "plain", f"{payload}|other", "other", payload + "x"]
    table = _catalog([f"i{k}" for k in range(len(genres))], genres)
    assert _allowed(f"INCLUDE ItemID WHERE Items.GENRES IN ({_quote(payload)})", table) == [0, 2]
    assert _allowed("INCLUDE ItemID WHERE Items.GENRES IN ($G)", table, {"G": _quote(payload)}) == [0, 2]


@PROPERTIES
@given(text=texts)
def test_bad_filter_values_name_the_field(text: str) -> None:
    expression = parse_filter("EXCLUDE ItemID WHERE Items.GENRES IN ($G) | INCLUDE ItemID WHERE Items.PRICE < $MAX")
    try:
        expression.bind({"G": text, "MAX": text})
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == ["filter_values"]


# ---- identifiers and names ---------------------------------------------------------------------------

ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
hostile_ids = st.one_of(
    st.text(max_size=70),
    st.from_regex(ID, fullmatch=True),
    st.builds(
        lambda good, bad, at: good[:at] + bad + good[at:],
        st.from_regex(ID, fullmatch=True),
        st.sampled_from(["/", "..", "\x00", " ", "\n", "\t", "\r", "\u2028", "\u00a0", "A", "_", "'", '"']),
        st.integers(0, 63),
    ),
)


def _accepts_exactly(check: Any, value: str, grammar: re.Pattern[str], field: str) -> None:
    """`check` returns `value` when the grammar matches all of it, else INVALID_ARGUMENT naming `field`."""
    try:
        assert check(value) == value
    except InvalidArgument as exc:
        assert [v.field for v in exc.violations] == [field]
        assert not grammar.fullmatch(value), f"rejected {value!r}"
    else:
        assert grammar.fullmatch(value), f"accepted {value!r}"


@PROPERTIES
@given(hostile_ids)
def test_check_id_accepts_exactly_its_grammar(value: str) -> None:
    _accepts_exactly(lambda v: names.check_id(v, "thing_id"), value, ID, "thing_id")


@PROPERTIES
@given(st.sampled_from(["/", "..", "\x00", " ", "\n", "\t"]), st.from_regex(ID, fullmatch=True), st.booleans())
def test_ids_and_names_with_separators_or_whitespace_are_rejected(bad: str, good: str, end: bool) -> None:
    value = good + bad if end else bad + good
    with pytest.raises(InvalidArgument) as info:
        names.check_id(value, "dataset_group_id")
    assert [v.field for v in info.value.violations] == ["dataset_group_id"]
    with pytest.raises(InvalidArgument) as info:
        names.check_name(f"datasetGroups/{value}", "parent", "datasetGroups")
    assert [v.field for v in info.value.violations] == ["parent"]
    with pytest.raises(InvalidArgument) as info:
        names.check_name(f"datasetGroups/{value}/datasets/x", "name", "datasetGroups", "datasets")
    assert [v.field for v in info.value.violations] == ["name"]


@PROPERTIES
@given(st.one_of(st.text(max_size=40), st.builds("/".join, st.lists(hostile_ids, min_size=1, max_size=5))))
def test_check_name_accepts_exactly_collection_slash_id_pairs(name: str) -> None:
    grammar = re.compile(rf"solutions/{ID.pattern}/versions/{ID.pattern}")
    _accepts_exactly(lambda v: names.check_name(v, "name", "solutions", "versions"), name, grammar, "name")


@PROPERTIES
@given(st.text(max_size=140))
def test_request_ids_accept_exactly_their_grammar(value: str) -> None:
    # Empty means "no request id" and is accepted.
    _accepts_exactly(names.check_request_id, value, re.compile(r"|[A-Za-z0-9._:-]{1,128}"), "request_id")
