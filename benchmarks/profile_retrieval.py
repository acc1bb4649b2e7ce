"""Profile the voice-path retrieval call (pyinstrument), to explain where the time goes.

    python -m benchmarks.profile_retrieval [--n 10000] [--calls 3000]

Loads a synthetic library of ``--n`` chunks like ``benchmarks.retrieval`` does, then
runs ``PgVectorRetriever.retrieve`` ``--calls`` times under pyinstrument and writes
``results/profile_retrieval.{txt,html}``. Also counts the statements each call sends
(``pg_stat_statements`` is not in the embedded build, so it reads the server log with
``log_statement = all`` for a few calls).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks import _corpus
from benchmarks._common import RESULTS, EmbeddedPostgres, log, stop_on_sigterm
from benchmarks.retrieval import SERVER_SETTINGS, TimedEmbedder, load_library, product_engine


def _statements_since(log_path, mark: int) -> list[str]:
    with open(log_path, "rb") as f:
        f.seek(mark)
        return [
            line.split("statement:", 1)[-1].split("execute", 1)[-1].strip()[:70]
            for line in f.read().decode(errors="replace").splitlines()
            if "LOG:" in line and ("statement:" in line or "execute" in line)
        ]


async def amain(args) -> None:
    from pyinstrument import Profiler

    from backtalk.store import LocalEmbedder, PgVectorRetriever

    embedder = LocalEmbedder()
    lib = _corpus.library(args.n)
    vectors = embedder.embed(lib.texts)
    queries = _corpus.questions(300)
    with EmbeddedPostgres(SERVER_SETTINGS) as pg:
        loaded = load_library(pg, "prof", lib, vectors, embedder.model,
                              maintenance_work_mem="2GB", parallel_workers=1)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = []
        for name, variant in (("product", {}), ("tuned", {"pre_ping": False, "autocommit": True})):
            engine = product_engine(loaded.url, **variant)
            retriever = PgVectorRetriever(engine, TimedEmbedder(embedder))
            for q in queries[:50]:
                await retriever.retrieve(q, k=5)
            # Statements per call, from the server log.
            import psycopg

            with psycopg.connect(loaded.uri, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET log_statement = 'all'")
                conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.3)
            mark = (pg.pgdata / "log").stat().st_size
            for q in queries[:3]:
                await retriever.retrieve(q, k=5)
            await asyncio.sleep(0.3)
            logged = _statements_since(pg.pgdata / "log", mark)
            with psycopg.connect(loaded.uri, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM RESET log_statement")
                conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.3)
            profiler = Profiler(interval=0.0002, async_mode="enabled")
            t = time.perf_counter()
            profiler.start()
            for i in range(args.calls):
                await retriever.retrieve(queries[i % len(queries)], k=5)
            profiler.stop()
            per_call = (time.perf_counter() - t) / args.calls * 1000
            await engine.dispose()
            text = profiler.output_text(unicode=True, color=False, show_all=False)
            (RESULTS / f"profile_retrieval_{name}.html").write_text(profiler.output_html())
            out.append(
                f"=== {name} {variant}: {per_call:.3f} ms/call (profiled), "
                f"statements for 3 calls:\n  " + "\n  ".join(logged) + "\n\n" + text
            )
            log(f"{name}: {per_call:.3f} ms/call; {len(logged)} statements for 3 calls")
        (RESULTS / "profile_retrieval.txt").write_text("\n".join(out))
        log(f"wrote {RESULTS / 'profile_retrieval.txt'}")



def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--calls", type=int, default=3000)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
