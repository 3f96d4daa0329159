"""The Evaluations pages through the real app on loopback, with two scripted candidates and a scripted judge
(eval_config.py): the start form and its errors (each shown in the page with what was chosen kept), a dataset's
bad line reported by number, an evaluation run to its summary and matrix, the filters done by the server, the
owner alone seeing it (404 for anyone else, and for a run that is not an evaluation), hostile text escaped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from selectolax.lexbor import LexborNode as Node

from thinktank.knowledge.embeddings import LocalEmbedder

from .conftest import Browser, Page, WebEnv, web_env
from .eval_config import (
    BAD_LINE,
    DATASET,
    DISAGREEMENTS,
    EVERY_ITEM_CHECKS,
    GEOGRAPHY,
    GOOD,
    HOSTILE,
    ITEMS,
    JUDGE,
    WEAK,
    eval_config,
)


@pytest.fixture
async def web(tmp_path: Path, local_embedder: LocalEmbedder) -> AsyncIterator[WebEnv]:
    async with web_env(tmp_path, local_embedder, eval_config()) as env:
        yield env


def _sub(node: Node, selector: str) -> Node:
    found = node.css_first(selector)
    assert found is not None, selector
    return found


def _form(page: Page, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"csrf": page.csrf, "candidate": [GOOD, WEAK], "judge": [JUDGE], "checks": "",
                            "max_cost_usd": "", "concurrency": "4", "dataset_id": "", "name": ""}
    base.update(fields)
    return base


async def _post(b: Browser, fields: dict[str, Any], file: tuple[str, bytes] | None = None) -> Page:
    files = {"file": (file[0], file[1], "application/octet-stream")} if file else None
    if files is None:  # multipart even without a file, as the browser sends the form
        files = {"file": ("", b"", "application/octet-stream")}
    return Page(await b.http.post("/evals", data=fields, files=files))


async def _finished(b: Browser, run_id: str) -> dict[str, Any]:
    """The evaluation's record once it has ended (polled through the API, as a script would)."""
    for _ in range(600):
        r = await b.api("GET", f"/api/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        record: dict[str, Any] = r.json()
        if record["status"] != "running":
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"evaluation {run_id} did not end")


async def _run(b: Browser) -> str:
    """Upload the dataset (its bad line reported), then start from the stored dataset; the run id."""
    index = await b.get("/evals")
    page = await _post(b, _form(index, checks=EVERY_ITEM_CHECKS), ("qa.jsonl", DATASET))
    assert page.status == 200, page.response.text
    chosen = page.one("#eval-dataset option[selected]").attributes["value"]
    r = await b.http.post("/evals", data=_form(page, dataset_id=chosen, checks=EVERY_ITEM_CHECKS),
                          files={"file": ("", b"", "application/octet-stream")})
    assert r.status_code == 303, r.text
    run_id = r.headers["location"].removeprefix("/evals/")
    assert run_id.startswith("run_")
    return run_id


async def test_the_form_offers_the_users_models_and_reports_a_bad_line_by_number(web: WebEnv) -> None:
    b = await web.member("evals-form@example.com")
    index = await b.get("/evals")
    assert index.status == 200
    assert index.one('nav a[aria-current="page"]').text() == "Evaluations"
    offered = [n.attributes["value"] for n in index.all('#eval-candidates input[name="candidate"]')]
    assert {GOOD, WEAK, JUDGE, "demo/echo", "ensemble/demo-council"} <= set(offered)
    assert "demo/embed" not in offered  # an embedding model answers no question
    assert offered == [n.attributes["value"] for n in index.all('#eval-judges input[name="judge"]')]
    assert index.one("#no-evals")
    assert index.one("#eval-form").attributes["enctype"] == "multipart/form-data"

    page = await _post(b, _form(index, checks='[{"type": "contains", "value": "a"}]'), ("my qa.jsonl", DATASET))
    assert page.status == 200
    report = " ".join(page.one("#dataset-report").text().split())
    assert f"with {len(ITEMS)} items" in report and "my qa" in report
    (line,) = page.all("#dataset-errors li")
    assert _sub(line, ".line-no").text() == f"line {BAD_LINE}"
    # Nothing was started: the dataset is chosen for the next submit, with every other choice kept.
    assert not page.all("#eval-error")
    selected = page.one("#eval-dataset option[selected]")
    assert "my qa" in selected.text() and f"{len(ITEMS)} items" in selected.text()
    assert {n.attributes["value"] for n in page.all('#eval-candidates input[checked]')} == {GOOD, WEAK}
    assert [n.attributes["value"] for n in page.all('#eval-judges input[checked]')] == [JUDGE]
    assert page.one("#eval-checks").text() == '[{"type": "contains", "value": "a"}]'
    assert (await b.get("/evals")).one("#no-evals")  # still no evaluation


@pytest.mark.parametrize(("fields", "file", "message"), [
    ({"candidate": ["nobody/such-model"]}, True, "the model 'nobody/such-model' does not exist"),
    ({"judge": ["nobody/judge"]}, True, "the model 'nobody/judge' does not exist"),
    ({"candidate": []}, True, "Choose at least one candidate."),
    ({}, False, "Upload a dataset file or choose a stored dataset."),
    ({"checks": "[{not json"}, True, "Checks: not valid JSON"),
    ({"checks": '"contains"'}, True, "Checks: give a JSON list of checks"),
    ({"checks": '[{"type": "regex", "pattern": "("}]'}, True, "checks"),
    ({"checks": '[{"type": "no-such-check"}]'}, True, "checks"),
    ({"max_cost_usd": "lots"}, True, "Max cost: enter an amount in USD"),
    ({"max_cost_usd": "-1"}, True, "Max cost: enter an amount above 0 USD."),
    ({"max_cost_usd": "1e999"}, True, "Max cost: enter an amount above 0 USD."),
    ({"concurrency": "99"}, True, "Answers at a time: a whole number from 1 to 32."),
    ({"concurrency": "٣"}, True, "Answers at a time: a whole number from 1 to 32."),
    ({"candidate": [f"m{i}" for i in range(9)]}, True, "Choose at most 8 candidates (you chose 9)."),
    ({"judge": ["j1", "j2", "j3", "j4"]}, True, "Choose at most 3 judges (you chose 4)."),
    ({"dataset_id": "ds_missing"}, False, "There is no dataset 'ds_missing'."),
    ({"dataset_id": "x" * 200}, False, "dataset_id"),
])
async def test_what_the_form_cannot_run_is_a_form_error_with_the_choices_kept(
        web: WebEnv, fields: dict[str, Any], file: bool, message: str) -> None:
    b = await web.member("evals-errors@example.com")
    index = await b.get("/evals")
    good_only = b"\n".join(DATASET.splitlines()[:2])
    page = await _post(b, _form(index, **fields), ("qa.jsonl", good_only) if file else None)
    assert page.status in (400, 404), page.response.text
    assert message in page.one("#eval-error").text(), page.one("#eval-error").text()
    candidates = fields.get("candidate", [GOOD, WEAK])
    assert {n.attributes["value"] for n in page.all('#eval-candidates input[checked]')} == \
        set(candidates) & {n.attributes["value"] for n in page.all('#eval-candidates input')}
    assert not page.all("#eval-runs tbody tr")  # nothing started, nothing spent
    r = await b.api("GET", "/api/v1/runs", params={"kind": "evaluation"})
    assert r.status_code == 200 and r.json()["data"] == []


@pytest.mark.parametrize(("name", "data", "message"), [
    ("all-bad.jsonl", b"{not json\n[1, 2]\n", "line 1"),
    ("latin1.csv", "id,question\nq1,caf\u00e9 cr\u00e8me\n".encode("latin-1"), "not UTF-8"),
    ("empty.jsonl", b"  \n\n", "is empty"),
])
async def test_a_dataset_the_page_cannot_read_is_a_form_error(web: WebEnv, name: str, data: bytes,
                                                              message: str) -> None:
    b = await web.member("evals-files@example.com")
    index = await b.get("/evals")
    page = await _post(b, _form(index), (name, data))
    assert page.status == 400, page.response.text
    assert message in page.one("#eval-error").text()


async def test_the_form_needs_its_csrf_token(web: WebEnv) -> None:
    b = await web.member("evals-csrf@example.com")
    index = await b.get("/evals")
    page = await _post(b, _form(index, csrf="forged"), ("qa.jsonl", DATASET))
    assert page.status == 403
    assert len((await b.get("/evals")).all("#eval-dataset option")) == 1  # nothing was stored


async def test_an_evaluation_shows_its_summary_and_matrix_and_the_server_filters_it(web: WebEnv) -> None:
    b = await web.member("evals-run@example.com")
    run_id = await _run(b)
    record = await _finished(b, run_id)
    assert record["status"] == "completed", record.get("error")

    page = await b.get(f"/evals/{run_id}")
    assert page.status == 200
    assert page.one("#eval-status").text() == "completed"
    assert not page.all("#eval-progress")
    assert page.one('script[src^="/static/js/evals.js"]').attributes["type"] == "module"
    rows = page.all("#eval-summary tbody tr")
    assert [r.attributes["data-candidate"] for r in rows] == [GOOD, WEAK]
    good, weak = rows
    assert _sub(good, ".rank").text() == "1" and _sub(weak, ".rank").text() == "2"
    assert _sub(good, ".pass").text(strip=True).startswith("100 %")
    assert _sub(weak, ".pass").text(strip=True).startswith("60 %")
    summary = {c["candidate"]: c for c in record["result"]["summary"]["per_candidate"]}
    lo, hi = summary[GOOD]["win_ci"]
    assert _sub(good, ".win .ci").text() == f"[{lo * 100:.0f} – {hi * 100:.0f} %]"
    rlo, rhi = summary[GOOD]["rating_ci"]
    assert _sub(good, ".rating .ci").text() == f"[{rlo:.1f} – {rhi:.1f}]"
    assert page.all("#win-chart svg")
    assert len(page.all("#eval-pairs tbody tr")) == 1

    matrix = page.all("#eval-matrix tr.item-row")
    assert [r.attributes["data-item"] for r in matrix] == ITEMS
    assert all("hidden" not in r.attributes for r in matrix)
    assert page.one("#eval-shown").text() == f"{len(ITEMS)} of {len(ITEMS)} items shown"
    heads = [h.text(strip=True) for h in page.all("#eval-matrix thead th")]
    assert heads == ["Item", GOOD, WEAK]
    munich = page.one('tr[data-item="capital-de"] td[data-candidate="evalweb/weak"]')
    assert _sub(munich, ".answer-text").text() == "Munich"
    fails = munich.css(".check-fail")
    assert [_sub(f, ".check-name").text() for f in fails] == ["contains 'Berlin'"]
    assert _sub(fails[0], "summary").attributes["title"] == _sub(fails[0], ".reason").text()
    # The server's filters, for a page without script (and on reload).
    page = await b.get(f"/evals/{run_id}?tag=geography")
    shown = [r.attributes["data-item"] for r in page.all("#eval-matrix tr.item-row") if "hidden" not in r.attributes]
    assert shown == GEOGRAPHY
    page = await b.get(f"/evals/{run_id}?disagreements=1")
    shown = [r.attributes["data-item"] for r in page.all("#eval-matrix tr.item-row") if "hidden" not in r.attributes]
    assert shown == DISAGREEMENTS
    assert "checked" in page.one("#filter-disagreements").attributes
    page = await b.get(f"/evals/{run_id}?tag=no-such-tag")  # an unknown tag filters nothing out
    assert page.one("#eval-shown").text() == f"{len(ITEMS)} of {len(ITEMS)} items shown"

    # The list shows it; the fragment the live page swaps in is the same body; /runs/{id} leads here.
    index = await b.get("/evals")
    (row,) = index.all("#eval-runs tbody tr")
    assert _sub(row, "a").attributes["href"] == f"/evals/{run_id}"
    assert GOOD in row.text() and WEAK in row.text() and "completed" in row.text()
    fragment = Page(await b.http.get(f"/evals/{run_id}/fragment"))
    assert fragment.status == 200 and fragment.one(".eval-body").attributes["data-status"] == "completed"
    assert len(fragment.all("#eval-matrix tr.item-row")) == len(ITEMS)
    r = await b.http.get(f"/runs/{run_id}")
    assert r.status_code == 303 and r.headers["location"] == f"/evals/{run_id}"


async def test_hostile_answers_and_dataset_text_are_escaped(web: WebEnv) -> None:
    b = await web.member("evals-hostile@example.com")
    run_id = await _run(b)
    await _finished(b, run_id)
    page = await b.get(f"/evals/{run_id}")
    cell = page.one('tr[data-item="markup"] td[data-candidate="evalweb/good"]')
    assert HOSTILE in _sub(cell, ".answer-text").text()
    main = page.one("main")
    assert main.css("script") == [] and main.css("img") == [] and main.css("b") == []
    for node in main.css("*"):
        for attr, value in node.attributes.items():
            assert not attr.lower().startswith("on"), (node.tag, attr)
            assert "javascript:" not in (value or "").lower()
    assert "<script>window.__xss" not in page.response.text


async def test_someone_elses_evaluation_is_not_found_on_every_page(web: WebEnv) -> None:
    owner = await web.member("evals-owner@example.com")
    run_id = await _run(owner)
    await _finished(owner, run_id)
    other = await web.member("evals-other@example.com")
    for path in (f"/evals/{run_id}", f"/evals/{run_id}/fragment", "/evals/run_0000", "/evals/no-such-run"):
        r = await other.http.get(path)
        assert r.status_code == 404, path
    index = await other.get("/evals")
    assert not index.all("#eval-runs tbody tr")
    assert len(index.all("#eval-dataset option")) == 1  # the owner's dataset is not offered either
    r = await other.http.post(f"/evals/{run_id}/cancel", data={"csrf": index.csrf})
    assert r.status_code == 404
    # Starting from someone else's dataset: not found, nothing started.
    owner_index = await owner.get("/evals")
    dataset_id = owner_index.all("#eval-dataset option")[1].attributes["value"]
    page = await _post(other, _form(index, dataset_id=dataset_id))
    assert page.status == 404 and "There is no dataset" in page.one("#eval-error").text()
    # An admin reads runs of anyone's through the API, but this page is the owner's alone.
    assert (await web.admin.http.get(f"/evals/{run_id}")).status_code == 404
    # A run that is not an evaluation has no evaluation page.
    r = await owner.api("POST", "/api/v1/ensembles", json={"ensemble": "demo-council", "question": "hi"})
    assert r.status_code == 200, r.text
    assert (await owner.http.get(f"/evals/{r.json()['id']}")).status_code == 404
    # Signed out: to the sign-in page.
    anonymous = await web.browser()
    r = await anonymous.http.get(f"/evals/{run_id}")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


async def test_a_dataset_larger_than_a_request_body_is_taken_and_one_over_its_limit_refused(web: WebEnv) -> None:
    """The form carries a dataset file of up to 10 MB (more than the 4 MB a page's request body may have)."""
    b = await web.member("evals-big@example.com")
    assert web.app.state.settings.max_body_bytes < 5_000_000
    padding = "x" * 2600
    lines = [f'{{"id": "q{i}", "question": "Question {i} {padding}"}}' for i in range(1999)] + ["{broken"]
    data = ("\n".join(lines) + "\n").encode()
    assert 5_000_000 < len(data) < 10 * 1024 * 1024
    index = await b.get("/evals")
    page = await _post(b, _form(index), ("big.jsonl", data))
    assert page.status == 200, page.response.text[:500]
    assert "with 1999 items" in " ".join(page.one("#dataset-report").text().split())
    assert [_sub(li, ".line-no").text() for li in page.all("#dataset-errors li")] == ["line 2000"]

    too_big = b"{}\n" * (10 * 1024 * 1024 // 3 + 1)
    page = await _post(b, _form(page), ("huge.jsonl", too_big))
    assert page.status == 400
    assert "larger than 10,485,760 bytes" in page.one("#eval-error").text()
    assert {n.attributes["value"] for n in page.all('#eval-candidates input[checked]')} == {GOOD, WEAK}


async def test_the_result_downloads_from_the_links_on_the_page(web: WebEnv) -> None:
    b = await web.member("evals-export@example.com")
    run_id = await _run(b)
    await _finished(b, run_id)
    page = await b.get(f"/evals/{run_id}")
    links = {a.text(): a.attributes["href"] for a in page.all("#eval-downloads a")}
    assert set(links) == {"JSON", "CSV", "Markdown"}
    csv = await b.http.get(str(links["CSV"]))  # with the session's cookie, as a click sends it
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "Munich" in csv.text
    other = await web.member("evals-export-other@example.com")
    assert (await other.http.get(str(links["JSON"]))).status_code == 404


@pytest.mark.parametrize("latency", [1.0])
async def test_an_evaluation_cancelled_from_the_page_keeps_what_was_done(
        tmp_path: Path, local_embedder: LocalEmbedder, latency: float) -> None:
    async with web_env(tmp_path, local_embedder, eval_config(latency=latency)) as env:
        b = await env.member("evals-cancel@example.com")
        run_id = await _run(b)
        page = await b.get(f"/evals/{run_id}")
        assert page.one("#eval-status").text() == "running"
        assert page.one("#eval-progress") and page.one("#eval-total").text() == str(len(ITEMS))
        assert not page.all("#eval-downloads")
        form = page.one("form.cancel-form")
        r = await b.http.post(str(form.attributes["action"]), data={"csrf": page.csrf})
        assert r.status_code == 303 and r.headers["location"] == f"/evals/{run_id}"
        record = await _finished(b, run_id)
        assert record["status"] == "cancelled"
        page = await b.get(f"/evals/{run_id}")
        assert page.one("#eval-status").text() == "cancelled"
        assert not page.all("#eval-progress") and not page.all("form.cancel-form")
        # Cancelled again (it has ended): the page says how it ended, no error.
        r = await b.http.post(f"/evals/{run_id}/cancel", data={"csrf": page.csrf})
        assert r.status_code == 303


async def test_an_evaluation_stopped_by_its_cost_limit_shows_its_partial_result(web: WebEnv) -> None:
    b = await web.member("evals-budget@example.com")
    index = await b.get("/evals")
    page = await _post(b, _form(index, max_cost_usd="0.00003", concurrency="1"), ("qa.jsonl", DATASET))
    chosen = page.one("#eval-dataset option[selected]").attributes["value"]
    r = await b.http.post("/evals", data=_form(page, dataset_id=chosen, max_cost_usd="0.00003", concurrency="1"),
                          files={"file": ("", b"", "application/octet-stream")})
    assert r.status_code == 303, r.text
    run_id = r.headers["location"].removeprefix("/evals/")
    record = await _finished(b, run_id)
    assert record["status"] == "budget_exceeded"
    page = await b.get(f"/evals/{run_id}")
    assert page.one("#eval-status").text() == "budget_exceeded"
    assert "reached its cost limit" in page.one(".status-line").text()
    done = record["result"]["items"]
    assert len(done) < len(ITEMS)  # the limit stopped it before the end
    partial = " ".join(page.one("#eval-partial").text().split())
    assert partial == f"{len(done)} of {len(ITEMS)} items were evaluated before it stopped."
    rows = page.all("#eval-matrix tr.item-row")
    assert [r.attributes["data-item"] for r in rows] == ITEMS  # every item, those not evaluated marked so
    waiting = [r.attributes["data-item"] for r in rows if r.css("td.cell-pending")]
    assert waiting == ITEMS[len(done):] and all("not answered" in _sub(r, "td").text() for r in rows[len(done):])


async def test_hostile_dataset_text_is_escaped_everywhere_it_is_shown(web: WebEnv) -> None:
    b = await web.member("evals-hostile-data@example.com")
    tag = "<img src=x onerror=alert(1)>'\""
    line = {"id": "<b onmouseover=alert(2)>id</b>", "question": f"What is the capital of France? {HOSTILE}",
            "reference": HOSTILE, "tags": [tag],
            "checks": [{"type": "contains", "value": "Paris", "name": f"named {HOSTILE}"}]}
    data = (orjson.dumps(line) + b"\n")
    index = await b.get("/evals")
    page = await _post(b, _form(index, name=HOSTILE[:200], candidate=[GOOD], judge=[]), ("x.jsonl", data))
    assert page.status == 303, page.response.text
    run_id = page.response.headers["location"].removeprefix("/evals/")
    await _finished(b, run_id)
    for path in ("/evals", f"/evals/{run_id}", f"/evals/{run_id}/fragment"):
        shown = Page(await b.http.get(path))
        assert shown.status == 200
        root = shown.tree.css_first("main") or shown.tree.body
        assert root is not None
        assert root.css("script") == [] and root.css("img") == [] and root.css("b") == [], path
        for node in root.css("*"):
            for attr, value in node.attributes.items():
                assert not attr.lower().startswith("on"), (path, node.tag, attr)
        assert "<script>window.__xss" not in shown.response.text, path
    page = await b.get(f"/evals/{run_id}")
    assert HOSTILE[:100] in page.one("h1").text()
    (row,) = page.all("#eval-matrix tr.item-row")
    assert orjson.loads(row.attributes["data-tags"] or "") == [tag]
    assert row.attributes["data-item"] == line["id"]
    assert _sub(row, ".check-name").text() == f"named {HOSTILE}"
    assert [o.text() for o in page.all("#filter-tag option")] == ["all items", tag]
    shown = Page(await b.http.get(f"/evals/{run_id}", params={"tag": tag}))
    assert "hidden" not in shown.one("#eval-matrix tr.item-row").attributes


async def test_one_candidate_without_judges_has_pass_rates_and_no_win_rates(web: WebEnv) -> None:
    b = await web.member("evals-solo@example.com")
    index = await b.get("/evals")
    good_only = b"\n".join(DATASET.splitlines()[:2])
    page = await _post(b, _form(index, candidate=[WEAK], judge=[]), ("two.jsonl", good_only))
    assert page.response.status_code == 303, page.response.text
    run_id = page.response.headers["location"].removeprefix("/evals/")
    record = await _finished(b, run_id)
    assert record["status"] == "completed"
    page = await b.get(f"/evals/{run_id}")
    (row,) = page.all("#eval-summary tbody tr")
    assert _sub(row, ".pass").text(strip=True).startswith("50 %")
    assert _sub(row, ".win").text(strip=True) == "—" and _sub(row, ".rating").text(strip=True) == "—"
    assert not page.all("#win-chart") and not page.all("#eval-pairs") and not page.all("#eval-agreement")
    assert [h.text(strip=True) for h in page.all("#eval-matrix thead th")] == ["Item", WEAK]
    assert "judges: none" in " ".join(page.one(".facts-line").text().split())


async def test_judging_again_reuses_the_answers_and_refuses_what_it_cannot_run(web: WebEnv) -> None:
    b = await web.member("evals-rejudge@example.com")
    run_id = await _run(b)
    first = await _finished(b, run_id)
    page = await b.get(f"/evals/{run_id}")
    form = page.one("#rejudge-form")
    assert form.attributes["action"] == f"/evals/{run_id}/rejudge"
    # Refusals shown in the page, the choices kept, nothing started.
    for judges, message, status in (([], "Choose at least one judge.", 400),
                                    (["nobody/judge"], "the model 'nobody/judge' does not exist", 400),
                                    (["j1", "j2", "j3", "j4"], "Choose at most 3 judges (you chose 4).", 400)):
        refused = Page(await b.http.post(f"/evals/{run_id}/rejudge", data={"csrf": page.csrf, "judge": judges}))
        assert refused.status == status
        assert message in refused.one("#rejudge-error").text()
        assert "open" in refused.one("#rejudge").attributes
        assert {n.attributes["value"] for n in refused.all("#rejudge-form input[checked]")} == \
            set(judges) & {n.attributes["value"] for n in refused.all("#rejudge-form input")}
    assert len((await b.get("/evals")).all("#eval-runs tbody tr")) == 1
    forged = await b.http.post(f"/evals/{run_id}/rejudge", data={"csrf": "forged", "judge": [GOOD]})
    assert forged.status_code == 403
    other = await web.member("evals-rejudge-other@example.com")
    other_page = await other.get("/evals")
    r = await other.http.post(f"/evals/{run_id}/rejudge", data={"csrf": other_page.csrf, "judge": [JUDGE]})
    assert r.status_code == 404

    r = await b.http.post(f"/evals/{run_id}/rejudge", data={"csrf": page.csrf, "judge": [GOOD]})
    assert r.status_code == 303, r.text
    again_id = r.headers["location"].removeprefix("/evals/")
    assert again_id != run_id
    again = await _finished(b, again_id)
    assert again["status"] == "completed"
    page = await b.get(f"/evals/{again_id}")
    assert "judges: evalweb/good" in " ".join(page.one(".facts-line").text().split())
    cells = page.all("#eval-matrix td.cell")
    assert len(cells) == 2 * len(ITEMS) and all(c.css(".badge.cached") for c in cells)  # no candidate asked again
    answers = sum(c["cost_usd"] for c in first["calls"] if c["stage"] == "answer")
    assert answers > 0 and not [c for c in again["calls"] if c["stage"] == "answer"]
    # The every-item check of the first evaluation applies again.
    assert all("does not contain 'sorry'" in [n.text() for n in c.css(".check-name")] for c in cells)


@pytest.mark.parametrize("raw", [b"\xed\xa0\x80", b"\xff\xfe", "\u00e9".encode("latin-1")])
async def test_bytes_that_are_not_utf8_in_the_form_are_a_clear_error_or_ignored(web: WebEnv, raw: bytes) -> None:
    b = await web.member("evals-bytes@example.com")
    index = await b.get("/evals")
    boundary = "tt-boundary"
    parts = [("csrf", index.csrf.encode()), ("candidate", b"evalweb/" + raw), ("judge", raw), ("checks", raw),
             ("max_cost_usd", b"1" + b"0" * 400), ("concurrency", b"9" * 50), ("name", raw)]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v + b"\r\n"
                    for k, v in parts)
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.jsonl"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode() + b'{"question": "' + raw + b'"}\r\n'
    body += f"--{boundary}--\r\n".encode()
    r = await b.http.post("/evals", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert 400 <= r.status_code < 500, r.text
    page = Page(r)
    assert page.one("#eval-error").text().startswith("Checks: not valid JSON")
    r = await b.http.post("/evals", content=b"csrf=" + index.csrf.encode() + b"&candidate=%ED%A0%80&dataset_id=%FF",
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= r.status_code < 500, r.text
