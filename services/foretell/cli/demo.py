"""`foretell demo`: an embedded all-in-one server, the data pipeline and recommendations, through the real client.

Everything the demo does goes over gRPC, exactly as a remote client would do it; the
server merely happens to run in the same process: import MovieLens-style data, train a
solution version, read its offline metrics, deploy a campaign, ask it for
recommendations, a ranking and similar items, and watch a real-time click change the
next answer. Running it again starts over: the previous demo's campaign, solution and
dataset group (with its datasets) are deleted first.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import itertools
import json
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format, struct_pb2

from foretell.cli import output as out
from foretell.cli.forecast_demo import run_forecast_demo
from foretell.cli.output import CliError
from foretell.cli.personalize import train_with_progress
from foretell.cli.progress import import_file, wait_with_progress
from foretell.client import Client, ForetellError, operation_response
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api
from foretell.v1 import recommendation_pb2 as rpb
from foretell.v1 import recommendation_service_pb2 as rapi
from foretell.v1 import training_pb2 as tpb
from foretell.v1 import training_service_pb2 as tapi

GROUP_ID = "movielens-demo"
INTERACTIONS_SCHEMA = f"{GROUP_ID}-interactions"
ITEMS_SCHEMA = f"{GROUP_ID}-items"
DEFAULT_ROWS = 20_000
#: Share of a synthetic user's interactions drawn from their two favourite genres (the rest: anything popular).
GENRE_LOYALTY = 0.85
SOLUTION = f"solutions/{GROUP_ID}"
CAMPAIGN = f"campaigns/{GROUP_ID}"
DEFAULT_RECIPE = "ease"
# The sequence model's defaults suit a GPU; on a laptop CPU these keep the demo's training well under a minute.
DEMO_HYPER_PARAMETERS = {
    "sequence": {"epochs": 10, "max_len": 50, "dim": 32, "layers": 1, "batch_size": 128, "learning_rate": 0.005}
}
#: How long the demo waits for a PutEvents click to show in the next recommendations.
REALTIME_WAIT_SECONDS = 3.0
# Movies added through PutItems after the import: id -> (title, genres).
NEW_ITEMS = {
    "new-1": ("The Quiet Algorithm (2025)", "Sci-Fi|Drama"),
    "new-2": ("Gradient Descent (2025)", "Thriller"),
    "new-3": ("Cold Start (2025)", "Comedy|Romance"),
}

INTERACTION_FIELDS = [
    pb.SchemaField(name="USER_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TIMESTAMP", type=pb.FIELD_TYPE_LONG),
    pb.SchemaField(name="EVENT_TYPE", type=pb.FIELD_TYPE_STRING, nullable=True),
    pb.SchemaField(name="EVENT_VALUE", type=pb.FIELD_TYPE_FLOAT, nullable=True),
]
ITEM_FIELDS = [
    pb.SchemaField(name="ITEM_ID", type=pb.FIELD_TYPE_STRING),
    pb.SchemaField(name="TITLE", type=pb.FIELD_TYPE_STRING, nullable=True, textual=True),
    pb.SchemaField(name="GENRES", type=pb.FIELD_TYPE_STRING, nullable=True, categorical=True),
    pb.SchemaField(name="CREATION_TIMESTAMP", type=pb.FIELD_TYPE_LONG, nullable=True),
]
INTERACTION_HEADER = [f.name for f in INTERACTION_FIELDS]
ITEM_HEADER = [f.name for f in ITEM_FIELDS]

GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# ml-100k's u.item has one 0/1 column per genre, in this order.
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
_ADJECTIVES = [
    "Silent",
    "Crimson",
    "Last",
    "Hidden",
    "Electric",
    "Broken",
    "Golden",
    "Midnight",
    "Lost",
    "Wild",
    "Frozen",
    "Secret",
    "Distant",
    "Burning",
    "Hollow",
    "Brave",
]
_NOUNS = [
    "Harbor",
    "Empire",
    "Garden",
    "Signal",
    "Voyage",
    "Kingdom",
    "Horizon",
    "Circus",
    "Frontier",
    "Machine",
    "River",
    "Letter",
    "Station",
    "Island",
    "Storm",
    "Orchard",
]
_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class DemoData:
    interactions: Path
    items: Path
    rows: int
    users: int
    item_count: int
    source: str
    sample_user: str
    popular_items: list[str] = field(default_factory=list)


# ---- data ------------------------------------------------------------------------------


def _year_start(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0))


def synthesize(directory: Path, rows: int, seed: int = 42) -> DemoData:
    """MovieLens-like data: users with favourite genres, a long-tailed catalogue, 90 days of ratings/clicks."""
    rng = random.Random(seed)
    n_items = min(2000, max(50, rows // 25))
    n_users = min(5000, max(20, rows // 20))
    catalogue: list[tuple[str, str, list[str], int]] = []
    by_genre: dict[str, list[str]] = {g: [] for g in GENRES}
    for i in range(1, n_items + 1):
        item_id = f"m{i}"
        year = rng.randint(1950, 2023)
        genres = rng.sample(GENRES, k=rng.choice([1, 1, 2, 2, 3]))
        catalogue.append(
            (item_id, f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} ({year})", genres, _year_start(year))
        )
        for genre in genres:
            by_genre[genre].append(item_id)
    # A long tail: item k is drawn with weight 1/k^0.5 (items are in random order already), overall
    # and within each genre, so every genre has its own hits that its fans share. A steeper tail lets
    # a few global hits drown the genre signal (most users would then get the same top 5).
    weight = {c[0]: 1.0 / rank**0.5 for rank, c in enumerate(catalogue, start=1)}
    item_ids = [c[0] for c in catalogue]
    cumulative = list(itertools.accumulate(weight[i] for i in item_ids))
    genre_cumulative = {g: list(itertools.accumulate(weight[i] for i in ids)) for g, ids in by_genre.items()}
    users = [f"u{j}" for j in range(1, n_users + 1)]
    activity: list[float] = []
    total = 0.0
    for _ in users:
        total += rng.paretovariate(1.5)
        activity.append(total)
    favourites = {u: [g for g in rng.sample(GENRES, k=2) if by_genre[g]] for u in users}

    directory.mkdir(parents=True, exist_ok=True)
    interactions = directory / "interactions.csv"
    items = directory / "items.csv"
    start, span = _year_start(2024), 90 * 86_400
    stamps = sorted(start + rng.randrange(span) for _ in range(rows))
    with interactions.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(INTERACTION_HEADER)
        for ts in stamps:
            user = rng.choices(users, cum_weights=activity)[0]
            liked = favourites[user]
            # Mostly the user's two genres: the structure a recommender should find.
            if liked and rng.random() < GENRE_LOYALTY:
                genre = rng.choice(liked)
                item = rng.choices(by_genre[genre], cum_weights=genre_cumulative[genre])[0]
            else:
                item = rng.choices(item_ids, cum_weights=cumulative)[0]
            if rng.random() < 0.8:
                writer.writerow([user, item, ts, "rating", f"{round(rng.triangular(1, 5, 4) * 2) / 2:.1f}"])
            else:
                writer.writerow([user, item, ts, "click", ""])
    with items.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ITEM_HEADER)
        for item_id, title, genres, created in catalogue:
            writer.writerow([item_id, title, "|".join(genres), created])
    return DemoData(interactions, items, rows, n_users, n_items, f"synthetic (seed {seed})", users[0], item_ids[:3])


def _ratings_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("ratings.csv", "u.data", "ratings.dat"):
        if (path / name).is_file():
            return path / name
    raise CliError(f"--movielens {str(path)!r}: no ratings.csv, u.data or ratings.dat in that folder")


def _read_ratings(path: Path) -> Iterator[list[str]]:
    """(user, movie, rating, timestamp) rows of any MovieLens ratings format."""
    if path.name.endswith(".csv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if [h.strip().lower() for h in header[:4]] != ["userid", "movieid", "rating", "timestamp"]:
                raise CliError(f"--movielens {str(path)!r}: expected the header userId,movieId,rating,timestamp")
            yield from reader
        return
    separator = "::" if path.name.endswith(".dat") else "\t"
    with path.open(encoding="latin-1") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\r\n").split(separator)


def _read_movies(ratings: Path) -> Iterator[tuple[str, str, str]]:
    """(movie id, title, "A|B" genres) from the movies file next to the ratings, if there is one."""
    folder = ratings.parent
    if (folder / "movies.csv").is_file():
        with (folder / "movies.csv").open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if len(row) >= 3:
                    yield row[0], row[1], "" if row[2] == "(no genres listed)" else row[2]
    elif (folder / "movies.dat").is_file():
        with (folder / "movies.dat").open(encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\r\n").split("::")
                if len(parts) >= 3:
                    yield parts[0], parts[1], parts[2]
    elif (folder / "u.item").is_file():
        with (folder / "u.item").open(encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\r\n").split("|")
                if len(parts) >= 5 + len(ML100K_GENRES):
                    flags = parts[5 : 5 + len(ML100K_GENRES)]
                    genres = [g for g, flag in zip(ML100K_GENRES, flags, strict=True) if flag == "1" and g != "unknown"]
                    yield parts[0], parts[1], "|".join(genres)


def convert_movielens(source: Path, directory: Path, limit: int | None) -> DemoData:
    """Converts MovieLens ratings (and movies, when next to them) to the demo's CSV format."""
    ratings = _ratings_file(source)
    directory.mkdir(parents=True, exist_ok=True)
    interactions = directory / "interactions.csv"
    items = directory / "items.csv"
    users: dict[str, None] = {}
    counts: dict[str, int] = {}
    rows = 0
    with interactions.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(INTERACTION_HEADER)
        for line, parts in enumerate(_read_ratings(ratings), start=1):
            if limit is not None and rows >= limit:
                break
            if len(parts) < 4:
                raise CliError(f"--movielens {str(ratings)!r}: line {line} has {len(parts)} fields, expected 4")
            user, movie, rating, ts = (p.strip() for p in parts[:4])
            writer.writerow([user, movie, ts, "rating", rating])
            users.setdefault(user)
            counts[movie] = counts.get(movie, 0) + 1
            rows += 1
    if rows == 0:
        raise CliError(f"--movielens {str(ratings)!r}: no ratings found")
    written = 0
    with items.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ITEM_HEADER)
        seen: set[str] = set()
        for movie, title, genres in _read_movies(ratings):
            year = _YEAR.search(title)
            writer.writerow([movie, title, genres, _year_start(int(year.group(1))) if year else ""])
            seen.add(movie)
        for movie in counts:  # rated movies the movies file does not list (or no movies file at all)
            if movie not in seen:
                writer.writerow([movie, "", "", ""])
        written = len(seen | set(counts))
    popular = sorted(counts, key=lambda m: -counts[m])[:3]
    return DemoData(interactions, items, rows, len(users), written, str(ratings), next(iter(users)), popular)


# ---- the pipeline ------------------------------------------------------------------------


class _Say:
    """Step lines: stdout normally, stderr with --json (stdout then holds only the JSON summary)."""

    def __init__(self, as_json: bool) -> None:
        self.err = as_json

    def __call__(self, text: str = "") -> None:
        click.echo(text, err=self.err)


def _ensure_schema(client: Client, schema_id: str, fields: list[pb.SchemaField]) -> pb.Schema:
    """Creates the schema; one left by an earlier run is reused if identical, else replaced."""
    try:
        return client.create_schema(schema_id, pb.DOMAIN_RECOMMENDATION, fields)
    except ForetellError as error:
        if error.code != grpc.StatusCode.ALREADY_EXISTS:
            raise
    existing = client.call(client.datasets.GetSchema, api.GetSchemaRequest(name=f"schemas/{schema_id}"))
    if list(existing.fields) == fields and existing.domain == pb.DOMAIN_RECOMMENDATION:
        return existing
    client.call(client.datasets.DeleteSchema, api.DeleteSchemaRequest(name=existing.name))
    return client.create_schema(schema_id, pb.DOMAIN_RECOMMENDATION, fields)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


@dataclass
class _Imported:
    dataset: pb.Dataset
    job: pb.ImportJob


STEPS = 15


def _remove_previous(client: Client, group_name: str, say: _Say) -> None:
    """Deletes what an earlier run left: its campaign, solution (with versions) and dataset group."""
    removals: list[tuple[str, Callable[[], object]]] = [
        (
            CAMPAIGN,
            lambda: client.call(client.recommendations.DeleteCampaign, rapi.DeleteCampaignRequest(name=CAMPAIGN)),
        ),
        (SOLUTION, lambda: client.call(client.training.DeleteSolution, tapi.DeleteSolutionRequest(name=SOLUTION))),
        (
            group_name,
            lambda: client.call(
                client.datasets.DeleteDatasetGroup, api.DeleteDatasetGroupRequest(name=group_name, force=True)
            ),
        ),
    ]
    for name, remove in removals:
        try:
            remove()
            say(f"[0/{STEPS}] removed the previous demo's {name}")
        except ForetellError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise


def load_data(
    client: Client, data_dir: Path, rows: int | None, movielens: Path | None, show_progress: bool, say: _Say
) -> tuple[DemoData, dict[str, Any]]:
    """Steps 1-7: dataset group, schemas, datasets, CSV imports, PutItems, PutEvents, export."""
    group_name = f"datasetGroups/{GROUP_ID}"
    _remove_previous(client, group_name, say)

    group = client.create_dataset_group(GROUP_ID, pb.DOMAIN_RECOMMENDATION, display_name="MovieLens demo")
    say(f"[1/{STEPS}] dataset group  {group.name} (RECOMMENDATION)")
    schemas = [
        _ensure_schema(client, INTERACTIONS_SCHEMA, INTERACTION_FIELDS),
        _ensure_schema(client, ITEMS_SCHEMA, ITEM_FIELDS),
    ]
    say(f"[2/{STEPS}] schemas        {', '.join(s.name for s in schemas)}")
    interactions = client.create_dataset(group.name, "interactions", pb.DATASET_TYPE_INTERACTIONS, schemas[0].name)
    items = client.create_dataset(group.name, "items", pb.DATASET_TYPE_ITEMS, schemas[1].name)
    say(f"[3/{STEPS}] datasets       {interactions.name}, {items.name}")

    inputs = data_dir / "input"
    if movielens is not None:
        data = convert_movielens(movielens, inputs, rows)
    else:
        data = synthesize(inputs, rows or DEFAULT_ROWS)
    say(
        f"[4/{STEPS}] data           {data.rows} interactions by {data.users} users on {data.item_count} movies, "
        f"from {data.source}"
    )
    say(f"               {data.interactions}")
    say(f"               {data.items}")
    imported: list[_Imported] = []
    for dataset, path in ((interactions, data.interactions), (items, data.items)):
        job = import_file(
            client, dataset.name, str(path), mode=pb.IMPORT_MODE_FULL, server_path=False, show=show_progress
        )
        say(f"               imported {job.rows_imported} rows into {dataset.name}")
        imported.append(_Imported(dataset, job))

    now = int(time.time())
    put = client.call(
        client.datasets.PutItems,
        api.PutItemsRequest(
            dataset=items.name,
            items=[
                pb.Item(
                    item_id=item_id, properties=_struct({"TITLE": title, "GENRES": genres, "CREATION_TIMESTAMP": now})
                )
                for item_id, (title, genres) in NEW_ITEMS.items()
            ],
        ),
    )
    say(f"[5/{STEPS}] PutItems       {put.accepted} new movies: {', '.join(NEW_ITEMS)}")

    specs = [("click", "new-1", None), ("rating", "new-1", 4.5), ("click", "new-3", None)]
    specs += [("rating", item, 4.0) for item in data.popular_items[:2]]
    session = f"demo-{uuid.uuid4().hex[:8]}"
    result = client.put_events(group.name, session, [_event(*spec) for spec in specs], user_id=data.sample_user)
    say(f"[6/{STEPS}] PutEvents      {result.accepted} events from user {data.sample_user} (session {session})")

    # Into the caller's file area (auth off: the default export root, data_dir/files), as a relative path. An
    # export never replaces a file, so a re-run first removes the one it wrote last time (the demo owns data_dir).
    destination = data_dir / "files" / "interactions.csv"
    destination.unlink(missing_ok=True)
    operation = client.call(
        client.datasets.ExportDataset,
        api.ExportDatasetRequest(name=interactions.name, destination_uri=destination.name),
    )
    export = operation_response(wait_with_progress(client, operation, desc="export", show=show_progress), pb.ExportJob)
    say(f"[7/{STEPS}] ExportDataset  {export.rows_exported} rows -> {destination}")
    return data, {
        "datasetGroup": group.name,
        "source": data.source,
        "imported": imported,
        "export": {"rows": export.rows_exported, "path": str(destination), "job": export.name},
        "events": result.accepted,
        "items": put.accepted,
    }


def _event(event_type: str, item_id: str, value: float | None = None) -> pb.Event:
    event = pb.Event(event_id=uuid.uuid4().hex, event_type=event_type, item_id=item_id)
    if value is not None:
        event.event_value = value
    event.sent_at.FromDatetime(datetime.now(UTC))
    return event


# ---- the recommendation half: train, deploy, ask ------------------------------------------


@dataclass
class _Catalogue:
    """Titles and genres of the demo's movies, for printing ids as something a person can judge."""

    titles: dict[str, str]
    genres: dict[str, list[str]]

    @classmethod
    def read(cls, items_csv: Path) -> _Catalogue:
        titles: dict[str, str] = {}
        genres: dict[str, list[str]] = {}
        with items_csv.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                titles[row["ITEM_ID"]] = row["TITLE"] or row["ITEM_ID"]
                genres[row["ITEM_ID"]] = [g for g in row["GENRES"].split("|") if g]
        for item_id, (title, names) in NEW_ITEMS.items():
            titles[item_id], genres[item_id] = title, names.split("|")
        return cls(titles, genres)

    def title(self, item: rpb.PredictedItem) -> str:
        """The title the campaign returned as metadata, else the one from the CSV file."""
        field = item.metadata.fields.get("TITLE")
        if field is not None and field.string_value:
            return field.string_value
        return self.titles.get(item.item_id, item.item_id)

    def genre_text(self, item_id: str) -> str:
        return "|".join(self.genres.get(item_id, [])) or "-"


@dataclass
class _Profile:
    """A user's history, read back from the CSV file the demo imported."""

    user_id: str
    items: list[str]
    top_genres: list[tuple[str, float]]  # (genre, share of the history), most watched first

    @property
    def favourites(self) -> set[str]:
        return {g for g, _ in self.top_genres[:2]}

    def describe(self) -> str:
        shares = ", ".join(f"{g} {share:.0%}" for g, share in self.top_genres[:3]) or "no genres known"
        return f"user {self.user_id}: {len(self.items)} movies rated or clicked; mostly {shares}"


def _profiles(data: DemoData, catalogue: _Catalogue, wanted: int = 2) -> tuple[list[_Profile], Counter[str]]:
    """Picks users with a clear taste (active, not the very most active) and counts item popularity.

    Two passes over the CSV keep memory flat for a full MovieLens file.
    """
    counts: Counter[str] = Counter()
    with data.interactions.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            counts[row["USER_ID"]] += 1
    ranked = [u for u, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    # The heaviest users have seen most of their favourite genres already; a little lower down
    # the history is still long enough to show a taste and leaves good movies to recommend.
    picks = list(dict.fromkeys(ranked[min(len(ranked) - 1, len(ranked) * k // 20)] for k in range(1, wanted + 1)))
    picks += [u for u in ranked if u not in picks][: wanted - len(picks)]
    histories: dict[str, list[str]] = {u: [] for u in picks}
    popularity: Counter[str] = Counter()
    with data.interactions.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            popularity[row["ITEM_ID"]] += 1
            if row["USER_ID"] in histories:
                histories[row["USER_ID"]].append(row["ITEM_ID"])
    profiles = []
    for user, items in histories.items():
        genre_counts = Counter(g for item in items for g in catalogue.genres.get(item, []))
        total = max(1, len(items))
        profiles.append(_Profile(user, items, [(g, n / total) for g, n in genre_counts.most_common()]))
    return profiles, popularity


def _ranking_candidates(profile: _Profile, catalogue: _Catalogue, popularity: Counter[str]) -> list[str]:
    """Three unseen popular movies of the user's favourite genres interleaved with three of other genres."""
    seen = set(profile.items)
    liked: list[str] = []
    other: list[str] = []
    for item, _ in popularity.most_common():
        if item in seen:
            continue
        genres = set(catalogue.genres.get(item, []))
        if genres & profile.favourites:
            if len(liked) < 3:
                liked.append(item)
        elif genres and len(other) < 3:
            other.append(item)
        if len(liked) == 3 and len(other) == 3:
            break
    mixed = [item for pair in zip(other, liked, strict=False) for item in pair]
    return mixed + [i for i in other + liked if i not in mixed]


class _Printer:
    """Tables of movies: rank, title, genres (a `*` marks the user's favourite genres), score."""

    def __init__(self, say: _Say, catalogue: _Catalogue) -> None:
        self.say, self.catalogue = say, catalogue

    def items(
        self,
        items: Sequence[rpb.PredictedItem],
        favourites: Set[str] = frozenset(),
        *,
        marks: dict[str, str] | None = None,
    ) -> None:
        rows = []
        for rank, item in enumerate(items, start=1):
            genres = self.catalogue.genres.get(item.item_id, [])
            star = "*" if favourites & set(genres) else " "
            rows.append(
                (
                    f"      {rank}",
                    (marks or {}).get(item.item_id, ""),
                    item.item_id,
                    _clip(self.catalogue.title(item), 42),
                    star + (self.catalogue.genre_text(item.item_id)),
                    f"{item.score:.3f}" if item.HasField("score") else "-",
                )
            )
        if not rows:
            self.say("      (none)")
            return
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.say("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ids(items: Iterable[rpb.PredictedItem]) -> list[str]:
    return [i.item_id for i in items]


def personalize(client: Client, data: DemoData, recipe: str, show_progress: bool, say: _Say) -> dict[str, Any]:
    """Steps 8-15: solution, training, metrics, campaign, recommendations, ranking, similar items, real time."""
    catalogue = _Catalogue.read(data.items)
    params = DEMO_HYPER_PARAMETERS.get(recipe, {})
    solution = client.create_solution(SOLUTION.removeprefix("solutions/"), f"datasetGroups/{GROUP_ID}", recipe, params)
    settings = ", ".join(f"{k}={v}" for k, v in params.items())
    say(f"[8/{STEPS}] CreateSolution {solution.name} (recipe {solution.recipe}{', ' if settings else ''}{settings})")
    operation = client.create_solution_version(solution)
    version = train_with_progress(client, operation, show=show_progress, response=tpb.SolutionVersion)
    seconds = version.training_duration.ToTimedelta().total_seconds()
    tuned = ", ".join(f"{k}={v}" for k, v in sorted(version.tuned_hyper_parameters.items())) or "defaults"
    say(f"[9/{STEPS}] trained        {version.name} in {seconds:.1f}s ({tuned})")

    metrics = client.get_solution_metrics(version)
    at_10 = next((m for m in metrics.at_k if m.k == 10), tpb.RankingMetricsAtK())
    say(f"[10/{STEPS}] offline metrics on each user's latest interactions ({metrics.evaluated_users} users held out)")
    say("      K   PRECISION  RECALL  NDCG")
    for m in metrics.at_k:
        say(f"      {m.k:<3} {m.precision:<10.4f} {m.recall:<7.4f} {m.ndcg:.4f}")
    say(f"      MRR {metrics.mean_reciprocal_rank:.4f}, catalog coverage {metrics.catalog_coverage:.1%}")

    campaign = client.create_campaign(CAMPAIGN.removeprefix("campaigns/"), version, metadata=True)
    say(
        f"[11/{STEPS}] CreateCampaign {campaign.name} serving {_short_version(version.name)} "
        f"({out.enum_label(rpb.DeploymentState, campaign.state, 'DEPLOYMENT_STATE_')})"
    )

    show = _Printer(say, catalogue)
    profiles, popularity = _profiles(data, catalogue)
    columns = ["TITLE", "GENRES"]
    say(f"[12/{STEPS}] GetRecommendations (* = one of the user's two favourite genres)")
    recommended: dict[str, list[str]] = {}
    first: list[rpb.PredictedItem] = []
    for profile in profiles:
        answer = client.get_recommendations(
            campaign.name, user_id=profile.user_id, num_results=5, metadata_columns=columns
        )
        say(f"    {profile.describe()}")
        show.items(answer.item_list, profile.favourites)
        recommended[profile.user_id] = _ids(answer.item_list)
        if profile is profiles[0]:
            first = list(answer.item_list)
    user = profiles[0]

    candidates = _ranking_candidates(user, catalogue, popularity)
    ranking: list[str] = []
    if candidates:
        ranked = client.get_personalized_ranking(campaign.name, user.user_id, candidates, metadata_columns=columns)
        ranking = _ids(ranked.personalized_ranking)
        say(
            f"[13/{STEPS}] GetPersonalizedRanking of {len(candidates)} movies for user {user.user_id} "
            f"(given in the order {', '.join(candidates)})"
        )
        show.items(ranked.personalized_ranking, user.favourites)
    else:
        say(f"[13/{STEPS}] GetPersonalizedRanking skipped: user {user.user_id} has seen every candidate")

    anchor = first[0].item_id if first else data.popular_items[0]
    similar = client.get_similar_items(campaign.name, anchor, num_results=5)
    say(
        f"[14/{STEPS}] GetSimilarItems to {anchor} {catalogue.titles.get(anchor, '')} "
        f"({catalogue.genre_text(anchor)}) (* = shares a genre)"
    )
    show.items(similar.item_list, set(catalogue.genres.get(anchor, [])))

    realtime = _realtime(client, campaign.name, user, first, show, say)
    return {
        "recipe": recipe,
        "solution": solution.name,
        "solutionVersion": version.name,
        "trainingSeconds": round(seconds, 2),
        "metrics": json_format.MessageToDict(metrics),
        "ndcgAt10": round(at_10.ndcg, 4),
        "campaign": campaign.name,
        "recommendations": recommended,
        "ranking": {"user": user.user_id, "input": candidates, "ranked": ranking},
        "similar": {"item": anchor, "items": _ids(similar.item_list)},
        "realtime": realtime,
    }


def _realtime(
    client: Client,
    campaign: str,
    user: _Profile,
    before: list[rpb.PredictedItem],
    show: _Printer,
    say: _Say,
) -> dict[str, Any]:
    """Clicks the top recommendation through PutEvents and asks again until the answer reflects it."""
    if not before:
        say(f"[15/{STEPS}] real time: skipped, user {user.user_id} got no recommendations")
        return {}
    clicked = before[0].item_id
    session = f"demo-{uuid.uuid4().hex[:8]}"
    client.put_events(f"datasetGroups/{GROUP_ID}", session, [_event("click", clicked)], user_id=user.user_id)
    sent = time.monotonic()
    previous = _ids(before)
    after: list[rpb.PredictedItem] = []
    # Events reach the campaign through the dataset service's event stream: usually well under a second.
    while time.monotonic() - sent < REALTIME_WAIT_SECONDS:
        after = list(
            client.get_recommendations(
                campaign, user_id=user.user_id, num_results=len(previous), metadata_columns=["TITLE", "GENRES"]
            ).item_list
        )
        if clicked not in _ids(after):
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - sent
    now = _ids(after)
    say(
        f"[15/{STEPS}] PutEvents      user {user.user_id} clicks {clicked}; the next GetRecommendations "
        f"({elapsed * 1000:.0f} ms later, + = new):"
    )
    show.items(after, user.favourites, marks={i: "+" for i in now if i not in previous})
    if clicked in now:
        say(f"      {clicked} is still recommended: the event had not arrived after {REALTIME_WAIT_SECONDS:g}s")
    elif now[: len(previous) - 1] == [i for i in previous if i != clicked]:
        say(f"      {clicked} is gone (already seen) and the rest moved up")
    else:
        new = sum(i not in previous for i in now)
        say(f"      the click re-scored the list: {clicked} is gone and {new} new movie{'s' * (new != 1)} came in")
    return {
        "user": user.user_id,
        "clicked": clicked,
        "before": previous,
        "after": now,
        "milliseconds": round(elapsed * 1000),
    }


def _short_version(name: str) -> str:
    return name.removeprefix("solutions/").replace("/versions/", "/")


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread signal() raises ValueError; Ctrl-C then arrives as KeyboardInterrupt.
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def run_demo(
    *,
    data_dir: Path,
    rows: int | None,
    movielens: Path | None,
    port: int,
    keep_serving: bool,
    show_progress: bool,
    as_json: bool,
    recipe: str = DEFAULT_RECIPE,
    series: Path | None = None,
    frequency: str = "D",
    horizon: int = 14,
) -> None:
    from foretell.core.settings import load_settings
    from foretell.runtime.server import create_server

    started = time.monotonic()
    say = _Say(as_json)
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Self-contained: the demo's own SQLite file and artifacts, whatever FORETELL_DATABASE_URL says.
    settings = load_settings(host="127.0.0.1", port=port, data_dir=data_dir, database_url="", artifact_dir=None)
    app = create_server(settings)
    app.start()
    previous_term = _exit_on_sigterm()
    target = f"127.0.0.1:{app.port}"
    say(f"Foretell demo: embedded server on {target} (dataset, training, recommendation, forecast-query)")
    say(f"data directory: {data_dir}")
    try:
        with Client(target, timeout=30) as client:
            data, loaded = load_data(client, data_dir, rows, movielens, show_progress, say)
            served = personalize(client, data, recipe, show_progress, say)
            summary = {**_dataset_summary(client, loaded), **served}
            say()
            say("Forecasting")
            summary.update(
                run_forecast_demo(client, data_dir, series, frequency, horizon, show_progress, say, not as_json)
            )
        summary["target"] = target
        summary["seconds"] = round(time.monotonic() - started, 2)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            _print_summary(summary, keep_serving)
        if keep_serving:
            say()
            command = "foretell" if app.port == 50051 else f"foretell --target {target}"
            user = next(iter(summary["recommendations"]), data.sample_user)
            say(f"Serving on {target} until Ctrl-C. In another shell, try:")
            say(f"  {command} recommend {GROUP_ID} --user {user} --column TITLE --column GENRES")
            say(f"  {command} similar {GROUP_ID} {summary['similar']['item']}")
            say(f"  {command} metrics {GROUP_ID}")
            say(f"  {command} dataset describe {GROUP_ID}/interactions")
            _wait_for_signal()
    finally:
        app.stop(2.0)  # also stops a training worker still running
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _exit_on_sigterm() -> Any:
    """Makes SIGTERM unwind like Ctrl-C, so the embedded server stops its training workers on the way out.

    Returns the previous handler (None outside the main thread, where signals cannot be set).
    """

    def terminate(_signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:
        return None


def _dataset_summary(client: Client, loaded: dict[str, Any]) -> dict[str, Any]:
    """Row counts read back at the end, so they include every event sent in real time."""
    rows = []
    for entry in loaded.pop("imported"):
        current = client.call(client.datasets.GetDataset, api.GetDatasetRequest(name=entry.dataset.name))
        rows.append(
            {
                "dataset": current.name,
                "type": out.enum_label(pb.DatasetType, current.dataset_type, "DATASET_TYPE_"),
                "rows": current.row_count,
                "rowsImported": entry.job.rows_imported,
                "importJob": entry.job.name,
                "importJobState": out.enum_label(pb.JobState, entry.job.state, "JOB_STATE_"),
            }
        )
    return {**loaded, "datasets": rows}


def _print_summary(summary: dict[str, Any], keep_serving: bool) -> None:
    click.echo()
    click.echo("Summary")
    out.print_table(
        ["DATASET", "TYPE", "ROWS", "IMPORTED", "IMPORT JOB"],
        [(d["dataset"], d["type"], d["rows"], d["rowsImported"], d["importJobState"]) for d in summary["datasets"]],
    )
    events = summary["events"] + (1 if summary["realtime"] else 0)
    click.echo(f"(ROWS = rows imported from CSV + {summary['items']} items and {events} events sent in real time)")
    click.echo(f"export: {summary['export']['rows']} rows in {summary['export']['path']}")
    click.echo(
        f"model:  {summary['solutionVersion']} (recipe {summary['recipe']}, trained in "
        f"{summary['trainingSeconds']:.1f}s, NDCG@10 {summary['ndcgAt10']:.4f}), serving as {summary['campaign']}"
    )
    click.echo(
        f"forecast: {summary['forecast']} ({summary['forecastSeries']} series, backtest average wQL "
        f"{summary['forecastAccuracy']['averageWql']:.4f}), plot in {summary['forecastPlot']}"
    )
    click.echo(f"Done in {summary['seconds']:.1f}s.")
    if not keep_serving:
        click.echo(
            "Run `foretell demo --keep-serving --port 50051` to keep the server up, then ask it yourself: "
            f"`foretell recommend {GROUP_ID} --user USER`."
        )
