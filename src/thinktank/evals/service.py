"""The evaluations service: a user's datasets, and evaluations started, read, cancelled and exported.

An evaluation is a run of kind ``evaluation`` of the deliberation service (:mod:`thinktank.deliberation.service`):
stored, streamed, cancelled and taken up after a crash as every run is. This service checks what it is asked for
before anything is spent (every candidate, judge and rubric judge must exist and be allowed to the caller: 400;
someone else's dataset or evaluation: 404), creates the run and hands it to the deliberation service with its
runner (:class:`.runner.EvalRunner`), which it also makes for a run taken up again (``bind_evaluations``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..accounts.principal import Principal
from ..bounds import MAX_USD, OutputTokens
from ..clock import Clock
from ..deliberation.runs import LiveRun
from ..deliberation.service import Deliberation, Runner
from ..errors import ConflictError, InvalidRequestError, ModelNotFoundError, NotFoundError, ThinktankError
from ..names import reachable
from ..store.tables import new_id
from .checks import AnswerRecord, Check, CheckList, judges_named, needs_judge
from .dataset import EvalItem, ParsedDataset, items_from_json, parse_dataset
from .plan import DEFAULT_CONCURRENCY, MAX_CANDIDATES, MAX_JUDGES, EvalPlan, ItemResult
from .runner import EvalRunner
from .store import KIND, EvalStore

if TYPE_CHECKING:
    from ..accounts.governance import Gate
    from ..catalog import Catalog
    from ..knowledge.embeddings import LocalEmbedder

__all__ = ["DatasetIn", "EvalRequest", "Evaluations"]

def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters (a NUL, a line break) are not allowed here")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_Printable = AfterValidator(_printable)
_Name = Annotated[str, Field(min_length=1, max_length=256), _Printable]
_Tag = Annotated[str, Field(min_length=1, max_length=64), _Printable]
_Title = Annotated[str, Field(min_length=1, max_length=200), _Printable]
MAX_TEXT = 16 * 1024 * 1024
"""The most characters of a dataset sent as text (the parser allows 10 MB of UTF-8 and says so)."""
MAX_ITEMS = 10_000
"""The most items a request may carry (the parser allows 2,000 and says so)."""


class DatasetIn(BaseModel):
    """A dataset: its items as JSON objects, or a JSONL or CSV file's text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: _Title
    items: list[Any] | None = Field(default=None, max_length=MAX_ITEMS)
    content: str | None = Field(default=None, max_length=MAX_TEXT, description="A JSONL or CSV file's text.")
    format: Literal["jsonl", "csv"] | None = Field(default=None, description="Of content (default: guessed).")
    filename: str | None = Field(default=None, max_length=256, description="Of content, to guess its format.")


class EvalRequest(BaseModel):
    """An evaluation to start (``POST /api/v1/eval/runs``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: _Title | None = None
    dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    items: list[Any] | None = Field(default=None, max_length=MAX_ITEMS, description="Items instead of a dataset.")
    candidates: list[_Name] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    judges: list[_Name] = Field(default_factory=list, max_length=MAX_JUDGES)
    checks: list[Any] = Field(default_factory=list, max_length=100, description="Added to every item's own.")
    max_cost_usd: float | None = Field(default=None, gt=0, le=MAX_USD)
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=32)
    max_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    tags: list[_Tag] = Field(default_factory=list, max_length=10)
    rejudge_of: str | None = Field(default=None, min_length=1, max_length=64,
                                   description="An evaluation of yours whose answers are reused (not asked again).")
    stream: bool = Field(default=False, description="Answer with the run's events over SSE as they happen.")
    wait: bool = Field(default=False, description="Answer with the finished record.")


def _item_json(item: EvalItem) -> dict[str, Any]:
    return item.to_json()


def stored_items(objects: Sequence[Any]) -> list[EvalItem]:
    """Items stored as dataset lines (a dataset's, an evaluation's), read back."""
    parsed = items_from_json(objects)
    if parsed.errors:
        first = parsed.errors[0]
        raise ConflictError(f"A stored item no longer reads as one (item {first.line}: {first.message}).")
    return parsed.items


_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def _no_such(what: str, value: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"There is no {what} '{value[:64]}'.", param=param)


def _plausible(value: str) -> bool:
    """Whether ``value`` can be an id at all (one that cannot is not looked up: a NUL byte, a lone surrogate)."""
    return _ID.fullmatch(value) is not None


def _errors(parsed: ParsedDataset) -> list[dict[str, Any]]:
    return [{"line": e.line, "message": e.message} for e in parsed.errors]


def _first_errors(parsed: ParsedDataset) -> str:
    named = "; ".join(f"line {e.line}: {e.message}" for e in parsed.errors[:3])
    return f" ({named})" if named else ""


class Evaluations:
    def __init__(self, store: EvalStore, runs: Deliberation, catalog: Catalog, gate: Gate, clock: Clock,
                 embedder: Callable[[], LocalEmbedder]) -> None:
        """``embedder``: the local embedding model (loaded on first use: only ``similar`` checks need it).
        Binds itself to ``runs``: an evaluation taken up again gets its runner here."""
        self.store = store
        self.runs = runs
        self.catalog = catalog
        self.gate = gate
        self.clock = clock
        self._embedder = embedder
        runs.bind_evaluations(self.runner_for)

    # -- datasets --------------------------------------------------------------------------------
    async def add_dataset(self, principal: Principal, body: DatasetIn) -> dict[str, Any]:
        """Store a dataset's valid items; the lines left out are reported (400 when no line is valid)."""
        if (body.items is None) == (body.content is None):
            raise InvalidRequestError("Send the dataset's 'items' (JSON objects) or its 'content' (JSONL or CSV "
                                      "text), not both.", param="items")
        if body.items is not None:
            parsed = items_from_json(body.items)
            if not parsed.items:
                raise InvalidRequestError(f"The dataset has no valid item{_first_errors(parsed)}.", param="items")
        else:
            assert body.content is not None
            parsed = parse_dataset(body.content, format=body.format, filename=body.filename)
        tags = sorted({t for item in parsed.items for t in item.tags})
        row = await self.store.add_dataset(principal.user_id, body.name, [_item_json(i) for i in parsed.items], tags,
                                           _errors(parsed), list(parsed.warnings))
        return {"id": row["id"], "name": row["name"], "items": row["item_count"], "tags": tags,
                "errors": row["errors"], "warnings": row["warnings"], "created_at": row["created_at"]}

    async def datasets(self, principal: Principal, *, limit: int, before: float | None) -> list[dict[str, Any]]:
        rows = await self.store.datasets(principal.user_id, limit=limit, before=before)
        return [{"id": r["id"], "name": r["name"], "items": r["item_count"], "tags": r["tags"],
                 "created_at": r["created_at"]} for r in rows]

    async def dataset(self, principal: Principal, dataset_id: str) -> dict[str, Any]:
        row = await self.store.dataset(principal.user_id, dataset_id) if _plausible(dataset_id) else None
        if row is None:
            raise _no_such("dataset", dataset_id)
        return {"id": row["id"], "name": row["name"], "items": row["item_count"], "tags": row["tags"],
                "errors": row["errors"], "warnings": row["warnings"], "created_at": row["created_at"],
                "data": row["items"]}

    async def delete_dataset(self, principal: Principal, dataset_id: str) -> None:
        """(The evaluations made of it keep their own copy of its items.)"""
        if not _plausible(dataset_id) or not await self.store.delete_dataset(principal.user_id, dataset_id):
            raise _no_such("dataset", dataset_id)

    # -- starting --------------------------------------------------------------------------------
    async def start(self, principal: Principal, body: EvalRequest, ip: str | None) -> LiveRun:
        """Check everything (nothing is spent or stored for a request refused), then start the evaluation."""
        plan, items, errors, name = await self._plan(principal, body)
        admission = await self.gate.admit(principal, ip, f"{KIND}/{name}", 0)

        async def recorded(status: int, cache_hit: bool) -> None:
            await admission.finish(status, cache_hit=cache_hit)

        ctx = admission.ctx
        try:
            run = LiveRun(
                id=new_id("run"), user_id=principal.user_id, key_id=principal.key_id, kind=KIND, name=name,
                question=f"{name}: {len(items)} items; {', '.join(plan.candidates)}",
                config=plan.model_dump(mode="json"), ctx=ctx, models=self.catalog, clock=self.clock, tags=body.tags,
                created_at=self.clock.time(),
                request={"items": [_item_json(i) for i in items], "item_errors": errors,
                         "dataset_id": plan.dataset_id, "rejudge_of": plan.rejudge_of,
                         "max_cost_usd": body.max_cost_usd, "max_tokens": plan.max_tokens,
                         "temperature": plan.temperature, "tags": body.tags, "cache": False, "arena": False},
            )
            ctx.run_id = run.id
            if body.max_cost_usd is not None:
                self.runs.cap(run, body.max_cost_usd, plan.max_tokens)
            run.emit("run_started", kind=KIND, name=name, run_id=run.id)
            await self.runs.store.create(run)
        except BaseException as exc:
            await recorded(exc.status if isinstance(exc, ThinktankError) else 500, False)
            raise
        self.runs.launch(run, self.runner_for(run), recorded)
        return run

    async def _plan(self, principal: Principal, body: EvalRequest
                    ) -> tuple[EvalPlan, list[EvalItem], list[dict[str, Any]], str]:
        previous = await self._previous(principal, body.rejudge_of) if body.rejudge_of else None
        old = EvalPlan.model_validate(previous["config"]) if previous is not None else None
        items, errors, dataset_name = await self._items(principal, body, previous)
        candidates = body.candidates or (old.candidates if old is not None else [])
        if not candidates:
            raise InvalidRequestError("candidates: name at least one model to evaluate.", param="candidates")
        for field, names in (("candidates", candidates), ("judges", body.judges)):
            twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
            if twice is not None:
                raise InvalidRequestError(f"{field}: '{twice}' is named twice.", param=field)
        try:
            checks: list[Check] = CheckList.validate_python(body.checks)
        except ValidationError as exc:
            raise InvalidRequestError(_validation_message("checks", exc), param="checks") from None
        every = [*checks, *(c for item in items for c in item.checks)]
        named = [*((n, "candidates") for n in candidates), *((n, "judges") for n in body.judges),
                 *((n, "checks") for n in sorted(judges_named(every)))]
        for name, param in named:
            self._check_model(principal, name, param)
            if body.max_cost_usd is not None:
                self._check_priced(name, param)
        if needs_judge(every) and not body.judges:
            raise InvalidRequestError("A rubric check names no judge: name one in 'judges' (or in the check).",
                                      param="judges")
        keep = old is not None and body.max_tokens is None and body.temperature is None
        plan = EvalPlan(
            candidates=candidates, judges=body.judges, checks=[c.model_dump(mode="json") for c in checks],
            concurrency=body.concurrency, max_tokens=old.max_tokens if keep and old else body.max_tokens,
            temperature=old.temperature if keep and old else body.temperature, items=len(items),
            dataset_id=body.dataset_id or (old.dataset_id if old else None),
            dataset_name=dataset_name or (old.dataset_name if old else None), rejudge_of=body.rejudge_of,
            seed=secrets.randbits(32),
        )
        name = body.name or plan.dataset_name or (f"rejudge of {body.rejudge_of}" if body.rejudge_of else "custom")
        return plan, items, errors, name

    async def _previous(self, principal: Principal, run_id: str) -> dict[str, Any]:
        row = await self.store.run(run_id) if _plausible(run_id) else None
        if row is None or row["user_id"] != principal.user_id:
            raise _no_such("evaluation", run_id, "rejudge_of")
        if row["status"] == "running" or not row["result"]:
            raise ConflictError(f"The evaluation '{run_id}' has no answers to reuse yet ({row['status']}).")
        return row

    async def _items(self, principal: Principal, body: EvalRequest, previous: Mapping[str, Any] | None
                     ) -> tuple[list[EvalItem], list[dict[str, Any]], str | None]:
        if body.dataset_id is not None and body.items is not None:
            raise InvalidRequestError("Send 'dataset_id' or 'items', not both.", param="items")
        if body.dataset_id is not None:
            found = _plausible(body.dataset_id)
            row = await self.store.dataset(principal.user_id, body.dataset_id) if found else None
            if row is None:
                raise _no_such("dataset", body.dataset_id, "dataset_id")
            return stored_items(row["items"]), [], str(row["name"])
        if body.items is not None:
            parsed = items_from_json(body.items)
            if not parsed.items:
                raise InvalidRequestError(f"items: no valid item{_first_errors(parsed)}.", param="items")
            return parsed.items, _errors(parsed), None
        if previous is not None:
            return stored_items(previous["request"]["items"]), [], None
        raise InvalidRequestError("Send 'dataset_id' (a stored dataset) or 'items'.", param="dataset_id")

    def _check_model(self, principal: Principal, name: str, param: str) -> None:
        """400 unless ``name`` exists and the caller may use it and everything it reaches."""
        unknown = InvalidRequestError(
            f"{param}: the model '{name}' does not exist here (or is not allowed to your key). GET /v1/models lists "
            "the models you can use.", param=param, code="model_not_found")
        if not self.catalog.allows(principal, name):
            raise unknown
        try:
            self.catalog.check(principal, name)
        except (ModelNotFoundError, NotFoundError):
            raise unknown from None

    def _check_priced(self, name: str, param: str) -> None:
        """400 unless every model ``name`` reaches has a price: ``max_cost_usd`` could not be kept otherwise (and
        every call to it would fail)."""
        for current in reachable(name, self.catalog.uses):
            if self.catalog.uses(current):
                continue  # a composite: its members are checked
            try:
                group = self.catalog.router.resolve(current)
            except ModelNotFoundError:
                continue
            if group.deployments and not any(d.price.known for d in group.deployments):
                via = "" if current == name else f" (used by '{name}')"
                raise InvalidRequestError(
                    f"{param}: the model '{current}'{via} has no known price, so max_cost_usd cannot be kept; leave "
                    "max_cost_usd out, or ask an administrator to price it.", param=param, code="model_unpriced")

    # -- the runner ------------------------------------------------------------------------------
    def runner_for(self, run: LiveRun) -> Runner:
        """What executes an evaluation's run: a new one, or one taken up again (from its record)."""
        plan = EvalPlan.model_validate(run.config)
        items = stored_items(run.request.get("items") or [])
        previous = plan.rejudge_of

        async def seeds() -> Mapping[tuple[str, str], AnswerRecord]:
            return await self._seeds(run.user_id, previous) if previous else {}

        return EvalRunner(run, plan, items, self.store, self._similarity, seeds=seeds)

    async def _seeds(self, user_id: str, run_id: str) -> dict[tuple[str, str], AnswerRecord]:
        """The answers of an earlier evaluation of the user's, by (candidate, item key)."""
        row = await self.store.run(run_id)
        if row is None or row["user_id"] != user_id or not row["result"]:
            return {}
        items = {item.id: item for item in stored_items(row["request"].get("items") or [])}
        seeds: dict[tuple[str, str], AnswerRecord] = {}
        for data in row["result"].get("items") or []:
            item = items.get(str(data.get("id")))
            if item is None:
                continue
            for candidate, answer in ItemResult.from_json(item, data).answers.items():
                if answer.text is not None:
                    seeds[(candidate, item.key())] = answer
        return seeds

    async def _similarity(self, a: str, b: str) -> float:
        import numpy as np

        vectors = await self._embedder().embed([a, b])
        return float(np.clip(np.dot(vectors[0], vectors[1]), -1.0, 1.0))

    # -- reading, cancelling ---------------------------------------------------------------------
    async def get(self, principal: Principal, run_id: str) -> dict[str, Any]:
        """The evaluation's run record (its result: the summary and the items; partial while it runs)."""
        if not _plausible(run_id):
            raise _no_such("evaluation", run_id)
        record = await self.runs.get(run_id, principal)
        if record["kind"] != KIND:
            raise _no_such("evaluation", run_id)
        return record

    async def evaluations(self, principal: Principal, *, limit: int, before: float | None,
                   status: str | None) -> list[dict[str, Any]]:
        rows = await self.store.runs(principal.user_id, limit=limit, before=before, status=status)
        for row in rows:  # a live one's cost as it is now (saved every half second)
            live = self.runs.live.get(row["id"])
            if live is not None:
                row["cost_usd"] = round(live.cost, 10)
        return rows

    async def cancel(self, principal: Principal, run_id: str) -> str:
        row = await self.store.run(run_id) if _plausible(run_id) else None
        if row is None or (row["user_id"] != principal.user_id and not principal.is_admin):
            raise _no_such("evaluation", run_id)
        return await self.runs.cancel(run_id, principal)


def _validation_message(where: str, exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(x) for x in (where, *err["loc"]))
    return f"{loc}: {str(err['msg']).removeprefix('Value error, ')}"

