"""The evaluations' store on SQLite and PostgreSQL: datasets per owner, and the answer cache (the first answer kept
stays; a failure kept is replaced by an answer and never served)."""

from __future__ import annotations

from thinktank.evals.store import EvalStore, KeptAnswer
from thinktank.store.db import Database
from thinktank.store.tables import SYSTEM_USER_ID

from ..fakes.clock import FakeClock


def _kept(text: str | None, *, key: str = "k1", error: str | None = None, cost: float = 0.01) -> KeptAnswer:
    return KeptAnswer(SYSTEM_USER_ID, "quick", key, "p", text=text, error=error, cost_usd=cost, latency_ms=12.5,
                      citations=[{"n": 1}] if text else None, prompt_tokens=3, completion_tokens=4, run_id="run_a")


async def test_the_answer_cache_keeps_the_first_answer_and_serves_no_failure(db: Database) -> None:
    store = EvalStore(db, FakeClock())
    await store.keep([_kept(None, error="upstream down"), _kept("Paris.", key="k2")])
    assert set(await store.cached(SYSTEM_USER_ID, "p", {("quick", "k1"), ("quick", "k2")})) == {("quick", "k2")}
    await store.keep([_kept("Paris, France.", cost=0.02), _kept("Rome?", key="k2")])
    found = await store.cached(SYSTEM_USER_ID, "p", {("quick", "k1"), ("quick", "k2"), ("other", "k1")})
    assert {k: v.text for k, v in found.items()} == {("quick", "k1"): "Paris, France.", ("quick", "k2"): "Paris."}
    hit = found[("quick", "k1")]
    assert (hit.cost_usd, hit.latency_ms, hit.citations, hit.prompt_tokens, hit.completion_tokens, hit.run_id) == (
        0.02, 12.5, [{"n": 1}], 3, 4, "run_a")
    await store.keep([_kept(None, error="down again")])  # a failure never replaces an answer
    await store.keep([_kept(None, key="k3", error="x"), _kept("first", key="k3"), _kept("second", key="k3")])
    assert (await store.cached(SYSTEM_USER_ID, "p", {("quick", "k3")}))[("quick", "k3")].text == "first"
    assert (await store.cached(SYSTEM_USER_ID, "p", {("quick", "k1")}))[("quick", "k1")].text == "Paris, France."
    assert await store.cached(SYSTEM_USER_ID, "other-params", {("quick", "k1")}) == {}
    many = {("quick", f"x{i}") for i in range(1200)}  # more keys than one query takes
    await store.keep([_kept(f"answer {k}", key=k) for _, k in sorted(many)])
    assert len(await store.cached(SYSTEM_USER_ID, "p", many)) == 1200


async def test_datasets_are_their_owners(db: Database) -> None:
    store = EvalStore(db, FakeClock())
    made = await store.add_dataset(SYSTEM_USER_ID, "qa", [{"id": "a", "question": "q?"}], ["geo"],
                                   [{"line": 2, "message": "bad"}], ["column x ignored"])
    assert (await store.dataset("usr_other", made["id"])) is None
    assert not await store.delete_dataset("usr_other", made["id"])
    row = await store.dataset(SYSTEM_USER_ID, made["id"])
    assert row is not None and row["items"] == [{"id": "a", "question": "q?"}] and row["item_count"] == 1
    assert [d["id"] for d in await store.datasets(SYSTEM_USER_ID)] == [made["id"]]
    assert await store.datasets("usr_other") == []
    assert await store.delete_dataset(SYSTEM_USER_ID, made["id"])
    assert await store.datasets(SYSTEM_USER_ID) == []
