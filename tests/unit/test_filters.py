"""Filter expressions: parsing (with error positions), parameters, vectorized evaluation."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pytest

from foretell.core.errors import InvalidArgument
from foretell.recommendation.engine import ItemCatalog
from foretell.recommendation.filters import (
    MAX_EXPRESSION,
    MAX_NESTING,
    FilterSyntaxError,
    parse_filter,
    parse_values,
)

IDS = np.array(["i0", "i1", "i2", "i3", "i4", "i5"], dtype=object)
GENRES = np.array(["Comedy", "Drama|Comedy", "Horror", "", "Drama", "Comedy|Horror"], dtype=object)
PRICE = np.array(["5", "12.5", "20", "", "abc", "10"], dtype=object)


def catalog() -> ItemCatalog:
    index = {v: i for i, v in enumerate(IDS.tolist())}
    created = np.array([100.0, 200.0, np.nan, 400.0, 500.0, 600.0])
    return ItemCatalog(IDS, index, {"GENRES": GENRES, "PRICE": PRICE}, created)


class User:
    """Interactions of a user: (item index, event type)."""

    def __init__(self, events: list[tuple[int, str]]) -> None:
        self.events = events

    def items_with_event_types(self, event_types: Collection[str], negate: bool) -> np.ndarray:
        return np.array([i for i, t in self.events if (t in event_types) != negate], dtype=np.int64)


def allowed(expression: str, values: dict[str, str] | None = None, user: User | None = None) -> list[str]:
    bound = parse_filter(expression).bind(values or {})
    table = catalog()
    bound.check_fields(table)
    mask = np.ones(len(IDS), dtype=bool)
    for part in (bound.item_mask(table), bound.user_mask(table, user or User([]))):
        if part is not None:
            mask &= part
    return IDS[mask].tolist()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("Comedy")', ["i2", "i3", "i4"]),
        ('INCLUDE ItemID WHERE Items.GENRES IN ("Comedy", "Horror")', ["i0", "i1", "i2", "i5"]),
        ('INCLUDE ItemID WHERE Items.GENRES NOT IN ("Comedy")', ["i2", "i3", "i4"]),
        ("INCLUDE ItemID WHERE Items.PRICE > 10", ["i1", "i2"]),
        ("INCLUDE ItemID WHERE Items.PRICE >= 10", ["i1", "i2", "i5"]),
        ("INCLUDE ItemID WHERE Items.PRICE < 10", ["i0"]),
        ("INCLUDE ItemID WHERE Items.PRICE <= 10", ["i0", "i5"]),
        ("INCLUDE ItemID WHERE Items.PRICE = 20", ["i2"]),
        ('INCLUDE ItemID WHERE Items.GENRES = "Drama"', ["i1", "i4"]),
        ('include itemid where items.genres in ("Drama") and items.price > 1', ["i1"]),
        ('INCLUDE ItemID WHERE Items.GENRES IN ("Horror") OR Items.PRICE < 6', ["i0", "i2", "i5"]),
        # AND binds tighter than OR; parentheses regroup.
        (
            'INCLUDE ItemID WHERE Items.GENRES IN ("Drama") OR Items.GENRES IN ("Horror") AND Items.PRICE > 15',
            ["i1", "i2", "i4"],
        ),
        ('INCLUDE ItemID WHERE (Items.GENRES IN ("Drama") OR Items.GENRES IN ("Horror")) AND Items.PRICE > 15', ["i2"]),
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("Horror") | INCLUDE ItemID WHERE Items.PRICE > 6', ["i1"]),
        ('INCLUDE ItemID WHERE Items.ITEM_ID IN ("i3", "i9")', ["i3"]),
        ("INCLUDE ItemID WHERE Items.CREATION_TIMESTAMP > 350", ["i3", "i4", "i5"]),
    ],
)
def test_item_conditions_select_the_right_items(expression: str, expected: list[str]) -> None:
    assert allowed(expression) == expected


def test_parameters_take_values_per_request() -> None:
    expression = "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES) | INCLUDE ItemID WHERE Items.PRICE < $MAX"
    assert parse_filter(expression).parameters == {"GENRES", "MAX"}
    assert allowed(expression, {"GENRES": '"Horror"', "MAX": "15"}) == ["i0", "i1"]
    assert allowed(expression, {"GENRES": '"Comedy","Drama"', "MAX": "100"}) == ["i2"]


def test_interaction_conditions_use_the_users_events() -> None:
    user = User([(0, "purchase"), (2, "click"), (4, "purchase")])
    assert allowed('EXCLUDE ItemID WHERE Interactions.EVENT_TYPE IN ("purchase")', user=user) == [
        "i1",
        "i2",
        "i3",
        "i5",
    ]
    assert allowed('INCLUDE ItemID WHERE Interactions.EVENT_TYPE IN ("click")', user=user) == ["i2"]
    assert allowed('INCLUDE ItemID WHERE Interactions.EVENT_TYPE NOT IN ("click")', user=user) == ["i0", "i4"]
    combined = 'EXCLUDE ItemID WHERE Interactions.EVENT_TYPE IN ($T) | INCLUDE ItemID WHERE Items.GENRES IN ("Comedy")'
    assert allowed(combined, {"T": '"purchase"'}, user) == ["i1", "i5"]


@pytest.mark.parametrize(
    ("expression", "position", "words"),
    [
        ("", 0, "empty"),
        ('KEEP ItemID WHERE Items.GENRES IN ("a")', 0, "EXCLUDE or INCLUDE"),
        ('EXCLUDE Items WHERE Items.GENRES IN ("a")', 8, "ItemID"),
        ('EXCLUDE ItemID Items.GENRES IN ("a")', 15, "WHERE"),
        ("EXCLUDE ItemID WHERE Items.GENRES IN", 36, "'('"),
        ('EXCLUDE ItemID WHERE Items.GENRES LIKE ("a")', 34, "IN, NOT IN or a comparison"),
        ('EXCLUDE ItemID WHERE Users.AGE IN ("a")', 21, "dataset"),
        ('EXCLUDE ItemID WHERE Interactions.ITEM_ID IN ("a")', 34, "EVENT_TYPE"),
        ('EXCLUDE ItemID WHERE Items.PRICE > "ten"', 35, "compares numbers"),
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("a") AND Interactions.EVENT_TYPE IN ("b")', 21, "same dataset"),
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("a"); DROP TABLE items', 42, "unexpected character"),
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("a") |', 44, "EXCLUDE or INCLUDE"),
        ('EXCLUDE ItemID WHERE Items.GENRES IN ("a", )', 43, "value"),
        ('EXCLUDE ItemID WHERE (Items.GENRES IN ("a")', 43, "')'"),
    ],
)
def test_bad_expressions_name_the_position(expression: str, position: int, words: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(expression)
    assert info.value.position == position, str(info.value)
    assert words in str(info.value)
    assert str(info.value).startswith(f"at position {position}:")


def test_quotes_cannot_break_out_of_a_literal() -> None:
    hostile = 'EXCLUDE ItemID WHERE Items.GENRES IN ("Comedy\\") OR 1=1 --")'
    expression = parse_filter(hostile)
    condition = expression.clauses[0].expr.any_of[0][0]
    assert condition.values[0].literal == 'Comedy") OR 1=1 --'  # type: ignore[union-attr]
    assert allowed(hostile) == IDS.tolist()  # no item has that genre: nothing is excluded


def test_missing_or_bad_parameter_values_are_invalid_argument_on_filter_values() -> None:
    expression = parse_filter(
        "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES) | INCLUDE ItemID WHERE Items.PRICE < $MAX"
    )
    cases = [
        {"GENRES": '"a"'},  # MAX missing
        {"GENRES": '"a', "MAX": "1"},  # unterminated string
        {"GENRES": '"a" "b"', "MAX": "1"},  # no comma
        {"GENRES": '"a"', "MAX": "1", "OTHER": "2"},  # not a parameter of the filter
    ]
    for values in cases:
        with pytest.raises(InvalidArgument) as info:
            expression.bind(values)
        assert info.value.violations[0].field == "filter_values", values
    with pytest.raises(InvalidArgument) as info:
        bound = expression.bind({"GENRES": '"a"', "MAX": '"cheap"'})
        bound.item_mask(catalog())
    assert info.value.violations[0].field == "filter_values"


def test_unknown_item_fields_are_rejected_at_request_time() -> None:
    bound = parse_filter('EXCLUDE ItemID WHERE Items.COLOR IN ("red")').bind({})
    with pytest.raises(InvalidArgument) as info:
        bound.check_fields(catalog())
    assert info.value.violations[0].field == "filter"
    assert "COLOR" in info.value.violations[0].description


def test_parse_values() -> None:
    assert parse_values('"Comedy","Drama"') == ("Comedy", "Drama")
    assert parse_values('"a \\"quoted\\" word", 3') == ('a "quoted" word', 3.0)
    assert parse_values("10") == (10.0,)
    with pytest.raises(FilterSyntaxError):
        parse_values("")


def test_deeply_nested_parentheses_are_a_syntax_error_not_a_recursion_error() -> None:
    condition = 'Items.GENRES IN ("a")'
    deep = "EXCLUDE ItemID WHERE " + "(" * 1100 + condition + ")" * 1100
    assert len(deep) < MAX_EXPRESSION
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(deep)
    assert "nest more than" in str(info.value)
    parse_filter("EXCLUDE ItemID WHERE " + "(" * MAX_NESTING + condition + ")" * MAX_NESTING)
