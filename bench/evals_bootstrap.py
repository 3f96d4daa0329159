"""How long an evaluation's summary takes (its bootstrap: 1000 rounds by default), for a few dataset sizes.

    PYTHONPATH=src python bench/evals_bootstrap.py

Synthetic answers, checks and verdicts (two judges) over N items and K candidates; prints the median CPU time of
``thinktank.evals.stats.summarize`` over a few runs. No server, no network.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time

from thinktank.evals.checks import AnswerRecord, CheckResult
from thinktank.evals.dataset import EvalItem
from thinktank.evals.pairwise import PairVerdict
from thinktank.evals.stats import summarize
from thinktank.types import Message


def case(n_items: int, n_candidates: int, seed: int = 1) -> tuple[float, float]:
    rng = random.Random(seed)
    items = [EvalItem(id=f"q{i}", messages=[Message(role="user", content=f"question {i}")]) for i in range(n_items)]
    candidates = [f"model-{k}" for k in range(n_candidates)]
    judges = ["judge-1", "judge-2"]
    answers = {(item.id, c): AnswerRecord(text="x", error=None, cost_usd=0.001, latency_ms=rng.uniform(5, 50),
                                          citations=[]) for item in items for c in candidates}
    checks = {key: [CheckResult("contains", "contains", rng.random() < 0.7, None, "")] for key in answers}
    verdicts = [PairVerdict(item.id, a, b, judge, rng.choice([0.0, 0.5, 1.0, 1.0]), False, None)
                for item in items for a, b in itertools.combinations(candidates, 2) for judge in judges]
    times = []
    for _ in range(5):
        start = time.process_time()  # CPU time: steadier than the wall clock on a busy machine
        summarize(items, candidates, judges, answers, checks, verdicts, rng=random.Random(seed))
        times.append(time.process_time() - start)
    return statistics.median(times), len(verdicts)


def main() -> None:
    case(10, 2)  # the first summary with judging pays numpy's import
    for n_items, n_candidates in ((40, 2), (300, 2), (300, 3), (300, 5), (500, 8), (2000, 8)):
        seconds, verdicts = case(n_items, n_candidates)
        print(f"{n_items:5d} items x {n_candidates} candidates ({verdicts:6d} verdicts): {seconds * 1000:7.1f} ms CPU")


if __name__ == "__main__":
    main()
