"""``thinktank eval``: answer quality (``eval answers``, in :mod:`.eval_answers`) and retrieval quality
(``eval retrieval``, on a BEIR-format set)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import Settings
from ..errors import ThinktankError
from .common import fail
from .eval_answers import eval_answers_command

if TYPE_CHECKING:
    from ..knowledge.ingest import Progress

__all__ = ["eval_app", "progress_bar"]

eval_app = typer.Typer(help="Evaluations: compare answers on your own questions, measure retrieval quality.",
                       no_args_is_help=True)
eval_app.command("answers")(eval_answers_command)


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[Callable[[Progress], None]]:
    """A progress callback drawing a bar on stderr (nothing when ``enabled`` is false)."""
    if not enabled:
        yield lambda _p: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[chunks]} chunks"),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None, chunks=0)

        def update(p: Progress) -> None:
            bar.update(task, completed=p.done, total=p.total, chunks=p.chunks)

        yield update


@eval_app.command("retrieval")
def eval_retrieval(
    corpus: Annotated[Path, typer.Option(
        help="The corpus.jsonl: {_id, title, text} per line.", exists=True, dir_okay=False)],
    queries: Annotated[Path, typer.Option(
        help="The queries.jsonl: {_id, text} per line.", exists=True, dir_okay=False)],
    qrels: Annotated[Path, typer.Option(
        help="The qrels.tsv: query-id, corpus-id, score.", exists=True, dir_okay=False)],
    backend: Annotated[str, typer.Option(
        help="Where: sqlite (a temporary file) or postgres (THINKTANK_DATABASE_URL).")] = "sqlite",
    mode: Annotated[str, typer.Option(
        help="Search: hybrid, bm25 or dense; several, comma-separated, share one ingestion.")] = "hybrid",
    fusion: Annotated[str, typer.Option(help="Fusion: score or rrf.")] = "score",
    keyword_weight: Annotated[float, typer.Option(help="Weight of BM25 in the fusion.")] = 0.3,
    vector_weight: Annotated[float, typer.Option(help="Weight of the vectors in the fusion.")] = 0.7,
    chunk_tokens: Annotated[int, typer.Option(help="Target chunk size, in the model's tokens.")] = 200,
    chunk_overlap: Annotated[int, typer.Option(help="Overlap between chunks cut for size.")] = 40,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Retrieval quality on a BEIR-format set: nDCG@10, Recall@100 and MRR@10.

    The set goes into a temporary knowledge base; the last line printed is ndcg@10=0.XXXX (of the last mode).
    """
    from ..clock import SystemClock
    from ..knowledge.embeddings import LocalEmbedder
    from ..knowledge.evaluation import EvalSetup, load_corpus, load_qrels, load_queries, run_evaluation
    from ..knowledge.retrieval import SearchOptions
    from ..store.db import Database
    from ..store.migrate import upgrade_async

    modes = {"hybrid": "hybrid", "bm25": "keyword", "keyword": "keyword", "dense": "vector", "vector": "vector"}
    chosen = [m.strip() for m in mode.split(",") if m.strip()]
    if not chosen or any(m not in modes for m in chosen) or fusion not in ("score", "rrf") \
            or backend not in ("sqlite", "postgres"):
        raise typer.BadParameter("mode is hybrid, bm25 or dense; fusion is score or rrf; backend sqlite or postgres")
    settings = Settings()
    if backend == "postgres" and not (settings.database_url or "").startswith("postgres"):
        raise typer.BadParameter("--backend postgres needs THINKTANK_DATABASE_URL=postgresql://...")

    async def run(workdir: Path) -> None:
        url = settings.database_url if backend == "postgres" else f"sqlite:///{workdir / 'eval.db'}"
        assert url is not None
        await upgrade_async(url)
        db = Database(url)
        embedder = LocalEmbedder(settings.data_dir / "models")
        try:
            options = [SearchOptions(mode=modes[m], fusion=fusion,  # type: ignore[arg-type]
                                     keyword_weight=keyword_weight, vector_weight=vector_weight) for m in chosen]
            with progress_bar("ingesting", enabled=not quiet) as progress:
                results = await run_evaluation(
                    db, embedder, SystemClock(), load_corpus(corpus), load_queries(queries), load_qrels(qrels),
                    options, EvalSetup(chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap), progress,
                )
        finally:
            embedder.close()
            await db.close()
        for name, metrics in zip(chosen, results, strict=True):
            typer.echo(f"queries={metrics.queries} backend={backend} mode={name}"
                       + (f" fusion={fusion} weights={keyword_weight:g}/{vector_weight:g}" if name == "hybrid" else ""))
            typer.echo(f"recall@100={metrics.recall_100:.4f}")
            typer.echo(f"mrr@10={metrics.mrr_10:.4f}")
            typer.echo(f"ndcg@10={metrics.ndcg_10:.4f}")

    try:
        with tempfile.TemporaryDirectory(prefix="thinktank-eval-") as workdir:
            asyncio.run(run(Path(workdir)))
    except ThinktankError as exc:
        fail(exc.message)
