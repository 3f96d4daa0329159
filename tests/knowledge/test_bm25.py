"""BM25 in memory against the formula written out by hand, and the analysis of text into terms."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from thinktank.knowledge.bm25 import Analyzer, Bm25Index

CORPUS = [
    "Cats purr. Cats hunt mice at night.",
    "The borrow checker of Rust prevents data races.",
    "Sourdough bread rises with wild yeast; the yeast feeds on flour.",
    "A cat and a dog share a house with a small mouse.",
    "",
    "Running runners ran; the run was long.",
]


def reference_scores(analyzer: Analyzer, corpus: list[str], query: str) -> list[float]:
    """Okapi BM25 (k1 1.2, b 0.75, IDF ln(1 + (N - n + 0.5) / (n + 0.5))), one document at a time."""
    docs = [Counter(analyzer.terms(text)) for text in corpus]
    lengths = [len(analyzer.words(text)) for text in corpus]
    average = sum(lengths) / len(lengths)
    out = []
    for counts, length in zip(docs, lengths, strict=True):
        score = 0.0
        for term in analyzer.query(query):
            n = sum(1 for d in docs if term in d)
            tf = counts.get(term, 0)
            if n and tf:
                idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * length / average))
        out.append(score)
    return out


def index_of(analyzer: Analyzer, corpus: list[str]) -> Bm25Index:
    counted = [analyzer.count(text) for text in corpus]
    return Bm25Index(((c.terms, c.counts, c.length) for c in counted), len(counted))


@pytest.mark.parametrize("query", ["cat mice", "yeast", "run", "the cat", "borrow checker data", "unknown words"])
def test_scores_match_the_formula(query: str) -> None:
    analyzer = Analyzer()
    index = index_of(analyzer, CORPUS)
    expected = reference_scores(analyzer, CORPUS, query)
    assert index.scores(analyzer.query(query)).tolist() == pytest.approx(expected, rel=1e-5)
    assert any(expected) == (query != "unknown words")


def test_analysis_folds_stems_and_drops_stop_words() -> None:
    analyzer = Analyzer()
    assert analyzer.terms("The Cafés of São_Paulo are RUNNING") == ["cafe", "sao", "paulo", "run"]
    assert analyzer.words("The cat's toy") == ["the", "cat", "s", "toy"]
    assert analyzer.query("cats and CATS, and dogs") == ["cat", "dog"]
    assert analyzer.query("to be or not to be") == ["to", "be", "or", "not"]  # nothing but stop words: kept
    assert analyzer.query("?! ...") == []
    counted = analyzer.count("Cats", "cats purr and cats sleep")
    assert dict(zip(counted.terms.split(" "), np.frombuffer(counted.counts, "<u4").tolist(), strict=True)) == {
        "cat": 3, "purr": 1, "sleep": 1}
    assert counted.length == 6


def test_an_empty_index_and_documents_without_terms() -> None:
    analyzer = Analyzer()
    empty = Bm25Index(iter(()), 0)
    assert empty.scores(["cat"]).tolist() == []
    blank = index_of(analyzer, ["", "and the"])
    assert blank.scores(analyzer.query("the")).tolist() == [0.0, 0.0]


def test_passages_are_scored_among_themselves() -> None:
    analyzer = Analyzer()
    index = index_of(analyzer, CORPUS)
    passages = ["Bread needs flour.", "Wild yeast makes sourdough rise.", "Nothing relevant here."]
    scores = index.passage_scores(analyzer, analyzer.query("sourdough yeast"), passages)
    assert scores[1] > scores[0] == scores[2] == 0.0
    assert index.passage_scores(analyzer, analyzer.query("zebra"), passages) == [0.0, 0.0, 0.0]
