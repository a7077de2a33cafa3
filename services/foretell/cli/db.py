"""`foretell db upgrade|current|move-group`: schema migrations of the metadata database (FORETELL_DATABASE_URL),
and handing a dataset group to a tenant."""

from __future__ import annotations

import click

from foretell.core import migrations
from foretell.core.db import make_engine
from foretell.core.settings import Settings
from foretell.runtime.move_group import MoveRefused, move_group

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


@db.command("move-group")
@click.argument("group")
@click.option("--to", "to_tenant", required=True, help="The tenant that gets the group (an API key's tenant).")
@click.option(
    "--from",
    "from_tenant",
    default="",
    help='The tenant that has it [default: "", the one of data stored '
    "before tenants existed and of a server without API keys].",
)
@_url_option
def move_group_command(group: str, to_tenant: str, from_tenant: str, database_url: str | None) -> None:
    """Move dataset group GROUP and everything of it to another tenant (run it with the services stopped)."""
    name = group if group.startswith("datasetGroups/") else f"datasetGroups/{group}"
    engine = make_engine(_url(database_url))
    try:
        migrations.ensure_schema(engine)
        moved = move_group(engine, name, to_tenant, from_tenant)
    except (MoveRefused, migrations.SchemaNotCurrent) as exc:
        raise click.ClickException(f"nothing moved: {exc}") from None
    finally:
        engine.dispose()
    summary = ", ".join(f"{n} {what}" for what, n in moved.counts.items())
    click.echo(f"moved {name} to tenant {to_tenant!r}: {summary}")


def register(cli: click.Group) -> None:
    cli.add_command(db)
