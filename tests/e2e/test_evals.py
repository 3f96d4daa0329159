"""Evaluations in Chromium against ``thinktank serve --demo`` with two scripted candidates and a scripted judge
(tests/web/eval_config.py): a dataset uploaded with a malformed line (its number shown, the rest kept), an
evaluation started from the form and followed live to its end, the summary table with intervals, the matrix
filtered by tag and by disagreement, hostile model output shown as text and never run; the page on a phone."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Dialog, Page, expect

from ..web.eval_config import (
    BAD_LINE,
    DATASET,
    DISAGREEMENTS,
    EVERY_ITEM_CHECKS,
    GEOGRAPHY,
    GOOD,
    ITEMS,
    JUDGE,
    WEAK,
    eval_section,
)
from .harness import MEMBER_PASSWORD, E2EServer, login, screenshot, start_server
from .test_hostile_text import ACTIVE
from .test_pages_a11y import OVERFLOW, UNNAMED_CONTROLS

AT_EVAL = re.compile(r"/evals/run_[0-9a-f]+(?:\?.*)?$")
RUN_MS = 60_000
WEAK_LATENCY = 0.6
"""The weak candidate answers after this long (one answer at a time), so the evaluation is still running when
its page opens and the page's live progress is what shows it finishing."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EServer]:
    """This module's own server: the demo and the evaluation's scripted models (a config file beside the demo)."""
    root = Path(tmp_path_factory.mktemp("e2e-evals"))
    config = root / "evals.yaml"
    config.write_text(yaml.safe_dump(eval_section(latency=WEAK_LATENCY)), encoding="utf-8")
    running = start_server(root, config)
    try:
        yield running
    finally:
        running.stop()


def _member(page: Page, server: E2EServer, email: str) -> None:
    server.make_member(email)
    login(page, server, email, MEMBER_PASSWORD)


def _visible_items(page: Page) -> list[str]:
    rows = page.locator("#eval-matrix tr.item-row:visible")
    return [str(rows.nth(i).get_attribute("data-item")) for i in range(rows.count())]


def _start(page: Page) -> None:
    """Upload the dataset, see its bad line, and start the evaluation of the two candidates with the judge."""
    page.goto("/evals")
    form = page.locator("#eval-form")
    form.get_by_label("Upload a file").set_input_files(
        {"name": "qa.jsonl", "mimeType": "application/x-ndjson", "buffer": DATASET})
    for name in (GOOD, WEAK):
        page.locator(f'#eval-candidates input[value="{name}"]').check()
    page.locator(f'#eval-judges input[value="{JUDGE}"]').check()
    form.get_by_label("Checks for every item").fill(EVERY_ITEM_CHECKS)
    form.get_by_label("Max cost in USD").fill("5")
    form.get_by_label("Answers at a time").fill("1")
    form.get_by_role("button", name="Start the evaluation").click()

    # The malformed line is reported with its number; the rest is stored and chosen for the next submit.
    report = page.locator("#dataset-report")
    expect(report).to_contain_text(f"with {len(ITEMS)} items")
    errors = page.locator("#dataset-errors li")
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text(f"line {BAD_LINE}")
    expect(page.get_by_label("Or a stored dataset")).to_have_value(re.compile(r".+"))
    for name in (GOOD, WEAK):  # the choices made are kept
        expect(page.locator(f'#eval-candidates input[value="{name}"]')).to_be_checked()
    expect(page.locator(f'#eval-judges input[value="{JUDGE}"]')).to_be_checked()
    expect(page.get_by_label("Checks for every item")).to_have_value(EVERY_ITEM_CHECKS)
    screenshot(page, "evals-dataset-errors")
    page.locator("#eval-form").get_by_role("button", name="Start the evaluation").click()
    page.wait_for_url(AT_EVAL)


def test_an_evaluation_runs_live_to_its_summary_and_matrix_and_hostile_answers_stay_text(
        page: Page, server: E2EServer) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    _member(page, server, "evals-e2e@example.com")
    _start(page)

    # Live: the progress of the running evaluation, then the finished page swapped in by its script.
    expect(page.locator("#eval-progress")).to_be_visible()
    expect(page.locator("#eval-total")).to_have_text(str(len(ITEMS)))
    expect(page.locator("#eval-log li").first).to_be_visible()  # the run's events, as the page follows them
    expect(page.locator("#eval-done")).to_have_text(re.compile(rf"^[1-{len(ITEMS)}]$"))
    expect(page.locator("#eval-status")).to_have_text("completed", timeout=RUN_MS)
    expect(page.locator("#eval-progress")).to_have_count(0)
    expect(page.locator("#eval-announce")).to_have_text("The evaluation completed.")

    # The summary: the good candidate ranked first, win rates and ratings with their intervals.
    rows = page.locator("#eval-summary tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-candidate", GOOD)
    expect(rows.first.locator(".rank")).to_have_text("1")
    expect(rows.first.locator(".pass")).to_contain_text("100 %")
    expect(rows.nth(1).locator(".pass")).to_contain_text("60 %")  # 3 of 5: Munich and 5 fail their checks
    for row in (rows.first, rows.nth(1)):
        expect(row.locator(".win .ci")).to_have_text(re.compile(r"^\[\d+ – \d+ %\]$"))
        expect(row.locator(".rating .ci")).to_have_text(re.compile(r"^\[\d+\.\d – \d+\.\d\]$"))
        expect(row.locator(".cost")).to_have_text(re.compile(r"^\$\S+ / \$\S+$"))
    expect(page.locator("#eval-pairs tbody tr")).to_have_count(1)
    expect(page.locator("#win-chart svg")).to_be_visible()
    screenshot(page, "evals-run")

    # The matrix: every item, each cell with its answer, its checks and its cost.
    expect(page.locator("#eval-matrix tr.item-row")).to_have_count(len(ITEMS))
    assert _visible_items(page) == ITEMS
    weak_de = page.locator('tr[data-item="capital-de"] td[data-candidate="evalweb/weak"]')
    expect(weak_de.locator(".answer-text")).to_have_text("Munich")
    failed = weak_de.locator(".check-fail")
    expect(failed).to_have_count(1)
    failed.locator("summary").click()  # the reason, on expanding the check
    expect(failed.locator(".reason")).to_be_visible()
    expect(weak_de.locator(".cost")).to_have_text(re.compile(r"^\$0\.\d+$"))

    # Filters, in the page: by tag, disagreements only, both, and back.
    page.get_by_label("Tag").select_option("geography")
    assert _visible_items(page) == GEOGRAPHY
    expect(page.locator("#eval-shown")).to_have_text(f"{len(GEOGRAPHY)} of {len(ITEMS)} items shown")
    page.get_by_label("Disagreements only").check()
    assert _visible_items(page) == ["capital-de"]
    expect(page).to_have_url(re.compile(r"\?tag=geography&disagreements=1$"))
    page.get_by_label("Tag").select_option("")
    assert _visible_items(page) == DISAGREEMENTS
    page.reload()  # the server applies the same filters from the address
    assert _visible_items(page) == DISAGREEMENTS
    expect(page.get_by_label("Disagreements only")).to_be_checked()
    page.get_by_label("Disagreements only").uncheck()
    assert _visible_items(page) == ITEMS

    # The hostile answer is text on the page: nothing it describes exists or ran.
    markup = page.locator('tr[data-item="markup"] td[data-candidate="evalweb/good"]')
    expect(markup.locator(".answer-text")).to_be_hidden()  # a long answer is collapsed to its first line
    expect(markup.locator("details.answer summary")).to_contain_text("Here is the markup: <script>")
    markup.locator("details.answer summary").click()
    expect(markup.locator(".answer-text")).to_be_visible()
    expect(markup.locator(".answer-text")).to_contain_text('<script>window.__xss=1</script><img src=x onerror=')
    page.mouse.move(300, 400)
    page.locator('tr[data-item="markup"]').hover()
    assert page.evaluate(ACTIVE) == []
    assert page.evaluate("() => window.__xss") is None
    assert markup.locator("img, script, b").count() == 0
    assert dialogs == []

    # The list of evaluations links to it.
    page.get_by_role("link", name="← All evaluations").click()
    listed = page.locator("#eval-runs tbody tr")
    expect(listed).to_have_count(1)
    expect(listed.first).to_contain_text("completed")
    expect(listed.first).to_contain_text(GOOD)
    expect(listed.first.locator("td.num").first).to_have_text(str(len(ITEMS)))


def test_the_form_refuses_what_it_cannot_run_and_the_pages_fit_a_phone(phone_page: Page, server: E2EServer) -> None:
    page = phone_page
    _member(page, server, "evals-phone-e2e@example.com")
    page.goto("/evals")
    assert page.evaluate(UNNAMED_CONTROLS) == []
    assert page.evaluate(OVERFLOW) == []
    # Nothing chosen: said in the page, nothing sent.
    page.get_by_role("button", name="Start the evaluation").click()
    expect(page.locator("#eval-client-error")).to_have_text("Upload a dataset file or choose a stored dataset.")
    screenshot(page, "evals-form")

    _start(page)
    expect(page.locator("#eval-status")).to_have_text("completed", timeout=RUN_MS)
    # On a phone the matrix is a list of items, each cell named by its candidate.
    cell = page.locator('tr[data-item="sum"] td[data-candidate="evalweb/weak"]')
    expect(cell).to_be_visible()
    label = cell.evaluate("(td) => getComputedStyle(td, '::before').content")
    assert label == f'"{WEAK}"'
    assert page.evaluate(OVERFLOW) == []
    assert page.evaluate(UNNAMED_CONTROLS) == []
    screenshot(page, "evals-run")
