"""`foretell demo`: an embedded all-in-one server and the whole data pipeline, through the real client.

Everything the demo does goes over gRPC, exactly as a remote client would do it; the
server merely happens to run in the same process. Running it again starts over: the
previous demo dataset group is deleted (with its datasets) before a new one is made.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import struct_pb2

from foretell.cli import output as out
from foretell.cli.output import CliError
from foretell.cli.progress import import_file, wait_with_progress
from foretell.client import Client, ForetellError, operation_response
from foretell.v1 import dataset_pb2 as pb
from foretell.v1 import dataset_service_pb2 as api

GROUP_ID = "movielens-demo"
INTERACTIONS_SCHEMA = f"{GROUP_ID}-interactions"
ITEMS_SCHEMA = f"{GROUP_ID}-items"
DEFAULT_ROWS = 20_000

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
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
# ml-100k's u.item has one 0/1 column per genre, in this order.
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
_ADJECTIVES = ["Silent", "Crimson", "Last", "Hidden", "Electric", "Broken", "Golden", "Midnight", "Lost", "Wild",
               "Frozen", "Secret", "Distant", "Burning", "Hollow", "Brave"]
_NOUNS = ["Harbor", "Empire", "Garden", "Signal", "Voyage", "Kingdom", "Horizon", "Circus", "Frontier", "Machine",
          "River", "Letter", "Station", "Island", "Storm", "Orchard"]
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
        catalogue.append((item_id, f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} ({year})", genres,
                          _year_start(year)))
        for genre in genres:
            by_genre[genre].append(item_id)
    # A long tail: item k is drawn with weight 1/k^0.9 (items are in random order already).
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, n_items + 1):
        total += 1.0 / rank**0.9
        cumulative.append(total)
    item_ids = [c[0] for c in catalogue]
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
            if liked and rng.random() < 0.7:
                item = rng.choice(by_genre[rng.choice(liked)])
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


def pipeline(client: Client, data_dir: Path, rows: int | None, movielens: Path | None,
             show_progress: bool, say: _Say) -> dict[str, Any]:
    steps = 7
    group_name = f"datasetGroups/{GROUP_ID}"
    try:
        client.call(client.datasets.DeleteDatasetGroup, api.DeleteDatasetGroupRequest(name=group_name, force=True))
        say(f"[0/{steps}] removed the previous demo's {group_name}")
    except ForetellError as error:
        if error.code != grpc.StatusCode.NOT_FOUND:
            raise

    group = client.create_dataset_group(GROUP_ID, pb.DOMAIN_RECOMMENDATION, display_name="MovieLens demo")
    say(f"[1/{steps}] dataset group  {group.name} (RECOMMENDATION)")
    schemas = [_ensure_schema(client, INTERACTIONS_SCHEMA, INTERACTION_FIELDS),
               _ensure_schema(client, ITEMS_SCHEMA, ITEM_FIELDS)]
    say(f"[2/{steps}] schemas        {', '.join(s.name for s in schemas)}")
    interactions = client.create_dataset(group.name, "interactions", pb.DATASET_TYPE_INTERACTIONS, schemas[0].name)
    items = client.create_dataset(group.name, "items", pb.DATASET_TYPE_ITEMS, schemas[1].name)
    say(f"[3/{steps}] datasets       {interactions.name}, {items.name}")

    inputs = data_dir / "input"
    if movielens is not None:
        data = convert_movielens(movielens, inputs, rows)
    else:
        data = synthesize(inputs, rows or DEFAULT_ROWS)
    say(f"[4/{steps}] data           {data.rows} interactions by {data.users} users on {data.item_count} movies, "
        f"from {data.source}")
    say(f"               {data.interactions}")
    say(f"               {data.items}")
    imported: list[_Imported] = []
    for dataset, path in ((interactions, data.interactions), (items, data.items)):
        job = import_file(client, dataset.name, str(path), mode=pb.IMPORT_MODE_FULL, server_path=False,
                          show=show_progress)
        say(f"               imported {job.rows_imported} rows into {dataset.name}")
        imported.append(_Imported(dataset, job))

    now = int(time.time())
    new_items = [
        pb.Item(item_id="new-1", properties=_struct(
            {"TITLE": "The Quiet Algorithm (2025)", "GENRES": "Sci-Fi|Drama", "CREATION_TIMESTAMP": now})),
        pb.Item(item_id="new-2", properties=_struct(
            {"TITLE": "Gradient Descent (2025)", "GENRES": "Thriller", "CREATION_TIMESTAMP": now})),
        pb.Item(item_id="new-3", properties=_struct(
            {"TITLE": "Cold Start (2025)", "GENRES": "Comedy|Romance", "CREATION_TIMESTAMP": now})),
    ]
    put = client.call(client.datasets.PutItems, api.PutItemsRequest(dataset=items.name, items=new_items))
    say(f"[5/{steps}] PutItems       {put.accepted} new movies: {', '.join(i.item_id for i in new_items)}")

    sent = datetime.now(UTC)
    specs = [("click", "new-1", None), ("rating", "new-1", 4.5), ("click", "new-3", None)]
    specs += [("rating", item, 4.0) for item in data.popular_items[:2]]
    events = []
    for event_type, item_id, value in specs:
        event = pb.Event(event_id=uuid.uuid4().hex, event_type=event_type, item_id=item_id)
        if value is not None:
            event.event_value = value
        event.sent_at.FromDatetime(sent)
        events.append(event)
    session = f"demo-{uuid.uuid4().hex[:8]}"
    result = client.put_events(group.name, session, events, user_id=data.sample_user)
    say(f"[6/{steps}] PutEvents      {result.accepted} events from user {data.sample_user} (session {session})")

    destination = data_dir / "exports" / "interactions.csv"
    destination.parent.mkdir(parents=True, exist_ok=True)
    operation = client.call(client.datasets.ExportDataset, api.ExportDatasetRequest(
        name=interactions.name, destination_uri=destination.as_uri()))
    export = operation_response(wait_with_progress(client, operation, desc="export", show=show_progress),
                                pb.ExportJob)
    say(f"[7/{steps}] ExportDataset  {export.rows_exported} rows -> {destination}")

    summary_rows = []
    for entry in imported:
        current = client.call(client.datasets.GetDataset, api.GetDatasetRequest(name=entry.dataset.name))
        summary_rows.append({
            "dataset": current.name,
            "type": out.enum_label(pb.DatasetType, current.dataset_type, "DATASET_TYPE_"),
            "rows": current.row_count,
            "rowsImported": entry.job.rows_imported,
            "importJob": entry.job.name,
            "importJobState": out.enum_label(pb.JobState, entry.job.state, "JOB_STATE_"),
        })
    return {
        "datasetGroup": group.name,
        "source": data.source,
        "datasets": summary_rows,
        "export": {"rows": export.rows_exported, "path": str(destination), "job": export.name},
        "events": result.accepted,
        "items": put.accepted,
    }


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


def run_demo(*, data_dir: Path, rows: int | None, movielens: Path | None, port: int, keep_serving: bool,
             show_progress: bool, as_json: bool) -> None:
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
    target = f"127.0.0.1:{app.port}"
    say(f"Foretell demo: embedded server on {target} (dataset, training, recommendation, forecast-query)")
    say(f"data directory: {data_dir}")
    try:
        with Client(target, timeout=30) as client:
            summary = pipeline(client, data_dir, rows, movielens, show_progress, say)
        summary["target"] = target
        summary["seconds"] = round(time.monotonic() - started, 2)
        if as_json:
            import json

            click.echo(json.dumps(summary, indent=2))
        else:
            _print_summary(summary, keep_serving)
        if keep_serving:
            say()
            command = "foretell" if app.port == 50051 else f"foretell --target {target}"
            say(f"Serving on {target} until Ctrl-C. In another shell, try:")
            say(f"  {command} dataset list {GROUP_ID}")
            say(f"  {command} dataset describe {GROUP_ID}/interactions")
            say(f"  {command} operations list")
            _wait_for_signal()
    finally:
        app.stop(2.0)


def _print_summary(summary: dict[str, Any], keep_serving: bool) -> None:
    click.echo()
    click.echo("Summary")
    out.print_table(
        ["DATASET", "TYPE", "ROWS", "IMPORTED", "IMPORT JOB"],
        [(d["dataset"], d["type"], d["rows"], d["rowsImported"], d["importJobState"]) for d in summary["datasets"]],
    )
    click.echo(f"(ROWS = rows imported from CSV + {summary['items']} items and {summary['events']} events sent "
               "in real time)")
    click.echo(f"export: {summary['export']['rows']} rows in {summary['export']['path']}")
    click.echo()
    click.echo("Training, recommendations and forecasts arrive with the next releases: in this build "
               "TrainingService, RecommendationService and ForecastQueryService answer UNIMPLEMENTED.")
    click.echo(f"Done in {summary['seconds']:.1f}s.")
    if not keep_serving:
        click.echo("Run `foretell demo --keep-serving --port 50051` to keep the server up, then explore it with "
                   f"`foretell dataset list {GROUP_ID}`.")
