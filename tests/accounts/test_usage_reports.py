"""Usage series, latency percentiles and recent errors, on real SQLite and PostgreSQL, rows written by the
real UsageWriter."""

from __future__ import annotations

import random

import numpy as np
import pytest

from thinktank.accounts.principal import Principal
from thinktank.accounts.usage import UsageEvent, UsageQuery, UsageWriter
from thinktank.store.db import Database

from ..fakes.clock import FakeClock

T0 = 1_700_000_000.0
ADMIN = Principal(user_id="usr_admin", role="admin")
ALICE = Principal(user_id="alice", role="member")

_ids = iter(range(10**9))


def ev(ts: float, *, user: str | None = "alice", key: str | None = None, model: str = "m", status: int = 200,
       cost: float = 0.0, tokens: tuple[int, int] = (0, 0), latency: float = 1.0,
       deployment: str | None = "d") -> UsageEvent:
    return UsageEvent(request_id=f"r{next(_ids)}", ts=ts, user_id=user, key_id=key, model=model,
                      deployment=deployment, prompt_tokens=tokens[0], completion_tokens=tokens[1], cost_usd=cost,
                      latency_ms=latency, status=status)


async def write(db: Database, clock: FakeClock, events: list[UsageEvent]) -> None:
    writer = UsageWriter(db, clock)
    for e in events:
        writer.record(e)
    await writer.flush()


async def test_series_buckets_groups_and_owners(db: Database, clock: FakeClock) -> None:
    # 4 buckets of 100 s over [T0, T0 + 400).
    await write(db, clock, [
        ev(T0 + 0, model="a", cost=1.0, tokens=(3, 4)),
        ev(T0 + 99.9, model="a", cost=2.0, status=500),
        ev(T0 + 100, model="a", cost=0.5, user="bob"),
        ev(T0 + 399.5, model="b", cost=0.25, tokens=(10, 0), status=429),
        ev(T0 + 400, model="a", cost=100.0),  # at the end: outside [start, end)
        ev(T0 - 1, model="a", cost=100.0),  # before the start
        ev(T0 + 250, model="c", cost=0.0, user=None),  # the admin key's request: no user
    ])
    q = UsageQuery(db)
    s = await q.series(ADMIN, "model", T0, T0 + 400, 4)
    assert (s["bucket_seconds"], s["times"]) == (100.0, [T0, T0 + 100, T0 + 200, T0 + 300])
    groups = {g["group"]: g for g in s["groups"]}
    assert [g["group"] for g in s["groups"]] == ["a", "b", "c"]  # by cost
    a = groups["a"]
    assert a["requests"] == [2, 1, 0, 0] and a["errors"] == [1, 0, 0, 0] and a["tokens"] == [7, 0, 0, 0]
    assert a["cost_usd"] == [3.0, 0.5, 0.0, 0.0]
    assert a["total"] == {"requests": 3, "cost_usd": 3.5, "errors": 1, "tokens": 7} and a["other"] is False
    assert groups["b"]["requests"] == [0, 0, 0, 1] and groups["b"]["errors"] == [0, 0, 0, 1]
    assert groups["c"]["requests"] == [0, 0, 1, 0]

    mine = await q.series(ALICE, "model", T0, T0 + 400, 4)  # a member: her own rows only
    assert {g["group"]: g["total"]["requests"] for g in mine["groups"]} == {"a": 2, "b": 1}

    users = await q.series(ADMIN, "user", T0, T0 + 400, 2)
    assert {g["group"]: g["requests"] for g in users["groups"]} == {"alice": [2, 1], "bob": [1, 0], None: [0, 1]}


async def test_series_shows_the_costliest_groups_and_sums_the_rest(db: Database, clock: FakeClock) -> None:
    await write(db, clock, [ev(T0 + i, key=f"k{i}", cost=float(i), model="m") for i in range(1, 11)])
    s = await UsageQuery(db).series(ADMIN, "key", T0, T0 + 20, 2, top=3)
    assert [g["group"] for g in s["groups"]] == ["k10", "k9", "k8", "other"]
    other = s["groups"][-1]
    assert other["other"] is True
    assert other["requests"] == [7, 0] and other["cost_usd"] == [sum(range(1, 8)), 0.0]
    assert sum(g["total"]["requests"] for g in s["groups"]) == 10


async def test_series_of_nothing_and_bad_arguments(db: Database) -> None:
    q = UsageQuery(db)
    s = await q.series(ADMIN, "model", T0, T0 + 10, 5)
    assert s["groups"] == [] and len(s["times"]) == 5
    with pytest.raises(ValueError):
        await q.series(ADMIN, "model", T0, T0, 5)


def reference(values: list[float], p: float) -> float:
    return float(np.percentile(np.array(values), p * 100, method="linear"))


async def test_latency_percentiles_match_a_reference(db: Database, clock: FakeClock) -> None:
    rng = random.Random(7)
    data = {
        "one": [42.0],
        "two": [10.0, 20.0],
        "ten": [float(v) for v in range(1, 11)],
        "twentyone": [float(v) for v in range(100, 121)][::-1],  # 0.95 * 20 is a whole rank
        "skewed": [rng.lognormvariate(4, 1) for _ in range(997)],
        "ties": [5.0] * 50 + [500.0] * 3,
    }
    events = [ev(T0 + rng.random() * 100, model=m, latency=v) for m, vs in data.items() for v in vs]
    # Failures are counted but do not move the percentiles.
    events += [ev(T0 + 1, model="ten", latency=1e6, status=502), ev(T0 + 2, model="ten", latency=0.0, status=429)]
    events.append(ev(T0 + 3, model="failing", latency=9.0, status=500))
    events.append(ev(T0 + 3, model="ten", latency=1e9, user="bob"))  # not Alice's
    rng.shuffle(events)
    await write(db, clock, events)
    q = UsageQuery(db)
    got = {r["group"]: r for r in await q.latency(ALICE, T0, T0 + 200)}
    for model, values in data.items():
        assert got[model]["p50_ms"] == pytest.approx(reference(values, 0.5), abs=1e-3), model
        assert got[model]["p95_ms"] == pytest.approx(reference(values, 0.95), abs=1e-3), model
        assert got[model]["requests"] == len(values) + (2 if model == "ten" else 0)
    assert got["ten"]["errors"] == 2 and got["skewed"]["errors"] == 0
    assert got["failing"] == {"group": "failing", "requests": 1, "errors": 1, "p50_ms": None, "p95_ms": None}
    admin = {r["group"]: r for r in await q.latency(ADMIN, T0, T0 + 200)}
    assert admin["ten"]["p95_ms"] == pytest.approx(reference([*data["ten"], 1e9], 0.95), abs=1e-3)
    by_dep = await q.latency(ADMIN, T0, T0 + 200, "deployment", limit=1)
    assert [r["group"] for r in by_dep] == ["d"]


async def test_recent_errors_newest_first_and_only_ones_own(db: Database, clock: FakeClock) -> None:
    await write(db, clock, [
        ev(T0 + 1, status=500, model="a"), ev(T0 + 2, status=200), ev(T0 + 3, status=429, model="b", user="bob"),
        ev(T0 + 4, status=504, model="c", deployment=None), ev(T0 + 5, status=499, model="d"),
    ])
    q = UsageQuery(db)
    admin = await q.recent_errors(ADMIN, limit=3)
    assert [(e["model"], e["status"]) for e in admin] == [("d", 499), ("c", 504), ("b", 429)]
    assert admin[1]["deployment"] is None and admin[0]["ts"] == T0 + 5
    assert set(admin[0]) == {"ts", "request_id", "model", "deployment", "status", "latency_ms", "user_id", "key_id",
                             "stream"}
    mine = await q.recent_errors(ALICE, limit=10)
    assert [e["model"] for e in mine] == ["d", "c", "a"]
