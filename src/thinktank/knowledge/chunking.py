"""Structure-aware chunking: a document's blocks (headings, paragraphs, code, tables, list items)
become chunks of about ``target_tokens`` tokens with their metadata.

- A heading closes the chunk before it, so a chunk never spans two sections; the heading path
  (``("Install", "On Linux")``) travels with every chunk of the section.
- Paragraphs are packed whole while they fit; a paragraph too long for a chunk is split at
  sentences, and a sentence too long at words.
- A chunk cut for size (not at a heading) starts the next one with its last sentences, up to
  ``overlap_tokens``, so a passage is never cut off from its context.
- Code and tables are not split at sentences (they have none): they are cut at lines.

Token counts are estimates by default (``estimate_tokens``: words and punctuation, as a BERT-style
tokeniser splits them before word pieces); pass the embedding model's own counter for exact sizes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Block", "BlockKind", "Chunk", "ChunkingOptions", "chunk_blocks", "estimate_tokens", "markdown_blocks",
    "split_sentences", "text_blocks",
]

BlockKind = Literal["heading", "paragraph", "code", "table", "list"]

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def estimate_tokens(text: str) -> int:
    """Words and punctuation marks: close to a word-piece count for English prose (a little under)."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    text: str
    level: int = 0
    """A heading's level (1 for ``#``)."""
    page: int | None = None
    """The page it is on (PDF), from 1."""


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    position: int
    """Its place in the document, from 0."""
    heading_path: tuple[str, ...]
    page: int | None
    """The page it starts on, if the source has pages."""
    tokens: int


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    target_tokens: int = 200
    overlap_tokens: int = 40
    count: Callable[[str], int] = estimate_tokens

    def __post_init__(self) -> None:
        if self.target_tokens < 16:
            raise ValueError("target_tokens must be at least 16")
        if not 0 <= self.overlap_tokens < self.target_tokens // 2:
            raise ValueError("overlap_tokens must be at least 0 and less than half of target_tokens")


# -- sentences -----------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset({
    "e.g", "i.e", "etc", "vs", "cf", "al", "fig", "figs", "eq", "no", "dr", "mr", "mrs", "ms", "prof", "st", "jr",
    "sr", "inc", "ltd", "co", "approx", "ca", "resp", "vol", "pp", "ed", "eds", "u.s", "u.k",
})
_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)\]]*\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of prose. A full stop after a known abbreviation (``e.g.``, ``et al.``), an initial
    (``J. Smith``) or a number (``3.5``) does not end one."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        before = text[start : m.start() + 1].rstrip(".")
        last = before.rsplit(None, 1)[-1].lower() if before.split() else ""
        nxt = text[end : end + 1]
        if text[m.start()] == "." and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        if nxt and nxt.islower():  # "... approx. the same": not a new sentence
            continue
        out.append(text[start:end].strip())
        start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


# -- blocks from text ----------------------------------------------------------------------------

_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SETEXT = re.compile(r"^(=+|-+)\s*$")


def markdown_blocks(text: str) -> list[Block]:
    """Headings (ATX and setext), fenced code, tables, list items and paragraphs of Markdown."""
    blocks: list[Block] = []
    para: list[str] = []
    kind: BlockKind = "paragraph"

    def flush() -> None:
        nonlocal para, kind
        body = "\n".join(para).strip()
        if body:
            blocks.append(Block(kind, body if kind in ("code", "table") else " ".join(body.split())))
        para, kind = [], "paragraph"

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line.strip())
        if fence:
            flush()
            code = [line]
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence.group(1)):
                code.append(lines[i])
                i += 1
            if i < len(lines):
                code.append(lines[i])
            blocks.append(Block("code", "\n".join(code)))
            i += 1
            continue
        heading = _ATX.match(line)
        if heading:
            flush()
            if heading.group(2):
                blocks.append(Block("heading", heading.group(2), level=len(heading.group(1))))
        elif para and kind == "paragraph" and len(para) == 1 and _SETEXT.match(line) and para[0].strip():
            title = para[0].strip()
            para = []
            blocks.append(Block("heading", title, level=1 if line.strip().startswith("=") else 2))
        elif not line.strip():
            flush()
        elif line.lstrip().startswith("|"):
            if kind != "table":
                flush()
                kind = "table"
            para.append(line)
        elif _LIST.match(line):
            flush()
            kind = "list"
            para.append(line.strip())
        else:
            if kind == "table":
                flush()
            para.append(line)
        i += 1
    flush()
    return blocks


def text_blocks(text: str, page: int | None = None) -> list[Block]:
    """Paragraphs of plain text (separated by blank lines)."""
    parts = re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return [Block("paragraph", " ".join(p.split()), page=page) for p in parts if p.strip()]


# -- chunks --------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Piece:
    text: str
    tokens: int
    page: int | None
    joiner: str


def _pieces(block: Block, limit: int, count: Callable[[str], int], specials: int) -> Iterator[_Piece]:
    """A block as pieces no longer than ``limit`` tokens: whole, or cut at sentences (prose) or
    lines (code, tables), and a piece still too long at words.

    Each unit (sentence, line, word) is counted once and longer texts are counted as the sum of their
    units less the special tokens each count includes (``specials``, what ``count("")`` gives): exact
    for word-piece tokenisers, which never join tokens across whitespace, and it keeps counting linear
    in the text (a long block used to be counted whole, then by sentence, then by chunk)."""
    if block.kind in ("code", "table"):
        units, joiner = block.text.split("\n"), "\n"
    else:
        units, joiner = split_sentences(block.text), " "
    counts = [count(unit) for unit in units]
    whole = _joined(counts, specials)
    if whole <= limit:
        yield _Piece(block.text, whole, block.page, "\n" if block.kind in ("code", "table", "list") else " ")
        return
    for unit, k in zip(units, counts, strict=True):
        if k <= limit:
            yield _Piece(unit, k, block.page, joiner)
            continue
        part: list[str] = []
        size = specials
        for word in unit.split(" "):
            n = count(word) - specials
            if part and size + n > limit:
                yield _Piece(" ".join(part), size, block.page, joiner)
                part, size = [], specials
            part.append(word)
            size += n
        if part:
            yield _Piece(" ".join(part), size, block.page, joiner)


def _joined(counts: Sequence[int], specials: int) -> int:
    """The count of texts joined by whitespace, from their own counts."""
    return sum(counts) - specials * (len(counts) - 1) if counts else specials


def chunk_blocks(blocks: Iterable[Block], options: ChunkingOptions | None = None) -> list[Chunk]:
    """The chunks of a document, in order."""
    opts = options or ChunkingOptions()
    specials = opts.count("")
    chunks: list[Chunk] = []
    path: list[tuple[int, str]] = []
    current: list[_Piece] = []

    def emit(pieces: Sequence[_Piece]) -> None:
        if not pieces:
            return
        text = pieces[0].text + "".join(p.joiner + p.text for p in pieces[1:])
        page = next((p.page for p in pieces if p.page is not None), None)
        chunks.append(Chunk(text, len(chunks), tuple(t for _, t in path), page,
                            _joined([p.tokens for p in pieces], specials)))

    def overlap(pieces: Sequence[_Piece]) -> list[_Piece]:
        kept: list[_Piece] = []
        total = 0
        for piece in reversed(pieces):
            if total + piece.tokens > opts.overlap_tokens:
                break
            kept.insert(0, piece)
            total += piece.tokens
        return kept

    for block in blocks:
        if block.kind == "heading":
            emit(current)
            current = []
            level = max(1, block.level)
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, block.text))
            continue
        for piece in _pieces(block, opts.target_tokens, opts.count, specials):
            size = sum(p.tokens for p in current)
            if current and size + piece.tokens > opts.target_tokens:
                emit(current)
                carried = overlap(current)
                current = carried if sum(p.tokens for p in carried) + piece.tokens <= opts.target_tokens else []
            current.append(piece)
    emit(current)
    return chunks
