"""prometheus_client's multiprocess mode for ``thinktank serve --workers N``: the directory its files live in,
and the bookkeeping for workers that exited.

Each worker writes its values to memory-mapped files of its own (named after its pid) in the directory
``PROMETHEUS_MULTIPROC_DIR`` names; a scrape, answered by any worker, adds them all up. Counters of a worker
that exited stay (the totals must not drop); its ``live*`` gauges go (:func:`mark_dead_workers`). The
directory must be empty when the server starts, or the counts of the last run would come back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path

__all__ = ["ENV", "mark_dead_workers", "mark_self_dead", "reset_directory", "worker_directory"]

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def reset_directory(path: Path) -> None:
    """Remove the metric files a previous run left in ``path`` (a directory the operator chose)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def worker_directory(environ: MutableMapping[str, str]) -> Iterator[Path]:
    """The directory for the workers about to start, named in ``environ`` for them: the operator's
    ``PROMETHEUS_MULTIPROC_DIR`` (emptied when the server started, see :func:`reset_directory`, and left in
    place), or a new temporary directory, removed when the block ends."""
    chosen = environ.get(ENV)
    if chosen:
        yield Path(chosen)
        return
    made = Path(tempfile.mkdtemp(prefix="thinktank-metrics-"))
    environ[ENV] = str(made)
    try:
        yield made
    finally:
        environ.pop(ENV, None)
        shutil.rmtree(made, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def mark_dead_workers(path: str) -> None:
    """Forget the ``live*`` gauges of processes that no longer run (a worker that crashed never said so);
    called at each scrape, it reads one directory listing."""
    from prometheus_client.multiprocess import mark_process_dead

    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        found = _LIVE_GAUGE_FILE.match(name)
        if found is not None and not _alive(int(found.group(1))):
            try:
                mark_process_dead(int(found.group(1)), path)  # type: ignore[no-untyped-call]
            except OSError:  # another worker did it at the same moment
                log.debug("metrics files of %s already gone", found.group(1))


def mark_self_dead(path: str) -> None:
    """This worker stops: its ``live*`` gauges go (its counters stay)."""
    from prometheus_client.multiprocess import mark_process_dead

    with contextlib.suppress(OSError):
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
