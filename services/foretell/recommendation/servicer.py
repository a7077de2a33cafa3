"""RecommendationService: checks requests, then hands them to campaigns, the engine and the jobs.

Request rules beyond the proto comments:
- GetRecommendations with user_id recommends for the user (item_id is then ignored); with only
  item_id it returns items related to that item (as GetSimilarItems).
- Recent events: those PutEvents stored for user_id, followed by those sent without a user id
  in session_id. Items the user interacted with (training data and recent events) are left out
  unless include_interacted is set.
- GetPersonalizedRanking: a repeated id in input_list counts once, at its first position; known
  items a filter rejects are dropped; unknown items come last, unscored, in input order.
- `context` is accepted and not used by the current recipes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from foretell.core import auth, names, pagination
from foretell.core.errors import FailedPrecondition, NotFound, Violations, invalid
from foretell.core.file_roots import FileRoots, Place
from foretell.core.idempotency import IdempotencyStore
from foretell.recommendation.batch import BatchJobs, BatchSpec
from foretell.recommendation.campaigns import Campaigns, CampaignSpec, Deployment
from foretell.recommendation.engine import Exploration, Scored, UnknownItem
from foretell.recommendation.filters import BoundFilter, FilterSyntaxError, parse_filter
from foretell.recommendation.store import RecommendationStore, to_batch_job, to_campaign, to_filter
from foretell.v1 import recommendation_pb2 as pb
from foretell.v1 import recommendation_service_pb2 as api
from foretell.v1 import recommendation_service_pb2_grpc

DEFAULT_RESULTS = 25
MAX_RESULTS = 500
MAX_INPUT_LIST = 500
MAX_ID = 256
MAX_METADATA_COLUMNS = 50
CAMPAIGN = ("campaigns",)
FILTER = ("filters",)
BATCH = ("batchInferenceJobs",)
UPDATABLE = {
    "solution_version",
    "exploration_config",
    "exploration_config.exploration_weight",
    "exploration_config.exploration_item_age_cutoff_days",
    "enable_metadata_with_recommendations",
}


def _num_results(value: int, field_name: str, problems: Violations) -> int:
    if not 0 <= value <= MAX_RESULTS:
        problems.add(field_name, f"must be 0 (meaning {DEFAULT_RESULTS}) to {MAX_RESULTS}")
    return value or DEFAULT_RESULTS


def _check_id_length(value: str, field_name: str, problems: Violations) -> None:
    if len(value) > MAX_ID:
        problems.add(field_name, f"is longer than {MAX_ID} characters")


def _exploration(config: pb.ExplorationConfig, path: str) -> Exploration:
    problems = Violations()
    weight, cutoff = config.exploration_weight, config.exploration_item_age_cutoff_days
    if not (math.isfinite(weight) and 0 <= weight <= 1):
        problems.add(f"{path}.exploration_weight", "must be between 0 and 1")
    if not (math.isfinite(cutoff) and cutoff >= 0):
        problems.add(f"{path}.exploration_item_age_cutoff_days", "must be a number of days >= 0 (0 means 30)")
    problems.raise_if_any()
    return Exploration(weight, cutoff)


def _fill(
    target: RepeatedCompositeFieldContainer[pb.PredictedItem],
    items: list[Scored],
    deployment: Deployment,
    columns: list[str],
) -> None:
    # add() then attribute assignment is the cheapest way to build messages with upb.
    add = target.add
    for item_id, score, reason in items:
        predicted = add()
        predicted.item_id = item_id
        if score is not None:
            predicted.score = score
        predicted.reason = reason
        if columns:
            values = deployment.engine.metadata(item_id, columns)
            if values:
                predicted.metadata.update(values)


class RecommendationServicer(recommendation_service_pb2_grpc.RecommendationServiceServicer):
    def __init__(
        self,
        store: RecommendationStore,
        campaigns: Campaigns,
        batch: BatchJobs,
        idempotency: IdempotencyStore,
        dataset_groups: Callable[[str, str], None],
        batch_output: Callable[[str], str],
        tokens: pagination.PageTokens,
        files: FileRoots,
    ) -> None:
        self._files = files
        self._store = store
        self._tokens = tokens
        self._campaigns = campaigns
        self._batch = batch
        self._idem = idempotency
        self._check_group = dataset_groups
        self._batch_output = batch_output  # job id -> where its output goes by default

    # ---- campaigns ---------------------------------------------------------------------------

    def CreateCampaign(  # noqa: N802
        self, request: api.CreateCampaignRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        campaign_id = names.check_id(request.campaign_id, "campaign_id")
        campaign = request.campaign
        if not campaign.solution_version:
            raise invalid("campaign.solution_version", "is required")
        auth.authorize_resource(
            names.check_name(campaign.solution_version, "campaign.solution_version", "solutions", "versions")
        )
        spec = CampaignSpec(
            campaign.solution_version,
            _exploration(campaign.exploration_config, "campaign.exploration_config"),
            campaign.enable_metadata_with_recommendations,
        )
        names.check_request_id(request.request_id)
        return self._idem.run(
            "CreateCampaign",
            request,
            operations_pb2.Operation,
            lambda: self._campaigns.create(campaign_id, spec),
        )

    def GetCampaign(self, request: api.GetCampaignRequest, context: grpc.ServicerContext) -> pb.Campaign:  # noqa: N802
        row = self._store.get_campaign(names.check_name(request.name, "name", *CAMPAIGN))
        auth.authorize(row.dataset_group, row.name)
        return to_campaign(row)

    def ListCampaigns(  # noqa: N802
        self, request: api.ListCampaignsRequest, context: grpc.ServicerContext
    ) -> api.ListCampaignsResponse:
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, "campaigns", lambda size, after: self._store.list_campaigns(size, after, groups)
        )
        return api.ListCampaignsResponse(campaigns=[to_campaign(r) for r in rows], next_page_token=token)

    def UpdateCampaign(  # noqa: N802
        self, request: api.UpdateCampaignRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        name = names.check_name(request.campaign.name, "campaign.name", *CAMPAIGN)
        auth.authorize(self._store.get_campaign(name).dataset_group, name)
        paths = list(request.update_mask.paths) or [
            "solution_version",
            "exploration_config",
            "enable_metadata_with_recommendations",
        ]
        problems = Violations()
        for i, path in enumerate(paths):
            if path not in UPDATABLE:
                problems.add(f"update_mask.paths[{i}]", f"must be one of {', '.join(sorted(UPDATABLE))}")
        problems.raise_if_any()
        campaign = request.campaign
        if "solution_version" in paths:
            if not campaign.solution_version:
                raise invalid("campaign.solution_version", "is required")
            names.check_name(campaign.solution_version, "campaign.solution_version", "solutions", "versions")
            auth.authorize_resource(campaign.solution_version)
        wanted = _exploration(campaign.exploration_config, "campaign.exploration_config")
        names.check_request_id(request.request_id)

        def change(spec: CampaignSpec) -> CampaignSpec:
            exploration = spec.exploration
            if "exploration_config" in paths:
                exploration = wanted
            if "exploration_config.exploration_weight" in paths:
                exploration = replace(exploration, weight=wanted.weight)
            if "exploration_config.exploration_item_age_cutoff_days" in paths:
                exploration = replace(exploration, cutoff_days=wanted.cutoff_days)
            return CampaignSpec(
                campaign.solution_version if "solution_version" in paths else spec.solution_version,
                exploration,
                campaign.enable_metadata_with_recommendations
                if "enable_metadata_with_recommendations" in paths
                else spec.metadata_enabled,
            )

        return self._idem.run(
            "UpdateCampaign", request, operations_pb2.Operation, lambda: self._campaigns.update(name, change)
        )

    def DeleteCampaign(  # noqa: N802
        self, request: api.DeleteCampaignRequest, context: grpc.ServicerContext
    ) -> api.DeleteCampaignResponse:
        name = names.check_name(request.name, "name", *CAMPAIGN)
        names.check_request_id(request.request_id)
        auth.authorize(self._store.get_campaign(name).dataset_group, name)
        self._campaigns.delete(name)
        return api.DeleteCampaignResponse()

    # ---- filters -----------------------------------------------------------------------------

    def CreateFilter(self, request: api.CreateFilterRequest, context: grpc.ServicerContext) -> pb.Filter:  # noqa: N802
        filter_id = names.check_id(request.filter_id, "filter_id")
        group = auth.allowed(names.check_name(request.filter.dataset_group, "filter.dataset_group", "datasetGroups"))
        expression = request.filter.filter_expression
        if not expression:
            raise invalid("filter.filter_expression", "is required")
        try:
            parse_filter(expression)
        except FilterSyntaxError as exc:
            raise invalid("filter.filter_expression", str(exc)) from None
        names.check_request_id(request.request_id)
        self._check_group(group, "filter.dataset_group")
        return self._idem.run(
            "CreateFilter",
            request,
            pb.Filter,
            lambda: to_filter(self._store.create_filter(f"filters/{filter_id}", group, expression)),
        )

    def GetFilter(self, request: api.GetFilterRequest, context: grpc.ServicerContext) -> pb.Filter:  # noqa: N802
        row = self._store.get_filter(names.check_name(request.name, "name", *FILTER))
        auth.authorize(row.dataset_group, row.name)
        return to_filter(row)

    def ListFilters(self, request: api.ListFiltersRequest, context: grpc.ServicerContext) -> api.ListFiltersResponse:  # noqa: N802
        group = request.dataset_group
        if group:
            auth.authorize(names.check_name(group, "dataset_group", "datasetGroups"))
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, f"filters:{group}", lambda size, after: self._store.list_filters(group, size, after, groups)
        )
        return api.ListFiltersResponse(filters=[to_filter(r) for r in rows], next_page_token=token)

    def DeleteFilter(  # noqa: N802
        self, request: api.DeleteFilterRequest, context: grpc.ServicerContext
    ) -> api.DeleteFilterResponse:
        name = names.check_name(request.name, "name", *FILTER)
        names.check_request_id(request.request_id)
        auth.authorize(self._store.get_filter(name).dataset_group, name)
        self._store.delete_filter(name)
        return api.DeleteFilterResponse()

    def _filter(
        self,
        name: str,
        values: Any,
        dataset_group: str,
        field: str = "filter",
        values_field: str = "filter_values",
    ) -> BoundFilter | None:
        if not name:
            if values:
                raise invalid(values_field, "is set but no filter is")
            return None
        names.check_name(name, field, *FILTER)
        expression, group = self._store.parsed_filter(name)
        auth.authorize(group, name)  # another tenant's filter answers as an absent one, naming no group
        if group != dataset_group:
            raise invalid(field, f"belongs to {group}; the solution version was trained on {dataset_group}")
        return expression.bind(values, values_field)

    # ---- real-time requests --------------------------------------------------------------------

    def _serving(self, name: str) -> Deployment:
        """The campaign's deployment, once the caller may use its dataset group."""
        try:
            deployment = self._campaigns.serving(name)
        except FailedPrecondition:
            # Not loaded here: its state is only for callers of its group.
            auth.authorize(self._store.get_campaign(name).dataset_group, name)
            raise
        auth.authorize(deployment.dataset_group, name)
        return deployment

    def _metadata_columns(self, deployment: Deployment, columns: Sequence[str]) -> list[str]:
        if not columns:
            return []
        if not deployment.spec.metadata_enabled:
            raise invalid("metadata_columns", "the campaign does not enable metadata_with_recommendations")
        problems = Violations()
        if len(columns) > MAX_METADATA_COLUMNS:
            problems.add("metadata_columns", f"at most {MAX_METADATA_COLUMNS} columns")
        out = []
        for i, column in enumerate(columns):
            found = deployment.engine.catalog.field_name(column)
            if found is None:
                known = ", ".join(deployment.engine.catalog.columns) or "none"
                problems.add(f"metadata_columns[{i}]", f"{column!r} is not an item field (known: {known})")
            else:
                out.append(found)
        problems.raise_if_any()
        return out

    def GetRecommendations(  # noqa: N802
        self, request: api.GetRecommendationsRequest, context: grpc.ServicerContext
    ) -> api.GetRecommendationsResponse:
        user_id, item_id, session_id = request.user_id, request.item_id, request.session_id
        n = request.num_results or DEFAULT_RESULTS
        if (
            not request.campaign
            or not (user_id or item_id)
            or not 0 < n <= MAX_RESULTS
            or max(len(user_id), len(item_id), len(session_id)) > MAX_ID
        ):
            problems = Violations()
            problems.require(request.campaign, "campaign")
            _num_results(request.num_results, "num_results", problems)
            if not user_id and not item_id:
                problems.add("user_id", "one of user_id and item_id is required")
            for key in ("user_id", "item_id", "session_id"):
                _check_id_length(getattr(request, key), key, problems)
            problems.raise_if_any()
        deployment = self._serving(request.campaign)
        if not (request.filter or request.filter_values or request.metadata_columns or request.include_interacted):
            return self._cached_recommendations(deployment, user_id, item_id, session_id, n)
        item_filter = self._filter(request.filter, request.filter_values, deployment.dataset_group)
        columns = self._metadata_columns(deployment, request.metadata_columns)
        engine = deployment.engine
        if user_id:
            items = engine.recommend(
                user_id,
                deployment.recent(user_id, session_id),
                n,
                exclude_interacted=not request.include_interacted,
                item_filter=item_filter,
                exploration=deployment.exploration,
            )
        else:
            items = self._similar(deployment, item_id, n, item_filter)
        response = api.GetRecommendationsResponse(recommendation_id=str(uuid.uuid4()))
        _fill(response.item_list, items, deployment, columns)
        return response

    def _cached_recommendations(
        self, deployment: Deployment, user_id: str, item_id: str, session_id: str, n: int
    ) -> api.GetRecommendationsResponse:
        """The common request (no filter, no metadata) answered from the deployment's answer cache."""
        if user_id:
            recent = deployment.recent(user_id, session_id)
            if recent.stamp or user_id in deployment.engine.user_index:
                key: tuple[Any, ...] = (user_id, session_id, n, recent.stamp)
            else:  # every unknown user without events gets the same (popular) answer
                key = ("\0cold", n)
        else:
            key = ("\0item", item_id, n)
        answer = deployment.answers.get(key)
        if answer is None:
            if user_id:
                items = deployment.engine.recommend(user_id, recent, n, exploration=deployment.exploration)
            else:
                items = self._similar(deployment, item_id, n, None)
            built = api.GetRecommendationsResponse()
            _fill(built.item_list, items, deployment, [])
            answer = built.SerializeToString()
            deployment.answers.put(key, answer)
        response = api.GetRecommendationsResponse.FromString(answer)
        response.recommendation_id = str(uuid.uuid4())
        return response

    def GetPersonalizedRanking(  # noqa: N802
        self, request: api.GetPersonalizedRankingRequest, context: grpc.ServicerContext
    ) -> api.GetPersonalizedRankingResponse:
        items = list(request.input_list)
        if (
            not request.campaign
            or not request.user_id
            or max(len(request.user_id), len(request.session_id)) > MAX_ID
            or not 1 <= len(items) <= MAX_INPUT_LIST
            or not all(items)
            or max(map(len, items)) > MAX_ID
        ):
            problems = Violations()
            problems.require(request.campaign, "campaign")
            problems.require(request.user_id, "user_id")
            _check_id_length(request.user_id, "user_id", problems)
            _check_id_length(request.session_id, "session_id", problems)
            if not 1 <= len(items) <= MAX_INPUT_LIST:
                problems.add("input_list", f"must hold 1 to {MAX_INPUT_LIST} item ids")
            else:
                for i, item in enumerate(items):
                    if not item or len(item) > MAX_ID:
                        problems.add(f"input_list[{i}]", f"must be an item id of 1 to {MAX_ID} characters")
            problems.raise_if_any()
        deployment = self._serving(request.campaign)
        item_filter = self._filter(request.filter, request.filter_values, deployment.dataset_group)
        columns = self._metadata_columns(deployment, request.metadata_columns)
        ranked = deployment.engine.rank(
            request.user_id,
            list(dict.fromkeys(items)),
            deployment.recent(request.user_id, request.session_id),
            item_filter=item_filter,
        )
        response = api.GetPersonalizedRankingResponse(recommendation_id=str(uuid.uuid4()))
        _fill(response.personalized_ranking, ranked, deployment, columns)
        return response

    def GetSimilarItems(  # noqa: N802
        self, request: api.GetSimilarItemsRequest, context: grpc.ServicerContext
    ) -> api.GetSimilarItemsResponse:
        problems = Violations()
        problems.require(request.campaign, "campaign")
        problems.require(request.item_id, "item_id")
        _check_id_length(request.item_id, "item_id", problems)
        n = _num_results(request.num_results, "num_results", problems)
        problems.raise_if_any()
        deployment = self._serving(request.campaign)
        item_filter = self._filter(request.filter, request.filter_values, deployment.dataset_group)
        response = api.GetSimilarItemsResponse()
        _fill(response.item_list, self._similar(deployment, request.item_id, n, item_filter), deployment, [])
        return response

    def _similar(self, deployment: Deployment, item_id: str, n: int, item_filter: BoundFilter | None) -> list[Scored]:
        try:
            return deployment.engine.similar(item_id, n, item_filter=item_filter)
        except UnknownItem:
            raise NotFound(item_id, "item") from None

    # ---- batch inference -----------------------------------------------------------------------

    def CreateBatchInferenceJob(  # noqa: N802
        self, request: api.CreateBatchInferenceJobRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        job_id = names.check_id(request.batch_inference_job_id, "batch_inference_job_id")
        job = request.batch_inference_job
        prefix = "batch_inference_job"
        problems = Violations()
        problems.require(job.solution_version, f"{prefix}.solution_version")
        problems.require(job.input_uri, f"{prefix}.input_uri")
        n = _num_results(job.num_results, f"{prefix}.num_results", problems)
        problems.raise_if_any()
        auth.authorize_resource(
            names.check_name(job.solution_version, f"{prefix}.solution_version", "solutions", "versions")
        )
        source = self._files.source(job.input_uri, f"{prefix}.input_uri")
        names.check_request_id(request.request_id)
        resolved = self._campaigns.resolve(job.solution_version, f"{prefix}.solution_version")
        item_filter = self._filter(
            job.filter, job.filter_values, resolved.dataset_group, f"{prefix}.filter", f"{prefix}.filter_values"
        )

        def start() -> operations_pb2.Operation:
            # The output is checked inside the idempotent call: a retry of a finished job finds its file there.
            output = self._files.destination(job.output_uri, f"{prefix}.output_uri") if job.output_uri else None
            spec = BatchSpec(
                job_id,
                resolved,
                _uri(source),
                self._batch_output(job_id) if output is None else _uri(output),
                source if isinstance(source, Place) else None,
                output if isinstance(output, Place) else None,
                n,
                job.filter,
                dict(job.filter_values),
                item_filter,
            )
            return self._batch.start(spec)

        return self._idem.run("CreateBatchInferenceJob", request, operations_pb2.Operation, start)

    def GetBatchInferenceJob(  # noqa: N802
        self, request: api.GetBatchInferenceJobRequest, context: grpc.ServicerContext
    ) -> pb.BatchInferenceJob:
        row = self._store.get_batch_job(names.check_name(request.name, "name", *BATCH))
        auth.authorize_resource(row.solution_version, row.name)
        return to_batch_job(row)

    def ListBatchInferenceJobs(  # noqa: N802
        self, request: api.ListBatchInferenceJobsRequest, context: grpc.ServicerContext
    ) -> api.ListBatchInferenceJobsResponse:
        version = request.solution_version
        if version:
            auth.authorize_resource(names.check_name(version, "solution_version", "solutions", "versions"))
        groups = auth.visible_groups()
        rows, token = self._tokens.paged(
            request, f"batch:{version}", lambda size, after: self._store.list_batch_jobs(version, size, after, groups)
        )
        return api.ListBatchInferenceJobsResponse(
            batch_inference_jobs=[to_batch_job(r) for r in rows], next_page_token=token
        )


def _uri(place: Place | str) -> str:
    return place.uri if isinstance(place, Place) else place
