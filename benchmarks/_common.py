"""Shared benchmark plumbing: machine facts, an embedded Postgres, statistics, output.

Everything here is product-agnostic except :func:`fixture_lines`, which reads the
test transcripts the synthetic corpora are made from.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TRANSCRIPTS = ROOT / "tests" / "fixtures" / "transcripts"


# -- machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return float("nan")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine_info(conninfo: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on.

    Args:
        conninfo: A libpq URI of the benchmark server, to read Postgres's and
            pgvector's versions (pgvector only once ``CREATE EXTENSION`` ran).
    """
    info: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "packages": {
            d: _version(d)
            for d in (
                "sqlalchemy",
                "psycopg",
                "pgvector",
                "pgserver",
                "numpy",
                "wordllama",
                "openai",
                "pipecat-ai",
                "onnxruntime",
            )
        },
    }
    if conninfo:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                ).fetchone()
            info["pgvector"] = row[0] if row else "unavailable"
            info["pg_settings"] = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather")
            }
    return info


def machine_markdown(info: Mapping[str, Any]) -> str:
    """A one-paragraph description of :func:`machine_info` for the reports."""
    pkgs = info.get("packages", {})
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM; "
        f"load average at start {info['load_avg_at_start']}. Python {info['python']}, "
        f"Postgres {info.get('postgres', '?')}, pgvector {info.get('pgvector', '?')}, "
        f"SQLAlchemy {pkgs.get('sqlalchemy')}, psycopg {pkgs.get('psycopg')}, "
        f"pgvector-python {pkgs.get('pgvector')}, wordllama {pkgs.get('wordllama')}. "
        f"Commit {info['git_commit']}{' (dirty tree)' if info['git_dirty'] else ''}, "
        f"{info['when']}."
    )


# -- embedded Postgres -------------------------------------------------------------------


class EmbeddedPostgres:
    """A throw-away embedded Postgres 16 + pgvector (the ``pgserver`` wheel) in a temp dir.

    Use as a context manager; the server is stopped and its folder removed on exit,
    also on Ctrl-C and SIGTERM (see :func:`stop_on_sigterm`).

    Args:
        settings: Server settings (``ALTER SYSTEM``) applied with a restart right after
            the cluster is created, e.g. ``{"shared_buffers": "4GB"}``.
    """

    def __init__(self, settings: Mapping[str, str] | None = None):
        self.settings = dict(settings or {})
        self.pgdata: Path | None = None
        self.server = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import pgserver

        self.pgdata = Path(tempfile.mkdtemp(prefix="backtalk-bench-pg-"))
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        if self.settings:
            self.restart(self.settings)

    def restart(self, settings: Mapping[str, str]) -> None:
        """Apply ``settings`` with ``ALTER SYSTEM`` and restart the server."""
        import pgserver
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self.settings.update(settings)
        self.server.cleanup()
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="stop")

    def uri(self, database: str | None = None) -> str:
        assert self.server is not None, "server not started"
        return self.server.get_uri(database)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URI."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.uri(name)

    def pid(self) -> int | None:
        return self.server.get_pid() if self.server is not None else None

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata = None


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with EmbeddedPostgres()`` blocks clean up."""

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def sqlalchemy_url(uri: str):
    """The product's own URL mapping (``postgresql+psycopg``)."""
    from backtalk.store.engine import _with_driver

    return _with_driver(uri)


# -- statistics --------------------------------------------------------------------------


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max in milliseconds of durations given in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {"n": 0}
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def spread(values: Iterable[float]) -> dict[str, float]:
    """Mean, standard deviation and relative spread of repeated measurements."""
    a = np.asarray(list(values), dtype=np.float64)
    mean = float(a.mean())
    return {
        "runs": int(a.size),
        "mean": round(mean, 4),
        "stdev": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "cv_pct": round(100 * float(a.std(ddof=1)) / mean, 1) if a.size > 1 and mean else 0.0,
    }


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- CPU per second of audio, variant against variant --------------------------------------


def cpu_rounds(
    variants: Sequence[Any], rounds: int, run: Callable[[Any], float], label: Callable[[Any], str]
) -> dict[Any, list[float]]:
    """Measure every variant once per round, reversing the order each round (ABC, CBA, ...).

    Drift in the machine's speed then falls on all variants alike.

    Args:
        variants: What to compare.
        rounds: How many times to measure each.
        run: Measures one variant; CPU seconds per second of audio.
        label: How a variant is named in the log.

    Returns:
        Each variant's measurements, in round order.
    """
    cpu: dict[Any, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            cpu[v].append(run(v))
            log(f"round {r + 1} {label(v)}: {1e3 * cpu[v][-1]:.2f} ms CPU per s of audio")
    return cpu


def cpu_cells(samples: Sequence[float], base: Sequence[float], digits: int = 1) -> list[str]:
    """Table cells for one variant of :func:`cpu_rounds`: median ms per s of audio, its
    range, the median as a share of one core, and the change against ``base``'s median."""
    med = float(np.median(samples))
    return [
        f"{1e3 * med:.{digits}f}",
        f"{1e3 * min(samples):.{digits}f}-{1e3 * max(samples):.{digits}f}",
        f"{100 * med:.{digits}f} %",
        f"{100 * (med / float(np.median(base)) - 1):+.0f} %",
    ]


def cpu_figure(labels: Sequence[str], samples: Sequence[Sequence[float]], ylabel: str, title: str):
    """A bar per variant at its median (ms per s of audio), each round a dot on it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, values in enumerate(samples):
        ax.bar(i, 1e3 * float(np.median(values)), color="#4c72b0")
        ax.plot([i] * len(values), [1e3 * c for c in values], "k.", ms=4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


# -- output ------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:,.2f}".rstrip("0").rstrip(".")
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: Mapping[str, Any], markdown: str, figure=None) -> Path:
    """Write ``results/<name>.json``, ``.md`` and (given a matplotlib figure) ``.png``.

    Returns:
        The JSON path.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    if figure is not None:
        figure.savefig(RESULTS / f"{name}.png", dpi=120, bbox_inches="tight")
    log(f"wrote {path} (+ .md{', .png' if figure is not None else ''})")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def pyplot():
    """matplotlib's pyplot with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- fixture text ------------------------------------------------------------------------


def fixture_lines() -> dict[str, list[str]]:
    """Cleaned caption lines of the fixture transcripts, by video.

    Returns:
        ``{"gradient_descent_lecture": [...], "sourdough_talk": [...]}``.
    """
    from backtalk.ingest.captions import read_caption_file
    from backtalk.ingest.segments import clean_text

    out = {}
    for name in ("gradient_descent_lecture.json", "sourdough_talk.srt"):
        lines = [clean_text(s.text) for s in read_caption_file(TRANSCRIPTS / name)]
        out[name.rsplit(".", 1)[0]] = [line for line in lines if line]
    return out


def qa_questions() -> list[dict[str, Any]]:
    """The 16 retrieval checks of ``tests/fixtures/transcripts/qa.json``."""
    return json.loads((TRANSCRIPTS / "qa.json").read_text())
