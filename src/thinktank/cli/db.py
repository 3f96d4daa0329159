"""``thinktank db``: the database (run it where the server's data lives)."""

from __future__ import annotations

import typer

__all__ = ["db_app"]

db_app = typer.Typer(help="The database (SQLite in the data directory, or THINKTANK_DATABASE_URL).",
                     no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations (the server also does it when it starts)."""
    from ..config import Settings
    from ..store.db import default_database_url, normalize_url
    from ..store.migrate import upgrade

    settings = Settings()
    url = normalize_url(settings.database_url or default_database_url(settings.data_dir))
    upgrade(url)
    typer.echo("database is up to date")
