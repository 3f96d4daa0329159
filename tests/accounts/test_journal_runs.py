"""A run whose server is killed (SIGKILL) in the middle is taken up by the next server, which also replays the
dead one's journal: what the dead server's calls cost is on one usage row (rebuilt from its journal, status 499),
what the taker's calls cost on another, nothing is on both, and the caller's budget is charged exactly the two.
When the dead server had saved its finished calls, the taker does not ask them again and the two rows add up to
the run's cost; killed before it saved them, the taker asks them again (paid twice upstream) and the rows say so.
On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..deliberation.resume_upstream import PanelUpstream, config, panel_upstream
from ..fakes.process import Server
from .journal_env import budget, usage_rows, wait_for

ADMIN = "tt-journal-runs-admin-0123456789"
H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def upstream() -> Iterator[PanelUpstream]:
    with panel_upstream() as panel:
        yield panel


def record(url: str, run_id: str, headers: dict[str, str] = H) -> dict[str, object]:
    r = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json())


def answered(url: str, run_id: str, headers: dict[str, str]) -> int:
    calls = record(url, run_id, headers)["calls"]
    assert isinstance(calls, list)
    return len([c for c in calls if c["stage"] == "answer" and c["answer"]])


@pytest.mark.parametrize("saved", [True, False], ids=["calls-saved", "killed-at-once"])
def test_a_taken_up_run_is_paid_once_by_the_dead_servers_journal_and_the_taker(
    server: type[Server], env: dict[str, str], db_url: str, tmp_path: Path, upstream: PanelUpstream, saved: bool,
) -> None:
    cfg = tmp_path / "runs.yaml"
    cfg.write_text(config(upstream.url))
    run_env = {**env, "THINKTANK_CONFIG": str(cfg), "THINKTANK_ADMIN_KEY": ADMIN, "THINKTANK_DATABASE_URL": db_url,
               "THINKTANK_RUN_STALE_AFTER": "2"}
    upstream.hold = lambda model, _prompt: model == "gamma"  # the third member's first answer never comes
    first = server([], run_env)
    made = httpx.post(first.url + "/api/v1/keys", headers=H, timeout=10,
                      json={"name": "runs", "budget_usd": 10.0, "budget_period": "total"})
    assert made.status_code == 201, made.text
    key_id, mine = made.json()["id"], {"Authorization": f"Bearer {made.json()['key']}"}
    body = {"ensemble": "council", "question": "Where does the river cross the valley?", "stream": True}
    with httpx.stream("POST", f"{first.url}/api/v1/ensembles", headers=mine, timeout=10, json=body) as r:
        assert r.status_code == 200
        run_id = r.headers["x-thinktank-run-id"]
        wait_for("two members' answers, the third pending",
                 lambda: len(upstream.held) == 1 and answered(first.url, run_id, mine) == 2)
        if saved:  # listing runs saves the live ones: the finished calls are on the record
            assert httpx.get(f"{first.url}/api/v1/runs", headers=mine, timeout=5).status_code == 200
        first.proc.kill()
        first.proc.wait(10)
    assert usage_rows(db_url) == {}  # the run's usage row was to be written when it ended

    second = server([], run_env)
    done = wait_for("the run to end",
                    lambda: (rec := record(second.url, run_id, mine))["status"] != "running" and rec)
    log = second.stop()  # its usage row written
    assert done["status"] == "completed", (done["error"], log)
    rows = usage_rows(db_url)
    assert len(rows) == 2
    dead = [cost for cost, status in rows.values() if status == 499]
    assert dead == [pytest.approx(0.1)]  # alpha's and beta's answers: 50 tokens at $1000 / M each
    # The calls the dead server had not saved yet (it saves every 0.5 s) are asked, and paid, again.
    again = upstream.count("alpha") - 1
    assert again == 0 if saved else again in (0, 1)
    assert [upstream.count(m) for m in ("alpha", "beta", "gamma")] == [1 + again, 1 + again, 2]
    run_cost = float(done["cost_usd"])
    assert sum(cost for cost, _ in rows.values()) == pytest.approx(run_cost + again * 0.1)
    # The key's budget: the dead server's spend (from its journal) and the taker's, each once; nothing held.
    spent, leased = budget({"THINKTANK_DATABASE_URL": db_url}, key_id)
    assert (spent, leased) == pytest.approx((sum(cost for cost, _ in rows.values()), 0.0), abs=1e-9)
