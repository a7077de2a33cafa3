"""The `foretell` command line: run the server, manage datasets, import CSV files, run the demo.

Client commands talk to a server through the Python client (`--target`, or FORETELL_TARGET).
Failures print `error: CODE: message` and the field violations, and exit with code 1.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import click
import grpc
from google.longrunning import operations_pb2
from google.protobuf import json_format

from foretell.cli import db, forecast, personalize
from foretell.cli import output as out
from foretell.cli.output import CliError, Security, State, json_option, quiet_option, state
from foretell.cli.progress import import_file, wait_with_progress
from foretell.client import ForetellError, operation_response, raise_for_operation
from foretell.v1 import common_pb2
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _version() -> str:
    try:
        return importlib_metadata.version("foretell")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0 (source tree)"


class ForetellGroup(click.Group):
    """Turns RPC failures anywhere below it into `error: CODE: message` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ForetellError, grpc.RpcError) as error:
            obj = ctx.find_object(State)
            out.report_rpc_error(error, obj.target if obj else None)


@click.group(cls=ForetellGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--target", envvar="FORETELL_TARGET", default="127.0.0.1:50051", show_default=True,
              help="host:port of the Foretell server for client commands [env FORETELL_TARGET].")
@click.option("--timeout", envvar="FORETELL_TIMEOUT", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Deadline in seconds for each call (uploads get longer).")
@click.option("--tls", is_flag=True, envvar="FORETELL_TLS",
              help="Connect over TLS (implied by --ca-file/--cert-file) [env FORETELL_TLS].")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), envvar="FORETELL_CA_FILE",
              help="PEM CA bundle that signed the server's certificate [env FORETELL_CA_FILE].")
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), envvar="FORETELL_CLIENT_CERT_FILE",
              help="PEM client certificate for mutual TLS [env FORETELL_CLIENT_CERT_FILE].")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), envvar="FORETELL_CLIENT_KEY_FILE",
              help="PEM key of the client certificate [env FORETELL_CLIENT_KEY_FILE].")
@click.option("--api-key", envvar="FORETELL_API_KEY", show_envvar=False,
              help="API key sent with every call; prefer the env variable [env FORETELL_API_KEY].")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (protobuf JSON mapping).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--unavailable-wait", envvar="FORETELL_UNAVAILABLE_WAIT", type=click.FloatRange(min=0), default=60.0,
              show_default=True,
              help="Seconds a wait for an operation rides out an unavailable (draining, restarting) server "
                   "[env FORETELL_UNAVAILABLE_WAIT].")
@click.version_option(_version(), prog_name="foretell")
@click.pass_context
def cli(
    ctx: click.Context,
    target: str,
    timeout: float,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    api_key: str | None,
    as_json: bool,
    quiet: bool,
    unavailable_wait: float,
) -> None:
    """Foretell: self-hosted recommendations and forecasting over gRPC.

    \b
    Quick start:
      foretell demo                      # everything in one process, no setup
      foretell serve                     # all services on 127.0.0.1:50051
      foretell dataset-group list        # talk to it
    """
    obj = ctx.ensure_object(State)
    obj.target, obj.timeout, obj.json, obj.quiet = target, timeout, as_json, quiet
    obj.unavailable_wait = unavailable_wait
    if (cert_file is None) != (key_file is None):
        raise click.UsageError("--cert-file and --key-file go together")
    obj.security = Security(tls or bool(ca_file or cert_file), ca_file, cert_file, key_file, api_key or None)
    ctx.call_on_close(obj.close)


# ---- serve ------------------------------------------------------------------------------


@cli.command()
@click.option("--service", "services", multiple=True,
              type=click.Choice(["dataset", "training", "recommendation", "forecast-query"]),
              help="Service to run; repeat for several. Default: all four on one port.")
@click.option("--host", default=None, help="Address to listen on [env FORETELL_HOST, default 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on [env FORETELL_PORT, default 50051].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="SQLite file and artifacts [env FORETELL_DATA_DIR, default ./foretell-data].")
@click.option("--database-url", default=None, help="SQLAlchemy URL [env FORETELL_DATABASE_URL].")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default=None)
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None)
def serve(services: tuple[str, ...], **options: Any) -> None:
    """Run the server until SIGTERM/SIGINT (Ctrl-C).

    Flags override the FORETELL_* environment variables.
    """
    from foretell.core.logs import configure_logging
    from foretell.core.settings import ALL_SERVICES, load_settings
    from foretell.runtime import main as runtime

    settings = load_settings(**{k: v for k, v in options.items() if v is not None})
    chosen = list(dict.fromkeys(services)) or list(ALL_SERVICES)
    label = "foretell" if set(chosen) == set(ALL_SERVICES) else "foretell-" + "+".join(chosen)
    configure_logging(settings.log_level, settings.log_format, service=label)
    runtime.serve(settings, chosen)  # type: ignore[arg-type]


# ---- dataset groups ---------------------------------------------------------------------


def _show_group(group: pb.DatasetGroup) -> None:
    if state().json:
        out.print_json(group)
        return
    out.print_fields([
        ("name", group.name),
        ("domain", out.enum_label(pb.Domain, group.domain, "DOMAIN_")),
        ("display_name", group.display_name or "-"),
        ("state", out.enum_label(pb.DatasetGroup.State, group.state, "STATE_")),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(group.labels.items())) or "-"),
        ("created", out.timestamp(group.create_time)),
        ("updated", out.timestamp(group.update_time)),
    ])


@cli.group("dataset-group")
def dataset_group() -> None:
    """Dataset groups: the container of one use case's datasets."""


@dataset_group.command("create")
@click.argument("group_id")
@click.option("--domain", type=click.Choice(list(out.DOMAINS)), required=True)
@click.option("--display-name", default="")
@json_option
def group_create(group_id: str, domain: str, display_name: str) -> None:
    """Create datasetGroups/GROUP_ID."""
    group = state().client.create_dataset_group(group_id, out.DOMAINS[domain], display_name=display_name)
    if state().json:
        out.print_json(group)
    else:
        out.echo(f"created {group.name} ({out.enum_label(pb.Domain, group.domain, 'DOMAIN_')})")


@dataset_group.command("list")
@json_option
def group_list() -> None:
    """List dataset groups."""
    client = state().client
    groups = list(client.list_all(client.datasets.ListDatasetGroups, api.ListDatasetGroupsRequest(),
                                  "dataset_groups"))
    if state().json:
        out.print_json(api.ListDatasetGroupsResponse(dataset_groups=groups))
        return
    out.print_table(
        ["NAME", "DOMAIN", "STATE", "CREATED"],
        [(g.name, out.enum_label(pb.Domain, g.domain, "DOMAIN_"),
          out.enum_label(pb.DatasetGroup.State, g.state, "STATE_"), out.timestamp(g.create_time)) for g in groups],
        empty="no dataset groups",
    )


@dataset_group.command("describe")
@click.argument("name")
@json_option
def group_describe(name: str) -> None:
    """Show a dataset group (NAME: `shop` or `datasetGroups/shop`)."""
    client = state().client
    _show_group(client.call(client.datasets.GetDatasetGroup, api.GetDatasetGroupRequest(name=out.group_name(name))))


@dataset_group.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also delete the group's datasets and all their rows.")
def group_delete(name: str, force: bool) -> None:
    """Delete a dataset group (it must be empty unless --force)."""
    client = state().client
    full = out.group_name(name)
    client.call(client.datasets.DeleteDatasetGroup, api.DeleteDatasetGroupRequest(name=full, force=force))
    out.echo(f"deleted {full}")


# ---- schemas ----------------------------------------------------------------------------


def _fields_from_json(path: Path) -> tuple[list[pb.SchemaField], str | None]:
    """A --from-json file: a list of fields, or an object with "fields" (and optionally "domain")."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"--from-json {str(path)!r}: {exc}") from None
    domain: str | None = None
    if isinstance(data, dict):
        raw_domain = data.get("domain")
        if raw_domain is not None:
            domain = str(raw_domain).lower().removeprefix("domain_")
            if domain not in out.DOMAINS:
                raise CliError(f"--from-json {str(path)!r}: domain {raw_domain!r} is not one of "
                               f"{', '.join(out.DOMAINS)}")
        data = data.get("fields")
    if not isinstance(data, list):
        raise CliError(f"--from-json {str(path)!r}: expected a list of fields or an object with \"fields\"")
    return [out.parse_field_json(entry, i) for i, entry in enumerate(data)], domain


def _show_schema(schema: pb.Schema) -> None:
    if state().json:
        out.print_json(schema)
        return
    out.print_fields([
        ("name", schema.name),
        ("domain", out.enum_label(pb.Domain, schema.domain, "DOMAIN_")),
        ("created", out.timestamp(schema.create_time)),
    ])
    out.echo("fields:")
    out.print_table(
        ["  NAME", "TYPE", "FLAGS"],
        [("  " + f.name, out.enum_label(pb.FieldType, f.type, "FIELD_TYPE_"),
          ",".join(flag for flag in out.FIELD_FLAGS if getattr(f, flag)) or "-") for f in schema.fields],
    )


@cli.group()
def schema() -> None:
    """Schemas: the columns a dataset accepts."""


@schema.command("create")
@click.argument("schema_id")
@click.option("--domain", type=click.Choice(list(out.DOMAINS)), default=None,
              help="Required unless the --from-json file names it.")
@click.option("--field", "field_specs", multiple=True, metavar="NAME:TYPE[:nullable][:categorical][:textual]",
              help="A column; repeat in order. TYPE: string, int, long, float, double, boolean, timestamp.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='A JSON list of fields ({"name": "GENRES", "type": "string", "categorical": true}), '
                   'or an object with "fields" and "domain".')
@json_option
def schema_create(schema_id: str, domain: str | None, field_specs: tuple[str, ...], from_json: Path | None) -> None:
    """Create schemas/SCHEMA_ID.

    \b
    Example:
      foretell schema create clicks --domain recommendation \\
        --field USER_ID:string --field ITEM_ID:string --field TIMESTAMP:long \\
        --field DEVICE:string:nullable:categorical
    """
    fields = [out.parse_field_spec(spec) for spec in field_specs]
    if from_json is not None:
        more, file_domain = _fields_from_json(from_json)
        fields += more
        domain = domain or file_domain
    if not fields:
        raise CliError("no fields: give --field NAME:TYPE (repeatable) or --from-json FILE")
    if domain is None:
        raise CliError(f"--domain is required ({' or '.join(out.DOMAINS)})")
    created = state().client.create_schema(schema_id, out.DOMAINS[domain], fields)
    if state().json:
        out.print_json(created)
    else:
        out.echo(f"created {created.name} ({len(created.fields)} fields)")


@schema.command("list")
@json_option
def schema_list() -> None:
    """List schemas."""
    client = state().client
    schemas = list(client.list_all(client.datasets.ListSchemas, api.ListSchemasRequest(), "schemas"))
    if state().json:
        out.print_json(api.ListSchemasResponse(schemas=schemas))
        return
    out.print_table(
        ["NAME", "DOMAIN", "FIELDS", "CREATED"],
        [(s.name, out.enum_label(pb.Domain, s.domain, "DOMAIN_"), ", ".join(f.name for f in s.fields),
          out.timestamp(s.create_time)) for s in schemas],
        empty="no schemas",
    )


@schema.command("describe")
@click.argument("name")
@json_option
def schema_describe(name: str) -> None:
    """Show a schema and its fields (NAME: `clicks` or `schemas/clicks`)."""
    client = state().client
    _show_schema(client.call(client.datasets.GetSchema, api.GetSchemaRequest(name=out.schema_name(name))))


@schema.command("delete")
@click.argument("name")
def schema_delete(name: str) -> None:
    """Delete a schema no dataset uses."""
    client = state().client
    full = out.schema_name(name)
    client.call(client.datasets.DeleteSchema, api.DeleteSchemaRequest(name=full))
    out.echo(f"deleted {full}")


# ---- datasets ---------------------------------------------------------------------------


def _dataset_row(d: pb.Dataset) -> tuple[str, ...]:
    return (d.name, out.enum_label(pb.DatasetType, d.dataset_type, "DATASET_TYPE_"), d.schema,
            str(d.row_count), out.timestamp(d.update_time))


@cli.group()
def dataset() -> None:
    """Datasets of a group (DATASET: `GROUP/ID` or `datasetGroups/GROUP/datasets/ID`)."""


@dataset.command("create")
@click.argument("group")
@click.argument("dataset_id")
@click.option("--type", "dataset_type", type=click.Choice(list(out.DATASET_TYPES)), required=True)
@click.option("--schema", "schema_ref", required=True, help="`schemas/x` or `x`.")
@click.option("--data-frequency", default="", help='Time series only: "D", "1H", "W", "15min"...')
@json_option
def dataset_create(group: str, dataset_id: str, dataset_type: str, schema_ref: str, data_frequency: str) -> None:
    """Create GROUP's dataset DATASET_ID."""
    created = state().client.create_dataset(
        out.group_name(group), dataset_id, out.DATASET_TYPES[dataset_type], out.schema_name(schema_ref),
        data_frequency=data_frequency,
    )
    if state().json:
        out.print_json(created)
    else:
        out.echo(f"created {created.name} ({out.enum_label(pb.DatasetType, created.dataset_type, 'DATASET_TYPE_')})")


@dataset.command("list")
@click.argument("group")
@json_option
def dataset_list(group: str) -> None:
    """List GROUP's datasets with their row counts."""
    client = state().client
    datasets = list(client.list_all(
        client.datasets.ListDatasets, api.ListDatasetsRequest(parent=out.group_name(group)), "datasets"))
    if state().json:
        out.print_json(api.ListDatasetsResponse(datasets=datasets))
        return
    out.print_table(["NAME", "TYPE", "SCHEMA", "ROWS", "UPDATED"], [_dataset_row(d) for d in datasets],
                    empty="no datasets")


@dataset.command("describe")
@click.argument("name")
@json_option
def dataset_describe(name: str) -> None:
    """Show a dataset and its recent import jobs."""
    client = state().client
    full = out.dataset_name(name)
    found = client.call(client.datasets.GetDataset, api.GetDatasetRequest(name=full))
    jobs = client.call(client.datasets.ListImportJobs, api.ListImportJobsRequest(parent=full, page_size=10))
    if state().json:
        out.print_json(found)
        return
    out.print_fields([
        ("name", found.name),
        ("type", out.enum_label(pb.DatasetType, found.dataset_type, "DATASET_TYPE_")),
        ("schema", found.schema),
        ("data_frequency", found.data_frequency or "-"),
        ("state", out.enum_label(pb.Dataset.State, found.state, "STATE_")),
        ("rows", found.row_count),
        ("created", out.timestamp(found.create_time)),
        ("updated", out.timestamp(found.update_time)),
    ])
    if jobs.import_jobs:
        out.echo("import jobs:")
        out.print_table(
            ["  JOB", "STATE", "ROWS", "MODE", "CREATED"],
            [("  " + j.name.rsplit("/", 1)[-1], out.enum_label(pb.JobState, j.state, "JOB_STATE_"), j.rows_imported,
              out.enum_label(pb.ImportMode, j.import_mode, "IMPORT_MODE_"), out.timestamp(j.create_time))
             for j in jobs.import_jobs],
        )


@dataset.command("delete")
@click.argument("name")
def dataset_delete(name: str) -> None:
    """Delete a dataset and every row it holds."""
    client = state().client
    full = out.dataset_name(name)
    client.call(client.datasets.DeleteDataset, api.DeleteDatasetRequest(name=full))
    out.echo(f"deleted {full}")


# ---- import / export ----------------------------------------------------------------------


@cli.command("import")
@click.argument("dataset_ref", metavar="DATASET")
@click.argument("file", metavar="FILE.csv")
@click.option("--mode", type=click.Choice(list(out.IMPORT_MODES)), default="full", show_default=True,
              help="full replaces the dataset's rows; incremental appends (items/users by id are replaced).")
@click.option("--server-path", is_flag=True,
              help="FILE is in your file area on the server (a path relative to it, or a file:// URI under "
                   "it) and the server reads it itself; nothing is uploaded.")
@click.option("--allow-empty", is_flag=True,
              help="Let a full import of a file without rows empty the dataset (refused otherwise).")
@json_option
@quiet_option
def import_command(dataset_ref: str, file: str, mode: str, server_path: bool, allow_empty: bool) -> None:
    """Import a CSV file into DATASET, showing upload and import progress.

    The file is streamed to the server (no shared filesystem needed). Rows become
    visible only if every row is valid; otherwise the bad rows are listed.
    """
    if not server_path and not Path(file).is_file():
        raise CliError(f"{file!r} is not a readable file (use --server-path for a path on the server)")
    obj = state()
    job = import_file(obj.client, out.dataset_name(dataset_ref), file, mode=out.IMPORT_MODES[mode],
                      server_path=server_path, show=obj.progress, allow_empty=allow_empty)
    if obj.json:
        out.print_json(job)
    else:
        out.echo(f"imported {job.rows_imported} rows into {job.name.split('/importJobs/')[0]} "
                 f"(job {job.name.rsplit('/', 1)[-1]}, {out.enum_label(pb.JobState, job.state, 'JOB_STATE_')})")


@cli.command("export")
@click.argument("dataset_ref", metavar="DATASET")
@click.option("--to", "destination", default="",
              help="New file to write in your file area on the server (a path relative to it, or a file:// "
                   "URI under it); default: the server's artifact store.")
@json_option
@quiet_option
def export_command(dataset_ref: str, destination: str) -> None:
    """Export DATASET's rows as CSV and print where the file went."""
    obj = state()
    client = obj.client
    operation = client.call(client.datasets.ExportDataset,
                            api.ExportDatasetRequest(name=out.dataset_name(dataset_ref), destination_uri=destination))
    job = operation_response(wait_with_progress(client, operation, desc="export", show=obj.progress), pb.ExportJob)
    if obj.json:
        out.print_json(job)
    else:
        out.echo(f"exported {job.rows_exported} rows to {job.destination_uri}")


# ---- real-time events ---------------------------------------------------------------------


def _parse_event(spec: str) -> pb.Event:
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CliError(f"--event {spec!r}: use TYPE:ITEM[:VALUE], e.g. click:item-42 or rating:item-42:4.5")
    event = pb.Event(event_type=parts[0], item_id=parts[1])
    if len(parts) == 3 and parts[2]:
        try:
            event.event_value = float(parts[2])
        except ValueError:
            raise CliError(f"--event {spec!r}: value {parts[2]!r} is not a number") from None
    event.sent_at.FromDatetime(datetime.now(UTC))
    return event


@cli.command("put-events")
@click.argument("group")
@click.option("--session", "session_id", required=True, help="Session id (required, even when --user is given).")
@click.option("--user", "user_id", default="", help="User id; empty for an anonymous session.")
@click.option("--event", "event_specs", multiple=True, required=True, metavar="TYPE:ITEM[:VALUE]",
              help="An event sent now; repeat for several (1 to 100).")
@json_option
def put_events(group: str, session_id: str, user_id: str, event_specs: tuple[str, ...]) -> None:
    """Record real-time interactions in GROUP's interactions dataset."""
    events = [_parse_event(spec) for spec in event_specs]
    response = state().client.put_events(out.group_name(group), session_id, events, user_id=user_id)
    if state().json:
        out.print_json(response)
    else:
        out.echo(f"accepted {response.accepted} events ({response.duplicates} duplicates)")


@cli.command("delete-user-data")
@click.argument("group")
@click.option("--user", "user_ids", multiple=True, required=True,
              help="A user whose events and USERS row to delete; repeat for several (1 to 1000).")
@json_option
def delete_user_data(group: str, user_ids: tuple[str, ...]) -> None:
    """Delete some users' interactions and USERS rows from GROUP (models forget them when retrained)."""
    client = state().client
    request = api.DeleteUserDataRequest(dataset_group=out.group_name(group), user_ids=list(user_ids),
                                        request_id=str(uuid.uuid4()))  # a retried call deletes once
    response = client.call(client.datasets.DeleteUserData, request)
    if state().json:
        out.print_json(response)
    else:
        out.echo(f"deleted {response.interactions_deleted} interactions and {response.users_deleted} users")


# ---- operations ---------------------------------------------------------------------------


def _metadata(operation: operations_pb2.Operation) -> common_pb2.OperationMetadata:
    meta = common_pb2.OperationMetadata()
    if operation.metadata.Is(common_pb2.OperationMetadata.DESCRIPTOR):
        operation.metadata.Unpack(meta)
    return meta


def _op_state(operation: operations_pb2.Operation) -> str:
    if not operation.done:
        return "RUNNING"
    if operation.WhichOneof("result") == "error":
        return "CANCELLED" if operation.error.code == grpc.StatusCode.CANCELLED.value[0] else "FAILED"
    return "SUCCEEDED"


def _result_pairs(operation: operations_pb2.Operation) -> list[tuple[str, object]]:
    if operation.WhichOneof("result") == "error":
        error = ForetellError.from_status(operation.error)
        pairs: list[tuple[str, object]] = [("error", f"{error.code.name}: {error.message}")]
        pairs += [("  - " + f, d) for f, d in error.field_violations[: out.MAX_VIOLATIONS_SHOWN]]
        return pairs
    if operation.WhichOneof("result") != "response":
        return []
    for kind, fields in ((pb.ImportJob, ("rows_imported", "source_uri")),
                         (pb.ExportJob, ("rows_exported", "destination_uri"))):
        if operation.response.Is(kind.DESCRIPTOR):
            job = kind()
            operation.response.Unpack(job)
            return [("result", job.name),
                    ("job state", out.enum_label(pb.JobState, job.state, "JOB_STATE_")),
                    *((f, getattr(job, f) or "-") for f in fields)]
    return [("result", operation.response.type_url.rsplit("/", 1)[-1])]


def _print_operation_json(operation: operations_pb2.Operation) -> None:
    try:
        out.print_json(operation)
    except TypeError:  # a response type this client does not know: name it instead of decoding it
        data: dict[str, Any] = {"name": operation.name, "done": operation.done,
                                "metadata": json_format.MessageToDict(_metadata(operation))}
        if operation.WhichOneof("result") == "response":
            data["response"] = {"@type": operation.response.type_url}
        elif operation.WhichOneof("result") == "error":
            data["error"] = {"code": operation.error.code, "message": operation.error.message}
        click.echo(json.dumps(data, indent=2))


@cli.group()
def operations() -> None:
    """Long-running operations (imports, exports; training later)."""


@operations.command("list")
@click.option("--verb", default=None, help='e.g. "import", "export".')
@click.option("--target", "op_target", default=None, help="Resource the operation works on.")
@click.option("--done/--running", default=None, help="Only finished / only unfinished operations.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def operations_list(verb: str | None, op_target: str | None, done: bool | None, limit: int) -> None:
    """List operations, oldest id first."""
    clauses = []
    if done is not None:
        clauses.append(f"done={'true' if done else 'false'}")
    if verb:
        clauses.append(f'verb="{verb}"')
    if op_target:
        clauses.append(f'target="{op_target}"')
    client = state().client
    request = operations_pb2.ListOperationsRequest(name="operations", filter=" AND ".join(clauses))
    found: list[operations_pb2.Operation] = []
    for operation in client.list_all(client.operations.ListOperations, request, "operations"):
        found.append(operation)
        if len(found) >= limit:
            break
    if state().json:
        out.print_json(operations_pb2.ListOperationsResponse(operations=found))
        return
    rows = []
    for operation in found:
        meta = _metadata(operation)
        rows.append((operation.name, meta.verb or "-", _op_state(operation), f"{meta.progress_percent:.0f}%",
                     meta.target or "-", meta.status_message or "-"))
    out.print_table(["NAME", "VERB", "STATE", "PROGRESS", "TARGET", "STATUS"], rows, empty="no operations")


@operations.command("describe")
@click.argument("name")
@json_option
def operations_describe(name: str) -> None:
    """Show an operation's progress and result (NAME: `operations/x` or `x`)."""
    operation = state().client.get_operation(out.operation_name(name))
    if state().json:
        _print_operation_json(operation)
        return
    meta = _metadata(operation)
    out.print_fields([
        ("name", operation.name),
        ("verb", meta.verb or "-"),
        ("target", meta.target or "-"),
        ("state", _op_state(operation)),
        ("progress", f"{meta.progress_percent:.1f}%"),
        ("status", meta.status_message or "-"),
        ("counters", ", ".join(f"{k}={v:g}" for k, v in sorted(meta.counters.items())) or "-"),
        ("cancel requested", "yes" if meta.requested_cancellation else "no"),
        ("created", out.timestamp(meta.create_time)),
        ("ended", out.timestamp(meta.end_time)),
        *_result_pairs(operation),
    ])


@operations.command("cancel")
@click.argument("name")
def operations_cancel(name: str) -> None:
    """Ask the server to stop an operation (it ends as CANCELLED)."""
    full = out.operation_name(name)
    state().client.cancel_operation(full)
    out.echo(f"cancellation requested for {full}")


@operations.command("wait")
@click.argument("name")
@json_option
@quiet_option
def operations_wait(name: str) -> None:
    """Wait for an operation with a progress bar; exit code 1 if it failed."""
    obj = state()
    # By name: the first poll, too, rides out a server that is restarting.
    done = wait_with_progress(obj.client, out.operation_name(name), desc=out.operation_name(name), show=obj.progress)
    raise_for_operation(done)
    if obj.json:
        _print_operation_json(done)
    else:
        out.echo(f"{done.name}: {_op_state(done)}")


# ---- demo ---------------------------------------------------------------------------------


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("foretell-data/demo"),
              show_default=True, help="Where the demo's database, CSV files and export go.")
@click.option("--rows", type=click.IntRange(min=1), default=None,
              help="Synthetic interactions to generate [default 20000]; with --movielens, import at most N.")
@click.option("--movielens", type=click.Path(exists=True, path_type=Path), default=None,
              help="A MovieLens ratings.csv (ml-latest*, ml-25m...) or u.data (ml-100k), or their folder.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the embedded server; 0 picks a free one.")
@click.option("--keep-serving", is_flag=True, help="Keep the server running afterwards, until Ctrl-C.")
@click.option("--recipe", default="ease", show_default=True,
              help="Recipe to train: popularity-count, sims, ease, als or sequence.")
@click.option("--series", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Time series CSV (ITEM_ID,TIMESTAMP,TARGET_VALUE) to forecast [default: statsmodels' "
                   "US quarterly macro data].")
@click.option("--frequency", default="D", show_default=True, help="With --series: its forecast frequency.")
@click.option("--horizon", type=click.IntRange(min=1), default=14, show_default=True,
              help="With --series: steps to forecast.")
@json_option
@quiet_option
def demo(data_dir: Path, rows: int | None, movielens: Path | None, port: int, keep_serving: bool,
         recipe: str, series: Path | None, frequency: str, horizon: int) -> None:
    """Import, train, deploy and recommend in one process, no setup needed.

    Starts an embedded all-in-one server, then, through the gRPC client: creates a
    recommendation dataset group, imports a MovieLens-style CSV with progress bars,
    sends items and events in real time, exports the interactions, trains a solution
    version (progress bar), prints its offline metrics, deploys a campaign, and prints
    recommendations, a personalized ranking and similar items with their titles, then
    a click sent with PutEvents changing the next answer. Then forecasting: imports time
    series, trains an AutoML predictor, prints its backtest accuracy, generates and queries
    a forecast and saves a PNG plot of history, forecast and quantile band. Safe to run again.
    """
    from foretell.cli.demo import run_demo

    obj = state()
    run_demo(data_dir=data_dir, rows=rows, movielens=movielens, port=port, keep_serving=keep_serving,
             show_progress=obj.progress, as_json=obj.json, recipe=recipe, series=series, frequency=frequency,
             horizon=horizon)


personalize.register(cli)  # solution, train, metrics, campaign, filter, recommend, rank, similar
forecast.register(cli)  # predictor, accuracy, forecast, query
db.register(cli)  # db upgrade, db current


if __name__ == "__main__":
    cli(prog_name="foretell")
