"""Ingest benchmark: wall time and peak memory of ``backtalk ingest`` on long transcripts.

Run from the repository root::

    python -m benchmarks.ingest            # 1, 2, 5, 10 h; local and OpenAI (FakeOpenAI); 3 runs
    python -m benchmarks.ingest --quick    # 0.25 h and 0.5 h, 1 run each (< 30 s)

Each point runs the real CLI in a subprocess, ``python -m backtalk.cli ingest FILE``,
with ``DATABASE_URL`` on a fresh database of a benchmark embedded Postgres (so every
run is a first ingest: schema bind, HNSW index, insert). Wall seconds are measured
around the subprocess; peak RSS is the child's own ``ru_maxrss`` from ``os.wait4``.
``python -m backtalk.cli --help`` is measured the same way (process start + imports).
For ``BACKTALK_EMBEDDER=openai`` the CLI talks to FakeOpenAI (``embedding_delay_s=0.2``
per request); the time "excluding the embedding API" is wall − requests × 0.2 s (and,
stricter, wall − the fake's total handler time, which also drops the fake's own
hashing work). ``--profile`` adds a phase breakdown and a pyinstrument profile of an
in-process ``ingest_sources`` run. Results: ``results/ingest.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _corpus
from benchmarks._common import (
    RESULTS,
    ROOT,
    EmbeddedPostgres,
    log,
    machine_info,
    machine_markdown,
    md_table,
    pyplot,
    spread,
    stop_on_sigterm,
    write_results,
)

DELAY_S = 0.2
GOAL_1H_S = 2.0
GOAL_10H_MB = 500.0


def _fake_class():
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes.openai_server import FakeOpenAI

    class TimedFakeOpenAI(FakeOpenAI):
        """FakeOpenAI that adds up how long its embeddings handler takes."""

        handler_s = 0.0

        async def _embeddings(self, request):
            t = time.perf_counter()
            try:
                return await super()._embeddings(request)
            finally:
                with self._lock:
                    self.handler_s += time.perf_counter() - t

    return TimedFakeOpenAI


def run_child(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run a Python child; return wall seconds, peak RSS (MB), exit code and output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "wall_s": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "rc": proc.returncode,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def child_env(work: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_", "DAILY_")) and k != "DATABASE_URL"
    }
    env["BACKTALK_DATA_DIR"] = str(work / "data")
    env["PYTHONWARNINGS"] = "ignore"
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def startup_cost(work: Path, runs: int) -> dict[str, Any]:
    """``python -m backtalk.cli --help``: interpreter start + the CLI's imports."""
    res = [run_child(["-m", "backtalk.cli", "--help"], child_env(work), work) for _ in range(runs)]
    assert all(r["rc"] == 0 for r in res), res[0]["stderr"]
    return {
        "wall_s": spread(r["wall_s"] for r in res),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in res), 1),
    }


_DONE = re.compile(r"added: .* \((\d+) chunks\)")


def ingest_once(
    pg: EmbeddedPostgres, path: Path, kind: str, work: Path, fake, run_id: str,
    preload: Path | None = None,
):
    """One timed CLI ingest into a fresh database (holding ``preload`` first, if given)."""
    import psycopg

    uri = pg.create_database(f"ing_{run_id}")
    extra = {"BACKTALK_EMBEDDER": kind}
    if kind == "openai":
        extra.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=fake.base_url)
    if preload is not None:  # untimed: the library already holds another long video
        r = run_child(["-m", "backtalk.cli", "ingest", str(preload), "--title", preload.stem],
                      child_env(work, uri, **extra), work)
        if r["rc"] != 0:
            raise RuntimeError(f"preload failed ({r['rc']}): {r['stderr'][-2000:]}")
    if kind == "openai":
        before_req, before_handler = len(fake.embedding_requests), fake.handler_s
    r = run_child(
        ["-m", "backtalk.cli", "ingest", str(path), "--title", path.stem],
        child_env(work, uri, **extra),
        work,
    )
    if r["rc"] != 0:
        raise RuntimeError(f"ingest failed ({r['rc']}): {r['stderr'][-2000:]}")
    m = _DONE.search(r["stdout"])
    with psycopg.connect(uri) as conn:
        stored = conn.execute("SELECT count(*) FROM video_chunks").fetchone()[0]
    with psycopg.connect(pg.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE ing_{run_id} WITH (FORCE)")
    out = {
        "wall_s": round(r["wall_s"], 3),
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "cpu_s": round(r["user_s"] + r["sys_s"], 3),
        "chunks": int(m.group(1)) if m else None,
        "chunks_stored": int(stored),
    }
    if kind == "openai":
        requests = len(fake.embedding_requests) - before_req
        handler = fake.handler_s - before_handler
        out.update(
            requests=requests,
            excl_api_s=round(r["wall_s"] - requests * DELAY_S, 3),
            excl_handler_s=round(r["wall_s"] - handler, 3),
        )
    else:
        out["excl_api_s"] = out["wall_s"]
    return out


def phase_breakdown(pg: EmbeddedPostgres, path: Path, embedder) -> dict[str, float]:
    """In-process timings of each ingest step for one file (fresh database)."""
    from backtalk.ingest.captions import read_caption_file
    from backtalk.ingest.chunking import chunk_segments
    from backtalk.ingest.job import EMBED_BATCH, _transcript_hash
    from backtalk.store import ChunkRow, Store, VideoRow, make_engine, migrate
    from backtalk.store.engine import _with_driver

    uri = pg.create_database("phases")
    out: dict[str, float] = {}
    t = time.perf_counter()
    engine = make_engine(_with_driver(uri))
    migrate(engine)
    store = Store(engine)
    out["connect+migrate"] = time.perf_counter() - t
    t = time.perf_counter()
    segments = read_caption_file(path)
    out["read_json"] = time.perf_counter() - t
    t = time.perf_counter()
    chunks = chunk_segments(segments)
    out["chunk"] = time.perf_counter() - t
    t = time.perf_counter()
    digest = _transcript_hash(chunks, {"title": path.stem}, embedder.model)
    out["hash"] = time.perf_counter() - t
    t = time.perf_counter()
    texts = [c.text for c in chunks]
    emb = np.concatenate(
        [embedder.embed(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)]
    )
    out["embed"] = time.perf_counter() - t
    t = time.perf_counter()
    store.replace_video(
        VideoRow(key=path.stem, title=path.stem, source="file", duration_s=chunks[-1].end_s,
                 transcript_hash=digest),
        [ChunkRow(c.text, c.start_s, c.end_s) for c in chunks],
        emb,
        embedding_model=embedder.model,
    )
    out["store (replace_video)"] = time.perf_counter() - t
    engine.dispose()
    import psycopg

    with psycopg.connect(pg.uri(), autocommit=True) as conn:
        conn.execute("DROP DATABASE phases WITH (FORCE)")
    out = {k: round(v, 4) for k, v in out.items()}
    out["chunks"] = len(chunks)
    return out


def profile_ingest(pg: EmbeddedPostgres, path: Path, embedder, name: str) -> str:
    """pyinstrument of ``ingest_sources`` in-process; writes results/<name>.{txt,html}."""
    from pyinstrument import Profiler

    from backtalk.ingest import ingest_sources, parse_source
    from backtalk.store import Store, make_engine, migrate
    from backtalk.store.engine import _with_driver

    uri = pg.create_database("prof")
    engine = make_engine(_with_driver(uri))
    migrate(engine)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    report = ingest_sources([parse_source(str(path), title=path.stem)], store=Store(engine),
                            embedder=embedder)
    profiler.stop()
    assert report.ok, report.outcomes
    engine.dispose()
    import psycopg

    with psycopg.connect(pg.uri(), autocommit=True) as conn:
        conn.execute("DROP DATABASE prof WITH (FORCE)")
    text = profiler.output_text(unicode=True, color=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text)
    (RESULTS / f"{name}.html").write_text(profiler.output_html())
    return text


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="0.25 h and 0.5 h, 1 run (< 30 s)")
    ap.add_argument("--hours", default="1,2,5,10")
    ap.add_argument("--embedders", default="local,openai")
    ap.add_argument("--name", default=None, help="results name (default ingest[_quick])")
    ap.add_argument("--runs", type=int, default=3, help="repeats per point (stability)")
    ap.add_argument("--nonempty-hours", default="1,10",
                    help="also time these lengths into a library already holding another "
                         "10-hour video (HNSW inserts into a non-empty graph); '' to skip")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="phase breakdown + pyinstrument (default: on, off with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.hours, args.runs, args.nonempty_hours = "0.25,0.5", 1, ""
    args.hours = [float(h) for h in args.hours.split(",") if h]
    args.embedders = [e for e in args.embedders.split(",") if e]
    args.nonempty_hours = [float(h) for h in args.nonempty_hours.split(",") if h]
    if args.profile is None:
        args.profile = not args.quick
    return args


def main(argv=None) -> None:
    stop_on_sigterm()
    args = parse_args(argv)
    name = args.name or ("ingest_quick" if args.quick else "ingest")
    started = time.perf_counter()
    FakeOpenAI = _fake_class()
    with tempfile.TemporaryDirectory(prefix="backtalk-bench-ingest-") as tmp, \
            EmbeddedPostgres() as pg, FakeOpenAI(embedding_delay_s=DELAY_S) as fake:
        work = Path(tmp)
        files = {}
        preload = work / "library_other_10h.json"
        preload.write_text(json.dumps(_corpus.auto_caption_transcript(10, seed=99)))
        for h in sorted(set(args.hours) | set(args.nonempty_hours)):
            transcript = _corpus.auto_caption_transcript(h)
            path = work / f"synthetic_{h:g}h.json"
            path.write_text(json.dumps(transcript))
            files[h] = (path, len(transcript), path.stat().st_size)
        log(f"transcripts: { {h: (n, round(b / 1e6, 2)) for h, (_, n, b) in files.items()} }")
        startup = startup_cost(work, max(3, args.runs))
        log(f"CLI --help: {startup}")
        points = []
        run_no = 0
        plan = [(kind, h, False) for kind in args.embedders for h in args.hours]
        plan += [(kind, h, True) for kind in args.embedders for h in args.nonempty_hours]
        for kind, h, nonempty in plan:
            path, lines, size = files[h]
            runs = []
            for _ in range(args.runs):
                run_no += 1
                runs.append(ingest_once(pg, path, kind, work, fake, str(run_no),
                                        preload if nonempty else None))
                log(f"{kind} {h:g} h{' (non-empty library)' if nonempty else ''}: "
                    f"{runs[-1]}")
            point = {
                "embedder": kind, "hours": h, "library": "holds a 10-h video" if nonempty
                else "empty", "lines": lines, "file_mb": round(size / 1e6, 2),
                "chunks": runs[0]["chunks"], "runs": runs,
                "wall_s": spread(r["wall_s"] for r in runs),
                "excl_api_s": spread(r["excl_api_s"] for r in runs),
                "peak_rss_mb": spread(r["peak_rss_mb"] for r in runs),
            }
            if kind == "openai":
                point["requests"] = runs[0]["requests"]
                point["excl_handler_s"] = spread(r["excl_handler_s"] for r in runs)
            points.append(point)
        extra: dict[str, Any] = {}
        if args.profile:
            from backtalk.store import LocalEmbedder

            local = LocalEmbedder()
            longest = max(args.hours)
            extra["phases"] = {}
            for h in sorted({min(args.hours), longest}):
                extra["phases"][f"{h:g}h local"] = phase_breakdown(pg, files[h][0], local)
                log(f"phases {h:g} h: {extra['phases'][f'{h:g}h local']}")
            profile_ingest(pg, files[longest][0], local, "profile_ingest_local")
            if "openai" in args.embedders:
                from backtalk.store import OpenAIEmbedder

                fake.embedding_delay_s = 0.0
                oa = OpenAIEmbedder("sk-bench", base_url=fake.base_url)
                extra["phases"][f"{longest:g}h openai (no delay)"] = phase_breakdown(
                    pg, files[longest][0], oa
                )
                fake.embedding_delay_s = DELAY_S
        info = machine_info(pg.uri())
    payload = {"machine": info, "startup": startup, "points": points, **extra,
               "delay_s": DELAY_S, "seconds": round(time.perf_counter() - started, 1)}
    write_results(name, payload, report_md(payload), plot(payload))
    log(f"done in {payload['seconds']} s")


def goals(payload) -> list[str]:
    lines = []
    by = {(p["embedder"], p["hours"]): p for p in payload["points"]
          if p.get("library", "empty") == "empty"}
    for kind in ("local", "openai"):
        one, ten = by.get((kind, 1.0)), by.get((kind, 10.0))
        if one:
            v = one["excl_api_s"]["mean"]
            lines.append(f"- {kind}: 1 h ≤ {GOAL_1H_S} s excluding embedding API time: "
                         f"**{'PASS' if v <= GOAL_1H_S else 'FAIL'}** ({v:.2f} s; CLI start "
                         f"{payload['startup']['wall_s']['mean']:.2f} s of it)")
        if one and ten:
            v1, v10 = one["excl_api_s"]["mean"], ten["excl_api_s"]["mean"]
            mb = ten["peak_rss_mb"]["max"]
            lines.append(f"- {kind}: 10 h within 10× of 1 h ({v10:.2f} s vs {10 * v1:.2f} s) and "
                         f"< {GOAL_10H_MB:g} MB peak ({mb:.0f} MB): "
                         f"**{'PASS' if v10 <= 10 * v1 and mb < GOAL_10H_MB else 'FAIL'}**")
    return lines or ["- (1 h / 10 h points not run)"]


def report_md(payload) -> str:
    s = payload["startup"]
    out = [
        "# Ingest benchmark", "", machine_markdown(payload["machine"]), "",
        "`python -m backtalk.cli ingest FILE` in a subprocess, one fresh database per run "
        "(first ingest: embedder bind + HNSW index + insert), synthetic auto-caption "
        "transcripts (youtube-transcript-api JSON, a line every 2-3 s). Peak RSS = the "
        "child's ru_maxrss. OpenAI = FakeOpenAI on loopback with 0.2 s per embeddings "
        "request; 'excl. API' = wall − requests × 0.2 s.", "",
        f"CLI start (`--help`, {s['wall_s']['runs']} runs): {s['wall_s']['mean']:.3f} s "
        f"± {s['wall_s']['stdev']:.3f}, peak RSS {s['peak_rss_mb']} MB.", "",
        md_table(
            ["embedder", "hours", "library", "lines", "chunks", "requests", "wall s (mean ± sd)",
             "excl. API s", "excl. API − start s", "excl. fake handler s", "peak RSS MB",
             "CV %"],
            [
                (p["embedder"], f"{p['hours']:g}", p.get("library", "empty"), p["lines"],
                 p["chunks"], p.get("requests", "-"),
                 f"{p['wall_s']['mean']:.3f} ± {p['wall_s']['stdev']:.3f}",
                 f"{p['excl_api_s']['mean']:.3f}",
                 f"{p['excl_api_s']['mean'] - s['wall_s']['mean']:.3f}",
                 f"{p['excl_handler_s']['mean']:.3f}" if "excl_handler_s" in p else "-",
                 f"{p['peak_rss_mb']['max']:.0f}", p["wall_s"]["cv_pct"])
                for p in payload["points"]
            ],
        ), "",
    ]
    if "phases" in payload:
        names = list(next(iter(payload["phases"].values())).keys())
        out += [
            "## In-process phase breakdown (seconds)", "",
            md_table(["run", *names], [(k, *v.values()) for k, v in payload["phases"].items()]),
            "", "Profile of the longest local ingest: `results/profile_ingest_local.txt`.", "",
        ]
    out += ["## Goals", "", *goals(payload), ""]
    return "\n".join(out)


def plot(payload):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, color in (("local", "tab:blue"), ("openai", "tab:orange")):
        ps = [p for p in payload["points"]
              if p["embedder"] == kind and p.get("library", "empty") == "empty"]
        if not ps:
            continue
        ne = [p for p in payload["points"]
              if p["embedder"] == kind and p.get("library", "empty") != "empty"]
        if ne:
            a.plot([p["hours"] for p in ne], [p["excl_api_s"]["mean"] for p in ne], ls=":",
                   marker="s", color=color, label=f"{kind}: into a library holding 10 h")
        hs = [p["hours"] for p in ps]
        a.errorbar(hs, [p["excl_api_s"]["mean"] for p in ps],
                   yerr=[p["excl_api_s"]["stdev"] for p in ps], marker="o", color=color,
                   label=f"{kind}: excl. embedding API")
        if kind == "openai":
            a.plot(hs, [p["wall_s"]["mean"] for p in ps], ls="--", marker=".", color=color,
                   alpha=0.6, label="openai: wall (with 0.2 s/request)")
        b.plot(hs, [p["peak_rss_mb"]["max"] for p in ps], marker="o", color=color, label=kind)
    a.axhline(payload["startup"]["wall_s"]["mean"], color="gray", ls=":",
              label="CLI start (--help)")
    a.set(xlabel="transcript hours", ylabel="seconds", title="backtalk ingest: time vs length")
    a.legend(fontsize=8)
    b.axhline(payload["startup"]["peak_rss_mb"], color="gray", ls=":", label="CLI --help")
    b.axhline(GOAL_10H_MB, color="red", ls=":", lw=0.8, label="500 MB goal")
    b.set(xlabel="transcript hours", ylabel="peak RSS MB", title="backtalk ingest: peak memory")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
