"""``thinktank kb``: knowledge bases, over the server's HTTP API (``/api/v1/knowledge-bases``).

Every command talks to ``--url`` (``$THINKTANK_URL``) with ``--api-key`` (``$THINKTANK_API_KEY``): an
admin key, a key made for you, or a session token; or, with ``--local``, to the server started in this
process (see :mod:`.client`). An error from the server is printed as its message and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .client import DEFAULT_URL, ApiError, Client, ConfigOpt, DemoOpt, KeyOpt, LocalOpt, Target, UrlOpt, connect
from .common import print_json, print_table

__all__ = ["kb_app"]

kb_app = typer.Typer(help="Knowledge bases on the server (create, share, add documents, search).",
                     no_args_is_help=True)

KbArg = Annotated[str, typer.Argument(help="The knowledge base: its id (kb_...) or name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON.")]
_STATUSES = ("added", "replaced", "unchanged", "duplicate", "failed")


def _upload(client: Client, path: str, parts: list[tuple[str, tuple[str, bytes]]],
            progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Post files with ``stream=true``; ``progress`` sees each progress event; returns the results."""
    import orjson

    result: dict[str, Any] | None = None
    with client.stream("POST", path, files=parts, params={"stream": "true"}) as events:
        for message in events:
            if message.data == "[DONE]":
                break
            event = orjson.loads(message.data)
            if message.event == "progress":
                progress(event)
            elif message.event == "result":
                result = event
            elif message.event == "error":
                raise ApiError(str(event.get("error", {}).get("message", "the upload failed")))
    if result is None:
        raise ApiError("the server ended the upload without a result")
    return dict(result)


def _kb(ref: str) -> str:
    return "/api/v1/knowledge-bases/" + quote(ref, safe="")


# -- knowledge bases -------------------------------------------------------------------------------

@kb_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_' and '-'.")],
    description: Annotated[str, typer.Option(help="What it holds.")] = "",
    embedding_model: Annotated[str | None, typer.Option(
        help="local/all-MiniLM-L6-v2 (default) or an embedding model of the gateway.", show_default=False)] = None,
    chunk_tokens: Annotated[int | None, typer.Option(help="Target chunk size in tokens (32-2000).",
                                                     show_default=False)] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Overlap between chunks.", show_default=False)] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Create a knowledge base."""
    body: dict[str, Any] = {"name": name, "description": description}
    for key, value in (("embedding_model", embedding_model), ("chunk_tokens", chunk_tokens),
                       ("chunk_overlap", chunk_overlap)):
        if value is not None:
            body[key] = value
    with connect(Target(url, api_key, local, config, demo)) as c:
        kb = c.call("POST", "/api/v1/knowledge-bases", json=body)
    if as_json:
        print_json(kb)
    else:
        typer.echo(f"created {kb['name']} ({kb['id']}, {kb['embedding_model']})")


@kb_app.command("list")
def list_kbs(
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Your knowledge bases and those shared with you."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        data = c.call("GET", "/api/v1/knowledge-bases")
    if as_json:
        print_json(data)
        return
    if not data["data"]:
        typer.echo("No knowledge bases yet: thinktank kb create NAME")
        return
    print_table(["id", "name", "access", "documents", "chunks", "pending", "model"],
           [[k["id"], k["name"], k["access"], k["documents"], k["chunks"], k["pending"], k["embedding_model"]]
            for k in data["data"]])


@kb_app.command("show")
def show(
    kb: KbArg,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """One knowledge base."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        data = c.call("GET", _kb(kb))
    if as_json:
        print_json(data)
        return
    for key in ("id", "name", "description", "owner_id", "access", "embedding_model", "dimension", "chunk_tokens",
                "chunk_overlap", "documents", "chunks", "pending"):
        typer.echo(f"{key + ':':<17}{'' if data.get(key) is None else data[key]}")


@kb_app.command("delete")
def delete(
    kb: KbArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Delete a knowledge base with all its documents."""
    if not yes:
        typer.confirm(f"Delete the knowledge base '{kb}' and all its documents?", abort=True)
    with connect(Target(url, api_key, local, config, demo)) as c:
        c.call("DELETE", _kb(kb))
    typer.echo(f"deleted {kb}")


@kb_app.command("share")
def share(
    kb: KbArg,
    user: Annotated[str | None, typer.Option(help="A user's email or id.", show_default=False)] = None,
    team: Annotated[str | None, typer.Option(help="A team's name or id.", show_default=False)] = None,
    access: Annotated[str, typer.Option(help="read or write.")] = "read",
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Share a knowledge base with a user or a team (sharing again changes the access)."""
    if (user is None) == (team is None):
        raise typer.BadParameter("give --user or --team")
    if access not in ("read", "write"):
        raise typer.BadParameter("--access is read or write")
    with connect(Target(url, api_key, local, config, demo)) as c:
        made = c.call("POST", _kb(kb) + "/shares", json={"user": user, "team": team, "access": access})
    typer.echo(f"shared {kb} with {user or team} ({made['access']}); share id {made['id']}")


@kb_app.command("shares")
def shares(
    kb: KbArg,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Who a knowledge base is shared with."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        data = c.call("GET", _kb(kb) + "/shares")
    if as_json:
        print_json(data)
        return
    print_table(["id", "user", "team", "access"],
                [[s["id"], s["user_id"], s["team_id"], s["access"]] for s in data["data"]])


@kb_app.command("unshare")
def unshare(
    kb: KbArg,
    share_id: Annotated[int, typer.Argument(help="The share's id (see `thinktank kb shares`).")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Take a share back."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        c.call("DELETE", f"{_kb(kb)}/shares/{share_id}")
    typer.echo(f"removed share {share_id}")


# -- documents -------------------------------------------------------------------------------------

@dataclass
class _Found:
    names: dict[Path, str] = field(default_factory=dict)
    """The files to upload, in order, each with its name on the server: a file given by itself, its
    name; a file found in a folder, its path below that folder (``guide/README.md``), so same-named
    files in subfolders stay apart."""
    unsupported: int = 0
    hidden: int = 0

    @property
    def files(self) -> list[Path]:
        return list(self.names)


def collect(paths: Sequence[Path], supported: Sequence[str]) -> _Found:
    """The files to upload: files named as such, and the supported files in folders (recursively; hidden
    files and folders are left out, and not looked into)."""
    found = _Found()
    seen: set[Path] = set()

    def take(path: Path, name: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.names[path] = name

    for path in paths:
        if not path.is_dir():
            take(path, path.name)
            continue
        for root, dirs, names in os.walk(path):
            hidden = [d for d in dirs if d.startswith(".")]
            found.hidden += len(hidden)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    found.hidden += 1
                elif Path(name).suffix.lower() not in supported:
                    found.unsupported += 1
                else:
                    file = Path(root) / name
                    take(file, file.relative_to(path).as_posix())
    return found


def batches(files: Sequence[Path], max_files: int, max_bytes: int) -> Iterator[list[Path]]:
    """Groups of at most ``max_files`` files and about ``max_bytes`` (a larger file goes alone)."""
    batch: list[Path] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if batch and (len(batch) >= max_files or size + length > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += length
    if batch:
        yield batch


@contextmanager
def _bar(total: int, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over files on stderr, in the style of ``thinktank eval``: ``update(done, chunks)``."""
    if not enabled:
        yield lambda _done, _chunks: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("uploading"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[chunks]} chunks"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("uploading", total=total, chunks=0)

        def update(done: int, chunks: int) -> None:
            bar.update(task, completed=done, chunks=chunks)

        yield update


@kb_app.command("add")
def add(
    kb: KbArg,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (folders are read recursively).",
                                                exists=True)],
    batch_files: Annotated[int, typer.Option(help="Most files per request.", min=1, max=1000)] = 50,
    batch_mb: Annotated[float, typer.Option(help="About this many megabytes per request.", min=0.01)] = 8.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Upload files and folders: a changed file replaces its earlier version, an unchanged one is left alone."""
    from ..knowledge.parsers import SUPPORTED

    found = collect(paths, list(SUPPORTED))
    skipped = [f"{n} {what}" for n, what in ((found.unsupported, "unsupported"), (found.hidden, "hidden")) if n]
    if skipped:
        typer.echo(f"skipped: {', '.join(skipped)}", err=True)
    if not found.files:
        typer.secho("error: no files to upload", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    names: dict[str, list[Path]] = {}
    for path in found.files:
        names.setdefault(found.names[path], []).append(path)
    for name, same in names.items():
        if len(same) > 1:  # documents are known by their name: the later replaces the earlier
            typer.secho(f"warning: {len(same)} files are called {name}; only the last one stays",
                        fg=typer.colors.YELLOW, err=True)

    counts = dict.fromkeys(_STATUSES, 0)
    failures: list[tuple[Path, str]] = []
    pending = 0
    with connect(Target(url, api_key, local, config, demo)) as c, _bar(len(found.files), not quiet) as update:
        done = chunks = 0
        for batch in batches(found.files, batch_files, int(batch_mb * 1024 * 1024)):
            parts = [("files", (found.names[p], p.read_bytes())) for p in batch]

            def step(event: dict[str, Any], base: int = done, base_chunks: int = chunks) -> None:
                update(base + int(event.get("done", 0)), base_chunks + int(event.get("chunks", 0)))

            try:
                result = _upload(c, _kb(kb) + "/documents", parts, step)
            except ApiError as exc:
                if exc.status != 413:
                    raise
                result = {"data": [{"status": "failed", "error": {"message": exc.message, "status": 413}}] * len(batch)}
            for path, item in zip(batch, result["data"], strict=True):
                counts[item["status"]] += 1
                chunks += int(item.get("chunks") or 0)
                if item["status"] == "failed":
                    error = item.get("error") or {}
                    failures.append((path, f"{error.get('message', 'failed')} ({error.get('status', '?')})"))
                if item.get("document_status") == "pending":
                    pending += 1
            done += len(batch)
            update(done, chunks)
    typer.echo(", ".join(f"{s} {counts[s]}" for s in _STATUSES))
    for path, reason in failures:
        typer.secho(f"  failed {path}: {reason}", fg=typer.colors.RED)
    if pending:
        typer.echo(f"{pending} document{'s wait' if pending > 1 else ' waits'} for review by an owner of {kb}.")
    if failures:
        raise typer.Exit(1)


@kb_app.command("reembed")
def reembed(
    kb: KbArg,
    model: Annotated[str, typer.Option("--model", "-m", help="The new embedding model (local/all-MiniLM-L6-v2 or a "
                                                             "gateway model).")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Embed every chunk again with another model and switch the knowledge base to it."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        view = c.call("POST", _kb(kb) + "/reembed", json={"embedding_model": model})
    typer.echo(f"{view['name']}: {view['chunks']} chunks embedded with {view['embedding_model']} "
               f"({view['dimension']} dimensions)")


@kb_app.command("add-url")
def add_url(
    kb: KbArg,
    urls: Annotated[list[str], typer.Argument(help="Public http(s) URLs of pages or files.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Fetch web pages or files (on the server) and add them, each known by its URL."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        try:
            result = c.call("POST", _kb(kb) + "/urls", json={"urls": urls})
        except ApiError as exc:
            if not (isinstance(exc.body, dict) and isinstance(exc.body.get("data"), list)):
                raise
            result = exc.body
    failed = 0
    for address, item in zip(urls, result["data"], strict=True):
        if item["status"] == "failed":
            failed += 1
            error = item.get("error") or {}
            typer.secho(f"  failed {address}: {error.get('message', 'failed')} ({error.get('status', '?')})",
                        fg=typer.colors.RED)
        else:
            typer.echo(f"  {item['status']} {address} ({item.get('chunks') or 0} chunks)")
    if failed:
        raise typer.Exit(1)


@kb_app.command("docs")
def docs(
    kb: KbArg,
    status: Annotated[str | None, typer.Option(help="approved, pending or rejected.", show_default=False)] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """The documents of a knowledge base."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        data = c.call("GET", _kb(kb) + "/documents", params={"status": status} if status else None)
    if as_json:
        print_json(data)
        return
    print_table(["id", "source", "kind", "status", "chunks", "pages", "bytes"],
           [[d["id"], d["source"], d["kind"], d["status"], d["chunks"], d["pages"], d["size_bytes"]]
            for d in data["data"]])


@kb_app.command("rm-doc")
def rm_doc(
    kb: KbArg,
    doc_id: Annotated[str, typer.Argument(help="The document's id (see `thinktank kb docs`).")],
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Remove a document."""
    with connect(Target(url, api_key, local, config, demo)) as c:
        c.call("DELETE", f"{_kb(kb)}/documents/{quote(doc_id, safe='')}")
    typer.echo(f"removed {doc_id}")


@kb_app.command("review")
def review(
    kb: KbArg,
    doc_id: Annotated[str, typer.Argument(help="The contribution's id (see `kb docs KB --status pending`).")],
    approve: Annotated[bool | None, typer.Option("--approve/--reject", help="Approve or reject it.",
                                                 show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Approve a contribution (it becomes searchable) or reject it."""
    if approve is None:
        raise typer.BadParameter("give --approve or --reject")
    with connect(Target(url, api_key, local, config, demo)) as c:
        doc = c.call("POST", f"{_kb(kb)}/documents/{quote(doc_id, safe='')}/review", json={"approve": approve})
    typer.echo(f"{doc['source']}: {doc['status']}")


# -- search ----------------------------------------------------------------------------------------

def _snippet(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


@kb_app.command("search")
def search(
    kbs: Annotated[list[str], typer.Argument(help="One or more knowledge bases (ids or names).")],
    query: Annotated[str, typer.Option("--query", "-q", help="What to look for.")],
    top_k: Annotated[int, typer.Option(help="How many results.", min=1, max=1000)] = 8,
    mode: Annotated[str, typer.Option(help="hybrid, keyword or vector.")] = "hybrid",
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    local: LocalOpt = False,
    config: ConfigOpt = None,
    demo: DemoOpt = False,
) -> None:
    """Search knowledge bases; prints the passages ranked best first."""
    if mode not in ("hybrid", "keyword", "vector"):
        raise typer.BadParameter("--mode is hybrid, keyword or vector")
    with connect(Target(url, api_key, local, config, demo)) as c:
        data = c.call("POST", "/api/v1/knowledge-bases/search",
                      json={"knowledge_bases": kbs, "query": query, "top_k": top_k, "mode": mode})
    if as_json:
        print_json(data)
        return
    if not data["data"]:
        typer.echo("No results.")
        return
    for hit in data["data"]:
        where = hit["source"] + (f" p.{hit['page']}" if hit.get("page") else "")
        kb_name = f"  [{hit['knowledge_base']}]" if len(kbs) > 1 else ""
        typer.echo(f"{hit['rank']:>2}. {hit['score']:.3f}  {where}{kb_name}")
        if hit.get("context"):
            typer.echo(f"    {hit['context']}")
        typer.echo(f"    {_snippet(hit['text'])}")
