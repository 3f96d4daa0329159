"""``thinktank eval answers``: compare models, ensembles, debates and agents on a dataset, through the server.

The dataset is uploaded (``POST /api/v1/eval/datasets``; the lines it refuses are printed with their numbers and
the rest is evaluated), the evaluation starts streamed (``POST /api/v1/eval/runs`` with ``"stream": true``) and
its progress is shown on stderr; then ``GET /api/v1/eval/runs/{id}`` gives the result, printed as tables or as
JSON, CSV or Markdown. Ctrl-C cancels the run on the server (``POST .../cancel``) and exits 130.
"""

from __future__ import annotations

import contextlib
import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from .client import DEFAULT_URL, ApiError, Client, ConfigOpt, DemoOpt, KeyOpt, LocalOpt, Target, UrlOpt, connect
from .common import fail

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEMO_CANDIDATES", "DEMO_JUDGES", "OutputFormat", "eval_answers_command", "sample_dataset"]

DEMO_CANDIDATES = ("demo/quick", "ensemble/demo-council")
DEMO_JUDGES = ("demo/judge",)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def sample_dataset() -> tuple[str, str]:
    """The bundled sample dataset: (its name, its text)."""
    from importlib.resources import files

    return "qa.jsonl", files("thinktank").joinpath("evals/samples/qa.jsonl").read_text(encoding="utf-8")


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _read_dataset(path: Path) -> str:
    """The dataset file's text (UTF-8, a BOM allowed); the server reads it as JSONL or CSV (from its name, else
    from its content)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text (byte {exc.start + 1}); save the dataset as UTF-8")


def _read_checks(path: Path) -> list[Any]:
    """A JSON list of checks (or ``{"checks": [...]}``); the server validates each."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{path}: not a JSON list of checks ({exc})")
    if isinstance(data, dict) and isinstance(data.get("checks"), list):
        data = data["checks"]
    if not isinstance(data, list):
        fail(f"{path}: not a JSON list of checks")
    return data


def _plural(n: Any, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _upload(client: Client, name: str, text: str, err: Console, quiet: bool) -> str:
    """``POST /api/v1/eval/datasets``; the refused lines and the warnings on stderr (and, unless ``quiet``, what
    was stored); the dataset's id."""
    stored = client.call("POST", "/api/v1/eval/datasets", json={"name": name, "filename": name, "content": text})
    for e in stored.get("errors") or []:
        err.print(f"{name}:{e.get('line')}: {e.get('message')}", highlight=False, markup=False, style="yellow")
    for w in stored.get("warnings") or []:
        err.print(f"{name}: warning: {w}", highlight=False, markup=False, style="yellow")
    skipped = len(stored.get("errors") or [])
    if not quiet:
        err.print(f"dataset {stored['id']}: {_plural(stored.get('items'), 'item')}"
                  + (f" ({_plural(skipped, 'line')} skipped)" if skipped else ""), highlight=False, markup=False,
                  style="dim")
    return str(stored["id"])


def _evaluate(client: Client, body: dict[str, Any], err: Console, quiet: bool) -> tuple[dict[str, Any], str | None]:
    """Start the run streamed, show its progress, cancel it on Ctrl-C; its record once it ends, and the error
    its stream reported (if any)."""
    from .eval_progress import EvalProgress
    from .run_views import RunEvent

    run_id = ""
    try:
        with client.stream("POST", "/api/v1/eval/runs", json={**body, "stream": True}) as events:
            run_id = events.headers.get("x-thinktank-run-id", "")
            with EvalProgress(err, run_id, enabled=not quiet) as view:
                for message in events:
                    view.show(RunEvent.parse(message.event, message.data))
    except KeyboardInterrupt:
        _cancel(client, run_id, err)
        raise typer.Exit(130) from None
    if not run_id:
        raise ApiError("the server did not say which run it started (no x-thinktank-run-id header)")
    record = client.call("GET", f"/api/v1/eval/runs/{quote(run_id, safe='')}", params={"calls": "false"})
    return record, view.error


def _forget(client: Client, dataset_id: str) -> None:
    with contextlib.suppress(ApiError):  # the refusal is what the user needs to see
        client.call("DELETE", f"/api/v1/eval/datasets/{quote(dataset_id, safe='')}")


def _cancel(client: Client, run_id: str, err: Console) -> None:
    if not run_id:
        err.print("interrupted before the run started", highlight=False, markup=False)
        return
    try:
        client.call("POST", f"/api/v1/eval/runs/{quote(run_id, safe='')}/cancel")
    except ApiError as exc:
        err.print(f"interrupted; cancelling run {run_id} failed: {exc.message}", highlight=False, markup=False)
        return
    err.print(f"interrupted: run {run_id} cancelled (what it finished is kept: GET /api/v1/eval/runs/{run_id})",
              highlight=False, markup=False)


def _write(record: dict[str, Any], fmt: OutputFormat, output: Path | None) -> None:
    from . import eval_report
    from .common import console

    result: dict[str, Any] = record.get("result") or {}
    if fmt is OutputFormat.table:
        from rich.console import Console

        if output is None:
            out = console()
            # Piped or redirected: as wide as a file gets, not rich's 80 columns (names would be cut).
            eval_report.print_tables(record, out if out.is_terminal else Console(width=160, highlight=False))
            return
        with output.open("w", encoding="utf-8") as f:
            eval_report.print_tables(record, Console(file=f, width=160, no_color=True, highlight=False))
    else:
        if fmt is OutputFormat.json:
            import orjson

            whole = {"id": record.get("id"), "status": record.get("status"), "cost_usd": record.get("cost_usd"),
                     **result}
            text = orjson.dumps(whole, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n"
        elif fmt is OutputFormat.csv:
            text = eval_report.to_csv(result)
        else:
            from ..evals.export import to_markdown

            text = to_markdown(result, title=str(record.get("name") or "") or None)
        if output is None:
            typer.echo(text, nl=False)
            return
        output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}", err=True)


def eval_answers_command(
    dataset: Annotated[Path | None, typer.Option(
        "--dataset", "-d", help="The questions: JSONL (one JSON object a line) or CSV with a header row. With "
        "--demo and no dataset: the bundled sample.", dir_okay=False, show_default=False)] = None,
    candidates: Annotated[str | None, typer.Option(
        "--candidates", help="The models to compare, comma-separated: any names the server knows (models, "
        "ensemble/..., debate/..., agent/...), 1-8.", show_default=False)] = None,
    judge: Annotated[str | None, typer.Option(
        "--judge", help="Pairwise judges, comma-separated (0-3); each pair is judged in both orders. Also the "
        "default grader of rubric checks.", show_default=False)] = None,
    checks: Annotated[Path | None, typer.Option(
        "--checks", help="A JSON file with a list of checks added to every item's own.", dir_okay=False,
        show_default=False)] = None,
    max_cost: Annotated[float | None, typer.Option(
        "--max-cost", help="Stop at this cost in USD (status budget_exceeded, what finished is kept).",
        show_default=False)] = None,
    concurrency: Annotated[int, typer.Option(help="Items evaluated at once (1-32).")] = 4,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="The candidates' max_tokens.", show_default=False)] = None,
    temperature: Annotated[float | None, typer.Option(
        help="The candidates' temperature.", show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="A tag for the run (repeatable).", show_default=False)] = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", "-f", help="table, or the result as json (all of it), csv or markdown (the candidates and "
        "pairs tables).")] = OutputFormat.table,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the result to this file instead of stdout.", dir_okay=False,
        show_default=False)] = None,
    rejudge: Annotated[str | None, typer.Option(
        "--rejudge", help="An earlier evaluation's run id: judge (and check) its answers again, e.g. with another "
        "--judge, without asking the candidates again (its dataset and candidates unless given).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Compare candidates' answers on a dataset: per-item checks, pairwise judging, win rates and costs.

    Try it offline with mock models: thinktank eval answers --demo (demo/quick against ensemble/demo-council).
    """
    from rich.console import Console

    chosen = _names(candidates) or (list(DEMO_CANDIDATES) if demo and rejudge is None else [])
    judges = _names(judge) if judge is not None else (list(DEMO_JUDGES) if demo else [])
    if not chosen and rejudge is None:
        raise typer.BadParameter("name the models to compare: --candidates a,b (or try --demo)",
                                 param_hint="--candidates")
    upload: tuple[str, str] | None = None
    if dataset is not None:
        upload = dataset.name, _read_dataset(dataset)
    elif demo and rejudge is None:
        upload = sample_dataset()
    elif rejudge is None:
        raise typer.BadParameter("give the questions with --dataset FILE (or try --demo)", param_hint="--dataset")
    extra = _read_checks(checks) if checks is not None else []
    body: dict[str, Any] = {"candidates": chosen, "judges": judges, "checks": extra, "concurrency": concurrency,
                            "tags": list(tag or [])}
    for key, value in (("max_cost_usd", max_cost), ("max_tokens", max_tokens), ("temperature", temperature),
                       ("rejudge_of", rejudge)):
        if value is not None:
            body[key] = value
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with connect(Target(url, api_key, local, config, demo)) as client:
            if upload is not None:
                body["dataset_id"] = _upload(client, *upload, err, quiet)
            try:
                record, error = _evaluate(client, body, err, quiet)
            except ApiError as exc:
                if "dataset_id" in body and exc.status is not None and 400 <= exc.status < 500:
                    _forget(client, body["dataset_id"])  # refused: the upload was for nothing
                raise
    except KeyboardInterrupt:  # before the run started (a run under way is cancelled by _evaluate)
        err.print("interrupted", highlight=False, markup=False)
        raise typer.Exit(130) from None
    if record.get("result"):
        _write(record, output_format, output)
    status = str(record.get("status"))
    if status == "running":  # the stream broke off (a server restarting); the evaluation goes on there
        typer.secho(f"error: the event stream ended before the evaluation did; it goes on on the server: "
                    f"GET /api/v1/eval/runs/{record.get('id')}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if status != "completed":
        message = error or record.get("error") or status
        kept = " (what finished is kept in the result)" if record.get("result") else ""
        typer.secho(f"error: the evaluation ended {status}: {message}{kept}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
