"""Cold start: spawn ``thinktank serve`` with the benchmark config and time until ``GET /v1/models``
answers 200, a few times; optionally for another checkout's source too (to compare two commits).

    python bench/cold_start.py                       # this checkout, 3 starts
    python bench/cold_start.py --src /path/to/old/src --starts 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
KEY = "sk-bench-admin-0123456789"


def one_start(src: Path, port: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "THINKTANK_DATA_DIR": tempfile.mkdtemp(),
           "THINKTANK_ADMIN_KEY": KEY, "THINKTANK_CONFIG": str(HERE / "thinktank-bench.yaml")}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "thinktank", "serve", "--port", str(port), "--log-level",
                               "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"thinktank serve exited with {server.returncode}")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                              timeout=2)
                if r.status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=HERE.parent / "src", help="the source folder to start")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--port", type=int, default=18499)
    args = parser.parse_args()
    times = [one_start(args.src, args.port) for _ in range(args.starts)]
    print(f"{args.src}: " + ", ".join(f"{t:.2f} s" for t in times))


if __name__ == "__main__":
    main()
