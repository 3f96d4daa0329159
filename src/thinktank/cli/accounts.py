"""``thinktank db|users|keys|usage``: administration straight on the database (run it where the
server's data lives; it acts as the admin)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from ..config import Settings
from ..errors import ThinktankError

__all__ = ["db_app", "keys_app", "print_table", "usage_command", "users_app"]

T = TypeVar("T")

db_app = typer.Typer(help="The database.", no_args_is_help=True)
users_app = typer.Typer(help="Users (admins and members).", no_args_is_help=True)
keys_app = typer.Typer(help="Virtual API keys.", no_args_is_help=True)


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the database (migrated), run ``work`` with the services, close; errors exit 2."""
    from ..accounts.keys import KeyService
    from ..accounts.principal import Authenticator
    from ..accounts.secrets import PasswordHashing
    from ..accounts.usage import UsageQuery
    from ..accounts.users import UserService
    from ..auth import AdminKey, hash_key
    from ..clock import SystemClock
    from ..store.db import Database, default_database_url
    from ..store.migrate import upgrade_async

    settings = Settings()

    async def run() -> T:
        db = Database(settings.database_url or default_database_url(settings.data_dir))
        try:
            await upgrade_async(db.url)
            clock = SystemClock()
            auth = Authenticator(db, AdminKey(hash_key("-")), clock, cache_ttl=0)

            @dataclass
            class Services:
                db: Database
                auth: Authenticator
                users: UserService
                keys: KeyService
                usage: UsageQuery

            return await work(Services(db, auth, UserService(db, clock, PasswordHashing(), auth),
                                       KeyService(db, clock, auth), UsageQuery(db)))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except ThinktankError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations (the server also does it when it starts)."""
    from ..store.db import default_database_url, normalize_url
    from ..store.migrate import upgrade

    settings = Settings()
    url = normalize_url(settings.database_url or default_database_url(settings.data_dir))
    upgrade(url)
    typer.echo("database is up to date")


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument()],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="Asked for when not given.")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin, not a member.")] = False,
    tier: Annotated[str | None, typer.Option(help="Rate-limit tier.")] = None,
    budget: Annotated[float | None, typer.Option(help="USD per --period.")] = None,
    period: Annotated[str, typer.Option(help="day, month or total.")] = "month",
) -> None:
    """Create a user (the first admin: thinktank users create you@example.com --admin)."""
    from pydantic import ValidationError

    from ..accounts.schemas import UserCreate

    try:
        data = UserCreate(email=email, password=password, role="admin" if admin else "member", tier=tier,
                          budget_usd=budget, budget_period=period)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        typer.secho(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    user = _run(lambda s: s.users.create_user(data))
    typer.echo(f"created {user.role} {user.email} ({user.id})")


@users_app.command("list")
def users_list() -> None:
    users = _run(lambda s: s.users.list_users())
    print_table(["id", "email", "role", "tier", "budget", "created", "revoked"],
                [[u.id, u.email, u.role, u.tier, u.budget_usd and f"${u.budget_usd:g}/{u.budget_period}",
                  _when(u.created_at), _when(u.revoked_at)] for u in users])


@users_app.command("revoke")
def users_revoke(user_id: str) -> None:
    """Revoke a user and every session and key they hold."""
    user = _run(lambda s: s.users.revoke_user(user_id))
    typer.echo(f"revoked {user.email} and all their credentials")


async def _owner(services: Any, email: str | None) -> Any:
    from sqlalchemy import select

    from ..errors import NotFoundError
    from ..store.tables import User

    if email is None:
        return services.auth.known_admin()
    async with services.db.session() as s:
        user = (await s.execute(select(User).where(User.email == email.lower()))).scalar_one_or_none()
    principal = await services.auth.principal_of(user.id) if user else None
    if principal is None:
        raise NotFoundError(f"No active user {email}.")
    return principal


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise it by.")] = "",
    user: Annotated[str | None, typer.Option(help="Owner's email (default: the admin).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models it may call.")] = None,
    budget: Annotated[float | None, typer.Option(help="USD per --period.")] = None,
    period: Annotated[str, typer.Option(help="day, month or total.")] = "month",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Lifetime in days.")] = None,
) -> None:
    """Create a key; the full key is printed this once."""
    from ..accounts.schemas import KeyCreate

    expires_at = time.time() + expires_in_days * 86400 if expires_in_days else None
    data = KeyCreate(
        name=name, models=models.split(",") if models else None, budget_usd=budget,
        budget_period=period, rpm=rpm, tpm=tpm, expires_at=expires_at,
    )

    async def work(s: Any) -> Any:
        return await s.keys.create(await _owner(s, user), data)

    created = _run(work)
    typer.echo(created.key)
    typer.secho(f"(key {created.id}, prefix {created.prefix}: store it now, it is not shown again)", err=True)


@keys_app.command("list")
def keys_list(all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False) -> None:
    async def work(s: Any) -> Any:
        return await s.keys.list(s.auth.known_admin(), include_revoked=all_keys)

    keys = _run(work)
    print_table(["id", "name", "prefix", "owner", "models", "budget", "rpm", "expires", "revoked"],
                [[k.id, k.name, k.prefix + "…", k.owner_id, ",".join(k.allowed_models or []) or "*",
                  k.budget_usd and f"${k.budget_usd:g}/{k.budget_period}", k.rpm, _when(k.expires_at),
                  _when(k.revoked_at)] for k in keys])


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    async def work(s: Any) -> Any:
        return await s.keys.revoke(s.auth.known_admin(), key_id)

    _run(work)
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate")
def keys_rotate(key_id: str) -> None:
    """A new secret for the key; the old one stops working."""

    async def work(s: Any) -> Any:
        return await s.keys.rotate(s.auth.known_admin(), key_id)

    typer.echo(_run(work).key)


def usage_command(
    by: Annotated[str, typer.Option("--by", help="model, key, user, deployment or day.")] = "model",
    days: Annotated[float, typer.Option(help="How many days back.")] = 30.0,
) -> None:
    """Requests, tokens and spend over a time range, as a table."""
    if by not in ("model", "key", "user", "deployment", "day"):
        typer.secho("error: --by takes model, key, user, deployment or day", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)

    async def work(s: Any) -> Any:
        return await s.usage.aggregate(s.auth.known_admin(), by, time.time() - days * 86400, None,
                                       "group" if by == "day" else "cost")

    rows = _run(work)
    print_table([by, "requests", "prompt tokens", "completion tokens", "cost usd", "errors"],
                [[r["group"], r["requests"], r["prompt_tokens"], r["completion_tokens"], f"{r['cost_usd']:.6f}",
                  r["errors"]] for r in rows])
