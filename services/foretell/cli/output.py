"""What the CLI shares between commands: its state, name shorthands, printing and error reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, NoReturn, TypeVar

import click
import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from foretell.client import Client, ForetellError
from foretell.v1 import dataset_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

#: Field violations printed under an error before the rest are summarised.
MAX_VIOLATIONS_SHOWN = 20


class CliError(click.ClickException):
    """A mistake in the command line itself (a bad --field spec...): `error: ...`, exit code 1."""

    exit_code = 1

    def __init__(self, message: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.violations = list(violations)

    def show(self, file: Any = None) -> None:
        report(self.message, self.violations)


@dataclass(frozen=True)
class Security:
    """How client commands connect: TLS files and the API key (never printed)."""

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass
class State:
    """The root context's object: global options, and the client opened on first use."""

    target: str = "127.0.0.1:50051"
    timeout: float = 30.0
    json: bool = False
    quiet: bool = False
    # How long waiting for an operation rides out UNAVAILABLE (Client.wait_operation).
    unavailable_wait: float = 60.0
    security: Security = field(default_factory=Security, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            s = self.security
            self._client = Client(
                self.target,
                timeout=self.timeout,
                tls=s.tls,
                root_certificates=s.ca_file,
                certificate_chain=s.cert_file,
                private_key=s.key_file,
                api_key=s.api_key,
                unavailable_wait=self.unavailable_wait,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def progress(self) -> bool:
        """Whether to draw progress bars (on stderr): not with --quiet or --json."""
        return not (self.quiet or self.json)


def state() -> State:
    return click.get_current_context().ensure_object(State)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


def json_option(f: F) -> F:
    """`--json` on a command (the same as the global `foretell --json`)."""
    return click.option(
        "--json", is_flag=True, expose_value=False, callback=_set_json,
        help="Print the result as JSON (protobuf JSON mapping).",
    )(f)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).quiet = True


def quiet_option(f: F) -> F:
    """`-q/--quiet` on a command (the same as the global `foretell --quiet`)."""
    return click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet, help="No progress bars.",
    )(f)


# ---- names: accept short ids where the full resource name is unambiguous ------------------


def group_name(value: str) -> str:
    """`shop` -> `datasetGroups/shop`."""
    return value if value.startswith("datasetGroups/") else f"datasetGroups/{value}"


def schema_name(value: str) -> str:
    """`clicks` -> `schemas/clicks`."""
    return value if value.startswith("schemas/") else f"schemas/{value}"


def dataset_name(value: str) -> str:
    """`shop/interactions` -> `datasetGroups/shop/datasets/interactions`."""
    if value.startswith("datasetGroups/"):
        return value
    group, sep, dataset = value.partition("/")
    if sep and "/" not in dataset:
        return f"datasetGroups/{group}/datasets/{dataset}"
    return value


def operation_name(value: str) -> str:
    return value if value.startswith("operations/") else f"operations/{value}"


# ---- enums -----------------------------------------------------------------------------

DOMAINS = {"recommendation": pb.DOMAIN_RECOMMENDATION, "forecasting": pb.DOMAIN_FORECASTING}
DATASET_TYPES = {
    "interactions": pb.DATASET_TYPE_INTERACTIONS,
    "items": pb.DATASET_TYPE_ITEMS,
    "users": pb.DATASET_TYPE_USERS,
    "target-time-series": pb.DATASET_TYPE_TARGET_TIME_SERIES,
    "related-time-series": pb.DATASET_TYPE_RELATED_TIME_SERIES,
    "item-metadata": pb.DATASET_TYPE_ITEM_METADATA,
}
FIELD_TYPES = {
    "string": pb.FIELD_TYPE_STRING,
    "int": pb.FIELD_TYPE_INT,
    "long": pb.FIELD_TYPE_LONG,
    "float": pb.FIELD_TYPE_FLOAT,
    "double": pb.FIELD_TYPE_DOUBLE,
    "boolean": pb.FIELD_TYPE_BOOLEAN,
    "timestamp": pb.FIELD_TYPE_TIMESTAMP,
}
IMPORT_MODES = {"full": pb.IMPORT_MODE_FULL, "incremental": pb.IMPORT_MODE_INCREMENTAL}
FIELD_FLAGS = ("nullable", "categorical", "textual")


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """`DOMAIN_RECOMMENDATION` -> `RECOMMENDATION`; unknown numbers print as themselves."""
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def field_type(value: str, where: str) -> pb.FieldType.ValueType:
    key = value.strip().lower().removeprefix("field_type_")
    if key not in FIELD_TYPES:
        raise CliError(f"{where}: unknown type {value!r}; use one of {', '.join(FIELD_TYPES)}")
    return FIELD_TYPES[key]


def parse_field_spec(spec: str) -> pb.SchemaField:
    """`NAME:TYPE[:nullable][:categorical][:textual]` -> SchemaField; CliError naming the field if bad."""
    parts = [p.strip() for p in spec.split(":")]
    name = parts[0]
    where = f"--field {spec!r}"
    if not name:
        raise CliError(f"{where}: the field name is missing; use NAME:TYPE[:nullable][:categorical][:textual]")
    if len(parts) < 2 or not parts[1]:
        raise CliError(f"{where}: field {name!r} has no type; use {name}:TYPE with TYPE one of "
                       f"{', '.join(FIELD_TYPES)}")
    result = pb.SchemaField(name=name, type=field_type(parts[1], f"{where}: field {name!r}"))
    for flag in parts[2:]:
        if flag.lower() not in FIELD_FLAGS:
            raise CliError(f"{where}: field {name!r} has unknown flag {flag!r}; use {', '.join(FIELD_FLAGS)}")
        setattr(result, flag.lower(), True)
    return result


def parse_field_json(entry: Any, index: int) -> pb.SchemaField:
    """One field of a --from-json file: `{"name": ..., "type": ..., "nullable": true}` or a spec string."""
    if isinstance(entry, str):
        return parse_field_spec(entry)
    where = f"fields[{index}]"
    if not isinstance(entry, dict):
        raise CliError(f"{where}: expected an object with name and type, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CliError(f"{where}: \"name\" is required")
    unknown = sorted(set(entry) - {"name", "type", *FIELD_FLAGS})
    if unknown:
        raise CliError(f"{where} ({name}): unknown keys {', '.join(unknown)}")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise CliError(f"{where} ({name}): \"type\" is required; use one of {', '.join(FIELD_TYPES)}")
    result = pb.SchemaField(name=name, type=field_type(kind, f"{where} ({name})"))
    for flag in FIELD_FLAGS:
        value = entry.get(flag, False)
        if not isinstance(value, bool):
            raise CliError(f"{where} ({name}): \"{flag}\" must be true or false")
        setattr(result, flag, value)
    return result


# ---- printing ---------------------------------------------------------------------------


def echo(text: str = "") -> None:
    click.echo(text)


def info(text: str) -> None:
    """Progress notes go to stderr, so stdout stays parseable."""
    click.echo(text, err=True)


def print_json(message: Message) -> None:
    click.echo(json_format.MessageToJson(message, indent=2, always_print_fields_with_no_presence=True))


def timestamp(value: timestamp_pb2.Timestamp) -> str:
    if not value.seconds and not value.nanos:
        return "-"
    return value.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "(none)") -> None:
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        echo(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_fields(pairs: Iterable[tuple[str, object]]) -> None:
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        echo(f"{key + ':':<{width + 1}} {value}")


# ---- errors -----------------------------------------------------------------------------


def report(message: str, violations: Sequence[tuple[str, str]] = ()) -> None:
    click.echo(f"error: {message}", err=True)
    for field_path, description in violations[:MAX_VIOLATIONS_SHOWN]:
        click.echo(f"  - {field_path}: {description}", err=True)
    if len(violations) > MAX_VIOLATIONS_SHOWN:
        click.echo(f"  ... and {len(violations) - MAX_VIOLATIONS_SHOWN} more", err=True)


def report_rpc_error(error: ForetellError | grpc.RpcError, target: str | None = None) -> NoReturn:
    """Prints `error: CODE: message` and each field violation, then exits with code 1."""
    if not isinstance(error, ForetellError):
        error = ForetellError.from_rpc_error(error)
    report(f"{error.code.name}: {error.message}", error.field_violations)
    if error.code == grpc.StatusCode.UNAVAILABLE and target:
        click.echo(f"hint: is a server listening on {target}? Start one with `foretell serve`, "
                   "or pass --target / set FORETELL_TARGET.", err=True)
    elif error.code == grpc.StatusCode.UNIMPLEMENTED:
        click.echo("hint: this build does not implement that call yet.", err=True)
    raise click.exceptions.Exit(1)
