"""`foretell solution|train|metrics|campaign|filter|recommend|rank|similar`: the Personalize half of the CLI.

Resource arguments accept short forms: `movies` for `solutions/movies`, `movies/v1` for
`solutions/movies/versions/v1` (and, where a version is expected, `movies` alone for the
solution's latest version), `shop` for `campaigns/shop` or `filters/shop`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import click
import grpc
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from tqdm import tqdm

from foretell.cli import output as out
from foretell.cli.output import CliError, json_option, quiet_option, state
from foretell.cli.progress import unavailable_note
from foretell.client import Client, ForetellError, operation_response
from foretell.recipes.registry import describe_recipes
from foretell.v1 import common_pb2
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_pb2 as tpb
from foretell.v1 import training_service_pb2 as tapi

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=Message)

_TRAIN_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]"
#: How long Ctrl-C waits for a cancelled training to wind down before giving up on it.
CANCEL_WAIT_SECONDS = 30.0


# ---- names -------------------------------------------------------------------------------


def solution_name(value: str) -> str:
    """`movies` -> `solutions/movies`."""
    return value if value.startswith("solutions/") else f"solutions/{value}"


def is_version(value: str) -> bool:
    """Whether `value` names a solution version (`solutions/s/versions/v` or `s/v`)."""
    return "/versions/" in value or (not value.startswith("solutions/") and value.count("/") == 1)


def version_name(client: Client, value: str) -> str:
    """`s/v` -> `solutions/s/versions/v`; a solution alone means its latest version."""
    if "/versions/" in value:
        return value
    if is_version(value):
        solution, _, version = value.partition("/")
        return f"solutions/{solution}/versions/{version}"
    found = client.get_solution(solution_name(value))
    if not found.latest_solution_version:
        raise CliError(f"{found.name} has no version yet; train one with `foretell train {value}`")
    return found.latest_solution_version


def campaign_name(value: str) -> str:
    return value if value.startswith("campaigns/") else f"campaigns/{value}"


def filter_name(value: str) -> str:
    return value if value.startswith("filters/") else f"filters/{value}"


def _short(version: str) -> str:
    """`solutions/s/versions/v` -> `s/v`, the form the commands accept."""
    return version.removeprefix("solutions/").replace("/versions/", "/")


def _pairs(specs: Iterable[str], option: str) -> dict[str, str]:
    """`K=V` options -> {K: V}; CliError naming the bad one."""
    result: dict[str, str] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{option} {spec!r}: use KEY=VALUE")
        result[key.strip()] = value
    return result


# ---- printing ----------------------------------------------------------------------------


def _training_state(value: int) -> str:
    return out.enum_label(tpb.TrainingState, value, "TRAINING_STATE_")


def _deployment_state(value: int) -> str:
    return out.enum_label(rpb.DeploymentState, value, "DEPLOYMENT_STATE_")


def _duration(version: tpb.SolutionVersion) -> str:
    if not version.HasField("training_duration"):
        return "-"
    return f"{version.training_duration.ToTimedelta().total_seconds():.1f}s"


def _params(values: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def _metadata_text(metadata: struct_pb2.Struct, column: str) -> str:
    value = metadata.fields.get(column)
    if value is None:
        return "-"
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return f"{value.number_value:g}"
    if kind == "string_value":
        return value.string_value or "-"
    if kind == "bool_value":
        return str(value.bool_value).lower()
    return "-"


def print_items(items: Sequence[rpb.PredictedItem], columns: Sequence[str] = (), empty: str = "no items") -> None:
    """RANK, ITEM, SCORE, REASON and any metadata columns asked for."""
    rows = [
        (
            rank,
            item.item_id,
            f"{item.score:.4f}" if item.HasField("score") else "-",
            item.reason or "-",
            *(_metadata_text(item.metadata, c) for c in columns),
        )
        for rank, item in enumerate(items, start=1)
    ]
    out.print_table(["RANK", "ITEM", "SCORE", "REASON", *(c.upper() for c in columns)], rows, empty=empty)


def print_metrics(metrics: tpb.SolutionMetrics) -> None:
    out.print_table(
        ["K", "PRECISION", "RECALL", "NDCG"],
        [(m.k, f"{m.precision:.4f}", f"{m.recall:.4f}", f"{m.ndcg:.4f}") for m in metrics.at_k],
        empty="no ranking metrics",
    )
    out.print_fields(
        [
            ("MRR", f"{metrics.mean_reciprocal_rank:.4f}"),
            ("catalog coverage", f"{metrics.catalog_coverage:.1%}"),
            ("evaluated users", metrics.evaluated_users),
        ]
    )


# ---- training with a progress bar --------------------------------------------------------


def _metadata(operation: operations_pb2.Operation) -> common_pb2.OperationMetadata:
    meta = common_pb2.OperationMetadata()
    operation.metadata.Unpack(meta)
    return meta


def _postfix(meta: common_pb2.OperationMetadata) -> str:
    """The status message ("epoch 3/10") plus the loss, which the message does not repeat."""
    text = meta.status_message
    loss = meta.counters.get("loss")
    if loss is not None and "loss" not in text:
        text = f"{text} loss={loss:.4g}".strip()
    return text


def train_with_progress(
    client: Client,
    operation: operations_pb2.Operation,
    *,
    show: bool,
    desc: str = "train",
    response: type[M],
) -> M:
    """Waits for a training operation with a percent bar showing its status message and loss.

    Ctrl-C cancels the training on the server (unlike an import, an abandoned training would
    keep a worker busy for nothing), waits briefly for it to stop and exits with code 130.
    A failed training raises ForetellError with the worker's error.
    """
    with tqdm(total=100, desc=desc, bar_format=_TRAIN_BAR, disable=not show, leave=True) as bar:

        def on_progress(meta: common_pb2.OperationMetadata) -> None:
            bar.n = min(100.0, max(bar.n, meta.progress_percent))
            postfix = _postfix(meta)
            if postfix:
                bar.set_postfix_str(postfix, refresh=False)
            bar.refresh()

        try:
            done = client.wait_operation(
                operation, on_progress=on_progress, poll=0.25, on_unavailable=unavailable_note(client)
            )
        except KeyboardInterrupt:
            bar.close()
            _cancel(client, operation)
        if done.WhichOneof("result") == "response":
            bar.n = 100
            bar.refresh()
    return operation_response(done, response)


def _cancel(client: Client, operation: operations_pb2.Operation) -> NoReturn:
    target = _metadata(operation).target or operation.name
    out.info(f"\ninterrupted: cancelling {target} ({operation.name})")
    try:
        client.cancel_operation(operation.name)
        done = client.wait_operation(operation.name, timeout=CANCEL_WAIT_SECONDS, poll=0.2)
    except KeyboardInterrupt:
        out.info(f"stopped waiting; follow it with `foretell operations describe {operation.name}`")
    except ForetellError as error:
        out.info(
            f"could not confirm the cancellation ({error.code.name}: {error.message}); "
            f"check with `foretell operations describe {operation.name}`"
        )
    else:
        if done.WhichOneof("result") == "error" and done.error.code == grpc.StatusCode.CANCELLED.value[0]:
            out.info(f"cancelled {target}")
        elif done.WhichOneof("result") == "error":
            out.info(f"{target} ended with an error: {done.error.message}")
        else:
            out.info(f"{target} finished before the cancellation took effect")
    raise click.exceptions.Exit(130)


# ---- solutions ---------------------------------------------------------------------------


def register(cli: click.Group) -> None:
    """Adds this module's commands to the root `foretell` group."""
    for command in (recipes, solution, train, metrics, campaign, filter_group, recommend, rank, similar):
        cli.add_command(command)


@click.command()
def recipes() -> None:
    """Lists the recommendation recipes and their hyper-parameters (no server needed)."""
    click.echo(describe_recipes(), nl=False)


@click.group()
def solution() -> None:
    """Solutions: a recipe and its settings, trained into versions."""


@solution.command("create")
@click.argument("solution_id")
@click.option("--group", "dataset_group", required=True, help="Dataset group: `shop` or `datasetGroups/shop`.")
@click.option("--recipe", required=True, help="popularity-count, sims, ease, als or sequence (see `foretell recipes`).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A hyper-parameter; repeatable.")
@click.option("--hpo", is_flag=True, help="Tune hyper-parameters on a validation split before training.")
@click.option("--hpo-metric", default="", help='HPO objective, e.g. "ndcg_at_10" (maximized).')
@click.option("--hpo-trials", type=click.IntRange(min=0), default=0, help="HPO trials [server default 8].")
@click.option("--event-type", default="", help="Train only on interactions of this event type.")
@json_option
def solution_create(
    solution_id: str,
    dataset_group: str,
    recipe: str,
    params: tuple[str, ...],
    hpo: bool,
    hpo_metric: str,
    hpo_trials: int,
    event_type: str,
) -> None:
    """Create solutions/SOLUTION_ID.

    \b
    Example:
      foretell solution create movies --group shop --recipe ease --param l2=200
    """
    hpo_config = None
    if hpo_metric or hpo_trials:
        hpo_config = tpb.HpoConfig(objective_metric=hpo_metric, max_trials=hpo_trials)
        if hpo_metric:
            hpo_config.objective_type = tpb.OBJECTIVE_TYPE_MAXIMIZE
        hpo = True
    created = state().client.create_solution(
        solution_id,
        out.group_name(dataset_group),
        recipe,
        _pairs(params, "--param"),
        perform_hpo=hpo,
        hpo_config=hpo_config,
        event_type=event_type,
    )
    if state().json:
        out.print_json(created)
    else:
        out.echo(f"created {created.name} (recipe {created.recipe} on {created.dataset_group})")


@solution.command("list")
@click.option("--group", "dataset_group", default="", help="Only this dataset group's solutions.")
@json_option
def solution_list(dataset_group: str) -> None:
    """List solutions with their latest version."""
    client = state().client
    request = tapi.ListSolutionsRequest(dataset_group=out.group_name(dataset_group) if dataset_group else "")
    found = list(client.list_all(client.training.ListSolutions, request, "solutions"))
    if state().json:
        out.print_json(tapi.ListSolutionsResponse(solutions=found))
        return
    out.print_table(
        ["NAME", "RECIPE", "DATASET GROUP", "LATEST VERSION", "CREATED"],
        [
            (s.name, s.recipe, s.dataset_group, _short(s.latest_solution_version) or "-", out.timestamp(s.create_time))
            for s in found
        ],
        empty="no solutions",
    )


@solution.command("describe")
@click.argument("name")
@json_option
def solution_describe(name: str) -> None:
    """Show a solution and its versions, or one version (NAME: `movies` or `movies/v1`)."""
    client = state().client
    if is_version(name):
        _show_version(client.get_solution_version(version_name(client, name)))
        return
    found = client.get_solution(solution_name(name))
    versions = list(
        client.list_all(
            client.training.ListSolutionVersions,
            tapi.ListSolutionVersionsRequest(parent=found.name),
            "solution_versions",
        )
    )
    if state().json:
        out.print_json(found)
        return
    out.print_fields(
        [
            ("name", found.name),
            ("dataset_group", found.dataset_group),
            ("recipe", found.recipe),
            ("hyper_parameters", _params(found.hyper_parameters)),
            ("perform_hpo", "yes" if found.perform_hpo else "no"),
            ("event_type", found.event_type or "(all)"),
            ("latest version", found.latest_solution_version or "-"),
            ("created", out.timestamp(found.create_time)),
        ]
    )
    if versions:
        out.echo("versions:")
        out.print_table(
            ["  VERSION", "MODE", "STATE", "DURATION", "CREATED"],
            [
                (
                    "  " + _short(v.name),
                    out.enum_label(tpb.TrainingMode, v.training_mode, "TRAINING_MODE_"),
                    _training_state(v.state),
                    _duration(v),
                    out.timestamp(v.create_time),
                )
                for v in versions
            ],
        )


def _show_version(version: tpb.SolutionVersion) -> None:
    if state().json:
        out.print_json(version)
        return
    pairs: list[tuple[str, object]] = [
        ("name", version.name),
        ("mode", out.enum_label(tpb.TrainingMode, version.training_mode, "TRAINING_MODE_")),
        ("state", _training_state(version.state)),
        ("duration", _duration(version)),
        ("tuned parameters", _params(version.tuned_hyper_parameters)),
        ("snapshot", version.dataset_snapshot_uri or "-"),
        ("artifact", version.artifact_uri or "-"),
        ("operation", version.operation or "-"),
        ("created", out.timestamp(version.create_time)),
    ]
    if version.HasField("error") and version.error.code:
        error = ForetellError.from_status(version.error)
        pairs.append(("error", f"{error.code.name}: {error.message}"))
    out.print_fields(pairs)


@solution.command("delete")
@click.argument("name")
def solution_delete(name: str) -> None:
    """Delete a solution and its versions (or, with `movies/v1`, one version)."""
    client = state().client
    if is_version(name):
        full = version_name(client, name)
        client.call(client.training.DeleteSolutionVersion, tapi.DeleteSolutionVersionRequest(name=full))
    else:
        full = solution_name(name)
        client.call(client.training.DeleteSolution, tapi.DeleteSolutionRequest(name=full))
    out.echo(f"deleted {full}")


@click.command()
@click.argument("solution_ref", metavar="SOLUTION")
@click.option(
    "--update", is_flag=True, help="Retrain on the current data with the latest version's tuned parameters (no HPO)."
)
@click.option("--version-id", default="", help="Id of the new version; generated when empty.")
@click.option("--no-wait", is_flag=True, help="Print the new version and its operation without waiting.")
@json_option
@quiet_option
def train(solution_ref: str, update: bool, version_id: str, no_wait: bool) -> None:
    """Train a new version of SOLUTION, showing progress (epoch, loss).

    Ctrl-C cancels the training on the server.
    """
    obj = state()
    client = obj.client
    mode = "UPDATE" if update else "FULL"
    operation = client.create_solution_version(
        solution_name(solution_ref), training_mode=mode, solution_version_id=version_id
    )
    if no_wait:
        version = client.get_solution_version(_metadata(operation).target)
        if obj.json:
            out.print_json(version)
        else:
            out.echo(
                f"training {version.name} ({operation.name}); follow it with "
                f"`foretell operations wait {operation.name}`"
            )
        return
    version = train_with_progress(client, operation, show=obj.progress, response=tpb.SolutionVersion)
    if obj.json:
        out.print_json(version)
    else:
        out.echo(
            f"trained {version.name} in {_duration(version)} ({_training_state(version.state)}); "
            f"see `foretell metrics {_short(version.name)}`"
        )


@click.command()
@click.argument("version_ref", metavar="VERSION")
@json_option
def metrics(version_ref: str) -> None:
    """Offline metrics of a trained version on its time-based hold-out.

    VERSION: `movies/v1`, `solutions/movies/versions/v1`, or `movies` for its latest version.
    """
    client = state().client
    found = client.get_solution_metrics(version_name(client, version_ref))
    if state().json:
        out.print_json(found)
        return
    out.echo(f"{found.solution_version}")
    print_metrics(found)


# ---- campaigns ---------------------------------------------------------------------------


def _show_campaign(found: rpb.Campaign) -> None:
    if state().json:
        out.print_json(found)
        return
    pairs: list[tuple[str, object]] = [
        ("name", found.name),
        ("solution_version", found.solution_version),
        ("state", _deployment_state(found.state)),
        ("exploration_weight", f"{found.exploration_config.exploration_weight:g}"),
        ("exploration_cutoff_days", f"{found.exploration_config.exploration_item_age_cutoff_days:g}"),
        ("metadata", "yes" if found.enable_metadata_with_recommendations else "no"),
        ("created", out.timestamp(found.create_time)),
        ("updated", out.timestamp(found.update_time)),
    ]
    if found.HasField("error") and found.error.code:
        pairs.append(("error", found.error.message))
    out.print_fields(pairs)


@click.group()
def campaign() -> None:
    """Campaigns: solution versions deployed for real-time recommendations."""


_exploration_weight = click.option(
    "--exploration-weight",
    type=click.FloatRange(0, 1),
    default=None,
    help="0 (exploit only) to 1: how much to show new items.",
)
_exploration_cutoff = click.option(
    "--exploration-cutoff-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Only items newer than this are explored.",
)


@campaign.command("create")
@click.argument("campaign_id")
@click.argument("version_ref", metavar="VERSION")
@_exploration_weight
@_exploration_cutoff
@click.option("--metadata", is_flag=True, help="Let requests ask for item columns (recommend --column).")
@json_option
def campaign_create(
    campaign_id: str,
    version_ref: str,
    exploration_weight: float | None,
    exploration_cutoff_days: float | None,
    metadata: bool,
) -> None:
    """Deploy VERSION (`movies/v1`, or `movies` for its latest) as campaigns/CAMPAIGN_ID."""
    client = state().client
    created = client.create_campaign(
        campaign_id,
        version_name(client, version_ref),
        exploration_weight=exploration_weight,
        item_age_cutoff_days=exploration_cutoff_days,
        metadata=metadata,
    )
    if state().json:
        out.print_json(created)
    else:
        out.echo(f"deployed {created.solution_version} as {created.name} ({_deployment_state(created.state)})")


@campaign.command("update")
@click.argument("name")
@click.argument("version_ref", metavar="[VERSION]", required=False)
@_exploration_weight
@_exploration_cutoff
@click.option("--metadata/--no-metadata", default=None, help="Allow item columns in answers.")
@json_option
def campaign_update(
    name: str,
    version_ref: str | None,
    exploration_weight: float | None,
    exploration_cutoff_days: float | None,
    metadata: bool | None,
) -> None:
    """Hot-swap a campaign to VERSION and/or change its settings, without failing requests."""
    client = state().client
    version = version_name(client, version_ref) if version_ref else ""
    if not version and exploration_weight is None and exploration_cutoff_days is None and metadata is None:
        raise CliError(
            "nothing to update: give a VERSION, --exploration-weight, --exploration-cutoff-days "
            "or --metadata/--no-metadata"
        )
    updated = client.update_campaign(
        campaign_name(name),
        version,
        exploration_weight=exploration_weight,
        item_age_cutoff_days=exploration_cutoff_days,
        metadata=metadata,
    )
    if state().json:
        out.print_json(updated)
    else:
        out.echo(f"updated {updated.name}: serving {updated.solution_version} ({_deployment_state(updated.state)})")


@campaign.command("list")
@json_option
def campaign_list() -> None:
    """List campaigns."""
    client = state().client
    found = list(client.list_all(client.recommendations.ListCampaigns, rapi.ListCampaignsRequest(), "campaigns"))
    if state().json:
        out.print_json(rapi.ListCampaignsResponse(campaigns=found))
        return
    out.print_table(
        ["NAME", "SOLUTION VERSION", "STATE", "UPDATED"],
        [(c.name, _short(c.solution_version), _deployment_state(c.state), out.timestamp(c.update_time)) for c in found],
        empty="no campaigns",
    )


@campaign.command("describe")
@click.argument("name")
@json_option
def campaign_describe(name: str) -> None:
    """Show a campaign (NAME: `shop` or `campaigns/shop`)."""
    _show_campaign(state().client.get_campaign(campaign_name(name)))


@campaign.command("delete")
@click.argument("name")
def campaign_delete(name: str) -> None:
    """Stop serving a campaign and delete it."""
    client = state().client
    full = campaign_name(name)
    client.call(client.recommendations.DeleteCampaign, rapi.DeleteCampaignRequest(name=full))
    out.echo(f"deleted {full}")


# ---- filters -----------------------------------------------------------------------------


@click.group("filter")
def filter_group() -> None:
    """Filters: Amazon Personalize filter expressions applied to recommendations."""


@filter_group.command("create")
@click.argument("filter_id")
@click.argument("expression")
@click.option("--group", "dataset_group", required=True, help="Dataset group: `shop` or `datasetGroups/shop`.")
@json_option
def filter_create(filter_id: str, expression: str, dataset_group: str) -> None:
    """Create filters/FILTER_ID from EXPRESSION.

    \b
    Examples:
      foretell filter create no-horror --group shop 'EXCLUDE ItemID WHERE Items.GENRES IN ("Horror")'
      foretell filter create genre --group shop 'INCLUDE ItemID WHERE Items.GENRES IN ($GENRES)'
      foretell recommend shop --user u1 --filter genre --filter-value 'GENRES="Comedy"'
    """
    created = state().client.create_filter(filter_id, out.group_name(dataset_group), expression)
    if state().json:
        out.print_json(created)
    else:
        out.echo(f"created {created.name}")


@filter_group.command("list")
@click.option("--group", "dataset_group", default="", help="Only this dataset group's filters.")
@json_option
def filter_list(dataset_group: str) -> None:
    """List filters."""
    client = state().client
    request = rapi.ListFiltersRequest(dataset_group=out.group_name(dataset_group) if dataset_group else "")
    found = list(client.list_all(client.recommendations.ListFilters, request, "filters"))
    if state().json:
        out.print_json(rapi.ListFiltersResponse(filters=found))
        return
    out.print_table(
        ["NAME", "DATASET GROUP", "EXPRESSION"],
        [(f.name, f.dataset_group, f.filter_expression) for f in found],
        empty="no filters",
    )


@filter_group.command("delete")
@click.argument("name")
def filter_delete(name: str) -> None:
    """Delete a filter."""
    client = state().client
    full = filter_name(name)
    client.call(client.recommendations.DeleteFilter, rapi.DeleteFilterRequest(name=full))
    out.echo(f"deleted {full}")


# ---- real-time requests ------------------------------------------------------------------

_filter_options = [
    click.option("--filter", "filter_ref", default="", help="A filter: `name` or `filters/name`."),
    click.option(
        "--filter-value",
        "filter_values",
        multiple=True,
        metavar="PARAM=VALUE",
        help='A value of the filter\'s $PARAM, e.g. GENRES=\'"Comedy","Drama"\'; repeatable.',
    ),
]
_column_option = click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="FIELD",
    help="An item field to show (the campaign needs --metadata); repeatable.",
)
_session_option = click.option("--session", "session_id", default="", help="Also use this session's PutEvents events.")


def _with_filter_options(f: F) -> F:
    for option in reversed(_filter_options):
        f = option(f)
    return f


def _filter_args(filter_ref: str, filter_values: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    values = _pairs(filter_values, "--filter-value")
    if values and not filter_ref:
        raise CliError("--filter-value needs --filter")
    return (filter_name(filter_ref) if filter_ref else ""), values


@click.command()
@click.argument("campaign_ref", metavar="CAMPAIGN")
@click.option("--user", "user_id", default="", help="Recommend for this user.")
@click.option("--item", "item_id", default="", help="Recommend items related to this item instead.")
@click.option("-n", "--num-results", type=click.IntRange(1, 500), default=10, show_default=True)
@_with_filter_options
@_session_option
@click.option("--include-interacted", is_flag=True, help="Keep items the user already interacted with.")
@_column_option
@json_option
def recommend(
    campaign_ref: str,
    user_id: str,
    item_id: str,
    num_results: int,
    filter_ref: str,
    filter_values: tuple[str, ...],
    session_id: str,
    include_interacted: bool,
    columns: tuple[str, ...],
) -> None:
    """Recommend items from CAMPAIGN for a user (--user) or related to an item (--item)."""
    if bool(user_id) == bool(item_id):
        raise CliError("give exactly one of --user USER and --item ITEM")
    name, values = _filter_args(filter_ref, filter_values)
    response = state().client.get_recommendations(
        campaign_name(campaign_ref),
        user_id=user_id,
        item_id=item_id,
        num_results=num_results,
        filter=name,
        filter_values=values,
        session_id=session_id,
        include_interacted=include_interacted,
        metadata_columns=columns,
    )
    if state().json:
        out.print_json(response)
    else:
        print_items(response.item_list, columns, empty="no recommendations")


@click.command()
@click.argument("campaign_ref", metavar="CAMPAIGN")
@click.argument("items", nargs=-1, required=True)
@click.option("--user", "user_id", required=True, help="Rank for this user.")
@_with_filter_options
@_session_option
@_column_option
@json_option
def rank(
    campaign_ref: str,
    items: tuple[str, ...],
    user_id: str,
    filter_ref: str,
    filter_values: tuple[str, ...],
    session_id: str,
    columns: tuple[str, ...],
) -> None:
    """Order ITEMS for a user, best first; items the model does not know come last, unscored."""
    name, values = _filter_args(filter_ref, filter_values)
    response = state().client.get_personalized_ranking(
        campaign_name(campaign_ref),
        user_id,
        items,
        filter=name,
        filter_values=values,
        session_id=session_id,
        metadata_columns=columns,
    )
    if state().json:
        out.print_json(response)
    else:
        print_items(response.personalized_ranking, columns, empty="no items left after the filter")


@click.command()
@click.argument("campaign_ref", metavar="CAMPAIGN")
@click.argument("item_id", metavar="ITEM")
@click.option("-n", "--num-results", type=click.IntRange(1, 500), default=10, show_default=True)
@_with_filter_options
@json_option
def similar(campaign_ref: str, item_id: str, num_results: int, filter_ref: str, filter_values: tuple[str, ...]) -> None:
    """Items similar to ITEM according to CAMPAIGN's model."""
    name, values = _filter_args(filter_ref, filter_values)
    response = state().client.get_similar_items(
        campaign_name(campaign_ref), item_id, num_results=num_results, filter=name, filter_values=values
    )
    if state().json:
        out.print_json(response)
    else:
        print_items(response.item_list, empty="no similar items")
