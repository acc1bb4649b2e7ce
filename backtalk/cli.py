"""The ``backtalk`` command line: a thin shell over the library.

Exit codes: 0 success; 1 a runtime failure (YouTube refused a transcript, the
database is down); 2 bad input or settings (nothing was done).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backtalk.config import Settings
from backtalk.errors import BacktalkError, InvalidVideoIdError, UsageError, VideoNotFoundError
from backtalk.ingest import IngestReport, Source, ingest_with_settings, parse_source
from backtalk.processors.retrieval import format_timestamp, youtube_link
from backtalk.store import Store, VideoInfo, embedder_for, library_for

__all__ = ["app", "main"]

app = typer.Typer(
    name="backtalk",
    help="Talk out loud with a YouTube video: ingest, search, and start a voice agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Transport(StrEnum):
    """Where the conversation happens."""

    webrtc = "webrtc"
    daily = "daily"


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]Error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn Backtalk errors into a message and exit code, never a traceback."""
    try:
        yield
    except UsageError as exc:
        _fail(str(exc), 2)
    except BacktalkError as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        err.print("Interrupted.")
        raise typer.Exit(130) from None


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            name = str(e["loc"][0]) if e["loc"] else "?"
            lines.append(
                f"  {name.upper() if name.isupper() else 'BACKTALK_' + name.upper()}: {e['msg']}"
            )
        _fail("invalid settings:\n" + "\n".join(lines), 2)


def _store(settings: Settings) -> Store:
    if settings.database_url is None:
        err.print(f"[dim]Using the embedded Postgres in {settings.embedded_store_dir}[/]")
    return library_for(settings)


def _parse_sources(
    inputs: Sequence[str], *, title: str | None, youtube_id: str | None
) -> list[Source]:
    """Parse every input; report every bad one; exit 2 before doing anything."""
    sources, problems = [], []
    for value in inputs:
        try:
            sources.append(parse_source(value, title=title, youtube_id=youtube_id))
        except InvalidVideoIdError as exc:
            problems.append(f"  {exc}")
    if problems:
        _fail(
            "these inputs are not YouTube videos or caption files; nothing was ingested:\n"
            + "\n".join(problems),
            2,
        )
    files = [s for s in sources if not hasattr(s, "video_id")]
    if (title or youtube_id) and len(files) != 1:
        _fail("--title and --youtube-id apply to exactly one caption file.", 2)
    return sources


def _run_ingest(
    settings: Settings,
    store: Store,
    sources: Sequence[Source],
    languages: Sequence[str] | None,
    *,
    skip_present: bool,
) -> IngestReport:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        tasks: dict[str, int] = {}

        def hook(key: str, stage: str, done: int, total: int) -> None:
            if key not in tasks:
                tasks[key] = progress.add_task(key, total=None)
            progress.update(tasks[key], description=f"{key}: {stage}", completed=done, total=total)

        report = ingest_with_settings(
            settings,
            store,
            sources,
            embedder=embedder_for(settings),
            languages=languages,
            skip_present=skip_present,
            progress=hook,
        )
    for outcome in report.outcomes:
        name = outcome.source.key
        if outcome.status in ("failed", "skipped"):
            prefix = "skipped" if outcome.status == "skipped" else "failed"
            detail = (
                str(outcome.error)
                if outcome.status == "failed"
                else "YouTube is blocking requests; not tried."
            )
            err.print(f"[red]✗ {name}[/] {prefix}: {detail}", highlight=False)
        elif outcome.status == "present":
            out.print(f"[dim]• {name} is already in the library[/]", highlight=False)
        else:
            out.print(
                f"[green]✓ {name}[/] {outcome.status}: {outcome.title} ({outcome.chunks} chunks)",
                highlight=False,
            )
    return report


@app.command()
def ingest(
    inputs: Annotated[
        list[str], typer.Argument(help="YouTube URLs or ids, or .vtt/.srt/.json caption files.")
    ],
    language: Annotated[
        list[str] | None,
        typer.Option("--language", "-l", help="Caption language, in order of preference (repeat)."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Title for a caption file.")] = None,
    youtube_id: Annotated[
        str | None, typer.Option(help="The YouTube video a caption file belongs to (URL or id).")
    ] = None,
    collection: Annotated[
        str | None, typer.Option(help="Also add the videos to this collection.")
    ] = None,
) -> None:
    """Add videos to the library (re-ingesting replaces a video's transcript)."""
    settings = _settings()
    with _user_errors():
        sources = _parse_sources(inputs, title=title, youtube_id=youtube_id)
        store = _store(settings)
        report = _run_ingest(settings, store, sources, language, skip_present=False)
        if collection:
            done = [o.source.key for o in report.outcomes if o.status not in ("failed", "skipped")]
            store.add_to_collection(collection, [v.id for v in _find(store, done)])
            out.print(f"Collection {collection!r}: added {len(done)} video(s).", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def collections(
    name: Annotated[str | None, typer.Argument(help="A collection to add videos to.")] = None,
    videos: Annotated[
        list[str] | None, typer.Argument(help="Videos (id as listed, or URL) to add to NAME.")
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete collection NAME (its videos stay).")
    ] = False,
) -> None:
    """List collections, add videos to one, or delete one."""
    settings = _settings()
    with _user_errors():
        store = _store(settings)
        if name and delete:
            if not store.remove_collection(name):
                raise UsageError(f"There is no collection {name!r}.")
            out.print(f"Deleted collection {name!r}.", highlight=False)
            return
        if name:
            if not videos:
                raise UsageError("Name the videos to add: backtalk collections NAME VIDEO...")
            store.add_to_collection(name, [v.id for v in _find(store, videos)])
        listing = store.collections()
    if not listing:
        out.print("No collections yet. Create one with `backtalk collections NAME VIDEO...`.")
        return
    for collection_name, keys in listing.items():
        out.print(f"[bold]{collection_name}[/]: {', '.join(keys) or '(empty)'}", highlight=False)


@app.command()
def videos() -> None:
    """List the videos in the library."""
    settings = _settings()
    with _user_errors():
        rows = _store(settings).list_videos()
    if not rows:
        out.print("The library is empty. Add a video with `backtalk ingest URL`.")
        return
    table = Table("id", "title", "length", "chunks", "link")
    for v in rows:
        link = f"https://youtu.be/{v.youtube_id}" if v.youtube_id else ""
        table.add_row(v.key, v.title, format_timestamp(v.duration_s), str(v.chunks), link)
    out.print(table)


def _keys(values: Sequence[str]) -> list[str]:
    """Store keys for user-given videos: URL/id/caption file, or a key as listed."""
    keys = []
    for value in values:
        try:
            keys.append(parse_source(value).key)
        except InvalidVideoIdError:
            keys.append(value.strip())
    return keys


def _find(store: Store, values: Sequence[str]) -> list[VideoInfo]:
    keys = _keys(values)
    found = store.find_videos(keys)
    for value, key in zip(values, keys, strict=True):
        if key not in found:
            raise VideoNotFoundError(value)
    return [found[k] for k in keys]


@app.command()
def remove(
    video: Annotated[list[str], typer.Argument(help="Videos to remove (id as listed, or URL).")],
) -> None:
    """Remove videos and their chunks from the library."""
    settings = _settings()
    with _user_errors():
        store = _store(settings)
        for info in _find(store, video):
            store.remove_video(info.key)
            out.print(f"Removed {info.key}: {info.title}", highlight=False)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in your own words.")],
    video: Annotated[
        list[str] | None, typer.Option("--video", "-v", help="Search only this video (repeat).")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many chunks to show.")] = 5,
) -> None:
    """Show the transcript chunks closest to QUERY, with times and links."""
    if not query.strip():
        _fail("the query is empty; say what to look for.", 2)
    settings = _settings()
    with _user_errors():
        store = _store(settings)
        embedder = embedder_for(settings)
        store.check_embedder(embedder.model, embedder.dimensions)
        scope = [v.id for v in _find(store, video)] if video else None
        hits = store.search(embedder.embed([query])[0], k=k, video_ids=scope)
    if not hits:
        out.print("No matches: the library is empty. Add a video with `backtalk ingest URL`.")
        return
    for hit in hits:
        where = f"{format_timestamp(hit.start_s)}-{format_timestamp(hit.end_s)}"
        link = youtube_link(hit.youtube_id, hit.start_s) if hit.youtube_id else ""
        out.print(
            f"[bold]{hit.video_title}[/] [cyan]{where}[/] score {hit.score:.2f} {link}",
            highlight=False,
        )
        out.print(f"  {hit.text}", highlight=False, soft_wrap=False)


@app.command(name="eval")
def eval_(
    qa_files: Annotated[
        list[Path],
        typer.Argument(
            help="QA files (JSON list of {video, question, answer_start, answer_end, kind})."
        ),
    ],
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="Chunks retrieved per question.")] = 5,
    query_turns: Annotated[
        int, typer.Option(min=1, max=5, help="User messages per query (1 = the question alone).")
    ] = 1,
    floor: Annotated[
        float | None, typer.Option(help="Similarity floor (default: the embedder's).")
    ] = None,
    position: Annotated[
        bool,
        typer.Option(
            "--position/--no-position",
            help="Use questions' position_s (the player's position) as the agent does.",
        ),
    ] = True,
) -> None:
    """Score retrieval on QA files against the library: recall@k and MRR per question kind."""
    from backtalk.evals import evaluate, load_qa

    settings = _settings()
    with _user_errors():
        cases = [case for path in qa_files for case in load_qa(path)]
        store = _store(settings)
        embedder = embedder_for(settings)
        store.check_embedder(embedder.model, embedder.dimensions)
        min_score = floor if floor is not None else settings.min_score
        report = evaluate(
            store,
            embedder,
            cases,
            k=k,
            query_turns=query_turns,
            min_score=min_score,
            use_position=position,
        )
    table = Table("kind", "n", f"recall@{k}", "MRR", "kept by floor", "declined by floor")
    for kind, score in report.kinds.items():
        pct = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
        recall = "" if kind == "off_topic" else f"{score.recall:.2f}"
        mrr = "" if kind == "off_topic" else f"{score.mrr:.2f}"
        table.add_row(kind, str(score.n), recall, mrr, pct(score.kept), pct(score.declined))
    out.print(
        f"embedder {embedder.model}, floor {min_score}, query turns {query_turns}, "
        f"player position {'used' if position else 'ignored'}"
    )
    out.print(table)


@app.command()
def talk(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="YouTube URLs/ids or caption files to talk about.")
    ] = None,
    collection: Annotated[
        str | None, typer.Option(help="Talk about every video in this collection.")
    ] = None,
    persona: Annotated[
        str, typer.Option(help="How the bot talks: tutor, casual or analyst.")
    ] = "tutor",
    transport: Annotated[
        Transport, typer.Option(help="webrtc: a local browser page; daily: a Daily room.")
    ] = Transport.webrtc,
    room_url: Annotated[
        str | None, typer.Option(help="Join this Daily room instead of creating one.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface for the local page.")] = "localhost",
    port: Annotated[int, typer.Option(help="Port for the local page.")] = 7860,
    language: Annotated[
        list[str] | None, typer.Option("--language", "-l", help="Caption language (repeat).")
    ] = None,
    latency: Annotated[
        bool, typer.Option("--latency", help="Print each turn's latency breakdown.")
    ] = False,
) -> None:
    """Talk with a video: ingest it if needed, then start the voice agent."""
    from backtalk.prompts import personas

    settings = _settings()
    if latency:
        settings = settings.model_copy(update={"print_latency": True})
    with _user_errors():
        if room_url and transport is not Transport.daily:
            raise UsageError("--room-url needs --transport daily.")
        if persona not in personas():
            raise UsageError(f"--persona must be one of: {', '.join(personas())}.")
        if not inputs and not collection:
            raise UsageError("Give a YouTube URL or caption file, or --collection NAME.")
        settings.require_keys(talk=True, transport=transport.value, room_url=room_url)
        if transport is Transport.webrtc:
            from backtalk.agent.runner import check_port_free

            check_port_free(host, port)
        sources = _parse_sources(inputs or [], title=None, youtube_id=None)
        store = _store(settings)
        report = _run_ingest(settings, store, sources, language, skip_present=True)
        if not report.ok:
            raise typer.Exit(1)
        keys = [s.key for s in sources]
        if collection:
            members = store.collections().get(collection)
            if members is None:
                raise UsageError(
                    f"There is no collection {collection!r}; `backtalk collections` lists them."
                )
            keys += [k for k in members if k not in keys]
        if not keys:
            raise UsageError(f"Collection {collection!r} has no videos.")
        from backtalk.agent.bot import AgentResources, TalkSession  # imports Pipecat: ~1 s

        session = TalkSession(videos=_find(store, keys), persona=persona)
        resources = AgentResources.open(settings, store)
        if transport is Transport.daily:
            from backtalk.agent.runner import run_daily

            asyncio.run(run_daily(resources, session, room_url=room_url))
        else:
            from backtalk.server import serve

            serve(resources, videos=keys, persona=persona, host=host, port=port)


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")
    ] = "localhost",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Worker processes for conversations (default: one per core; 0: none)."
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No API keys (only on localhost).")
    ] = False,
    persona: Annotated[str, typer.Option(help="Default persona: tutor, casual or analyst.")] = (
        "tutor"
    ),
) -> None:
    """Serve the page and the API to many people: API keys, limits, worker processes."""
    import os
    import tempfile

    from backtalk.prompts import personas

    # Worker processes and this one share their metrics through this directory
    # (prometheus-client's multiprocess mode); set before any metric exists.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="backtalk-metrics-"))
    settings = _settings()
    with _user_errors():
        if no_auth and host not in _LOOPBACK:
            raise UsageError(
                f"--no-auth is only allowed on localhost; with --host {host} every "
                "request needs an API key (`backtalk keys create NAME`)."
            )
        if persona not in personas():
            raise UsageError(f"--persona must be one of: {', '.join(personas())}.")
        settings.require_keys(talk=True)
        from backtalk.agent.runner import check_port_free

        check_port_free(host, port)
        store = _store(settings)
        if not no_auth and not store.keys():
            err.print(
                "[yellow]No API key exists yet: create one with `backtalk keys create NAME`.[/]"
            )
        from backtalk.agent.bot import AgentResources
        from backtalk.server import serve as run_server

        resources = AgentResources.open(settings, store)
        run_server(
            resources,
            persona=persona,
            host=host,
            port=port,
            workers=(os.cpu_count() or 1) if workers is None else workers,
            auth=not no_auth,
            database_url=store.engine.url.render_as_string(hide_password=False),
        )


keys_app = typer.Typer(help="API keys for `backtalk serve` (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for (a person, an app).")],
) -> None:
    """Create an API key and print it (once: only its hash is stored)."""
    if not name.strip():
        _fail("give the key a name: backtalk keys create NAME", 2)
    settings = _settings()
    with _user_errors():
        key, info = _store(settings).create_key(name.strip())
    out.print(f"Created key {info.id} ({info.name}). Store it now; it is not shown again:")
    out.print(key, highlight=False, soft_wrap=False)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (their first characters, never the keys)."""
    settings = _settings()
    with _user_errors():
        keys = _store(settings).keys()
    if not keys:
        out.print("No API keys. Create one with `backtalk keys create NAME`.")
        return
    table = Table("id", "name", "starts with", "created", "revoked")
    for k in keys:
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else ""
        table.add_row(
            str(k.id), k.name, k.prefix + "…", k.created_at.strftime("%Y-%m-%d %H:%M"), revoked
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id, as listed.")]) -> None:
    """Revoke an API key: it authenticates nothing from now on."""
    settings = _settings()
    with _user_errors():
        info = _store(settings).revoke_key(key_id)
        if info is None:
            raise UsageError(f"There is no key {key_id}; `backtalk keys list` shows them.")
    out.print(f"Revoked key {info.id} ({info.name}).", highlight=False)


def main() -> None:
    """Entry point of the ``backtalk`` console script."""
    # platformdirs warns on every start when XDG_RUNTIME_DIR is unset (pgserver asks
    # it for a lock folder and falls back to /tmp correctly): not the user's concern.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (docker stop, systemd, `timeout`) must end the process like Ctrl-C does, so
    # that exit handlers run and the embedded Postgres is stopped, not left running.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    app(prog_name="backtalk")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
