"""The accounting journal: what this process accounted, on local disk before the answer leaves.

Usage rows reach the database in batches (every 0.5 s) and budget spend reaches the budget store every second;
a process killed with SIGKILL in between would lose both. So every process also appends, at once, one compact
line for each charge (an upstream call accounted: its cost, tokens and the budgets it is settled on) and for
each usage row, to segment files of its own in ``<data dir>/journal``: one unbuffered ``os.write`` (~1 µs), no
fsync. A process crash loses nothing written so (the kernel holds it); a crash of the host or a lost disk can.

A charge is written before its hold is settled and before anything of its answer is sent (the router tells the
request's :class:`~thinktank.gateway.context.Account` first); the usage row of an answer sent in one piece is
recorded before it is sent. :mod:`.journal_replay` turns the segments of a process that died into usage rows
(inserted or ignored: a row's id is unique) and budget spend.

Segments are ``<owner>.<n>.jnl``. A live process holds an exclusive ``flock`` on each of its own (a new one is
made under another name, locked, then renamed, so nobody sees it unlocked). Every ``rotate_every`` seconds a new
segment is begun with a summary line for each usage record still open (charged, not yet recorded); older
segments go once everything in them is committed: the usage writer and the budget ledger report the sequence
number they have committed through (:meth:`tidy`).

Lines are JSON arrays; ``seq`` grows by one a line across the process's segments:

- ``["v", seq, 1, owner, database, budgets]``: heads a segment (``database``, ``budgets``: which stores the
  lines belong to; a journal is replayed only against the same ones);
- ``["c", seq, ts, usage_id, user_id, key_id, model, deployment, prompt, completion, cost, budgets]``: a charge
  under usage record ``usage_id``, settled on ``budgets`` (``[[scope, scope_id, period], ...]``);
- ``["a", seq, ts, usage_id, user_id, key_id, model, deployment, prompt, completion, cost, charges]``: the sum
  of the earlier charges of a usage record still open when the segment began;
- ``["h", seq, holder]``: budget leases are taken under ``holder`` from now on;
- ``["u", seq, request_id, ts, user_id, key_id, model, deployment, prompt, completion, cost, latency_ms,
  status, cache_hit, stream]``: a usage row as recorded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..clock import Clock

if TYPE_CHECKING:
    from ..gateway.router import UsageRecord
    from .usage import UsageEvent

__all__ = ["FORMAT", "SUFFIX", "Journal", "budget_keys", "lock", "segment_owner"]

log = logging.getLogger("thinktank.journal")

SUFFIX = ".jnl"
"""A segment's file name ends so (one being made ends in ``.new`` until it is locked)."""
NEW = ".new"
FORMAT = 1
"""The version of the lines, in each segment's head."""
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def lock(fd: int) -> bool:
    """Take the exclusive ``flock`` of ``fd`` without waiting; whether it was free."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def segment_owner(name: str) -> str | None:
    """The owner of segment file ``name`` (None: not a segment)."""
    if not name.endswith(SUFFIX) or "." not in name[: -len(SUFFIX)]:
        return None
    return name.split(".", 1)[0]


def budget_keys(hold: object) -> Sequence[Sequence[str]]:
    """The budgets (scope, scope id, period key) a hold is settled on: none for a hold of no ledger."""
    keys: Sequence[Sequence[str]] = getattr(hold, "budget_keys", ())
    return keys


class _Segment:
    __slots__ = ("fd", "head", "last_seq", "opened", "path", "size")

    def __init__(self, path: Path, fd: int, seq: int, opened: float) -> None:
        self.path = path
        self.fd = fd
        self.last_seq = seq
        """The sequence number of its last line."""
        self.opened = opened
        self.size = 0
        self.head = 0
        """Its size once its head (and the summaries of open records) was written."""


class _Open:
    """A usage record charged and not yet recorded: the sum of its charges."""

    __slots__ = ("charges", "completion", "cost", "deployment", "key_id", "model", "prompt", "user_id")

    def __init__(self, user_id: str | None, key_id: str | None, model: str) -> None:
        self.user_id, self.key_id, self.model = user_id, key_id, model
        self.deployment: str | None = None
        self.prompt = self.completion = self.charges = 0
        self.cost = 0.0


class Journal:
    """This process's journal (see the module). :meth:`open` makes its first segment; until then, and after
    :meth:`close`, lines are not written."""

    def __init__(self, directory: Path, clock: Clock, *, database: str = "", budgets: str = "",
                 owner: str | None = None, rotate_every: float = 10.0, rotate_bytes: int = 1 << 20) -> None:
        self.directory = directory
        self.owner = owner or f"{os.getpid()}-{secrets.token_hex(4)}"
        self.database = database
        self.budgets = budgets
        self.rotate_every = rotate_every
        self.rotate_bytes = rotate_bytes
        self._clock = clock
        self.seq = 0
        """The sequence number of the last line written."""
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._index = 0
        self._open: dict[str, _Open] = {}
        self.holder: str | None = None
        self._failed_at = -1e18

    # -- writing ---------------------------------------------------------------------------------
    def _write(self, line: list[Any]) -> None:
        active = self._active
        if active is None:
            return
        self.seq = active.last_seq = line[1]
        data = orjson.dumps(line, option=_NEWLINE)
        active.size += len(data)
        try:
            written = os.write(active.fd, data)
            while written < len(data):  # only on a full disk or an error, which the next write raises
                written += os.write(active.fd, data[written:])
        except OSError as exc:
            now = self._clock.monotonic()
            if now - self._failed_at >= 60.0:  # said once a minute, not per request
                self._failed_at = now
                log.error("writing the accounting journal %s failed (%s): usage and spend of requests answered now "
                          "are lost if this process is killed before they reach the database", active.path, exc)

    def charge(self, usage_id: str, user_id: str | None, key_id: str | None, model: str, record: UsageRecord,
               budgets: Sequence[Sequence[str]]) -> None:
        """One upstream call accounted under usage record ``usage_id`` (its hold settled on ``budgets``)."""
        if self._active is None:
            return
        summed = self._open.get(usage_id)
        if summed is None:
            summed = self._open[usage_id] = _Open(user_id, key_id, model)
        summed.deployment = record.deployment
        summed.prompt += record.prompt_tokens
        summed.completion += record.completion_tokens
        summed.cost += record.cost
        summed.charges += 1
        self._write(["c", self.seq + 1, self._clock.time(), usage_id, user_id, key_id, model, record.deployment,
                     record.prompt_tokens, record.completion_tokens, record.cost, budgets])

    def usage(self, event: UsageEvent) -> None:
        """A usage row recorded (the record it closes is no longer open)."""
        if self._active is None:
            return
        if self._open:
            self._open.pop(event.request_id, None)
        self._write(["u", self.seq + 1, *event])

    def leasing_as(self, holder: str) -> None:
        """Budget leases are taken under ``holder`` from now on."""
        self.holder = holder
        self._write(["h", self.seq + 1, holder])

    # -- segments --------------------------------------------------------------------------------
    def open(self) -> None:
        """Make the journal's directory and first segment."""
        if self._active is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._begin()

    def _begin(self) -> None:
        """A new segment, locked before it has its name; the records still open summed at its head."""
        self._index += 1
        name = f"{self.owner}.{self._index:06d}"
        making = self.directory / (name + NEW)
        path = self.directory / (name + SUFFIX)
        fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            if not lock(fd):
                raise OSError(f"could not lock the new journal segment {making}")
            os.rename(making, path)
        except BaseException:
            os.close(fd)
            raise
        segment = _Segment(path, fd, self.seq, self._clock.monotonic())
        self._segments.append(segment)
        self._active = segment
        self._write(["v", self.seq + 1, FORMAT, self.owner, self.database, self.budgets])
        if self.holder is not None:
            self._write(["h", self.seq + 1, self.holder])
        now = self._clock.time()
        for usage_id, s in self._open.items():
            self._write(["a", self.seq + 1, now, usage_id, s.user_id, s.key_id, s.model, s.deployment, s.prompt,
                         s.completion, s.cost, s.charges])
        segment.head = segment.size

    @property
    def segments(self) -> list[Path]:
        """This process's segment files, oldest first."""
        return [s.path for s in self._segments]

    def tidy(self, committed: int) -> None:
        """Begin a new segment if the one in use is due, and drop the older ones whose every line is committed
        (lines up to sequence number ``committed`` are in the database and the budget store)."""
        active = self._active
        if active is None:
            return
        due = self._clock.monotonic() - active.opened >= self.rotate_every or active.size >= self.rotate_bytes
        if due and active.size > active.head:
            self._begin()
        while len(self._segments) > 1 and self._segments[0].last_seq <= committed:
            self._drop(self._segments.pop(0))

    @staticmethod
    def _drop(segment: _Segment) -> None:
        try:
            os.unlink(segment.path)  # while locked: whoever locks it next sees it gone (st_nlink 0)
        finally:
            os.close(segment.fd)

    def close(self, committed: int) -> None:
        """Stop writing. The segments go if everything in them is committed and no record is open; otherwise they
        stay, for a process to replay (unlocked from now on)."""
        done = committed >= self.seq and not self._open
        self._active = None
        for segment in self._segments:
            if done:
                self._drop(segment)
            else:
                os.close(segment.fd)
        self._segments.clear()
