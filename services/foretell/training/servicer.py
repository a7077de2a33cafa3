"""TrainingService: checks requests, records resources, hands training to the jobs.

Solutions live here; predictors and forecasts in `forecasting_servicer.ForecastingRpcs`.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.longrunning import operations_pb2

from foretell.core import auth, names, pagination
from foretell.core.artifact_store import Artifacts
from foretell.core.errors import FailedPrecondition, Violations, absent, invalid
from foretell.core.file_roots import FileRoots
from foretell.core.idempotency import IdempotencyStore
from foretell.core.operations import OperationStore
from foretell.recipes.registry import RECIPES, ParamError, parse_params, recipe_class
from foretell.training import convert
from foretell.training.forecasting_servicer import ForecastingRpcs
from foretell.training.jobs import TrainingJobs
from foretell.training.store import TrainingStore
from foretell.v1 import dataset_pb2, dataset_service_pb2, dataset_service_pb2_grpc, training_service_pb2_grpc
from foretell.v1 import training_pb2 as pb
from foretell.v1 import training_service_pb2 as api

SOLUTION = ("solutions",)
VERSION = ("solutions", "versions")
MAX_HPO_TRIALS = 50
# Metrics a solution version reports (and HPO may optimise).
METRIC_NAMES = frozenset(
    [f"{m}_at_{k}" for m in ("precision", "recall", "ndcg") for k in convert.METRIC_KS] + ["mrr", "catalog_coverage"]
)


def check_hpo(recipe: str, config: pb.HpoConfig, path: str) -> None:
    """Ranges must name numeric/categorical parameters of the recipe, inside their bounds."""
    problems = Violations()
    specs = recipe_class(recipe).params
    if config.objective_metric and config.objective_metric not in METRIC_NAMES:
        problems.add(f"{path}.objective_metric", f"must be one of {', '.join(sorted(METRIC_NAMES))}")
    if not 0 <= config.max_trials <= MAX_HPO_TRIALS:
        problems.add(f"{path}.max_trials", f"must be 0 (default 8) to {MAX_HPO_TRIALS}")
    ranges: list[tuple[str, Any, tuple[type, ...]]] = [
        *((f"{path}.integer_ranges[{i}]", r, (int,)) for i, r in enumerate(config.integer_ranges)),
        *((f"{path}.continuous_ranges[{i}]", r, (float, int)) for i, r in enumerate(config.continuous_ranges)),
    ]
    for where, r, kinds in ranges:
        spec = specs.get(r.name)
        if spec is None or spec.kind not in kinds:
            problems.add(f"{where}.name", f"is not a {'/'.join(k.__name__ for k in kinds)} parameter of {recipe}")
            continue
        if not (math.isfinite(r.min_value) and math.isfinite(r.max_value)):
            problems.add(f"{where}", "min_value and max_value must be finite numbers")
            continue
        if r.min_value > r.max_value:
            problems.add(f"{where}.max_value", "must be at least min_value")
        if (spec.low is not None and r.min_value < spec.low) or (spec.high is not None and r.max_value > spec.high):
            problems.add(f"{where}", f"must lie within [{spec.low}, {spec.high}]")
        if getattr(r, "log_scale", False) and r.min_value <= 0:
            problems.add(f"{where}.min_value", "must be > 0 on a log scale")
    for i, c in enumerate(config.categorical_ranges):
        spec = specs.get(c.name)
        if spec is None:
            problems.add(f"{path}.categorical_ranges[{i}].name", f"is not a parameter of {recipe}")
            continue
        for j, value in enumerate(c.values):
            try:
                parse_params(recipe, {c.name: value})
            except ParamError as exc:
                problems.add(f"{path}.categorical_ranges[{i}].values[{j}]", str(exc))
    problems.raise_if_any()


class TrainingServicer(ForecastingRpcs, training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(
        self,
        store: TrainingStore,
        jobs: TrainingJobs,
        operations: OperationStore,
        idempotency: IdempotencyStore,
        dataset_channel: grpc.Channel,
        artifacts: Artifacts,
        tokens: pagination.PageTokens,
    ) -> None:
        self._artifacts = artifacts
        self._tokens = tokens
        self._files = FileRoots(artifacts.settings)
        self._store = store
        self._jobs = jobs
        self._ops = operations
        self._idem = idempotency
        self._datasets = dataset_service_pb2_grpc.DatasetServiceStub(dataset_channel)

    # ---- solutions ---------------------------------------------------------------------

    def CreateSolution(self, request: api.CreateSolutionRequest, context: grpc.ServicerContext) -> pb.Solution:  # noqa: N802
        solution_id = names.check_id(request.solution_id, "solution_id")
        s = request.solution
        group = auth.allowed(names.check_name(s.dataset_group, "solution.dataset_group", "datasetGroups"))
        if s.recipe not in RECIPES:
            raise invalid("solution.recipe", f"unknown recipe {s.recipe[:64]!r}; one of {', '.join(RECIPES)}")
        try:
            parse_params(s.recipe, dict(s.hyper_parameters))
        except ParamError as exc:
            raise invalid(f"solution.hyper_parameters[{exc.name[:64]}]", str(exc)) from None
        if s.perform_hpo or s.HasField("hpo_config"):
            check_hpo(s.recipe, s.hpo_config, "solution.hpo_config")
        if len(s.event_type) > 256:
            raise invalid("solution.event_type", "is longer than 256 characters")
        self._check_group(group, "solution.dataset_group")
        values = {
            "name": f"solutions/{solution_id}",
            "dataset_group": group,
            "recipe": s.recipe,
            "hyper_parameters": dict(s.hyper_parameters),
            "perform_hpo": s.perform_hpo,
            "hpo_config": s.hpo_config.SerializeToString() if s.HasField("hpo_config") else None,
            "event_type": s.event_type,
        }
        return self._idem.run(
            "CreateSolution",
            request,
            pb.Solution,
            lambda: convert.solution(self._store.create_solution(values)),
        )

    def _check_group(
        self, group: str, field_name: str, domain: dataset_pb2.Domain.ValueType = dataset_pb2.DOMAIN_RECOMMENDATION
    ) -> None:
        try:
            found = self._datasets.GetDatasetGroup(dataset_service_pb2.GetDatasetGroupRequest(name=group), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise absent(group) from None
            raise
        if found.domain != domain:
            raise invalid(field_name, f"must be a dataset group of domain {dataset_pb2.Domain.Name(domain)}")

    def GetSolution(self, request: api.GetSolutionRequest, context: grpc.ServicerContext) -> pb.Solution:  # noqa: N802
        row = self._store.get_solution(names.check_name(request.name, "name", *SOLUTION))
        auth.authorize(row.dataset_group, row.name)
        return convert.solution(row)

    def ListSolutions(  # noqa: N802
        self, request: api.ListSolutionsRequest, context: grpc.ServicerContext
    ) -> api.ListSolutionsResponse:
        group = request.dataset_group
        if group:
            auth.authorize(names.check_name(group, "dataset_group", "datasetGroups"))
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, f"solutions:{group}", lambda n, after: self._store.list_solutions(group, n, after, groups)
        )
        return api.ListSolutionsResponse(solutions=[convert.solution(r) for r in rows], next_page_token=token)

    def DeleteSolution(  # noqa: N802
        self, request: api.DeleteSolutionRequest, context: grpc.ServicerContext
    ) -> api.DeleteSolutionResponse:
        name = names.check_name(request.name, "name", *SOLUTION)
        auth.authorize(self._store.get_solution(name).dataset_group, name)

        def delete() -> api.DeleteSolutionResponse:
            for version in self._store.delete_solution(name):
                self._artifacts.delete(version.artifact_uri)
            return api.DeleteSolutionResponse()

        return self._idem.run("DeleteSolution", request, api.DeleteSolutionResponse, delete)

    # ---- solution versions -------------------------------------------------------------

    def CreateSolutionVersion(  # noqa: N802
        self, request: api.CreateSolutionVersionRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        parent = names.check_name(request.parent, "parent", *SOLUTION)
        version_id = (
            names.check_id(request.solution_version_id, "solution_version_id")
            if request.solution_version_id
            else names.new_id()
        )
        if request.training_mode not in pb.TrainingMode.values():
            raise invalid("training_mode", "is not a known training mode")
        mode = "UPDATE" if request.training_mode == pb.TRAINING_MODE_UPDATE else "FULL"
        names.check_request_id(request.request_id)
        solution = self._store.get_solution(parent)
        auth.authorize(solution.dataset_group, parent)
        if mode == "UPDATE" and self._store.latest_succeeded_version(parent) is None:
            raise FailedPrecondition(
                f"solution {parent!r} has no trained version to update; train one with TRAINING_MODE_FULL first"
            )
        self._check_interactions(solution.dataset_group)

        def start() -> operations_pb2.Operation:
            name = f"{parent}/versions/{version_id}"
            operation = self._ops.create(name, "train", solution.dataset_group)
            self._store.create_version(
                {
                    "name": name,
                    "solution": parent,
                    "training_mode": mode,
                    "state": "PENDING",
                    "operation": operation.name,
                }
            )
            self._jobs.submit(operation.name, "solution-version", name)
            return operation

        return self._idem.run("CreateSolutionVersion", request, operations_pb2.Operation, start)

    def _authorized_version(self, name: str) -> str:
        """`name` of a solution version, once the caller may use its solution's dataset group."""
        if auth.restricted():
            solution = name.rsplit("/versions/", 1)[0]
            auth.authorize(self._store.get_solution(solution).dataset_group, solution)
        return name

    def _check_interactions(self, group: str) -> None:
        listed = self._datasets.ListDatasets(
            dataset_service_pb2.ListDatasetsRequest(parent=group, page_size=100), timeout=10
        )
        rows = sum(d.row_count for d in listed.datasets if d.dataset_type == dataset_pb2.DATASET_TYPE_INTERACTIONS)
        if rows == 0:
            raise FailedPrecondition(f"dataset group {group!r} has no interactions yet; import some first")

    def GetSolutionVersion(  # noqa: N802
        self, request: api.GetSolutionVersionRequest, context: grpc.ServicerContext
    ) -> pb.SolutionVersion:
        name = names.check_name(request.name, "name", *VERSION)
        return convert.solution_version(self._store.get_version(self._authorized_version(name)))

    def ListSolutionVersions(  # noqa: N802
        self, request: api.ListSolutionVersionsRequest, context: grpc.ServicerContext
    ) -> api.ListSolutionVersionsResponse:
        parent = names.check_name(request.parent, "parent", *SOLUTION)
        auth.authorize(self._store.get_solution(parent).dataset_group, parent)
        rows, token = self._tokens.paged(request, parent, lambda n, after: self._store.list_versions(parent, n, after))
        return api.ListSolutionVersionsResponse(
            solution_versions=[convert.solution_version(r) for r in rows], next_page_token=token
        )

    def DeleteSolutionVersion(  # noqa: N802
        self, request: api.DeleteSolutionVersionRequest, context: grpc.ServicerContext
    ) -> api.DeleteSolutionVersionResponse:
        name = self._authorized_version(names.check_name(request.name, "name", *VERSION))

        def delete() -> api.DeleteSolutionVersionResponse:
            self._artifacts.delete(self._store.delete_version(name).artifact_uri)
            return api.DeleteSolutionVersionResponse()

        return self._idem.run("DeleteSolutionVersion", request, api.DeleteSolutionVersionResponse, delete)

    def GetSolutionMetrics(  # noqa: N802
        self, request: api.GetSolutionMetricsRequest, context: grpc.ServicerContext
    ) -> api.GetSolutionMetricsResponse:
        row = self._store.get_version(self._authorized_version(names.check_name(request.name, "name", *VERSION)))
        if row.state != "SUCCEEDED":
            raise FailedPrecondition(f"solution version {row.name!r} is {row.state}; metrics exist once it SUCCEEDED")
        return api.GetSolutionMetricsResponse(metrics=convert.solution_metrics(row))
