"""``thinktank admin-key``: which admin key is in force, and a new one when it is lost or leaked.

It works on the data directory (``THINKTANK_DATA_DIR``), where only the key's hash is kept; run it
where the server runs. A running server keeps the key it started with until it starts again.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import typer

from .common import fail

__all__ = ["admin_key_app"]

admin_key_app = typer.Typer(help="The admin key (its hash is kept in the data directory).", no_args_is_help=True)


@admin_key_app.command("status")
def status() -> None:
    """Which admin key the server's next start puts in force (never the key itself)."""
    from ..accounts.admin_key import hash_key, key_path, read_stored
    from ..errors import ThinktankError
    from .common import settings

    s = settings()
    path = key_path(s.data_dir)
    try:
        stored = read_stored(path)
    except ThinktankError as exc:
        fail(exc.message)
    given = s.admin_key.get_secret_value() if s.admin_key is not None else ""
    if stored is None:
        typer.echo(f"no admin key is stored in {path} yet: the first start of `thinktank serve` "
                   + ("stores THINKTANK_ADMIN_KEY's" if given else "generates one and prints it once"))
        return
    typer.echo(f"admin key: the one stored in {path}"
               + (f" ({stored.prefix}…)" if stored.prefix else " (its prefix is not stored)"))
    if given and hmac.compare_digest(hash_key(given), stored.digest):
        typer.echo("THINKTANK_ADMIN_KEY is set here to the same key")
    elif given:
        typer.echo("THINKTANK_ADMIN_KEY is set here to another key: a server started with it replaces the stored "
                   "one")


@admin_key_app.command("reset")
def reset(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Make a new admin key and print it this once; the old one stops working when the server starts again."""
    from ..accounts.admin_key import key_path
    from ..accounts.admin_key import reset as new_key
    from .common import settings

    s = settings()
    path = key_path(s.data_dir)
    if not yes:
        typer.confirm(f"Replace the admin key stored in {path}? The current one stops working at the server's "
                      "next start", abort=True)
    key = new_key(s.data_dir)
    typer.echo(key)
    typer.secho(f"(the new admin key, shown only this once: store it now. Only its hash is kept, in {path}. "
                "A running server keeps the old key until it starts again.)", err=True)
    if s.admin_key is not None and s.admin_key.get_secret_value():
        typer.secho("warning: THINKTANK_ADMIN_KEY is set here: a server started with it would put that key back "
                    "in force; unset it", fg=typer.colors.YELLOW, err=True)
