"""The accounting journal: what this process accounted, on local disk before the answer leaves.

Usage rows reach the database in batches (every 0.5 s) and budget spend reaches the budget store every second;
a process killed with SIGKILL in between would lose both. So every process also appends, at once, one compact
line for each charge (an upstream call accounted: its cost, tokens and the budgets it is settled on) and for
each usage row, to segment files of its own in ``<data dir>/journal``. A segment's space is allocated when it
is made and the file is mapped (``MAP_SHARED``): a line is a copy into the kernel's page cache (``mmap.write``,
~0.1 µs, and a page fault every few kilobytes), no system call and no fsync (an ``os.write`` measured at ~1.2 µs
in a loop, and it lets go of the GIL: in a busy server, with its database threads, it cost several µs more). A
process crash loses nothing written so (the pages are the kernel's); a crash of the host or a lost disk can.

A charge is written before its hold is settled and before anything of its answer is sent (the router tells the
request's :class:`~thinktank.gateway.context.Account` first); the usage row of an answer sent in one piece is
recorded before it is sent. A request answered by one call made under its own context (no run, no retrieval),
recorded with status 200, has its usage row in its charge line already: its ``u`` line is left out (a line less
for most requests; a process killed between the two is replayed as having answered). :mod:`.journal_replay`
turns the segments of a process that died into usage rows (inserted or ignored: a row's id is unique) and
budget spend.

Segments are ``<owner>.<n>.jnl``. A live process holds an exclusive ``flock`` on each of its own (a new one is
made under another name, locked, then renamed, so nobody sees it unlocked). Every ``rotate_every`` seconds a new
segment is begun with a summary line for each usage record still open (charged, not yet recorded); older
segments go once everything in them is committed: the usage writer and the budget ledger report the sequence
number they have committed through (:meth:`tidy`).

Lines are JSON arrays; ``seq`` grows by one a line across the process's segments:

- ``["v", seq, 1, owner, database, budgets]``: heads a segment (``database``, ``budgets``: which stores the
  lines belong to; a journal is replayed only against the same ones);
- ``["c", seq, ts, usage_id, user_id, key_id, model, deployment, prompt, completion, cost, budgets, direct,
  latency, stream]``: a charge under usage record ``usage_id``, settled on ``budgets`` (``[[scope, scope_id,
  period], ...]``); ``direct``: made under the request's own context (not a step of a run), ``latency``: the
  call's seconds;
- ``["a", seq, ts, usage_id, user_id, key_id, model, deployment, prompt, completion, cost, charges]``: the sum
  of the earlier charges of a usage record still open when the segment began;
- ``["u", seq, request_id, ts, user_id, key_id, model, deployment, prompt, completion, cost, latency_ms,
  status, cache_hit, stream]``: a usage row as recorded (but the one of a request whose one direct charge says
  it all).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..clock import Clock

if TYPE_CHECKING:
    from ..gateway.router import UsageRecord
    from .usage import UsageEvent

__all__ = ["FORMAT", "SUFFIX", "Journal", "JournalAccount", "budget_keys", "lock", "new_owner", "segment_owner"]

log = logging.getLogger("thinktank.journal")

SUFFIX = ".jnl"
"""A segment's file name ends so (one being made ends in ``.new`` until it is locked)."""
NEW = ".new"
FORMAT = 1
"""The version of the lines, in each segment's head."""
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def new_owner() -> str:
    """``<host>-<pid>-<random>``: unique, and it says which process it was (the host's name lowercased, letters,
    digits and dashes only: it names files, and is matched as a prefix of holder names)."""
    host = re.sub(r"[^a-z0-9]+", "-", socket.gethostname().lower()).strip("-")[:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


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
    """A segment file, its space allocated up front and mapped: a line is written with a copy into the page cache
    (``mmap.write``: no system call, ~0.1 µs)."""

    __slots__ = ("capacity", "fd", "head", "last_seq", "map", "opened", "path")

    def __init__(self, path: Path, fd: int, capacity: int, opened: float) -> None:
        self.path = path
        self.fd = fd
        self.capacity = capacity
        self.map = mmap.mmap(fd, capacity)
        self.last_seq = 0
        """The sequence number of its last line (set when the next segment begins)."""
        self.opened = opened
        self.head = 0
        """Its size once its head (and the summaries of open records) was written."""

    @property
    def size(self) -> int:
        """Bytes written (the rest of the file is zeros)."""
        return self.map.tell()

    def close(self, *, delete: bool) -> None:
        try:
            size = self.map.tell()
            self.map.close()
            if delete:
                os.unlink(self.path)  # while locked: whoever locks it next sees it gone (st_nlink 0)
            else:
                os.ftruncate(self.fd, size)  # left for a replay: without its unwritten space
        finally:
            os.close(self.fd)


class JournalAccount:
    """The :class:`~thinktank.gateway.context.Account` of one usage record (an admission): its charges go to the
    journal, and are summed here while it is open (for the head of a new segment). An object of its own, not the
    admission, which holds the context: a reference cycle per request would leave every request's objects to
    the cyclic garbage collector."""

    __slots__ = ("_journal", "carried", "charges", "completion", "cost", "deployment", "direct", "key_id", "model",
                 "prompt", "usage_id", "user_id")
    # Set by the first charge (most requests have none or one): the sums, whether every charge was made under the
    # request's own context, whether they were summed at the head of a segment (their charges then not all in
    # ``c`` lines).
    deployment: str | None
    prompt: int
    completion: int
    cost: float
    direct: bool
    carried: bool

    def __init__(self, journal: Journal, usage_id: str, user_id: str | None, key_id: str | None, model: str) -> None:
        self._journal = journal
        self.usage_id, self.user_id, self.key_id, self.model = usage_id, user_id, key_id, model
        self.charges = 0

    def charged(self, record: UsageRecord, hold: object, nested: bool) -> None:
        """One upstream call accounted under this record (``nested``: as a step of a run), its hold (if any)
        settled on the budgets it names (``hold.budget_keys``)."""
        journal = self._journal
        active = journal._active
        if active is None:
            return
        # The line written as _write does, inlined: this runs for every call accounted.
        usage_id, seq = self.usage_id, journal.seq + 1
        line = ["c", seq, journal._clock.time(), usage_id, self.user_id, self.key_id, self.model,
                record.deployment, record.prompt_tokens, record.completion_tokens, record.cost,
                getattr(hold, "budget_keys", ()), not nested, record.latency, record.stream]
        try:
            active.map.write(orjson.dumps(line, option=_NEWLINE))
            journal.seq = seq
        except ValueError:  # the segment is full
            journal._write(line)
        # Summed after the line: a segment begun by writing it has summed what came before it.
        self.deployment = record.deployment
        if self.charges:
            self.prompt += record.prompt_tokens
            self.completion += record.completion_tokens
            self.cost += record.cost
            self.charges += 1
            if nested:
                self.direct = False
            return
        journal._open[usage_id] = self
        self.prompt, self.completion, self.cost = record.prompt_tokens, record.completion_tokens, record.cost
        self.charges, self.direct, self.carried = 1, not nested, False


class Journal:
    """This process's journal (see the module). :meth:`open` makes its first segment; until then, and after
    :meth:`close`, lines are not written."""

    def __init__(self, directory: Path, clock: Clock, *, database: str = "", budgets: str = "",
                 owner: str | None = None, rotate_every: float = 10.0, capacity: int = 2 << 20) -> None:
        self.directory = directory
        self.owner = owner or new_owner()
        """This journal's name: its segments' and its budget lease holders' (``<owner>/<n>``)."""
        self.database = database
        self.budgets = budgets
        self.rotate_every = rotate_every
        self.capacity = capacity
        """Bytes a segment holds; a full one is followed by a new one at once."""
        self._clock = clock
        self.seq = 0
        """The sequence number of the last line written."""
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._index = 0
        self._open: dict[str, JournalAccount] = {}
        """Usage records charged and not yet recorded."""
        self._failed_at = -1e18

    # -- writing ---------------------------------------------------------------------------------
    def _write(self, line: list[Any]) -> None:
        """Write ``line`` (its ``[1]`` is the next sequence number), in a new segment if this one is full."""
        active = self._active
        if active is None:
            return
        try:
            active.map.write(orjson.dumps(line, option=_NEWLINE))
        except ValueError:  # full: the next segment, and the line numbered after its head
            if not self._next() or self._active is None:
                return
            line[1] = self.seq + 1
            try:
                self._active.map.write(orjson.dumps(line, option=_NEWLINE))
            except ValueError:  # a line larger than a segment's room: not written (no such line is made)
                log.error("a line of %d bytes does not fit in a journal segment", len(orjson.dumps(line)))
                return
        self.seq = line[1]

    def _next(self) -> bool:
        """Begin a new segment now; whether it could be (a full disk: the line is lost, and said)."""
        try:
            self._begin()
        except OSError as exc:
            now = self._clock.monotonic()
            if now - self._failed_at >= 60.0:  # said once a minute, not per request
                self._failed_at = now
                log.error("a new segment of the accounting journal could not be made in %s (%s): what is charged "
                          "now is lost if this process is killed before it reaches the database", self.directory, exc)
            return False
        return True

    def account(self, usage_id: str, user_id: str | None, key_id: str | None, model: str) -> JournalAccount:
        """The account of a new usage record (an admission's)."""
        return JournalAccount(self, usage_id, user_id, key_id, model)

    def usage(self, event: UsageEvent) -> None:
        """A usage row recorded (the record it closes is no longer open)."""
        active = self._active
        if active is None:
            return
        if self._open:
            account = self._open.pop(event.request_id, None)
            if (account is not None and account.charges == 1 and account.direct and not account.carried
                    and event.status == 200 and not event.cache_hit and event.cost_usd == account.cost
                    and event.prompt_tokens == account.prompt and event.completion_tokens == account.completion):
                return  # its one direct charge line holds the row
        seq = self.seq + 1
        line = ["u", seq, *event]
        try:  # (_write, inlined: this runs for every request)
            active.map.write(orjson.dumps(line, option=_NEWLINE))
            self.seq = seq
        except ValueError:
            self._write(line)

    # -- segments --------------------------------------------------------------------------------
    def open(self) -> None:
        """Make the journal's directory and first segment."""
        if self._active is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._begin()

    def _begin(self) -> None:
        """A new segment, locked before it has its name, with its head: the stores, and the sum of each record still
        open."""
        now = self._clock.time()
        seq = self.seq
        lines = [["v", seq + 1, FORMAT, self.owner, self.database, self.budgets]]
        for usage_id, s in self._open.items():
            s.carried = True
            lines.append(["a", seq + len(lines) + 1, now, usage_id, s.user_id, s.key_id, s.model, s.deployment,
                          s.prompt, s.completion, s.cost, s.charges])
        head = b"".join(orjson.dumps(line, option=_NEWLINE) for line in lines)
        capacity = max(self.capacity, 2 * len(head) + 65536)
        self._index += 1
        name = f"{self.owner}.{self._index:06d}"
        making = self.directory / (name + NEW)
        path = self.directory / (name + SUFFIX)
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if not lock(fd):
                raise OSError(f"could not lock the new journal segment {making}")
            _allocate(fd, capacity)
            os.rename(making, path)
            segment = _Segment(path, fd, capacity, self._clock.monotonic())
        except BaseException:
            making.unlink(missing_ok=True)
            os.close(fd)
            raise
        segment.map.write(head)
        segment.head = len(head)
        if self._active is not None:
            self._active.last_seq = seq  # the one before ends with the line before this head
        self.seq = seq + len(lines)
        self._segments.append(segment)
        self._active = segment

    @property
    def segments(self) -> list[Path]:
        """This process's segment files, oldest first."""
        return [s.path for s in self._segments]

    def tidy(self, committed: int) -> None:
        """Begin a new segment if the one in use is ``rotate_every`` seconds old and holds more than its head, and
        drop the older ones whose every line is committed (lines up to sequence number ``committed`` are in the
        database and the budget store)."""
        active = self._active
        if active is None:
            return
        if active.size > active.head and self._clock.monotonic() - active.opened >= self.rotate_every:
            self._next()
        while len(self._segments) > 1 and self._segments[0].last_seq <= committed:  # (not the one in use)
            self._segments.pop(0).close(delete=True)

    def close(self, committed: int) -> bool:
        """Stop writing. The segments go if everything in them is committed and no record is open (True);
        otherwise they stay, for a process to replay (unlocked from now on)."""
        done = committed >= self.seq and not self._open
        self._active = None
        segments, self._segments = self._segments, []
        for segment in segments:
            segment.close(delete=done)
        return done


def _allocate(fd: int, size: int) -> None:
    """The file's space, allocated now: a full disk says so here, not as a SIGBUS when a page is first written."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        import errno

        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system without fallocate: sparse
