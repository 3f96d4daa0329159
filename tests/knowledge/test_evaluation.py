"""Retrieval metrics by hand, and ``thinktank eval retrieval`` on a small BEIR-format set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thinktank.cli import app
from thinktank.knowledge.embeddings import LocalEmbedder
from thinktank.knowledge.evaluation import evaluate_rankings, mrr_at, ndcg_at, rank_documents, recall_at

CORPUS = {
    "d1": ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    "d2": ("Plate tectonics", "The crust is broken into plates that drift over the mantle and cause earthquakes."),
    "d3": ("Vaccines", "A vaccine trains the immune system to recognise a pathogen before an infection."),
    "d4": ("Black holes", "A black hole bends spacetime so strongly that not even light escapes."),
    "d5": ("Sourdough", "Wild yeast and lactic acid bacteria leaven sourdough bread."),
    "d6": ("Volcanoes", "Magma rises through the crust and erupts as lava from volcanoes."),
}
QUERIES = {"q1": "how do plants make sugar from sunlight", "q2": "why does the ground shake",
           "q3": "immunisation against disease", "q4": "unjudged question"}
QRELS = [("q1", "d1", 1), ("q2", "d2", 1), ("q2", "d6", 1), ("q3", "d3", 2)]


def test_metrics_by_hand() -> None:
    relevant = {"a": 1, "b": 2}
    ranking = ["x", "b", "y", "a"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at(ranking, relevant, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at(ranking, relevant, 1) == 0.0
    assert recall_at(ranking, relevant, 2) == 0.5 and recall_at(ranking, relevant, 100) == 1.0
    assert mrr_at(ranking, relevant, 10) == 0.5 and mrr_at(["x"], relevant, 10) == 0.0
    assert rank_documents([5, 6, 7, 8], {5: "d2", 6: "d1", 7: "d2", 8: "d3"}.get) == ["d2", "d1", "d3"]
    metrics = evaluate_rankings({"q": ranking}, {"q": relevant, "empty": {"z": 0}})
    assert metrics.queries == 1 and metrics.mrr_10 == 0.5


def write_set(root: Path) -> tuple[Path, Path, Path]:
    corpus, queries, qrels = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels.tsv"
    corpus.write_text("".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in CORPUS.items()))
    queries.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS))
    return corpus, queries, qrels


def test_eval_retrieval_command(tmp_path: Path, local_embedder: LocalEmbedder,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKTANK_DATA_DIR", str(local_embedder.cache_dir.parent))
    corpus, queries, qrels = write_set(tmp_path)
    args = ["eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries), "--qrels", str(qrels), "-q"]
    result = CliRunner().invoke(app, [*args, "--mode", "bm25,dense,hybrid"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("ndcg@10=")
    blocks = {line.split()[2]: float(lines[i + 3].split("=")[1]) for i, line in enumerate(lines)
              if line.startswith("queries=3 ")}
    assert set(blocks) == {"mode=bm25", "mode=dense", "mode=hybrid"}
    # Paraphrased queries: the vectors find what the words alone do not.
    assert blocks["mode=dense"] > blocks["mode=bm25"] and blocks["mode=hybrid"] > 0.8
    bad = CliRunner().invoke(app, [*args, "--mode", "magic"])
    assert bad.exit_code == 2 and "mode" in bad.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"_id": "x", "text": "fine"}\nnot json\n')
    failed = CliRunner().invoke(app, ["eval", "retrieval", "--corpus", str(broken), "--queries", str(queries),
                                      "--qrels", str(qrels), "-q"])
    assert failed.exit_code == 2 and "broken.jsonl:2" in failed.output
