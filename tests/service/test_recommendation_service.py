"""RecommendationService over a real server on port 0 and a real SQLite file.

Most tests serve a campaign whose artifact the test writes with a small co-occurrence model
and records in the database before the server starts, so they exercise the start-up reload
and do not depend on training. The end-to-end tests at the bottom train through the training
service.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from foretell.core.artifacts import uri_of
from foretell.core.db import make_engine
from foretell.core.settings import Settings
from foretell.recipes.artifact import Artifact, save_artifact
from foretell.recipes.base import Interactions, Param, Progress, Recommender, no_progress
from foretell.recipes.registry import RECIPES
from foretell.recommendation.store import RecommendationStore
from foretell.v1 import dataset_pb2, dataset_service_pb2, training_pb2, training_service_pb2
from foretell.v1 import recommendation_pb2 as pb
from foretell.v1 import recommendation_service_pb2 as api

from errors import expect_error
from support import Group, Stubs, interactions_csv, make_recommendation_group, start_stubs, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
CAMPAIGN = "campaigns/shop"
GENRES = ["rock", "jazz", "pop"]


class CoOccurrence(Recommender):
    """Scores items by co-occurrence with the history (plus a popularity tie-break)."""

    name = "test-cooccurrence"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, counts: np.ndarray, popularity: np.ndarray) -> None:
        self.counts, self.popularity, self.n_items = counts, popularity, len(popularity)

    @classmethod
    def fit(cls, data: Interactions, params: dict[str, Any], progress: Progress = no_progress) -> CoOccurrence:
        seen = np.zeros((data.n_users, data.n_items), dtype=np.float32)
        seen[data.users, data.items] = 1
        counts = seen.T @ seen
        np.fill_diagonal(counts, 0)
        popularity = np.bincount(data.items, minlength=data.n_items).astype(np.float32)
        return cls(counts, popularity / max(1.0, popularity.max()) * 1e-3)

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        out = np.tile(self.popularity, (len(users), 1))
        for row, history in enumerate(histories):
            if len(history):
                out[row] += self.counts[np.asarray(history)].sum(axis=0)
        return out

    def save(self, directory: Path) -> None:
        np.savez(directory / "model.npz", counts=self.counts, popularity=self.popularity)

    @classmethod
    def load(cls, directory: Path) -> CoOccurrence:
        with np.load(directory / "model.npz") as z:
            return cls(z["counts"], z["popularity"])


def catalogue_data(users: int = 30, items: int = 60, seed: int = 0) -> Interactions:
    """User k likes genre k % 3; item k has genre k % 3 (rock, jazz, pop); i55..i59 are cold."""
    rng = np.random.default_rng(seed)
    u, i = [], []
    for user in range(users):
        liked = [k for k in range(55) if k % 3 == user % 3]
        for item in rng.choice(liked, size=6, replace=False):
            u.append(user)
            i.append(int(item))
    return Interactions(
        user_ids=np.array([f"u{k}" for k in range(users)], dtype=object),
        item_ids=np.array([f"i{k}" for k in range(items)], dtype=object),
        users=np.array(u, dtype=np.int32),
        items=np.array(i, dtype=np.int32),
        timestamps=1_700_000_000 + np.arange(len(u), dtype=np.int64),
        event_types=np.zeros(len(u), dtype=np.int16),
        event_type_names=("click",),
        item_features={
            "GENRES": np.array([GENRES[k % 3] for k in range(items)], dtype=object),
            "PRICE": np.array([str(k) for k in range(items)], dtype=object),
        },
        # Warm items are a year old; the cold ones were just added (exploration picks them).
        item_created=np.where(np.arange(items) >= 55, 1_700_000_000.0, 1_670_000_000.0),
    )


def write_artifact(directory: Path, data: Interactions) -> str:
    save_artifact(
        directory,
        Artifact(CoOccurrence.fit(data, {}), data, "test-cooccurrence", {}, snapshot_time=int(time.time()) - 5),
    )
    return uri_of(directory)


def seed_campaign(settings: Settings, artifact_uri: str, group: str, name: str = CAMPAIGN, **extra: Any) -> None:
    """Records an ACTIVE campaign as a previous server run would have left it."""
    engine = make_engine(settings.database_url)
    try:
        RecommendationStore(engine).create_campaign(
            {
                "name": name,
                "solution_version": "solutions/seeded/versions/v1",
                "dataset_group": group,
                "artifact_uri": artifact_uri,
                "exploration_weight": extra.get("exploration_weight", 0.0),
                "exploration_cutoff_days": 0.0,
                "metadata_enabled": extra.get("metadata_enabled", True),
                "state": "ACTIVE",
            }
        )
    finally:
        engine.dispose()


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RECIPES, "test-cooccurrence", f"{__name__}:CoOccurrence")


@pytest.fixture
def served(settings: Settings, tmp_path: Path, recipe: None) -> Iterator[tuple[Stubs, Group]]:
    """A server (restarted once) with group "shop" and the ACTIVE campaign "campaigns/shop"."""
    first = start_stubs(settings)
    group = make_recommendation_group(first)
    first.channel.close()
    first.app.stop(None)
    seed_campaign(settings, write_artifact(tmp_path / "artifact", catalogue_data()), group.name)
    stubs = start_stubs(settings)
    yield stubs, group
    stubs.channel.close()
    stubs.app.stop(None)


def recommend(stubs: Stubs, **fields: Any) -> api.GetRecommendationsResponse:
    fields.setdefault("campaign", CAMPAIGN)
    return stubs.recommendations.GetRecommendations(api.GetRecommendationsRequest(**fields), timeout=10)


def rank(stubs: Stubs, **fields: Any) -> api.GetPersonalizedRankingResponse:
    fields.setdefault("campaign", CAMPAIGN)
    return stubs.recommendations.GetPersonalizedRanking(api.GetPersonalizedRankingRequest(**fields), timeout=10)


def create_filter(stubs: Stubs, filter_id: str, expression: str, group: str = "datasetGroups/shop") -> pb.Filter:
    return stubs.recommendations.CreateFilter(
        api.CreateFilterRequest(
            filter_id=filter_id, filter=pb.Filter(dataset_group=group, filter_expression=expression)
        ),
        timeout=10,
    )


def put_click(stubs: Stubs, group: str, item: str, user: str = "", session: str = "s1") -> None:
    stubs.datasets.PutEvents(
        dataset_service_pb2.PutEventsRequest(
            dataset_group=group,
            session_id=session,
            user_id=user,
            events=[
                dataset_pb2.Event(
                    event_type="click", item_id=item, sent_at=timestamp_pb2.Timestamp(seconds=int(time.time()))
                )
            ],
        ),
        timeout=10,
    )


def ids(items: Any) -> list[str]:
    return [i.item_id for i in items]


# ---- bad input ----------------------------------------------------------------------------


def test_bad_requests_name_the_field(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    expect_error(lambda: recommend(stubs, campaign="", user_id="u1"), INVALID, "campaign")
    expect_error(lambda: recommend(stubs, campaign="shop", user_id="u1"), INVALID, "campaign")
    expect_error(lambda: recommend(stubs, campaign="campaigns/nope", user_id="u1"), NOT_FOUND)
    expect_error(lambda: recommend(stubs), INVALID, "user_id")
    expect_error(lambda: recommend(stubs, user_id="u1", num_results=-1), INVALID, "num_results")
    expect_error(lambda: recommend(stubs, user_id="u1", num_results=501), INVALID, "num_results")
    expect_error(lambda: recommend(stubs, user_id="x" * 300), INVALID, "user_id")
    expect_error(lambda: recommend(stubs, user_id="u1", filter_values={"A": '"b"'}), INVALID, "filter_values")
    expect_error(lambda: rank(stubs, user_id="u1"), INVALID, "input_list")
    expect_error(lambda: rank(stubs, user_id="u1", input_list=[f"i{k}" for k in range(501)]), INVALID, "input_list")
    expect_error(lambda: rank(stubs, user_id="u1", input_list=["i1", ""]), INVALID, "input_list[1]")
    expect_error(lambda: rank(stubs, input_list=["i1"]), INVALID, "user_id")
    expect_error(lambda: rank(stubs, campaign="campaigns/nope", user_id="u1", input_list=["i1"]), NOT_FOUND)
    similar = stubs.recommendations.GetSimilarItems
    expect_error(lambda: similar(api.GetSimilarItemsRequest(campaign=CAMPAIGN), timeout=5), INVALID, "item_id")
    status = expect_error(
        lambda: similar(api.GetSimilarItemsRequest(campaign=CAMPAIGN, item_id="nope"), timeout=5), NOT_FOUND
    )
    assert "nope" in status.message
    expect_error(lambda: recommend(stubs, user_id="u1", metadata_columns=["COLOR"]), INVALID, "metadata_columns[0]")


def test_filters_are_checked_when_created_and_when_used(served: tuple[Stubs, Group]) -> None:
    stubs, group = served
    status = expect_error(
        lambda: create_filter(stubs, "broken", 'EXCLUDE ItemID WHERE Items.GENRES IN ("a"'),
        INVALID,
        "filter.filter_expression",
    )
    assert "position 41" in status.message
    deep = "EXCLUDE ItemID WHERE " + "(" * 1100 + 'Items.GENRES IN ("a")' + ")" * 1100  # under 2,500 characters
    status = expect_error(lambda: create_filter(stubs, "deep", deep), INVALID, "filter.filter_expression")
    assert "nest more than 32" in status.message
    expect_error(
        lambda: create_filter(stubs, "f", 'EXCLUDE ItemID WHERE Items.GENRES IN ("a")', "datasetGroups/none"), NOT_FOUND
    )
    expect_error(
        lambda: create_filter(stubs, "Bad_Id", 'EXCLUDE ItemID WHERE Items.GENRES IN ("a")'), INVALID, "filter_id"
    )
    created = create_filter(stubs, "no-genre", "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)")
    assert created.name == "filters/no-genre" and created.dataset_group == group.name
    create_filter(stubs, "colour", 'EXCLUDE ItemID WHERE Items.COLOR IN ("red")')

    status = expect_error(lambda: recommend(stubs, user_id="u1", filter="filters/missing"), NOT_FOUND)
    assert "filters/missing" in status.message
    expect_error(lambda: recommend(stubs, user_id="u1", filter="missing"), INVALID, "filter")
    expect_error(lambda: recommend(stubs, user_id="u1", filter="filters/no-genre"), INVALID, "filter_values")
    bad_values = {"GENRES": '"rock'}
    expect_error(
        lambda: recommend(stubs, user_id="u1", filter="filters/no-genre", filter_values=bad_values),
        INVALID,
        "filter_values",
    )
    expect_error(lambda: recommend(stubs, user_id="u1", filter="filters/colour"), INVALID, "filter")

    got = stubs.recommendations.GetFilter(api.GetFilterRequest(name="filters/no-genre"), timeout=5)
    assert got.filter_expression == "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)"
    listed = stubs.recommendations.ListFilters(api.ListFiltersRequest(dataset_group=group.name, page_size=1), timeout=5)
    assert [f.name for f in listed.filters] == ["filters/colour"] and listed.next_page_token
    rest = stubs.recommendations.ListFilters(
        api.ListFiltersRequest(dataset_group=group.name, page_size=1, page_token=listed.next_page_token), timeout=5
    )
    assert [f.name for f in rest.filters] == ["filters/no-genre"]
    stubs.recommendations.DeleteFilter(api.DeleteFilterRequest(name="filters/colour"), timeout=5)
    expect_error(
        lambda: stubs.recommendations.GetFilter(api.GetFilterRequest(name="filters/colour"), timeout=5), NOT_FOUND
    )


def test_campaign_requests_are_validated(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    create = stubs.recommendations.CreateCampaign
    expect_error(
        lambda: create(
            api.CreateCampaignRequest(campaign=pb.Campaign(solution_version="solutions/s/versions/v")), timeout=5
        ),
        INVALID,
        "campaign_id",
    )
    expect_error(
        lambda: create(api.CreateCampaignRequest(campaign_id="c"), timeout=5), INVALID, "campaign.solution_version"
    )
    expect_error(
        lambda: create(
            api.CreateCampaignRequest(campaign_id="c", campaign=pb.Campaign(solution_version="v1")), timeout=5
        ),
        INVALID,
        "campaign.solution_version",
    )
    too_much = pb.Campaign(
        solution_version="solutions/s/versions/v", exploration_config=pb.ExplorationConfig(exploration_weight=1.5)
    )
    expect_error(
        lambda: create(api.CreateCampaignRequest(campaign_id="c", campaign=too_much), timeout=5),
        INVALID,
        "campaign.exploration_config.exploration_weight",
    )
    expect_error(
        lambda: stubs.recommendations.GetCampaign(api.GetCampaignRequest(name="campaigns/nope"), timeout=5), NOT_FOUND
    )
    update = api.UpdateCampaignRequest(
        campaign=pb.Campaign(name=CAMPAIGN), update_mask=field_mask_pb2.FieldMask(paths=["state"])
    )
    expect_error(lambda: stubs.recommendations.UpdateCampaign(update, timeout=5), INVALID, "update_mask.paths[0]")
    expect_error(
        lambda: stubs.recommendations.ListCampaigns(api.ListCampaignsRequest(page_size=-1), timeout=5),
        INVALID,
        "page_size",
    )


# ---- serving ------------------------------------------------------------------------------


def test_a_reloaded_campaign_serves_recommendations_rankings_and_similar_items(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    campaign = stubs.recommendations.GetCampaign(api.GetCampaignRequest(name=CAMPAIGN), timeout=5)
    assert campaign.state == pb.DEPLOYMENT_STATE_ACTIVE
    first = recommend(stubs, user_id="u1", num_results=10)
    second = recommend(stubs, user_id="u1", num_results=10)
    assert len(first.item_list) == 10 and ids(first.item_list) == ids(second.item_list)
    assert first.recommendation_id != second.recommendation_id and uuid.UUID(first.recommendation_id)
    assert all(p.reason == "model" and p.HasField("score") for p in first.item_list)
    # u1 likes genre index 1 (jazz): its top answers are jazz items it has not seen.
    assert all(int(i[1:]) % 3 == 1 for i in ids(first.item_list)[:5])
    assert len(recommend(stubs, user_id="u1").item_list) == 25  # 0 means 25
    popular = recommend(stubs, user_id="newcomer", num_results=5)
    assert {p.reason for p in popular.item_list} == {"popular"}

    with_meta = recommend(stubs, user_id="u1", num_results=3, metadata_columns=["genres", "PRICE"])
    for p in with_meta.item_list:
        assert dict(p.metadata) == {"GENRES": "jazz", "PRICE": p.item_id[1:]}

    ranking = rank(stubs, user_id="u1", input_list=["i0", "zzz", "i1", "i0", "i4"])
    assert ids(ranking.personalized_ranking)[:3] in (["i1", "i4", "i0"], ["i4", "i1", "i0"])
    assert ids(ranking.personalized_ranking)[-1] == "zzz"
    assert not ranking.personalized_ranking[-1].HasField("score")
    assert len(ranking.personalized_ranking) == 4  # the repeated i0 counts once

    similar = stubs.recommendations.GetSimilarItems(
        api.GetSimilarItemsRequest(campaign=CAMPAIGN, item_id="i3", num_results=5), timeout=5
    )
    assert len(similar.item_list) == 5 and "i3" not in ids(similar.item_list)
    assert all(int(i[1:]) % 3 == 0 for i in ids(similar.item_list))
    related = recommend(stubs, item_id="i3", num_results=5)
    assert ids(related.item_list) == ids(similar.item_list)


def test_filters_change_what_is_served(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    create_filter(stubs, "no-genre", "EXCLUDE ItemID WHERE Items.GENRES IN ($GENRES)")
    create_filter(stubs, "cheap", "INCLUDE ItemID WHERE Items.PRICE < $MAX")
    no_jazz = recommend(
        stubs, user_id="u1", num_results=20, filter="filters/no-genre", filter_values={"GENRES": '"jazz"'}
    )
    assert len(no_jazz.item_list) == 20 and all(int(i[1:]) % 3 != 1 for i in ids(no_jazz.item_list))
    cheap = recommend(stubs, user_id="u1", num_results=50, filter="filters/cheap", filter_values={"MAX": "10"})
    assert ids(cheap.item_list) and all(int(i[1:]) < 10 for i in ids(cheap.item_list))
    ranked = rank(
        stubs,
        user_id="u1",
        input_list=["i1", "i2", "i4"],
        filter="filters/no-genre",
        filter_values={"GENRES": '"jazz"'},
    )
    assert ids(ranked.personalized_ranking) == ["i2"]


def test_a_put_event_is_reflected_within_a_second(served: tuple[Stubs, Group]) -> None:
    stubs, group = served
    before = ids(recommend(stubs, user_id="u1", num_results=10).item_list)
    clicked = before[0]
    sent = time.monotonic()
    put_click(stubs, group.name, clicked, user="u1")
    while clicked in ids(recommend(stubs, user_id="u1", num_results=10).item_list):
        assert time.monotonic() - sent < 1.0, "the click was not reflected within 1 s"
        time.sleep(0.01)
    # An anonymous session is scored from its own clicks (on rock items) instead of popularity.
    put_click(stubs, group.name, "i0", session="anon-7")
    put_click(stubs, group.name, "i3", session="anon-7")
    sent = time.monotonic()
    while True:
        answer = recommend(stubs, user_id="visitor", session_id="anon-7", num_results=5)
        if answer.item_list[0].reason == "model" and not {"i0", "i3"} & set(ids(answer.item_list)):
            break
        assert time.monotonic() - sent < 1.0, "the session's clicks were not used within 1 s"
        time.sleep(0.01)
    assert all(int(i[1:]) % 3 == 0 for i in ids(answer.item_list)) and not {"i0", "i3"} & set(ids(answer.item_list))


def test_exploration_and_settings_update_without_reloading(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    plain = recommend(stubs, user_id="u1", num_results=10)
    assert not {"i55", "i56", "i57", "i58", "i59"} & set(ids(plain.item_list))
    update = api.UpdateCampaignRequest(
        campaign=pb.Campaign(name=CAMPAIGN, exploration_config=pb.ExplorationConfig(exploration_weight=0.3)),
        update_mask=field_mask_pb2.FieldMask(paths=["exploration_config.exploration_weight"]),
    )
    operation = stubs.wait(stubs.recommendations.UpdateCampaign(update, timeout=10))
    assert not operation.HasField("error")
    explored = recommend(stubs, user_id="u1", num_results=10)
    new = [p for p in explored.item_list if p.reason == "exploration"]
    assert len(new) == 3 and {p.item_id for p in new} <= {"i55", "i56", "i57", "i58", "i59"}
    assert not any(p.HasField("score") for p in new)
    # u1 likes jazz: the jazz newcomers i55 and i58 first, then the first of the equally new others.
    assert [p.item_id for p in new] == ["i55", "i58", "i56"]
    campaign = stubs.recommendations.GetCampaign(api.GetCampaignRequest(name=CAMPAIGN), timeout=5)
    assert campaign.exploration_config.exploration_weight == pytest.approx(0.3)
    assert campaign.state == pb.DEPLOYMENT_STATE_ACTIVE


def test_deleted_campaigns_stop_serving(served: tuple[Stubs, Group]) -> None:
    stubs, _ = served
    listed = stubs.recommendations.ListCampaigns(api.ListCampaignsRequest(), timeout=5)
    assert [c.name for c in listed.campaigns] == [CAMPAIGN]
    stubs.recommendations.DeleteCampaign(api.DeleteCampaignRequest(name=CAMPAIGN), timeout=5)
    expect_error(lambda: recommend(stubs, user_id="u1"), NOT_FOUND)
    expect_error(
        lambda: stubs.recommendations.DeleteCampaign(api.DeleteCampaignRequest(name=CAMPAIGN), timeout=5), NOT_FOUND
    )


# ---- end to end through training ----------------------------------------------------------


def _train(stubs: Stubs, group: Group, solution_id: str, recipe: str, params: dict[str, str] | None = None) -> str:
    stubs.training.CreateSolution(
        training_service_pb2.CreateSolutionRequest(
            solution_id=solution_id,
            solution=training_pb2.Solution(dataset_group=group.name, recipe=recipe, hyper_parameters=params or {}),
        ),
        timeout=10,
    )
    operation = stubs.training.CreateSolutionVersion(
        training_service_pb2.CreateSolutionVersionRequest(parent=f"solutions/{solution_id}"), timeout=10
    )
    done = stubs.wait(operation, timeout=240)
    assert not done.HasField("error"), done.error
    meta = training_pb2.SolutionVersion()
    done.response.Unpack(meta)
    return meta.name


def _deploy(stubs: Stubs, campaign_id: str, version: str) -> str:
    operation = stubs.recommendations.CreateCampaign(
        api.CreateCampaignRequest(campaign_id=campaign_id, campaign=pb.Campaign(solution_version=version)), timeout=10
    )
    assert stubs.recommendations.GetCampaign(
        api.GetCampaignRequest(name=f"campaigns/{campaign_id}"), timeout=5
    ).state in (
        pb.DEPLOYMENT_STATE_PENDING,
        pb.DEPLOYMENT_STATE_ACTIVE,
    )
    done = stubs.wait(operation, timeout=120)
    assert not done.HasField("error"), done.error
    return f"campaigns/{campaign_id}"


@pytest.fixture
def trained(stubs: Stubs) -> Group:
    group = make_recommendation_group(stubs)
    assert not stubs.wait(upload(stubs, group.interactions, interactions_csv(3000, users=60, items=120))).HasField(
        "error"
    )
    return group


def test_train_deploy_and_serve_end_to_end(stubs: Stubs, trained: Group) -> None:
    version = _train(stubs, trained, "pop", "popularity-count")
    expect_error(
        lambda: stubs.recommendations.CreateCampaign(
            api.CreateCampaignRequest(
                campaign_id="x", campaign=pb.Campaign(solution_version="solutions/pop/versions/nope")
            ),
            timeout=10,
        ),
        NOT_FOUND,
    )
    name = _deploy(stubs, "pop", version)
    result = recommend(stubs, campaign=name, user_id="u1", num_results=10)
    assert len(result.item_list) == 10
    ranking = rank(stubs, campaign=name, user_id="u1", input_list=["i1", "nope", "i2"])
    assert ids(ranking.personalized_ranking)[-1] == "nope"
    similar = stubs.recommendations.GetSimilarItems(
        api.GetSimilarItemsRequest(campaign=name, item_id="i1", num_results=5), timeout=10
    )
    assert len(similar.item_list) == 5


def test_a_campaign_is_active_and_serving_before_any_user_is_warmed(
    stubs: Stubs, trained: Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foretell.recommendation.engine import Engine

    release, warming = threading.Event(), threading.Event()
    real = Engine.warm

    def held(self: Engine, *args: Any, **kwargs: Any) -> int:
        warming.set()
        release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "warm", held)
    try:
        version = _train(stubs, trained, "pop-lazy", "popularity-count")
        start = time.monotonic()
        name = _deploy(stubs, "lazy", version)
        assert time.monotonic() - start < 20  # warming is held for 30 s: the deployment did not wait for it
        campaign = stubs.recommendations.GetCampaign(api.GetCampaignRequest(name=name), timeout=5)
        assert campaign.state == pb.DEPLOYMENT_STATE_ACTIVE
        assert len(recommend(stubs, campaign=name, user_id="u1", num_results=10).item_list) == 10
        assert warming.wait(10)  # and warming follows, in the background
    finally:
        release.set()


def test_a_served_version_is_not_deleted_under_its_campaign(stubs: Stubs, trained: Group) -> None:
    """Found: deleting the version a campaign served removed its model; the next restart marked the campaign FAILED."""
    version = _train(stubs, trained, "kept", "popularity-count")
    name = _deploy(stubs, "kept", version)
    for delete in (
        lambda: stubs.training.DeleteSolutionVersion(
            training_service_pb2.DeleteSolutionVersionRequest(name=version), timeout=10
        ),
        lambda: stubs.training.DeleteSolution(
            training_service_pb2.DeleteSolutionRequest(name="solutions/kept"), timeout=10
        ),
    ):
        status = expect_error(delete, grpc.StatusCode.FAILED_PRECONDITION)
        assert name in status.message
    assert recommend(stubs, campaign=name, user_id="u1", num_results=3).item_list
    stubs.recommendations.DeleteCampaign(api.DeleteCampaignRequest(name=name), timeout=10)
    stubs.training.DeleteSolution(training_service_pb2.DeleteSolutionRequest(name="solutions/kept"), timeout=10)


def walks_csv(users: int = 60, items: int = 40, length: int = 30) -> bytes:
    """Every user walks the catalogue in order (i7, i8, i9, ...): the next item follows the last one."""
    rows = ["USER_ID,ITEM_ID,TIMESTAMP,EVENT_TYPE"]
    for u in range(users):
        rows += [f"u{u},i{(u * 7 + k) % items},{1_700_000_000 + u * 100 + k},click" for k in range(length)]
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.slow
def test_a_click_changes_a_sequence_campaigns_next_answer_within_a_second(stubs: Stubs) -> None:
    group = make_recommendation_group(stubs)
    assert not stubs.wait(upload(stubs, group.interactions, walks_csv())).HasField("error")
    small = {
        "epochs": "20",
        "dim": "32",
        "max_len": "10",
        "architecture": "gru",
        "dropout": "0",
        "learning_rate": "0.01",
    }
    name = _deploy(stubs, "seq", _train(stubs, group, "seq", "sequence", small))

    def answer() -> list[str]:
        return ids(recommend(stubs, campaign=name, user_id="u3", num_results=40, include_interacted=True).item_list)

    before = answer()
    # Click the item whose successor the model ranks lowest now: a model that reads the new event
    # must move that successor up; excluding the clicked item alone would not.
    clicked = max(range(40), key=lambda k: before.index(f"i{(k + 1) % 40}"))
    successor = f"i{(clicked + 1) % 40}"
    put_click(stubs, group.name, f"i{clicked}", user="u3")
    sent = time.monotonic()
    while (after := answer()) == before:
        assert time.monotonic() - sent < 1.0, "the click did not change the answer within 1 s"
        time.sleep(0.01)
    assert after.index(successor) < before.index(successor) - 10, (before, clicked, after)


def test_update_campaign_hot_swaps_without_failing_requests(stubs: Stubs, trained: Group) -> None:
    first = _train(stubs, trained, "pop", "popularity-count")
    name = _deploy(stubs, "live", first)
    second_op = stubs.training.CreateSolutionVersion(
        training_service_pb2.CreateSolutionVersionRequest(parent="solutions/pop"), timeout=10
    )
    done = stubs.wait(second_op, timeout=240)
    second = training_pb2.SolutionVersion()
    done.response.Unpack(second)
    calls, errors = [0], []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                assert len(recommend(stubs, campaign=name, user_id="u1", num_results=10).item_list) == 10
                calls[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted below
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    update = api.UpdateCampaignRequest(
        campaign=pb.Campaign(name=name, solution_version=second.name),
        update_mask=field_mask_pb2.FieldMask(paths=["solution_version"]),
    )
    operation = stubs.recommendations.UpdateCampaign(update, timeout=10)
    assert stubs.recommendations.GetCampaign(api.GetCampaignRequest(name=name), timeout=5).state in (
        pb.DEPLOYMENT_STATE_UPDATING,
        pb.DEPLOYMENT_STATE_ACTIVE,
    )
    done = stubs.wait(operation, timeout=120)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert not done.HasField("error"), done.error
    assert errors == [] and calls[0] > 20
    campaign = stubs.recommendations.GetCampaign(api.GetCampaignRequest(name=name), timeout=5)
    assert campaign.solution_version == second.name and campaign.state == pb.DEPLOYMENT_STATE_ACTIVE


def test_batch_inference_writes_json_lines(stubs: Stubs, trained: Group, settings: Settings) -> None:
    version = _train(stubs, trained, "pop", "popularity-count")
    source = settings.data_dir / "files" / "in.jsonl"  # the default import root, the caller's area
    source.write_text('{"userId": "u1"}\n{"itemId": "i2"}\nnot json\n{"itemId": "nope"}\n')
    operation = stubs.recommendations.CreateBatchInferenceJob(
        api.CreateBatchInferenceJobRequest(
            batch_inference_job_id="b1",
            batch_inference_job=pb.BatchInferenceJob(solution_version=version, input_uri=uri_of(source), num_results=3),
        ),
        timeout=10,
    )
    done = stubs.wait(operation, timeout=60)
    assert not done.HasField("error"), done.error
    job = stubs.recommendations.GetBatchInferenceJob(
        api.GetBatchInferenceJobRequest(name="batchInferenceJobs/b1"), timeout=5
    )
    assert job.state == pb.DEPLOYMENT_STATE_SUCCEEDED
    lines = [json.loads(line) for line in Path(job.output_uri.removeprefix("file://")).read_text().splitlines()]
    assert [line["input"] for line in lines] == [{"userId": "u1"}, {"itemId": "i2"}, "not json", {"itemId": "nope"}]
    assert len(lines[0]["output"]["recommendedItems"]) == 3 and lines[0]["error"] is None
    assert lines[2]["output"] is None and lines[2]["error"] and lines[3]["error"]
    listed = stubs.recommendations.ListBatchInferenceJobs(
        api.ListBatchInferenceJobsRequest(solution_version=version), timeout=5
    )
    assert [j.name for j in listed.batch_inference_jobs] == ["batchInferenceJobs/b1"]
