"""What a schema and a dataset must look like: reserved fields, required fields, types.

Pure Python: the servicer maps proto enums to these names at the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from foretell.core.errors import FieldViolation, InvalidArgument

FIELD_TYPES = ("STRING", "INT", "LONG", "FLOAT", "DOUBLE", "BOOLEAN", "TIMESTAMP")
NUMERIC = ("INT", "LONG", "FLOAT", "DOUBLE")
TIME_TYPES = ("LONG", "INT", "TIMESTAMP")

RECOMMENDATION_TYPES = ("INTERACTIONS", "ITEMS", "USERS")
FORECASTING_TYPES = ("TARGET_TIME_SERIES", "RELATED_TIME_SERIES", "ITEM_METADATA")
DOMAIN_TYPES = {"RECOMMENDATION": RECOMMENDATION_TYPES, "FORECASTING": FORECASTING_TYPES}

# Reserved field -> allowed types.
RESERVED: dict[str, tuple[str, ...]] = {
    "USER_ID": ("STRING",),
    "ITEM_ID": ("STRING",),
    "TIMESTAMP": TIME_TYPES,
    "EVENT_TYPE": ("STRING",),
    "EVENT_VALUE": ("FLOAT", "DOUBLE", "INT", "LONG"),
    "IMPRESSION": ("STRING",),
    "RECOMMENDATION_ID": ("STRING",),
    "SESSION_ID": ("STRING",),
    "CREATION_TIMESTAMP": TIME_TYPES,
    "TARGET_VALUE": NUMERIC,
}

# Dataset type -> (key fields that must be present and non-nullable, reserved fields it may hold,
#                  whether at least one non-reserved field is needed).
_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "INTERACTIONS": (
        ("USER_ID", "ITEM_ID", "TIMESTAMP"),
        ("EVENT_TYPE", "EVENT_VALUE", "IMPRESSION", "RECOMMENDATION_ID", "SESSION_ID"),
        False,
    ),
    "ITEMS": (("ITEM_ID",), ("CREATION_TIMESTAMP",), True),
    "USERS": (("USER_ID",), (), True),
    "TARGET_TIME_SERIES": (("ITEM_ID", "TIMESTAMP", "TARGET_VALUE"), (), False),
    "RELATED_TIME_SERIES": (("ITEM_ID", "TIMESTAMP"), (), True),
    "ITEM_METADATA": (("ITEM_ID",), (), True),
}

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")  # not "$": it matches before a final "\n"
MAX_FIELDS = 200


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    nullable: bool = False
    categorical: bool = False
    textual: bool = False


def validate_schema(domain: str, fields: list[Field], path: str = "schema") -> None:
    """Checks a schema on its own: names, types, flags, reserved-field types."""
    problems: list[FieldViolation] = []
    if domain not in DOMAIN_TYPES:
        problems.append(FieldViolation(f"{path}.domain", "must be RECOMMENDATION or FORECASTING"))
    if not fields:
        problems.append(FieldViolation(f"{path}.fields", "needs at least one field"))
    if len(fields) > MAX_FIELDS:
        problems.append(FieldViolation(f"{path}.fields", f"has more than {MAX_FIELDS} fields"))
    seen: set[str] = set()
    for i, f in enumerate(fields):
        where = f"{path}.fields[{i}]"
        if not _FIELD_NAME.match(f.name):
            problems.append(
                FieldViolation(f"{where}.name", "must be 1-64 of A-Z, a-z, 0-9, _ and not start with a digit")
            )
        elif f.name.upper() in seen:
            problems.append(
                FieldViolation(f"{where}.name", f"duplicates field {f.name!r} (names are case-insensitive)")
            )
        seen.add(f.name.upper())
        if f.type not in FIELD_TYPES:
            problems.append(FieldViolation(f"{where}.type", f"must be one of {', '.join(FIELD_TYPES)}"))
            continue
        allowed = RESERVED.get(f.name)
        if allowed and f.type not in allowed:
            problems.append(FieldViolation(f"{where}.type", f"reserved field {f.name} must be {' or '.join(allowed)}"))
        if (f.categorical or f.textual) and f.type != "STRING":
            problems.append(FieldViolation(f"{where}", "only STRING fields can be categorical or textual"))
        if f.categorical and f.textual:
            problems.append(FieldViolation(f"{where}", "a field is either categorical or textual, not both"))
        if f.name.upper() in RESERVED and f.name not in RESERVED:
            problems.append(FieldViolation(f"{where}.name", f"reserved field names are upper case: {f.name.upper()}"))
    if problems:
        raise InvalidArgument(problems)


def check_fits(dataset_type: str, domain: str, fields: list[Field], path: str) -> None:
    """Checks that a schema can back a dataset of `dataset_type`."""
    problems: list[FieldViolation] = []
    if dataset_type not in DOMAIN_TYPES.get(domain, ()):
        allowed = ", ".join(DOMAIN_TYPES.get(domain, ()))
        raise InvalidArgument(FieldViolation(f"{path}.dataset_type", f"must be one of {allowed} in a {domain} group"))
    keys, optional, needs_extra = _RULES[dataset_type]
    by_name = {f.name: f for f in fields}
    for key in keys:
        if key not in by_name:
            problems.append(FieldViolation(f"{path}.schema", f"a {dataset_type} schema needs field {key}"))
        elif by_name[key].nullable:
            problems.append(FieldViolation(f"{path}.schema", f"field {key} must not be nullable"))
    for f in fields:
        if f.name in RESERVED and f.name not in keys and f.name not in optional:
            problems.append(
                FieldViolation(f"{path}.schema", f"field {f.name} is reserved and not allowed in {dataset_type}")
            )
    if needs_extra and not [f for f in fields if f.name not in RESERVED]:
        problems.append(
            FieldViolation(f"{path}.schema", f"a {dataset_type} schema needs at least one non-reserved field")
        )
    if dataset_type == "RELATED_TIME_SERIES" and not [
        f for f in fields if f.name not in RESERVED and f.type in NUMERIC
    ]:
        problems.append(FieldViolation(f"{path}.schema", "a RELATED_TIME_SERIES schema needs a numeric field"))
    if problems:
        raise InvalidArgument(problems)
