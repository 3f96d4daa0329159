"""Real ``thinktank serve`` processes killed with SIGKILL right after answering, before their usage writer's next
batch (0.5 s) and budget flush (1 s): restarted on the same data directory, every answered request has exactly
one usage row, with the cost its client was told, and the budget's spend is the sum of those costs. A server
killed while it holds a budget lease: another spends the rest and the budget is never overspent; once the killed
one's data directory is replayed, the spend is exact again. On SQLite, PostgreSQL, and with budgets in Redis.
Several servers sharing one data directory leave each other's live journals alone."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..fakes.process import Server
from .journal_env import ADMIN, PRICE_CONFIG, Answer, Upstream, ask, budget, make_key, usage_rows, wait_for


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Where usage and budgets live: the servers' environment."""
    from ..fakes.databases import clone_pg, drop_pg, make_sqlite

    if request.param == "postgres":
        name, url = await clone_pg(request.getfixturevalue("pg_template"))
        try:
            yield {"THINKTANK_DATABASE_URL": url}
        finally:
            await drop_pg(name)
        return
    url = await asyncio.to_thread(make_sqlite, tmp_path)
    if request.param == "redis":
        yield {"THINKTANK_DATABASE_URL": url,
               "THINKTANK_REDIS_URL": os.environ.get("THINKTANK_TEST_REDIS", "redis://127.0.0.1:6379/0")}
    else:
        yield {"THINKTANK_DATABASE_URL": url}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as fake:
        yield fake


@pytest.fixture
def served(env: dict[str, str], store: dict[str, str], upstream: Upstream, tmp_path: Path) -> dict[str, str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PRICE_CONFIG.format(url=upstream.url))
    return {**env, **store, "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_CONFIG": str(cfg)}


def burst(url: str, key: str, n: int, tag: str) -> list[Answer]:
    """``n`` requests at once (every third streamed), each answered in 10-50 tokens ($0.01-0.05)."""
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: ask(url, key, f"{tag} {i}", 10 + i % 5 * 10, stream=i % 3 == 0), range(n)))
    assert all(a is not None for a in got), "every request is answered"
    return [a for a in got if a is not None]


def kill(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)


def test_answers_of_a_killed_server_each_have_one_usage_row_after_its_restart(
    server: type[Server], served: dict[str, str],
) -> None:
    first = server([], served)
    key_id, key = make_key(first.url, 100.0)
    answers = burst(first.url, key, 30, "question")
    kill(first)  # at once: most rows are still in the writer's buffer
    assert len({a.request_id for a in answers}) == 30

    second = server([], served)  # replays the dead one's journal before it is ready
    rows = usage_rows(served["THINKTANK_DATABASE_URL"], key_id)
    assert sorted(rows) == sorted(a.request_id for a in answers)  # each once (and nothing else)
    for a in answers:
        cost, status = rows[a.request_id]
        assert (cost, status) == (a.cost, 200) or (cost == pytest.approx(a.cost) and status == 200)  # as told
    second.stop()
    assert list((Path(served["THINKTANK_DATA_DIR"]) / "journal").iterdir()) == []
    spent, leased = budget(served, key_id)
    assert spent == pytest.approx(sum(a.cost for a in answers)) and leased == pytest.approx(0.0, abs=1e-9)


def test_servers_sharing_a_data_directory_replay_only_the_dead_ones_journal(
    server: type[Server], served: dict[str, str],
) -> None:
    a = server([], served)
    b = server([], served)  # B started while A lives: A's journal is locked, left alone
    key_id, key = make_key(a.url, 100.0)
    answers = burst(a.url, key, 12, "to a") + burst(b.url, key, 12, "to b")
    kill(a)
    journal = Path(served["THINKTANK_DATA_DIR"]) / "journal"
    answers += burst(b.url, key, 6, "to b again")  # B goes on writing its own journal meanwhile
    c = server([], served)  # replays A's (B's is locked)
    wait_for("A's rows", lambda: {x.request_id for x in answers[:12]} <= set(
        usage_rows(served["THINKTANK_DATABASE_URL"], key_id)))
    remaining = {p.name.split(".", 1)[0] for p in journal.iterdir()}
    assert len(remaining) == 2  # B's and C's own: A's is gone
    b.stop()
    c.stop()
    rows = usage_rows(served["THINKTANK_DATABASE_URL"], key_id)
    assert sorted(rows) == sorted(x.request_id for x in answers)
    assert sum(cost for cost, _ in rows.values()) == pytest.approx(sum(x.cost for x in answers))
    assert list(journal.iterdir()) == []
    assert budget(served, key_id) == pytest.approx((sum(x.cost for x in answers), 0.0), abs=1e-9)


def test_a_server_killed_holding_a_lease_never_lets_the_budget_be_overspent(
    server: type[Server], served: dict[str, str], tmp_path: Path,
) -> None:
    """A answers five requests ($0.05 each, not yet written) and holds $0.40 for a sixth when it is killed; B, with
    a data directory of its own, spends all it can. Reclaimed, A's lease counts as spent: B gets $0.35, not the
    $1.00 a lease handed back would have let it spend (A's $0.25 were spent). A restarted on its data directory
    replays its journal: the spend becomes the $0.60 of the usage rows, and B may spend the last $0.40."""
    fast = {**served, "THINKTANK_BUDGET_LEASE_TTL": "2"}
    a = server([], fast)
    key_id, key = make_key(a.url, 1.0)
    answers = [ask(a.url, key, f"fast {i}", 50) for i in range(5)]
    held = ThreadPoolExecutor(1)
    held.submit(ask, a.url, key, "slow, please", 400)  # $0.40 held while the upstream takes a minute
    wait_for("A's lease", lambda: budget(fast, key_id)[1] >= 0.65 - 1e-9)
    kill(a)
    held.shutdown(wait=True, cancel_futures=True)
    assert all(x is not None for x in answers)

    b = server([], {**fast, "THINKTANK_DATA_DIR": str(tmp_path / "b-data")})
    wait_for("A's lease reclaimed, as spent", lambda: budget(fast, key_id) == pytest.approx((0.65, 0.0), abs=1e-9))
    spent_by_b = []
    while (got := ask(b.url, key, "from b", 50)) is not None:
        spent_by_b.append(got)
        assert budget(fast, key_id)[0] <= 1.0 + 1e-9
    assert len(spent_by_b) == 7  # $0.35: what A neither spent nor held ($0.65 counted while A's journal is away)

    a2 = server([], fast)  # A's data directory again: its journal says $0.25 (the held $0.40 was never spent)
    rows = usage_rows(fast["THINKTANK_DATABASE_URL"], key_id)
    answered = sorted(rid for rid, (_, status) in rows.items() if status == 200)
    assert answered == sorted(x.request_id for x in [*answers, *spent_by_b] if x is not None)
    assert {cost for cost, status in rows.values() if status != 200} == {0.0}  # B's refusals (429) cost nothing
    assert budget(fast, key_id)[0] == pytest.approx(0.6)
    more = []
    while (got := ask(b.url, key, "from b again", 50)) is not None:
        more.append(got)
    assert len(more) == 8  # the last $0.40
    b.stop()
    a2.stop()
    rows = usage_rows(fast["THINKTANK_DATABASE_URL"], key_id)
    assert len([1 for _, status in rows.values() if status == 200]) == 20
    assert sum(cost for cost, _ in rows.values()) == pytest.approx(1.0)
    assert budget(fast, key_id) == pytest.approx((1.0, 0.0), abs=1e-9)
