"""Reading the journals of processes that died (see :mod:`.journal`).

A segment whose ``flock`` can be taken has no live owner: a live process holds its own. The segments of one owner
are claimed together (a usage record's charges and its row may be in two of them), read, applied by the caller,
and deleted while still locked: a process that locks one afterwards finds it unlinked and leaves it. A crash in
the middle leaves them to the next process, which does it all again, so what is applied must be idempotent:
usage rows are inserted or ignored (a row's request id is unique); budget spend is written with the mark of the
journal position it covers.

What the lines make:

- every ``u`` line is a usage row;
- a usage record with one direct charge (a ``c`` line made under the request's own context) and no ``u`` line
  is that charge's row, with status 200: it was recorded so (its ``u`` line left out as the same), or it was
  about to be when its process died, its answer complete;
- any other usage record with charges (``c``, ``a`` lines) and no ``u`` line was under way when its process
  died (a run going on, a request with several calls): its row is rebuilt from its charges, with status 499 (as
  a request cut short by a shutdown) and no latency;
- every ``c`` line is spend on its budgets (:class:`Charge`); the budget store's marks say which of it is in.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .journal import NEW, lock, segment_owner
from .usage import UsageEvent

__all__ = ["INTERRUPTED", "Charge", "Claim", "Contents", "claim_dead", "read", "segment_lines"]

log = logging.getLogger("thinktank.journal")

INTERRUPTED = 499
"""The status of a usage row rebuilt from the charges of a request its process did not finish."""

STRAY_AFTER = 3600.0
"""A segment left half-made (``.new``: its process died between making and naming it; it holds nothing) is
removed once this many seconds old."""


@dataclass
class Claim:
    """The segments of one dead owner, locked by this process (file, descriptor), oldest first."""

    owner: str
    files: list[tuple[Path, int]]

    def release(self, *, delete: bool) -> None:
        """Unlock them; ``delete``: after removing them (they were applied)."""
        for path, fd in self.files:
            try:
                if delete:
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        self.files = []


def claim_dead(directory: Path, own: str | None = None) -> list[Claim]:
    """Lock the segments of every owner (but ``own``) that holds none of them: owners that died. An owner some
    of whose segments are locked (alive, or being replayed by another process) is left alone."""
    by_owner: dict[str, list[Path]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(NEW):
            _remove_stray(Path(entry.path))
            continue
        owner = segment_owner(entry.name)
        if owner is not None and owner != own:
            by_owner.setdefault(owner, []).append(Path(entry.path))
    claims = []
    for owner, paths in sorted(by_owner.items()):
        claim = Claim(owner, [])
        for path in sorted(paths):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # dropped meanwhile (its owner tidied it, or a replay ended)
            if not lock(fd) or os.fstat(fd).st_nlink == 0:
                os.close(fd)
                claim.release(delete=False)
                break
            claim.files.append((path, fd))
        if claim.files:
            claims.append(claim)
    return claims


def _remove_stray(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime < STRAY_AFTER:
            return
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if lock(fd):
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Charge:
    """Spend of one call on its budgets, at journal position ``seq``."""

    seq: int
    cost: float
    budgets: tuple[tuple[str, str, str], ...]


@dataclass
class Contents:
    """What a dead owner's segments say."""

    stores: set[tuple[str, str]] = field(default_factory=set)
    """(database, budget store) of each segment's head: where its lines belong."""
    rows: list[UsageEvent] = field(default_factory=list)
    rebuilt: int = 0
    """Of ``rows``, those rebuilt from the charges of a request under way (status 499)."""
    charges: list[Charge] = field(default_factory=list)
    last_seq: int = 0
    skipped: int = 0
    """Lines that could not be read (a last line cut short)."""


class _Summed:
    __slots__ = ("answered", "completion", "cost", "deployment", "key_id", "latency", "model", "prompt", "stream",
                 "ts", "user_id")

    def __init__(self, line: list[Any]) -> None:
        self.ts: float = float(line[2])
        self.user_id: str | None = line[4]
        self.key_id: str | None = line[5]
        self.model: str = str(line[6])
        self.deployment: str | None = line[7]
        self.prompt = int(line[8])
        self.completion = int(line[9])
        self.cost = float(line[10])
        direct = line[0] == "c" and bool(line[12])
        self.answered = direct
        """One direct charge so far: it is the request's answer."""
        self.latency = float(line[13]) if direct else 0.0
        self.stream = bool(line[14]) if direct else False


def segment_lines(path: Path) -> list[bytes]:
    """The lines of a segment file (the space after them, never written, is zeros)."""
    data = path.read_bytes()
    end = data.find(b"\0")
    return [line for line in (data if end < 0 else data[:end]).split(b"\n") if line]


def read(claim: Claim) -> Contents:
    """The usage rows (written and rebuilt) and charges of a claimed owner's segments."""
    contents = Contents()
    written: dict[str, UsageEvent] = {}
    charged: dict[str, _Summed] = {}
    for path, _ in claim.files:
        for raw in segment_lines(path):
            try:
                line = orjson.loads(raw)
                _apply(line, contents, written, charged)
            except (orjson.JSONDecodeError, TypeError, ValueError, IndexError, KeyError):
                contents.skipped += 1
    contents.rows = list(written.values())
    for usage_id, s in charged.items():
        if usage_id in written:
            continue
        contents.rows.append(UsageEvent(
            request_id=usage_id, ts=s.ts, user_id=s.user_id, key_id=s.key_id, model=s.model, deployment=s.deployment,
            prompt_tokens=s.prompt, completion_tokens=s.completion, cost_usd=s.cost, latency_ms=s.latency * 1000,
            status=200 if s.answered else INTERRUPTED, stream=s.stream))
        if not s.answered:
            contents.rebuilt += 1
    if contents.skipped:
        log.warning("%d lines of the journal of process %s could not be read (a line cut short)", contents.skipped,
                    claim.owner)
    return contents


def _apply(line: Any, contents: Contents, written: dict[str, UsageEvent], charged: dict[str, _Summed]) -> None:
    kind, seq = line[0], int(line[1])
    contents.last_seq = max(contents.last_seq, seq)
    if kind == "u":
        event = UsageEvent(str(line[2]), float(line[3]), line[4], line[5], str(line[6]), line[7], int(line[8]),
                           int(line[9]), float(line[10]), float(line[11]), int(line[12]), bool(line[13]),
                           bool(line[14]))
        written[event.request_id] = event
    elif kind == "c":
        usage_id = str(line[3])
        summed = charged.get(usage_id)
        if summed is None:
            charged[usage_id] = _Summed(line)
        else:
            summed.answered = False  # a second charge: a run's, or a request's of several calls
            summed.ts = float(line[2])
            summed.deployment = line[7]
            summed.prompt += int(line[8])
            summed.completion += int(line[9])
            summed.cost += float(line[10])
        budgets = tuple((str(s), str(i), str(p)) for s, i, p in line[11])
        if budgets:
            contents.charges.append(Charge(seq, float(line[10]), budgets))
    elif kind == "a":  # the sum of every earlier charge of a record still open: replaces what was summed so far
        charged[str(line[3])] = _Summed(line)
    elif kind == "v":
        contents.stores.add((str(line[4]), str(line[5])))
