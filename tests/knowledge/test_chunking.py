"""Structure-aware chunking: sections, sizes, overlap, sentences, code and tables."""

from __future__ import annotations

import itertools

import pytest

from thinktank.knowledge.chunking import (
    Block,
    ChunkingOptions,
    chunk_blocks,
    estimate_tokens,
    markdown_blocks,
    split_sentences,
    text_blocks,
)
from thinktank.knowledge.embeddings import LocalEmbedder


def test_sentences_do_not_end_at_abbreviations_initials_or_numbers() -> None:
    text = ("Smith et al. found a 3.5-fold rise, e.g. in mice. J. Doe disagreed! Did it hold? "
            "Yes (mostly). The end")
    assert split_sentences(text) == [
        "Smith et al. found a 3.5-fold rise, e.g. in mice.", "J. Doe disagreed!", "Did it hold?", "Yes (mostly).",
        "The end",
    ]


def test_markdown_blocks_keep_headings_code_tables_and_lists() -> None:
    md = """# Guide

Intro line one
continues here.

Setup
-----

- first item
- second item

```python
x = 1

y = 2
```

| a | b |
|---|---|
| 1 | 2 |
### Deep ###
Last.
"""
    blocks = markdown_blocks(md)
    assert [(b.kind, b.level) for b in blocks] == [
        ("heading", 1), ("paragraph", 0), ("heading", 2), ("list", 0), ("list", 0), ("code", 0), ("table", 0),
        ("heading", 3), ("paragraph", 0),
    ]
    assert blocks[1].text == "Intro line one continues here."
    assert blocks[5].text == "```python\nx = 1\n\ny = 2\n```"  # a blank line inside code does not split it
    assert blocks[6].text.count("\n") == 2 and blocks[7].text == "Deep"


def test_a_heading_closes_the_chunk_and_its_path_travels_with_the_section() -> None:
    blocks = [Block("heading", "Install", 1), Block("paragraph", "Use pip."), Block("heading", "Linux", 2),
              Block("paragraph", "Run apt first."), Block("heading", "Usage", 1), Block("paragraph", "Call it.")]
    chunks = chunk_blocks(blocks)
    assert [(c.text, c.heading_path, c.position) for c in chunks] == [
        ("Use pip.", ("Install",), 0), ("Run apt first.", ("Install", "Linux"), 1), ("Call it.", ("Usage",), 2),
    ]


def test_paragraphs_are_packed_to_the_target_and_cut_chunks_overlap() -> None:
    sentences = [f"Sentence number {i} says something about topic {i}." for i in range(12)]  # 10 tokens each
    text = " ".join(sentences[:6]) + "\n\n" + " ".join(sentences[6:])
    opts = ChunkingOptions(target_tokens=40, overlap_tokens=12)
    chunks = chunk_blocks(text_blocks(text), opts)
    assert all(c.tokens <= 40 for c in chunks) and len(chunks) >= 4
    parts = [split_sentences(c.text) for c in chunks]
    for before, after in itertools.pairwise(parts):
        assert after[0] == before[-1]  # the next chunk starts with the last sentence of the one before
        assert len(after) > 1  # ... and goes on with new text
    seen = [s for p in parts for s in p]
    assert sorted(set(seen)) == sorted(sentences)  # nothing lost
    assert seen.index(sentences[11]) > seen.index(sentences[0])  # in order


def test_a_sentence_longer_than_a_chunk_is_cut_at_words() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    chunks = chunk_blocks([Block("paragraph", words)], ChunkingOptions(target_tokens=30, overlap_tokens=0))
    assert all(c.tokens <= 30 for c in chunks)
    assert " ".join(c.text for c in chunks) == words


def test_code_is_cut_at_lines_and_pages_are_kept() -> None:
    code = "\n".join(f"print({i})" for i in range(40))  # 4 tokens a line
    chunks = chunk_blocks([Block("code", code, page=3)], ChunkingOptions(target_tokens=40, overlap_tokens=0))
    assert len(chunks) == 4 and all(c.page == 3 for c in chunks)
    assert "\n".join(c.text for c in chunks) == code


def test_small_blocks_share_a_chunk_and_empty_input_has_none() -> None:
    chunks = chunk_blocks(text_blocks("One.\n\nTwo.\n\n\n   \n\nThree."))
    assert [c.text for c in chunks] == ["One. Two. Three."]
    assert chunk_blocks([]) == [] and chunk_blocks(text_blocks("  \n\n ")) == []


def test_token_estimate_and_bad_options() -> None:
    assert estimate_tokens("Hello, world! It's 3.5 km.") == 12  # as BERT splits it before word pieces
    with pytest.raises(ValueError, match="at least 16"):
        ChunkingOptions(target_tokens=8)
    with pytest.raises(ValueError, match="half"):
        ChunkingOptions(target_tokens=100, overlap_tokens=60)


def test_chunk_token_counts_are_the_tokenizers_own_and_counting_is_linear(local_embedder: LocalEmbedder) -> None:
    """Chunks are counted from their sentences' and words' counts, never tokenised again: the sums
    must equal what the model's tokeniser says of each chunk, and a long run of words without a
    sentence end must be counted word by word, not as a text growing by a word at a time."""
    counted: list[int] = []

    def count(text: str) -> int:
        counted.append(len(text))
        return local_embedder.count_tokens(text)

    prose = " ".join(f"Sentence {i} mentions the café, naïve résumés and 3.5-fold rises (p<0.05)." for i in range(60))
    run_on = " ".join(f"word{i}" for i in range(3000))  # no sentence end at all
    table = "\n".join(f"| row {i} | value_{i} | {i * 3.25} |" for i in range(120))
    blocks = [Block("paragraph", prose), Block("paragraph", run_on), Block("table", table)]
    chunks = chunk_blocks(blocks, ChunkingOptions(target_tokens=120, overlap_tokens=20, count=count))
    assert len(chunks) > 20
    assert [c.tokens for c in chunks] == [local_embedder.count_tokens(c.text) for c in chunks]
    assert all(c.tokens <= 120 for c in chunks)
    assert sum(counted) <= 2.5 * sum(len(b.text) for b in blocks)  # a text at most twice: as a unit, by words
