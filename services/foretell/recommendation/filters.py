"""Amazon Personalize filter expressions: a parser and a vectorized evaluator (no SQL, no eval).

Grammar (keywords are case-insensitive; dataset and field names are matched case-insensitively):

    filter    := clause ("|" clause)*
    clause    := ("EXCLUDE" | "INCLUDE") "ItemID" "WHERE" or_expr
    or_expr   := and_expr ("OR" and_expr)*
    and_expr  := atom ("AND" atom)*
    atom      := "(" or_expr ")" | condition
    condition := dataset "." FIELD ( ["NOT"] "IN" "(" value ("," value)* ")" | op value )
    op        := "=" | "!=" | "<" | ">" | "<=" | ">="
    value     := "string" | number | $PARAMETER

`Items.<FIELD>` conditions test item metadata: IN / NOT IN match any of the item's "|"-separated
tokens, comparisons read the field as a number (items without a numeric value never match).
`Interactions.EVENT_TYPE IN (...)` selects the items the requesting user interacted with by those
event types (training history plus real-time events). Conditions of one clause must all use the
same dataset. An item survives the filter when it matches every INCLUDE clause and no EXCLUDE
clause. Errors name the 0-based character position in the expression.

Parameters get their values per request from `filter_values`, written like Personalize's:
`{"GENRES": "\\"Comedy\\",\\"Drama\\""}` (quoted strings) or `{"PRICE": "10"}` (numbers).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from foretell.core.errors import invalid

MAX_EXPRESSION = 2500
MAX_VALUES = 500
# Parentheses nest at most this deep: parsing and evaluating recurse once per level.
MAX_NESTING = 32
ITEMS, INTERACTIONS = "Items", "Interactions"
_DATASETS = {"items": ITEMS, "interactions": INTERACTIONS}
_COMPARISONS = ("=", "!=", "<", ">", "<=", ">=")
_KEYWORDS = {"EXCLUDE", "INCLUDE", "ITEMID", "WHERE", "AND", "OR", "NOT", "IN"}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|<>|[=<>])
  | (?P<punct>[().,|])
    """,
    re.VERBOSE,
)


class FilterSyntaxError(ValueError):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"at position {position}: {message}")
        self.position = position


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, param, name, op, punct, end
    text: str
    position: int


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FilterSyntaxError(pos, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            value = match.group()
            out.append(Token("op" if value == "<>" else kind, "!=" if value == "<>" else value, pos))
        pos = match.end()
    out.append(Token("end", "", len(text)))
    return out


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


@dataclass(frozen=True)
class Value:
    """A literal (str or float) or a $PARAMETER (`param` set, `literal` None)."""

    literal: str | float | None = None
    param: str = ""


@dataclass(frozen=True)
class Condition:
    dataset: str
    field: str
    op: str  # IN, NOT IN, =, !=, <, >, <=, >=
    values: tuple[Value, ...]
    position: int


@dataclass(frozen=True)
class BoolExpr:
    """OR of ANDs of atoms; an atom is a Condition or a nested BoolExpr."""

    any_of: tuple[tuple[Condition | BoolExpr, ...], ...]


@dataclass(frozen=True)
class Clause:
    include: bool
    dataset: str
    expr: BoolExpr


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token.kind == "name" and token.text.upper() in words:
            self.i += 1
            return token.text.upper()
        return None

    def expect_keyword(self, word: str, what: str = "") -> None:
        if self.keyword(word) is None:
            raise self.error(f"expected {what or word}")

    def expect_punct(self, char: str) -> None:
        token = self.peek()
        if token.kind != "punct" or token.text != char:
            raise self.error(f"expected {char!r}")
        self.i += 1

    def error(self, message: str) -> FilterSyntaxError:
        token = self.peek()
        found = "the end of the expression" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(token.position, f"{message}, found {found}")

    def parse(self) -> tuple[Clause, ...]:
        clauses = [self.clause()]
        while self.peek().kind == "punct" and self.peek().text == "|":
            self.take()
            clauses.append(self.clause())
        if self.peek().kind != "end":
            raise self.error("expected '|' or the end of the expression")
        return tuple(clauses)

    def clause(self) -> Clause:
        action = self.keyword("EXCLUDE", "INCLUDE")
        if action is None:
            raise self.error("expected EXCLUDE or INCLUDE")
        self.expect_keyword("ITEMID", "ItemID")
        self.expect_keyword("WHERE")
        start = self.i
        expr = self.or_expr()
        datasets = {c.dataset for c in _conditions(expr)}
        if len(datasets) > 1:
            raise FilterSyntaxError(
                self.tokens[start].position, "conditions of one clause must all use the same dataset"
            )
        return Clause(action == "INCLUDE", datasets.pop(), expr)

    def or_expr(self) -> BoolExpr:
        groups = [self.and_expr()]
        while self.keyword("OR"):
            groups.append(self.and_expr())
        return BoolExpr(tuple(groups))

    def and_expr(self) -> tuple[Condition | BoolExpr, ...]:
        atoms = [self.atom()]
        while self.keyword("AND"):
            atoms.append(self.atom())
        return tuple(atoms)

    def atom(self) -> Condition | BoolExpr:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            if self.depth >= MAX_NESTING:
                raise FilterSyntaxError(token.position, f"parentheses nest more than {MAX_NESTING} deep")
            self.take()
            self.depth += 1
            inner = self.or_expr()
            self.depth -= 1
            self.expect_punct(")")
            return inner
        return self.condition()

    def condition(self) -> Condition:
        token = self.peek()
        if token.kind != "name" or token.text.upper() in _KEYWORDS:
            raise self.error("expected a condition such as Items.GENRES IN (...)")
        self.take()
        dataset = _DATASETS.get(token.text.lower())
        if dataset is None:
            supported = "Items and Interactions" if token.text.lower() != "users" else "only Items and Interactions"
            raise FilterSyntaxError(token.position, f"unknown dataset {token.text!r}; {supported} are supported")
        self.expect_punct(".")
        name = self.take()
        if name.kind != "name":
            self.i -= 1
            raise self.error("expected a field name")
        field = name.text.upper()
        if dataset == INTERACTIONS and field != "EVENT_TYPE":
            raise FilterSyntaxError(name.position, "only Interactions.EVENT_TYPE can be filtered on")
        if self.keyword("NOT"):
            self.expect_keyword("IN")
            op = "NOT IN"
        elif self.keyword("IN"):
            op = "IN"
        elif self.peek().kind == "op":
            op = self.take().text
        else:
            raise self.error("expected IN, NOT IN or a comparison (=, !=, <, >, <=, >=)")
        if op in ("IN", "NOT IN"):
            self.expect_punct("(")
            values = [self.value()]
            while self.peek().kind == "punct" and self.peek().text == ",":
                self.take()
                values.append(self.value())
            self.expect_punct(")")
        else:
            if dataset == INTERACTIONS and op not in ("=", "!="):
                raise FilterSyntaxError(token.position, "Interactions.EVENT_TYPE takes IN, NOT IN, = or !=")
            at = self.peek()
            values = [self.value()]
            if op not in ("=", "!=") and isinstance(values[0].literal, str):
                raise FilterSyntaxError(at.position, f"{op} compares numbers; {at.text} is a string")
            op = {"=": "IN", "!=": "NOT IN"}[op] if isinstance(values[0].literal, str) else op
        return Condition(dataset, field, op, tuple(values), token.position)

    def value(self) -> Value:
        token = self.take()
        if token.kind == "string":
            return Value(_unquote(token.text))
        if token.kind == "number":
            return Value(float(token.text))
        if token.kind == "param":
            return Value(param=token.text[1:].upper())
        self.i -= 1
        raise self.error('expected a value: a "string", a number or a $PARAMETER')


def _conditions(expr: BoolExpr) -> list[Condition]:
    out: list[Condition] = []
    for group in expr.any_of:
        for atom in group:
            out.extend([atom] if isinstance(atom, Condition) else _conditions(atom))
    return out


@dataclass(frozen=True)
class FilterExpression:
    """A parsed expression; `bind` gives it the values of its parameters."""

    text: str
    clauses: tuple[Clause, ...]

    @property
    def parameters(self) -> frozenset[str]:
        return frozenset(v.param for c in self.clauses for cond in _conditions(c.expr) for v in cond.values if v.param)

    def item_fields(self) -> frozenset[str]:
        return frozenset(cond.field for c in self.clauses for cond in _conditions(c.expr) if cond.dataset == ITEMS)

    def bind(self, values: Mapping[str, str], field: str = "filter_values") -> BoundFilter:
        """Resolves $PARAMETERS; INVALID_ARGUMENT naming `field` for a missing or bad value."""
        given = {k.upper(): v for k, v in values.items()}
        resolved: dict[str, tuple[str | float, ...]] = {}
        for name in sorted(self.parameters):
            if name not in given:
                raise invalid(field, f"no value for the filter parameter ${name}")
            try:
                resolved[name] = parse_values(given[name])
            except FilterSyntaxError as exc:
                raise invalid(field, f"${name}: {exc}") from None
        unknown = sorted(set(given) - self.parameters)
        if unknown:
            raise invalid(field, f"the filter has no parameter ${unknown[0]}")
        return BoundFilter(self, resolved)


def parse_filter(text: str) -> FilterExpression:
    """FilterSyntaxError (with the 0-based position) when `text` is not a valid expression."""
    if not text.strip():
        raise FilterSyntaxError(0, "the expression is empty")
    if len(text) > MAX_EXPRESSION:
        raise FilterSyntaxError(MAX_EXPRESSION, f"the expression is longer than {MAX_EXPRESSION} characters")
    return FilterExpression(text, _Parser(text).parse())


def parse_values(text: str) -> tuple[str | float, ...]:
    """`"a","b"` -> ("a", "b"); `10, 20` -> (10.0, 20.0). Unquoted words are taken as strings."""
    tokens = _tokens(text)
    out: list[str | float] = []
    i = 0
    while True:
        token = tokens[i]
        if token.kind == "string":
            out.append(_unquote(token.text))
        elif token.kind == "number":
            out.append(float(token.text))
        elif token.kind == "name":
            out.append(token.text)
        else:
            found = "nothing" if token.kind == "end" else repr(token.text)
            raise FilterSyntaxError(token.position, f'expected a "string" or a number, found {found}')
        i += 1
        if tokens[i].kind == "end":
            break
        if tokens[i].text != ",":
            raise FilterSyntaxError(tokens[i].position, "expected ',' between values")
        i += 1
    if len(out) > MAX_VALUES:
        raise FilterSyntaxError(0, f"at most {MAX_VALUES} values")
    return tuple(out)


class ItemTable(Protocol):
    """Item metadata as the evaluator needs it (implemented by the engine's catalogue)."""

    n_items: int

    def field_name(self, name: str) -> str | None:
        """The catalogue's spelling of item field `name`, None when there is no such field."""

    def token_mask(self, field: str, tokens: Collection[str]) -> np.ndarray:
        """(n_items,) bool: items whose "|"-separated `field` holds any of `tokens`."""

    def numeric(self, field: str) -> np.ndarray:
        """(n_items,) float64 value of `field`, NaN where it is not a number."""


class UserItems(Protocol):
    """Items the requesting user interacted with."""

    def items_with_event_types(self, event_types: Collection[str], negate: bool) -> np.ndarray:
        """Item indices the user interacted with by one of `event_types` (by another one if `negate`)."""


def _text(value: str | float) -> str:
    return value if isinstance(value, str) else (str(int(value)) if float(value).is_integer() else str(value))


@dataclass(frozen=True)
class BoundFilter:
    expression: FilterExpression
    values: Mapping[str, tuple[str | float, ...]]

    @property
    def key(self) -> tuple[str, tuple[tuple[str, tuple[str | float, ...]], ...]]:
        """Identifies the filter and its values, for caching masks."""
        return self.expression.text, tuple(sorted(self.values.items()))

    @property
    def uses_interactions(self) -> bool:
        return any(c.dataset == INTERACTIONS for c in self.expression.clauses)

    def check_fields(self, table: ItemTable, field: str = "filter") -> None:
        """INVALID_ARGUMENT naming `field` when an Items field is not in the catalogue."""
        for name in sorted(self.expression.item_fields()):
            if table.field_name(name) is None:
                raise invalid(field, f"Items.{name} is not a field of the campaign's items")

    def item_mask(self, table: ItemTable) -> np.ndarray | None:
        """Allowed items by the Items clauses alone (cacheable per filter and values); None if none."""
        return self._combine(table, None, ITEMS)

    def user_mask(self, table: ItemTable, user: UserItems) -> np.ndarray | None:
        """Allowed items by the Interactions clauses for this user; None if there are none."""
        return self._combine(table, user, INTERACTIONS)

    def _combine(self, table: ItemTable, user: UserItems | None, dataset: str) -> np.ndarray | None:
        allowed: np.ndarray | None = None
        for clause in self.expression.clauses:
            if clause.dataset != dataset:
                continue
            matched = self._expr(clause.expr, table, user)
            keep = matched if clause.include else ~matched
            allowed = keep if allowed is None else allowed & keep
        return allowed

    def _expr(self, expr: BoolExpr, table: ItemTable, user: UserItems | None) -> np.ndarray:
        result: np.ndarray | None = None
        for group in expr.any_of:
            both: np.ndarray | None = None
            for atom in group:
                mask = (
                    self._condition(atom, table, user) if isinstance(atom, Condition) else self._expr(atom, table, user)
                )
                both = mask if both is None else both & mask
            assert both is not None
            result = both if result is None else result | both
        assert result is not None
        return result

    def _resolve(self, values: Sequence[Value]) -> list[str | float]:
        out: list[str | float] = []
        for value in values:
            if value.param:
                out.extend(self.values[value.param])
            elif value.literal is not None:
                out.append(value.literal)
        return out

    def _condition(self, cond: Condition, table: ItemTable, user: UserItems | None) -> np.ndarray:
        values = self._resolve(cond.values)
        if cond.dataset == INTERACTIONS:
            assert user is not None
            mask = np.zeros(table.n_items, dtype=bool)
            # NOT IN: items the user interacted with by another event type.
            mask[user.items_with_event_types({_text(v) for v in values}, cond.op == "NOT IN")] = True
            return mask
        field = table.field_name(cond.field)
        if field is None:
            raise invalid("filter", f"Items.{cond.field} is not a field of the campaign's items")
        # `= $P` with a string value is a token match, like IN.
        as_tokens = cond.op in ("IN", "NOT IN") or (cond.op in ("=", "!=") and any(isinstance(v, str) for v in values))
        if as_tokens:
            mask = table.token_mask(field, {_text(v) for v in values})
            return ~mask if cond.op in ("NOT IN", "!=") else mask
        if len(values) != 1:
            raise invalid("filter_values", f"Items.{cond.field} {cond.op} takes exactly one value")
        try:
            bound = float(values[0])
        except ValueError:
            raise invalid("filter_values", f"Items.{cond.field} {cond.op} needs a number, got {values[0]!r}") from None
        column = table.numeric(field)
        with np.errstate(invalid="ignore"):
            if cond.op == "=":
                return np.asarray(column == bound)
            if cond.op == "!=":
                return np.asarray(~np.isnan(column) & (column != bound))
            if cond.op == "<":
                return np.asarray(column < bound)
            if cond.op == ">":
                return np.asarray(column > bound)
            if cond.op == "<=":
                return np.asarray(column <= bound)
            return np.asarray(column >= bound)
