"""Tool allowlists on users and keys: what an entry may be, a key never wider than its creator, a user's and a
key's lists met entry by entry (``git`` with ``git.git_log`` allows ``git.git_log``), and an authenticator
that forgets a user whose list changed; on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from thinktank.accounts.admin_key import AdminKey, hash_key
from thinktank.accounts.keys import KeyService
from thinktank.accounts.principal import Authenticator, Principal
from thinktank.accounts.schemas import KeyCreate, UserCreate, UserTools
from thinktank.accounts.secrets import PasswordHashing
from thinktank.accounts.tool_access import covers, intersect_tools, parse_tool_list
from thinktank.accounts.users import UserService
from thinktank.agents.config import BUILTIN_TOOLS
from thinktank.errors import NotFoundError, PermissionDeniedError
from thinktank.store.db import Database
from thinktank.store.tables import User

from ..fakes.clock import FakeClock

ENTRIES = ["knowledge_search", "fetch_url", "git", "git.*", "git.git_log", "git.git_diff", "search", "search.find",
           "searcher.*"]
QUALIFIED = ["knowledge_search", "fetch_url", "ask_model", "git.git_log", "git.git_diff", "git.git_status",
             "search.find", "search.fetch", "searcher.find", "git", "gitx.git_log"]
LISTS: list[list[str] | None] = [None, [], *([e] for e in ENTRIES),
                                 *(list(pair) for pair in itertools.combinations(ENTRIES, 2))]


def allows(tools: list[str] | frozenset[str] | None, qualified: str) -> bool:
    return Principal(user_id="u", role="member",
                     allowed_tools=None if tools is None else frozenset(tools)).may_use_tool(qualified)


def test_may_use_tool_reads_server_server_star_and_server_tool() -> None:
    assert allows(None, "git.git_log") and allows(None, "anything")
    assert not allows([], "knowledge_search")
    assert allows(["git"], "git.git_log") and allows(["git.*"], "git.git_log")
    assert allows(["git.git_log"], "git.git_log") and not allows(["git.git_log"], "git.git_diff")
    assert not allows(["git"], "gitx.git_log") and not allows(["git.*"], "knowledge_search")
    assert allows(["knowledge_search"], "knowledge_search") and not allows(["knowledge_search"], "fetch_url")


@pytest.mark.parametrize("user", LISTS, ids=str)
def test_a_user_and_a_key_together_allow_exactly_what_both_allow(user: list[str] | None) -> None:
    for key in LISTS:
        both = intersect_tools(user, key)
        for q in QUALIFIED:
            assert allows(both, q) == (allows(user, q) and allows(key, q)), (user, key, q, both)


def test_the_meeting_of_lists_keeps_the_narrower_entry() -> None:
    assert intersect_tools(["git"], ["git.git_log"]) == frozenset({"git.git_log"})
    assert intersect_tools(["git.*"], ["git"]) == frozenset({"git.*"})
    assert intersect_tools(["git.git_log"], ["git.git_diff"]) == frozenset()
    assert intersect_tools(None, ["git"]) == frozenset({"git"}) and intersect_tools([], None) == frozenset()
    assert intersect_tools(None, None) is None


def test_covers_is_what_a_key_may_ask_for_within_its_creator() -> None:
    for held in LISTS:
        if held is None:
            continue
        for entry in ENTRIES:
            # An entry is covered exactly when no tool it allows is refused to the holder (a bare name that is not a
            # built-in tool's names no tool: an MCP server's tools are always server.tool).
            wider = any(allows([entry], q) and not allows(held, q) for q in QUALIFIED
                        if "." in q or q in BUILTIN_TOOLS)
            assert covers(held, entry) == (not wider), (held, entry)
    assert covers(["git.*"], "git") and covers(["git"], "git.*") and covers(["git"], "git.git_log")
    assert not covers(["git.git_log"], "git") and not covers(["git.git_log"], "git.*")
    assert not covers(["fetch_url.*"], "fetch_url")  # a bare built-in name is the built-in tool, not a server's
    assert not covers([], "knowledge_search")


@pytest.mark.parametrize("tools", [["git"], ["git.*"], ["git.git_log", "knowledge_search"], ["a-b_c.x.y-z"], []])
def test_valid_lists(tools: list[str]) -> None:
    assert KeyCreate(tools=tools).tools == tools
    assert UserTools(tools=tools).tools == tools


@pytest.mark.parametrize(("tools", "says"), [
    ("git", "valid list"),
    ([1], "valid string"),
    ([None], "valid string"),
    ([["git"]], "valid string"),
    ([""], "at least 1 character"),
    (["x" * 201], "at most 200 characters"),
    (["x" * 100_000], "at most 200 characters"),
    ([f"t{i}" for i in range(101)], "at most 100 items"),
    (["*"], "server.*"),
    (["git.*x"], "server.*"),
    (["git*"], "server.*"),
    (["git."], "server.tool"),
    (["git..log"], "server.tool"),
    (["a b"], "letters, digits"),
    (["gït"], "letters, digits"),
    (["git\ud800"], "valid string"),
    (["git,fetch"], "letters, digits"),
])
def test_invalid_lists_are_refused_with_a_clear_message(tools: object, says: str) -> None:
    for model in (KeyCreate, UserTools, UserCreate):
        extra = {"email": "a@example.com", "password": "long enough"} if model is UserCreate else {}
        with pytest.raises(ValidationError) as info:
            model.model_validate({**extra, "tools": tools})
        first = info.value.errors()[0]
        assert first["loc"][0] == "tools" and says in first["msg"], first


def test_repeated_entries_are_kept_once_and_parse_reads_star_and_empty() -> None:
    assert KeyCreate(tools=["git", "git", "fetch_url"]).tools == ["git", "fetch_url"]
    assert parse_tool_list(" * ") is None and parse_tool_list("") == [] and parse_tool_list(" ,, ") == []
    assert parse_tool_list("git , knowledge_search,") == ["git", "knowledge_search"]


# -- on a database ------------------------------------------------------------------------------------


@pytest.fixture
def auth(db: Database, clock: FakeClock) -> Authenticator:
    return Authenticator(db, AdminKey(hash_key("sk-admin")), clock, cache_ttl=60.0)


@pytest.fixture
def users(db: Database, clock: FakeClock, auth: Authenticator) -> UserService:
    return UserService(db, clock, PasswordHashing(), auth)


async def _user(users: UserService, auth: Authenticator, email: str, tools: list[str] | None) -> Principal:
    made = await users.create_user(UserCreate(email=email, password="long enough", tools=tools))
    principal = await auth.principal_of(made.id)
    assert principal is not None
    return principal


async def test_a_key_made_with_tools_gives_a_principal_that_reads_them(
        db: Database, clock: FakeClock, auth: Authenticator, users: UserService) -> None:
    owner = await _user(users, auth, "open@example.com", None)
    keys = KeyService(db, clock, auth)
    made = await keys.create(owner, KeyCreate(tools=["git", "search.find", "knowledge_search"]))
    assert made.tools == ["git", "search.find", "knowledge_search"]
    p = await auth.lookup(made.key)
    assert p.allowed_tools == frozenset({"git", "search.find", "knowledge_search"})
    assert [q for q in QUALIFIED if p.may_use_tool(q)] == [
        "knowledge_search", "git.git_log", "git.git_diff", "git.git_status", "search.find", "git"]
    star = await auth.lookup((await keys.create(owner, KeyCreate(tools=["git.*"]))).key)
    assert star.may_use_tool("git.git_status") and not star.may_use_tool("git") and not star.may_use_tool("ask_model")
    everything = await auth.lookup((await keys.create(owner, KeyCreate())).key)
    assert everything.allowed_tools is None and everything.may_use_tool("anything.at_all")
    none = await auth.lookup((await keys.create(owner, KeyCreate(tools=[]))).key)
    assert none.allowed_tools == frozenset() and not none.may_use_tool("current_time")


async def test_a_key_gets_its_creators_list_and_can_never_widen_it(
        db: Database, clock: FakeClock, auth: Authenticator, users: UserService) -> None:
    owner = await _user(users, auth, "git@example.com", ["git", "knowledge_search"])
    keys = KeyService(db, clock, auth)
    inherited = await keys.create(owner, KeyCreate())
    assert inherited.tools == ["git", "knowledge_search"]
    narrow = await keys.create(owner, KeyCreate(tools=["git.git_log"]))
    assert (await auth.lookup(narrow.key)).allowed_tools == frozenset({"git.git_log"})
    for wider in (["fetch_url"], ["git.git_log", "search"], ["search.find"], ["gitx.*"]):
        with pytest.raises(PermissionDeniedError) as info:
            await keys.create(owner, KeyCreate(tools=wider))
        assert info.value.param == "tools" and wider[-1] in info.value.message
    # A key that makes a key: the made key is bounded by the making key, not only by the user.
    by_key = await auth.lookup(narrow.key)
    with pytest.raises(PermissionDeniedError):
        await keys.create(by_key, KeyCreate(tools=["git"]))
    child = await keys.create(by_key, KeyCreate())
    assert child.tools == ["git.git_log"]


async def test_a_users_list_and_a_keys_list_meet(
        db: Database, clock: FakeClock, auth: Authenticator, users: UserService) -> None:
    owner = await _user(users, auth, "both@example.com", None)
    keys = KeyService(db, clock, auth)
    key = await keys.create(owner, KeyCreate(tools=["git.git_log", "fetch_url", "search"]))
    await users.set_tools(owner.user_id, ["git", "search.find", "knowledge_search"])
    p = await auth.lookup(key.key)
    assert p.allowed_tools == frozenset({"git.git_log", "search.find"})
    assert p.may_use_tool("git.git_log") and p.may_use_tool("search.find")
    assert not p.may_use_tool("fetch_url") and not p.may_use_tool("knowledge_search")
    assert not p.may_use_tool("git.git_diff") and not p.may_use_tool("search.fetch")


async def test_a_changed_user_list_is_seen_at_once_by_cached_keys_and_sessions(
        db: Database, clock: FakeClock, auth: Authenticator, users: UserService) -> None:
    owner = await _user(users, auth, "cached@example.com", None)
    key = await KeyService(db, clock, auth).create(owner, KeyCreate(tools=["git"]))
    session, _, _ = await users.login("cached@example.com", "long enough")
    assert (await auth.lookup(key.key)).may_use_tool("git.git_log")
    assert (await auth.lookup(session)).allowed_tools is None

    # Behind the service's back (what the cache is for): the cached principals are still trusted.
    async with db.session() as s:
        await s.execute(update(User).where(User.id == owner.user_id).values(allowed_tools=["fetch_url"]))
    cached = auth.known(key.key)
    assert cached is not None and cached.may_use_tool("git.git_log")

    await users.set_tools(owner.user_id, ["knowledge_search"])
    assert auth.known(key.key) is None and auth.known(session) is None
    p = await auth.lookup(key.key)
    assert p.allowed_tools == frozenset() and not p.may_use_tool("git.git_log")
    assert (await auth.lookup(session)).allowed_tools == frozenset({"knowledge_search"})

    await users.set_tools(owner.user_id, None)
    assert (await auth.resolve(key.key)).allowed_tools == frozenset({"git"})
    assert (await auth.resolve(session)).allowed_tools is None
    with pytest.raises(NotFoundError):
        await users.set_tools("usr_nobody", [])
