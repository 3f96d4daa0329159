"""Run a simulated multi-host deployment of thinktank on this machine, until Ctrl-C (or SIGTERM):

    python deploy/multihost/run.py                       # 3 hosts, private PostgreSQL and Redis, mock upstream
    python deploy/multihost/run.py --hosts 4 --database postgresql://postgres@127.0.0.1:5432/postgres \\
        --redis redis://127.0.0.1:6379/0 --upstream http://127.0.0.1:18080 --port 8080

Three `thinktank serve` processes ("hosts": own port, data directory and HOME; same config and admin key) share one
PostgreSQL and one Redis behind HAProxy. It prints the load balancer's URL, the admin key and the admin's sign-in,
and where each host logs. Needs thinktank installed with its dev extras (pgserver), haproxy and redis-server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `deploy.multihost` imports

from deploy.multihost.fleet import Fleet, ServiceError, fleet


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=3, help="thinktank processes (default 3)")
    parser.add_argument("--database", help="an admin URL of a PostgreSQL server to make a fresh database on "
                        "(default: a private PostgreSQL 16 with pgvector)")
    parser.add_argument("--redis", help="a Redis URL (default: a private redis-server)")
    parser.add_argument("--upstream", help="an OpenAI-compatible base URL, http://host:port (default: "
                        "thinktank mock-upstream)")
    parser.add_argument("--config", type=Path, help="the hosts' YAML config ($upstream is replaced; default "
                        "deploy/multihost/thinktank.yaml)")
    parser.add_argument("--bind", default="127.0.0.1", help="the load balancer's address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="the load balancer's port (default 8080)")
    parser.add_argument("--dir", type=Path, help="where the hosts' homes, the config and the logs go (default: "
                        "a new temporary folder)")
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    return args


def _describe(f: Fleet) -> str:
    lines = [
        f"thinktank on {len(f.hosts)} hosts behind HAProxy: {f.url}",
        f"  admin key:      {f.admin_key}",
        f"  admin sign-in:  {f.admin_email} / {f.admin_password}   ({f.url}/login)",
        f"  try:            curl -s {f.url}/v1/chat/completions -H 'Authorization: Bearer {f.admin_key}' "
        "-H 'content-type: application/json' -d '{\"model\": \"mock\", \"messages\": [{\"role\": \"user\", "
        "\"content\": \"hi\"}]}'",
        f"  HAProxy status: http://127.0.0.1:{f.lb.stats_port}/stats",
        f"  database:       {f.db_url}",
        f"  redis:          {f.redis_url}",
        f"  upstream:       {f.upstream_url}",
    ]
    lines += [f"  {h.name}: {h.url}  pid {h.proc.pid if h.proc else '-'}  log {h.log}" for h in f.hosts]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="tt-multihost-"))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config = args.config.read_text() if args.config else None
    print(f"starting {args.hosts} hosts under {root} ...", file=sys.stderr, flush=True)
    try:
        with fleet(root, hosts=args.hosts, database=args.database, redis=args.redis, upstream=args.upstream,
                   config=config, lb_bind=args.bind, lb_port=args.port) as f:
            print(_describe(f), flush=True)
            while not stop.wait(1.0):
                pass
            print("stopping ...", file=sys.stderr, flush=True)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
