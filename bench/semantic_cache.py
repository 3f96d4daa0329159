#!/usr/bin/env python3
"""How well the semantic cache tells paraphrases from near-misses, on a labelled set of question pairs.

    python bench/semantic_cache.py                      # the table for docs/benchmarks.md
    python bench/semantic_cache.py --show-false --show-missed heldout

``bench/semantic_cache_pairs.jsonl`` holds pairs written for this: paraphrases (the second question may be
answered with the first one's answer: should hit) and near-misses (a number, a negation, an entity, a unit,
a date, a comparative, a direction, a quantifier, a person or a kind of question changed: must not hit), on
varied topics. Splits: ``tune`` and ``heldout`` (the first set, divided by a hash of each pair's first
question, so the variants of one question stay together: the threshold was chosen on ``tune`` only), and
``round2`` and ``round3``: near-misses (and a few paraphrases) written afterwards to break the guards, each
round run once against the guards as they were; what a round found was then fixed (round 2: "HTTPS" read as
the plural of "HTTP", the pronouns of "can you tell me", "what year"; round 3: "sign up" / "sign in"), so
those rows say how often a fresh adversarial set got through, not how the final guards do on them.

A pair is a hit when the cosine of the two questions' embeddings (all-MiniLM-L6-v2, int8, the gateway's local
model) reaches the threshold and the guards of ``thinktank.cache.guards`` find nothing that differs. Reported
for each threshold and split: the share of paraphrases that hit, and the number of near-misses that hit
(false hits), with cosine alone and with the guards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from thinktank.cache.config import DEFAULT_THRESHOLD  # noqa: E402
from thinktank.cache.guards import features, refusal  # noqa: E402
from thinktank.knowledge.embeddings import LocalEmbedder  # noqa: E402

THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, default=ROOT / "bench" / "semantic_cache_pairs.jsonl")
    ap.add_argument("--show-false", action="store_true", help="list the near-misses that hit at the default")
    ap.add_argument("--show-missed", help="list the paraphrases of this split (or 'all') that miss")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "thinktank-bench-models")
    a = ap.parse_args()

    rows = [json.loads(line) for line in a.pairs.read_text().splitlines() if line.strip()]
    embedder = LocalEmbedder(a.data_dir)
    left = embedder.embed_sync([r["a"] for r in rows])
    right = embedder.embed_sync([r["b"] for r in rows])
    embedder.close()
    cosine = (left * right).sum(axis=1)
    why = [refusal(features(r["a"]), features(r["b"])) for r in rows]

    counts = Counter((r["split"], r["label"]) for r in rows)
    print(f"{len(rows)} pairs: " + ", ".join(f"{s}/{lab} {n}" for (s, lab), n in sorted(counts.items())))
    print()
    order = ["tune", "heldout", "round2", "round3"]
    splits = sorted({r["split"] for r in rows}, key=lambda s: (order.index(s) if s in order else len(order), s))
    print("| threshold | " + " | ".join(f"{s}: paraphrase hits | {s}: false hits" for s in splits)
          + " | cosine alone, all: paraphrase hits / false hits |")
    print("|---" * (2 + 2 * len(splits)) + "|")
    for t in sorted({*THRESHOLDS, DEFAULT_THRESHOLD}):
        cells = []
        for split in splits:
            para = [i for i, r in enumerate(rows) if r["split"] == split and r["label"] == "paraphrase"]
            miss = [i for i, r in enumerate(rows) if r["split"] == split and r["label"] == "near_miss"]
            hits = sum(cosine[i] >= t and why[i] is None for i in para)
            false = sum(cosine[i] >= t and why[i] is None for i in miss)
            cells += [f"{hits}/{len(para)} ({hits / len(para):.0%})" if para else "–", f"{false}/{len(miss)}"]
        para_all = [i for i, r in enumerate(rows) if r["label"] == "paraphrase"]
        miss_all = [i for i, r in enumerate(rows) if r["label"] == "near_miss"]
        raw_hits = sum(cosine[i] >= t for i in para_all)
        raw_false = sum(cosine[i] >= t for i in miss_all)
        mark = " (default)" if t == DEFAULT_THRESHOLD else ""
        print(f"| {t:.2f}{mark} | {' | '.join(cells)} | {raw_hits / len(para_all):.0%} / {raw_false} |")

    print()
    print("Near-misses refused by the guards, by the first rule that refused them:")
    refused = Counter(why[i] for i, r in enumerate(rows) if r["label"] == "near_miss" and why[i] is not None)
    print(", ".join(f"{k} {n}" for k, n in refused.most_common()))
    print("Near-misses by category (all of them):",
          ", ".join(f"{k} {n}" for k, n in Counter(r["category"] for r in rows if r["label"] == "near_miss")
                    .most_common()))
    if a.show_false:
        print()
        for i, r in enumerate(rows):
            if r["label"] == "near_miss" and why[i] is None:
                flag = "FALSE HIT" if cosine[i] >= DEFAULT_THRESHOLD else "passes guards, below threshold"
                print(f"{flag}  {cosine[i]:.3f}  {r['a']!r} / {r['b']!r}")
    if a.show_missed:
        print()
        for i, r in enumerate(rows):
            if r["label"] == "paraphrase" and (a.show_missed == "all" or r["split"] == a.show_missed) and (
                    cosine[i] < DEFAULT_THRESHOLD or why[i] is not None):
                print(f"{cosine[i]:.3f}  {why[i] or 'below threshold'}:  {r['a']!r} / {r['b']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
