"""`foretell db upgrade|current`: schema migrations of the metadata database (FORETELL_DATABASE_URL)."""

from __future__ import annotations

import click

from foretell.core import migrations
from foretell.core.settings import Settings

_url_option = click.option(
    "--database-url", default=None, help="SQLAlchemy URL [env FORETELL_DATABASE_URL, default the local SQLite file]."
)


def _url(database_url: str | None) -> str:
    return database_url or Settings().database_url


@click.group()
def db() -> None:
    """Schema migrations of the metadata database (run `upgrade` before starting a new release)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to migrate to.")
@_url_option
def upgrade(revision: str, database_url: str | None) -> None:
    """Migrate the database to REVISION; safe to run while other replicas start (advisory lock)."""
    url = _url(database_url)
    migrations.upgrade(url, revision)
    click.echo(f"database at revision {migrations.current(url)}")


@db.command()
@_url_option
def current(database_url: str | None) -> None:
    """Print the database's revision and whether it is the head this code expects."""
    found, head = migrations.current(_url(database_url)), migrations.head()
    click.echo(f"{found or 'none (never migrated)'}{' (head)' if found == head else f' (head is {head})'}")


def register(cli: click.Group) -> None:
    cli.add_command(db)
