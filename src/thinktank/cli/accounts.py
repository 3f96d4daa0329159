"""``thinktank users|keys|teams``: accounts, straight on the database (run it where the server's data
lives, with its THINKTANK_DATA_DIR or THINKTANK_DATABASE_URL; it acts as the admin)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from ..config import Settings
from ..errors import ThinktankError
from .common import fail, print_table, when

__all__ = ["keys_app", "teams_app", "users_app"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

users_app = typer.Typer(help="Users (admins and members), on the database.", no_args_is_help=True)
keys_app = typer.Typer(help="Virtual API keys, on the database.", no_args_is_help=True)
teams_app = typer.Typer(help="Teams (a shared budget for their members), on the database.", no_args_is_help=True)


TOOLS_HELP = ("Agent tools and MCP servers allowed, comma-separated: knowledge_search, git (a whole server), "
              "git.* or git.git_log; '*' for all, '' for none.")


def _tools_shown(tools: list[str] | None) -> str:
    """An allowlist in a table: ``*`` for every tool, ``-`` for none."""
    return "*" if tools is None else ",".join(tools) or "-"


def _validated(model: type[M], **fields: Any) -> M:
    """``model`` made of ``fields``; its first validation error exits 2 (``error: tools.0: ...``)."""
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        fail(f"{'.'.join(map(str, first['loc']))}: {first['msg']}")


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    """Open the database (migrated), run ``work`` with the services, close; errors exit 2."""
    from ..accounts.admin_key import AdminKey
    from ..accounts.keys import KeyService
    from ..accounts.principal import Authenticator
    from ..accounts.secrets import PasswordHashing
    from ..accounts.users import UserService
    from ..clock import SystemClock
    from ..store.db import Database, default_database_url
    from ..store.migrate import upgrade_async

    settings = Settings()

    async def run() -> T:
        db = Database(settings.database_url or default_database_url(settings.data_dir))
        try:
            await upgrade_async(db.url)
            clock = SystemClock()
            auth = Authenticator(db, AdminKey.of("-"), clock, cache_ttl=0)

            @dataclass
            class Services:
                db: Database
                auth: Authenticator
                users: UserService
                keys: KeyService

            return await work(Services(db, auth, UserService(db, clock, PasswordHashing(), auth),
                                       KeyService(db, clock, auth)))
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except ThinktankError as exc:
        fail(exc.message)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="Their email address (they sign in with it).")],
    password: Annotated[str | None, typer.Option(
        prompt=True, hide_input=True, confirmation_prompt=True, show_default=False,
        help="At least 8 characters; asked for (hidden) when not given.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin, not a member.")] = False,
    team: Annotated[str | None, typer.Option(help="A team's id (see `thinktank teams list`).",
                                             show_default=False)] = None,
    tier: Annotated[str | None, typer.Option(help="Rate-limit tier.", show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(help="USD per --period.", show_default=False)] = None,
    period: Annotated[str, typer.Option(help="day, month or total.")] = "month",
    tools: Annotated[str | None, typer.Option(help=TOOLS_HELP + " Default: all.", show_default=False)] = None,
) -> None:
    """Create a user (the first admin: thinktank users create you@example.com --admin)."""
    from ..accounts.schemas import UserCreate
    from ..accounts.tool_access import parse_tool_list

    data = _validated(UserCreate, email=email, password=password or "", role="admin" if admin else "member",
                      team_id=team, tier=tier, budget_usd=budget, budget_period=period,
                      tools=None if tools is None else parse_tool_list(tools))
    user = _run(lambda s: s.users.create_user(data))
    typer.echo(f"created {user.role} {user.email} ({user.id})")


@users_app.command("list")
def users_list() -> None:
    """Every user, revoked ones included."""
    users = _run(lambda s: s.users.list_users())
    print_table(["id", "email", "role", "tier", "budget", "tools", "created", "revoked"],
                [[u.id, u.email, u.role, u.tier, u.budget_usd and f"${u.budget_usd:g}/{u.budget_period}",
                  _tools_shown(u.allowed_tools), when(u.created_at), when(u.revoked_at)] for u in users])


@users_app.command("tools")
def users_tools(
    user_id: Annotated[str, typer.Argument(help="The user's id (see `thinktank users list`).")],
    tools: Annotated[str, typer.Argument(help=TOOLS_HELP, show_default=False)],
) -> None:
    """Set the agent tools a user's agents may use (their keys: what both lists allow)."""
    from ..accounts.schemas import UserTools
    from ..accounts.tool_access import parse_tool_list

    data = _validated(UserTools, tools=parse_tool_list(tools))
    user = _run(lambda s: s.users.set_tools(user_id, data.tools))
    typer.echo(f"{user.email} may use tools: {_tools_shown(user.allowed_tools)}")


@users_app.command("revoke")
def users_revoke(user_id: Annotated[str, typer.Argument(help="The user's id (see `thinktank users list`).")]) -> None:
    """Revoke a user and every session and key they hold."""
    user = _run(lambda s: s.users.revoke_user(user_id))
    typer.echo(f"revoked {user.email} and all their credentials")


KeyIdArg = Annotated[str, typer.Argument(help="The key's id (see `thinktank keys list`).")]


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
    user: Annotated[str | None, typer.Option(help="Owner's email (default: the admin).", show_default=False)] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models it may call (default: all).",
                                               show_default=False)] = None,
    tools: Annotated[str | None, typer.Option(help=TOOLS_HELP + " Default: all its owner may use.",
                                              show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(help="USD per --period.", show_default=False)] = None,
    period: Annotated[str, typer.Option(help="day, month or total.")] = "month",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.", show_default=False)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.", show_default=False)] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Lifetime in days (default: no expiry).",
                                                          show_default=False)] = None,
) -> None:
    """Create a key; the full key is printed this once."""
    from ..accounts.schemas import KeyCreate
    from ..accounts.tool_access import parse_tool_list

    expires_at = time.time() + expires_in_days * 86400 if expires_in_days else None
    data = _validated(
        KeyCreate, name=name, models=models.split(",") if models else None,
        tools=None if tools is None else parse_tool_list(tools), budget_usd=budget,
        budget_period=period, rpm=rpm, tpm=tpm, expires_at=expires_at,
    )

    async def work(s: Any) -> Any:
        return await s.keys.create(await _owner(s, user), data)

    created = _run(work)
    typer.echo(created.key)
    typer.secho(f"(key {created.id}, prefix {created.prefix}: store it now, it is not shown again)", err=True)


@keys_app.command("list")
def keys_list(all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False) -> None:
    """Every key (known by its prefix: the full key is shown only when it is made)."""

    async def work(s: Any) -> Any:
        return await s.keys.list(s.auth.known_admin(), include_revoked=all_keys)

    keys = _run(work)
    print_table(["id", "name", "prefix", "owner", "models", "tools", "budget", "rpm", "expires", "revoked"],
                [[k.id, k.name, k.prefix + "…", k.owner_id, ",".join(k.allowed_models or []) or "*",
                  _tools_shown(k.allowed_tools), k.budget_usd and f"${k.budget_usd:g}/{k.budget_period}", k.rpm,
                  when(k.expires_at), when(k.revoked_at)] for k in keys])


@keys_app.command("revoke")
def keys_revoke(key_id: KeyIdArg) -> None:
    """Revoke a key: it stops working at once."""

    async def work(s: Any) -> Any:
        return await s.keys.revoke(s.auth.known_admin(), key_id)

    _run(work)
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate")
def keys_rotate(key_id: KeyIdArg) -> None:
    """A new secret for the key; the old one stops working."""

    async def work(s: Any) -> Any:
        return await s.keys.rotate(s.auth.known_admin(), key_id)

    typer.echo(_run(work).key)


@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Argument(help="The team's name (unique).")],
    budget: Annotated[float | None, typer.Option(help="USD per --period, shared by the members.",
                                                 show_default=False)] = None,
    period: Annotated[str, typer.Option(help="day, month or total.")] = "month",
) -> None:
    """Create a team; put users in it with `thinktank users create --team TEAM_ID`."""
    from ..accounts.schemas import TeamCreate

    data = _validated(TeamCreate, name=name, budget_usd=budget, budget_period=period)
    team = _run(lambda s: s.users.create_team(data))
    typer.echo(f"created team {team.name} ({team.id})")


@teams_app.command("list")
def teams_list() -> None:
    """Every team, with its budget."""
    teams = _run(lambda s: s.users.list_teams())
    print_table(["id", "name", "budget", "created"],
                [[t.id, t.name, (t.budget_usd is not None and f"${t.budget_usd:g}/{t.budget_period}") or "",
                  when(t.created_at)] for t in teams])
