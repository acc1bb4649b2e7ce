"""Retrieval benchmark: query embedding + pgvector search latency, and HNSW recall@5.

Run from the repository root::

    python -m benchmarks.retrieval              # 1k, 10k, 100k, 1M local; 1k-100k OpenAI
    python -m benchmarks.retrieval --quick      # 1k only, few queries (< 30 s)
    python -m benchmarks.retrieval --sizes 1000000 --skip-openai   # one size
    python -m benchmarks.retrieval --report     # rebuild the report from saved parts
    python -m benchmarks.retrieval --sizes 10000,100000 --skip-openai --corpus docstrings \
        --name retrieval_docstrings --tag docstrings --no-variants   # a wider text source

Each (embedder, size) run saves ``results/retrieval_parts/<embedder>_<n>.json``; the
report (``results/retrieval.{json,md,png}``) is built from every part present, so a
long size can be run on its own. See benchmarks/RETRIEVAL.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    qa_questions,
    spread,
    sqlalchemy_url,
    stop_on_sigterm,
    summarize_ms,
    write_results,
)

K = 5
CHUNK_S = 45.0
EF_SEARCH = (40, 64, 100, 200)
#: Server settings of the benchmark cluster. Only WAL sizing differs from the
#: embedded default (it speeds up the bulk load; queries don't write).
SERVER_SETTINGS = {"max_wal_size": "8GB", "checkpoint_timeout": "30min"}
BIG_SHARED_BUFFERS = "6GB"


# -- embedders ---------------------------------------------------------------------------


class TimedEmbedder:
    """Wraps an embedder; remembers how long the last ``aembed`` took."""

    def __init__(self, inner):
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions
        self.last_s = 0.0

    def embed(self, texts):
        return self.inner.embed(texts)

    async def aembed(self, texts):
        t = time.perf_counter()
        out = await self.inner.aembed(texts)
        self.last_s = time.perf_counter() - t
        return out


class CachedEmbedder:
    """Returns pre-computed query vectors (SQL-only sweeps for the API embedder)."""

    def __init__(self, model: str, dimensions: int, cache: dict[str, np.ndarray]):
        self.model, self.dimensions, self._cache = model, dimensions, cache

    def embed(self, texts):
        return np.stack([self._cache[t] for t in texts])

    async def aembed(self, texts):
        return self.embed(texts)


def _fakes():
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes.openai_server import FakeOpenAI, fake_embedding

    return FakeOpenAI, fake_embedding


def _fake_embed_many(texts: Sequence[str], dim: int) -> np.ndarray:
    _, fake_embedding = _fakes()
    return np.asarray([fake_embedding(t, dim) for t in texts], dtype=np.float32)


def _fake_worker(args):
    texts, dim = args
    return _fake_embed_many(texts, dim)


def fake_openai_vectors(texts: Sequence[str], dim: int = 1536) -> np.ndarray:
    """FakeOpenAI's vectors for ``texts``, computed in-process (identical to the server's)."""
    if len(texts) < 5000:
        return _fake_embed_many(texts, dim)
    from concurrent.futures import ProcessPoolExecutor

    step = 5000
    jobs = [(list(texts[i : i + step]), dim) for i in range(0, len(texts), step)]
    with ProcessPoolExecutor(2) as pool:
        return np.concatenate(list(pool.map(_fake_worker, jobs)))


# -- loading -----------------------------------------------------------------------------


@dataclass
class Loaded:
    uri: str
    url: Any
    model: str
    dims: int
    n: int
    video_ids: list[int]
    keys: list[str]
    chunk_key: list[tuple[str, float]]
    index_def: str
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def video_key(v: int) -> str:
    return f"bench{v:06d}"


def load_library(
    pg: EmbeddedPostgres,
    dbname: str,
    lib: _corpus.Library,
    vectors: np.ndarray,
    model: str,
    *,
    maintenance_work_mem: str,
    parallel_workers: int,
    build_index: bool = True,
) -> Loaded:
    """Migrate a fresh database, bind the embedder, COPY the library, build the index.

    The schema comes from the product's Alembic migration; the vector type and HNSW
    index from ``Store._bind_embedder`` (the first-ingest code). The index is dropped
    before the bulk load and re-created from its own ``pg_indexes.indexdef`` afterwards
    (building once is much faster than inserting into a live HNSW graph).
    """
    import psycopg
    from pgvector.psycopg import register_vector
    from sqlalchemy import text

    from backtalk.store import Store, make_engine, migrate

    uri = pg.create_database(dbname)
    url = sqlalchemy_url(uri)
    engine = make_engine(url)
    migrate(engine)
    dims = int(vectors.shape[1])
    with engine.begin() as conn:
        Store(engine)._bind_embedder(conn, model, dims)
        index_def = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'video_chunks_embedding_hnsw'")
        ).scalar()
        if index_def is None:  # a checkout whose first ingest builds the index later
            index_def = (
                "CREATE INDEX video_chunks_embedding_hnsw ON public.video_chunks "
                "USING hnsw (embedding vector_cosine_ops)"
            )
        conn.execute(text("DROP INDEX IF EXISTS video_chunks_embedding_hnsw"))
    engine.dispose()

    timings: dict[str, float] = {}
    n_videos = len(lib.video_sizes)
    keys = [video_key(v) for v in range(n_videos)]
    chunk_key: list[tuple[str, float]] = []
    t = time.perf_counter()
    with psycopg.connect(uri) as conn:
        register_vector(conn)
        conn.execute("SET synchronous_commit = off")
        with conn.cursor().copy(
            "COPY videos (id, key, youtube_id, source, url, title, channel, language, duration_s,"
            " transcript_hash, embedding_model) FROM STDIN"
        ) as copy:
            for v, size in enumerate(lib.video_sizes):
                yid = f"bk{v:09d}"
                copy.write_row(
                    (
                        v + 1, keys[v], yid, "youtube", f"https://www.youtube.com/watch?v={yid}",
                        f"Synthetic talk {v}", "Bench channel", "en", size * CHUNK_S, "0" * 64,
                        model,
                    )
                )
        conn.execute("SELECT setval(pg_get_serial_sequence('videos', 'id'), %s)", (n_videos,))
        with conn.cursor().copy(
            "COPY video_chunks (video_id, ordinal, text, start_s, end_s, embedding)"
            " FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "int4", "text", "float8", "float8", "vector"])
            ordinal = 0
            previous = -1
            for i, (txt, v) in enumerate(zip(lib.texts, lib.video_of, strict=True)):
                ordinal = ordinal + 1 if v == previous else 0
                previous = v
                start = ordinal * CHUNK_S
                copy.write_row((v + 1, ordinal, txt, start, start + CHUNK_S, vectors[i]))
                chunk_key.append((keys[v], start))
        conn.commit()
    timings["copy_s"] = time.perf_counter() - t
    notices: list[str] = []
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE video_chunks")
        conn.execute("VACUUM ANALYZE videos")
        timings["analyze_s"] = time.perf_counter() - t
        conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {parallel_workers}")
        if build_index:
            t = time.perf_counter()
            conn.execute(index_def)
            timings["index_build_s"] = time.perf_counter() - t
        conn.execute("CHECKPOINT")
        timings["table_mb"] = conn.execute(
            "SELECT pg_table_size('video_chunks') / 1048576.0"
        ).fetchone()[0]
        if build_index:
            timings["index_mb"] = conn.execute(
                "SELECT pg_relation_size('video_chunks_embedding_hnsw') / 1048576.0"
            ).fetchone()[0]
    timings = {k: round(float(v), 3) for k, v in timings.items()}
    return Loaded(
        uri, url, model, dims, len(lib.texts), list(range(1, n_videos + 1)), keys, chunk_key,
        index_def, timings, notices,
    )


def rebuild_index(loaded: Loaded, *, m: int, ef_construction: int, mwm: str, workers: int):
    """Replace the HNSW index with one of other parameters; returns (build s, MB, notices)."""
    import psycopg

    notices: list[str] = []
    with psycopg.connect(loaded.uri, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("DROP INDEX IF EXISTS video_chunks_embedding_hnsw")
        conn.execute(f"SET maintenance_work_mem = '{mwm}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        ddl = loaded.index_def.replace(
            "(embedding vector_cosine_ops)",
            f"(embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction})",
        )
        t = time.perf_counter()
        conn.execute(ddl)
        build = time.perf_counter() - t
        mb = conn.execute(
            "SELECT pg_relation_size('video_chunks_embedding_hnsw') / 1048576.0"
        ).fetchone()[0]
    return round(build, 3), round(float(mb), 1), notices


# -- ground truth & recall ------------------------------------------------------------------


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int = K
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine distance (vectors are unit-norm), in blocks."""
    idx = np.empty((len(queries), k), dtype=np.int64)
    dist = np.empty((len(queries), k), dtype=np.float64)
    for s in range(0, len(queries), 64):
        sims = queries[s : s + 64] @ vectors.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        ps = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-ps, axis=1)
        idx[s : s + 64] = np.take_along_axis(part, order, axis=1)
        dist[s : s + 64] = 1.0 - np.take_along_axis(ps, order, axis=1)
    return idx, dist


def recall_at_k(
    got: Sequence[Sequence[tuple[str, float, float]]],
    truth_idx: np.ndarray,
    truth_dist: np.ndarray,
    chunk_key: Sequence[tuple[str, float]],
) -> dict[str, float]:
    """Recall@k of returned (key, start_s, distance) rows against the exact top-k.

    ``strict``: share of the exact top-k ids returned. ``tolerant`` also counts a
    returned row whose distance ties the k-th exact distance (within 1e-5): equally
    good answers a different float summation order may swap in.
    """
    strict, tolerant, eps = [], [], []
    for rows, ids, dists in zip(got, truth_idx[:, :K], truth_dist[:, :K], strict=True):
        want = {chunk_key[i] for i in ids}
        keys = {(r[0], r[1]) for r in rows}
        strict.append(len(want & keys) / len(want))
        ok = sum(1 for r in rows if (r[0], r[1]) in want or r[2] <= dists[-1] + 1e-5)
        tolerant.append(min(ok, len(want)) / len(want))
        ok = sum(1 for r in rows if (r[0], r[1]) in want or r[2] <= dists[-1] * 1.01)
        eps.append(min(ok, len(want)) / len(want))
    s, t, e = np.asarray(strict), np.asarray(tolerant), np.asarray(eps)
    n_qa = len(qa_questions())
    return {
        "recall_strict": round(float(s.mean()), 4),
        "recall": round(float(t.mean()), 4),
        "recall_min": round(float(t.min()), 4),
        "queries_below_0.8": int((t < 0.8).sum()),
        "recall_qa16": round(float(t[:n_qa].mean()), 4),
        "recall_eps1pct": round(float(e.mean()), 4),
    }


def crowding(truth_dist: np.ndarray) -> dict[str, float]:
    """How crowded the exact neighbourhoods are (why recall@5 is hard on this corpus)."""
    d5 = truth_dist[:, K - 1]
    return {
        "median_d1": round(float(np.median(truth_dist[:, 0])), 4),
        "median_d5": round(float(np.median(d5)), 4),
        "median_d6_minus_d5": round(float(np.median(truth_dist[:, K] - d5)), 5),
        "median_d50_minus_d5": round(float(np.median(truth_dist[:, -1] - d5)), 4),
        "median_chunks_within_1pct_of_d5": float(
            np.median((truth_dist <= d5[:, None] * 1.01).sum(axis=1))
        ),
        "share_queries_with_50_within_1pct": round(
            float((truth_dist[:, -1] <= d5 * 1.01).mean()), 3
        ),
    }


def sql_exact_check(loaded: Loaded, qvecs: np.ndarray, truth_idx, truth_dist, n: int = 20):
    """Cross-check the numpy ground truth with Postgres itself (index disabled)."""
    from sqlalchemy import text

    from backtalk.store import make_engine
    from backtalk.store.repo import search_statement

    engine = make_engine(loaded.url)
    got = []
    with engine.connect() as conn:
        conn.execute(text("SET enable_indexscan = off"))
        for q in qvecs[:n]:
            rows = conn.execute(search_statement(q, k=K, video_ids=None)).all()
            got.append([(r.key, r.start_s, r.distance) for r in rows])
    engine.dispose()
    return recall_at_k(got, truth_idx[:n], truth_dist[:n], loaded.chunk_key)


# -- the measured paths ------------------------------------------------------------------


def _connect_args(ef_search: int | None = None, prepare_threshold: Any = "default") -> dict:
    from backtalk.store.engine import _CONNECT_ARGS

    args = dict(_CONNECT_ARGS)
    if ef_search is not None:
        args["options"] = f"{args['options']} -c hnsw.ef_search={ef_search}"
    if prepare_threshold != "default":
        args["prepare_threshold"] = prepare_threshold
    return args


def product_engine(url, **variant):
    """The product's async engine, or the same with one setting changed (a prototype).

    Variant keys: ``pre_ping`` (bool), ``ef_search`` (int), ``prepare_threshold``
    (psycopg; None = never prepare), ``autocommit`` (no BEGIN/ROLLBACK round trips
    around the read), ``binary`` (register pgvector's psycopg binary adapter on
    connect, for :class:`BinaryVector` binds).
    """
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    from backtalk.store import make_async_engine

    if not variant:
        return make_async_engine(url)
    if variant.get("retrieval_engine"):
        # The engine the voice agent itself uses since commit d46f4cf (autocommit, no
        # ping, no reset), when this checkout has it.
        from backtalk.store.engine import make_retrieval_engine

        return make_retrieval_engine(url)
    engine = create_async_engine(
        url,
        pool_pre_ping=variant.get("pre_ping", True),
        pool_timeout=0.5,
        pool_size=5,
        **({"isolation_level": "AUTOCOMMIT"} if variant.get("autocommit") else {}),
        connect_args=_connect_args(
            variant.get("ef_search"), variant.get("prepare_threshold", "default")
        ),
    )
    if variant.get("binary"):
        from pgvector.psycopg import register_vector_async

        @event.listens_for(engine.sync_engine, "connect")
        def _register(dbapi_conn, _record):
            dbapi_conn.run_async(register_vector_async)

    return engine


_BINARY_VECTOR = None


def _binary_vector_type():
    global _BINARY_VECTOR
    if _BINARY_VECTOR is not None:
        return _BINARY_VECTOR
    from pgvector import Vector
    from pgvector.sqlalchemy import VECTOR

    class BinaryVector(VECTOR):
        """VECTOR whose bind value is a ``pgvector.Vector`` (psycopg's binary dumper)."""

        cache_ok = True

        def bind_processor(self, dialect):
            def process(value):
                if value is None or isinstance(value, Vector):
                    return value
                return Vector(np.asarray(value, dtype=np.float32))

            return process

    _BINARY_VECTOR = BinaryVector
    return BinaryVector


def binary_search_statement(query_embedding, *, k: int, video_ids):
    """``search_statement`` with the query vector bound as binary (proposed patch)."""
    from sqlalchemy import bindparam, select

    from backtalk.store.models import Video, VideoChunk

    q = bindparam("q", query_embedding, type_=_binary_vector_type()())
    distance = VideoChunk.embedding.cosine_distance(q)
    stmt = (
        select(
            VideoChunk.text, VideoChunk.start_s, VideoChunk.end_s, Video.title, Video.key,
            Video.youtube_id, distance.label("distance"),
        )
        .join(Video, Video.id == VideoChunk.video_id)
        .limit(k)
    )
    if video_ids is None:
        return stmt.order_by(distance)
    return stmt.where(VideoChunk.video_id.in_(list(video_ids))).order_by(distance + 0)


class BinaryRetriever:
    """PgVectorRetriever with :func:`binary_search_statement` (prototype)."""

    def __init__(self, engine, embedder, *, video_ids=None):
        self._engine, self._embedder, self._video_ids = engine, embedder, video_ids

    async def retrieve(self, query: str, *, k: int):
        from backtalk.store.repo import rows_to_chunks

        vector = (await self._embedder.aembed([query]))[0]
        async with self._engine.connect() as conn:
            result = await conn.execute(
                binary_search_statement(vector, k=k, video_ids=self._video_ids)
            )
            rows = result.all()
        return rows_to_chunks(rows)


_RAW_SQL = (
    "SELECT c.text, c.start_s, c.end_s, v.title, v.key, v.youtube_id,"
    " c.embedding <=> {q} AS distance FROM video_chunks c JOIN videos v ON v.id = c.video_id"
    " ORDER BY c.embedding <=> {q} LIMIT {k}"
)


class RawPsycopgRetriever:
    """One psycopg AsyncConnection, binary vector, no SQLAlchemy: the driver's floor."""

    def __init__(self, conn, embedder):
        self._conn, self._embedder = conn, embedder
        self._sql = _RAW_SQL.format(q="%(q)s", k="%(k)s")

    @classmethod
    async def open(cls, uri: str, embedder):
        import psycopg
        from pgvector.psycopg import register_vector_async

        conn = await psycopg.AsyncConnection.connect(uri, autocommit=True)
        await register_vector_async(conn)
        return cls(conn, embedder)

    async def retrieve(self, query: str, *, k: int):
        from backtalk.store.repo import rows_to_chunks

        vector = (await self._embedder.aembed([query]))[0]
        cur = await self._conn.execute(self._sql, {"q": vector, "k": k})
        rows = await cur.fetchall()
        return rows_to_chunks([_Row(*r) for r in rows])

    async def close(self):
        await self._conn.close()


class RawAsyncpgRetriever:
    """One asyncpg connection with pgvector's codec (for the driver comparison)."""

    def __init__(self, conn, embedder):
        self._conn, self._embedder = conn, embedder
        self._sql = _RAW_SQL.format(q="$1", k="$2")

    @classmethod
    async def open(cls, uri: str, embedder):
        import asyncpg
        from pgvector.asyncpg import register_vector

        conn = await asyncpg.connect(uri)
        await register_vector(conn)
        return cls(conn, embedder)

    async def retrieve(self, query: str, *, k: int):
        from backtalk.store.repo import rows_to_chunks

        vector = (await self._embedder.aembed([query]))[0]
        rows = await self._conn.fetch(self._sql, vector, k)
        return rows_to_chunks([_Row(*r) for r in rows])

    async def close(self):
        await self._conn.close()


@dataclass
class _Row:
    text: str
    start_s: float
    end_s: float
    title: str
    key: str
    youtube_id: str | None
    distance: float


async def run_queries(
    retriever_for: Callable[[int], Any], embedder: TimedEmbedder, queries: Sequence[str],
    *, warmup: int,
) -> dict[str, Any]:
    """Time ``retrieve`` per query (after ``warmup`` untimed ones); split embed vs SQL."""
    for i in range(min(warmup, len(queries))):
        await retriever_for(i).retrieve(queries[i], k=K)
    gc.collect()
    total, emb, rows = [], [], []
    got = []
    for i, q in enumerate(queries):
        retriever = retriever_for(i)
        t = time.perf_counter()
        chunks = await retriever.retrieve(q, k=K)
        total.append(time.perf_counter() - t)
        emb.append(embedder.last_s)
        rows.append(len(chunks))
        got.append([(c.video_key, c.start_s, 1.0 - c.score) for c in chunks])
    total_a, emb_a = np.asarray(total), np.asarray(emb)
    return {
        "total_ms": summarize_ms(total_a),
        "embed_ms": summarize_ms(emb_a),
        "sql_ms": summarize_ms(total_a - emb_a),
        "rows_min": int(min(rows)),
        "queries_with_fewer_than_k_rows": int(sum(r < K for r in rows)),
        "_got": got,
        "_total": total_a,
        "_embed": emb_a,
    }


async def measure_engine(
    loaded: Loaded, embedder: TimedEmbedder, queries, *, warmup, video_ids=None, binary=False,
    **variant,
) -> dict[str, Any]:
    from backtalk.store import PgVectorRetriever

    retriever_autocommit = variant.pop("retriever_autocommit", False)
    engine = product_engine(loaded.url, binary=binary, **variant) if (
        variant or binary
    ) else product_engine(loaded.url)
    cls = BinaryRetriever if binary else PgVectorRetriever
    pool_owner = engine
    if retriever_autocommit:
        # What the retriever alone could do: its own AUTOCOMMIT view of the shared pool
        # (the recorder keeps its transactions).
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        if video_ids is None:
            shared = cls(engine, embedder)
            return await run_queries(lambda i: shared, embedder, queries, warmup=warmup)
        per = {}

        def retriever_for(i):
            vid = video_ids[i % len(video_ids)]
            if vid not in per:
                per[vid] = cls(engine, embedder, video_ids=[vid])
            return per[vid]

        return await run_queries(retriever_for, embedder, queries, warmup=warmup)
    finally:
        await pool_owner.dispose()


async def measure_raw(kind: str, loaded: Loaded, embedder, queries, *, warmup):
    cls = RawPsycopgRetriever if kind == "psycopg" else RawAsyncpgRetriever
    retriever = await cls.open(loaded.uri, embedder)
    try:
        return await run_queries(lambda i: retriever, embedder, queries, warmup=warmup)
    finally:
        await retriever.close()


def scoped_hnsw_rows(loaded: Loaded, qvecs: np.ndarray, video_ids: Sequence[int]) -> dict:
    """What a one-video query returns when HNSW serves it (ORDER BY without ``+ 0``).

    The planner normally prefers the btree on ``video_id`` for such a selective filter,
    so to show pgvector 0.6's post-filtering this drops the btree indexes inside a
    transaction that is rolled back, and disables sequential scans.
    """
    from sqlalchemy import text

    from backtalk.store import make_engine
    from backtalk.store.models import VideoChunk
    from backtalk.store.repo import search_statement

    engine = make_engine(loaded.url)
    counts = []
    plan = ""
    with engine.connect() as conn:
        for name, _kind in conn.execute(text(
            "SELECT c.conname, c.contype FROM pg_constraint c "
            "WHERE c.conrelid = 'video_chunks'::regclass AND c.contype = 'u'"
        )).all():
            conn.execute(text(f"ALTER TABLE video_chunks DROP CONSTRAINT {name}"))
        for (name,) in conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'video_chunks' "
            "AND indexdef NOT LIKE '%hnsw%' AND indexdef LIKE '%video_id%'"
        )).all():
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        for i, q in enumerate(qvecs):
            stmt = search_statement(q, k=K, video_ids=None).where(
                VideoChunk.video_id.in_([video_ids[i % len(video_ids)]])
            )
            if i == 0:
                compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
                plan = " / ".join(
                    r[0].strip() for r in conn.execute(text(f"EXPLAIN {compiled}")).all()
                )
            counts.append(len(conn.execute(stmt).all()))
        conn.rollback()
    engine.dispose()
    c = np.asarray(counts)
    return {
        "mean_rows": round(float(c.mean()), 2),
        "queries_with_fewer_than_k_rows": int((c < K).sum()),
        "queries_with_zero_rows": int((c == 0).sum()),
        "n": int(c.size),
        "uses_hnsw": "hnsw" in plan,
    }


def generic_plan_check(loaded: Loaded, qvec: np.ndarray) -> dict[str, str]:
    """Does the prepared (generic) plan of the library-wide search still use HNSW?"""
    import psycopg
    from pgvector.psycopg import register_vector

    sql = _RAW_SQL.format(q="$1", k="$2")
    out = {}
    with psycopg.connect(loaded.uri, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(f"PREPARE s(vector, int) AS {sql}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            lit = "'" + "[" + ",".join(f"{x:.6f}" for x in qvec) + "]" + "'"
            plan = conn.execute(f"EXPLAIN EXECUTE s({lit}, {K})").fetchall()
            text = " / ".join(r[0].strip() for r in plan)
            out[mode] = "hnsw index scan" if "hnsw" in text else f"NO INDEX: {text[:200]}"
    return out


# -- one (embedder, size) --------------------------------------------------------------------


async def bench_size(
    pg: EmbeddedPostgres, kind: str, n: int, args, embedder_factory, fake
) -> dict[str, Any]:
    rng = random.Random(n)
    log(f"[{kind} {n:,}] building corpus")
    t = time.perf_counter()
    sources = _corpus.docstring_sources() if args.corpus == "docstrings" else None
    lib = _corpus.library(n, sources=sources)
    gen_s = time.perf_counter() - t
    n_queries = args.queries if kind == "local" else args.openai_queries
    questions = _corpus.questions(max(args.queries, n_queries), sources=sources)
    queries = questions[:n_queries]
    base = embedder_factory()
    t = time.perf_counter()
    if kind == "local":
        vectors = np.concatenate(
            [base.embed(lib.texts[i : i + 20000]) for i in range(0, n, 20000)]
        )
        qvecs = base.embed(questions)
    else:
        vectors = fake_openai_vectors(lib.texts, base.dimensions)
        qvecs = fake_openai_vectors(questions, base.dimensions)
    embed_s = time.perf_counter() - t
    log(f"[{kind} {n:,}] embedded {n:,} chunks in {embed_s:.1f} s; loading")
    big = n >= 500_000
    mwm = args.maintenance_work_mem or ("8GB" if big else "2GB")
    loaded = load_library(
        pg, f"bench_{kind}_{n}", lib, vectors, base.model,
        maintenance_work_mem=mwm, parallel_workers=args.parallel_workers,
        build_index=not args.alt_only,
    )
    loaded.timings.update(corpus_gen_s=round(gen_s, 2), corpus_embed_s=round(embed_s, 2))
    log(f"[{kind} {n:,}] loaded: {loaded.timings}")
    truth_idx, truth_dist = exact_topk(vectors, qvecs, 50)
    qmap = dict(zip(questions, qvecs, strict=True))
    part: dict[str, Any] = {
        "embedder": kind,
        "model": base.model,
        "dims": loaded.dims,
        "n": n,
        "corpus": args.corpus,
        "sources": len(sources) if sources else 2,
        "videos": len(lib.video_sizes),
        "queries": len(queries),
        "k": K,
        "load": loaded.timings,
        "index_def": loaded.index_def,
        "index_build": {"maintenance_work_mem": mwm, "parallel_workers": args.parallel_workers},
        "build_notices": loaded.notices,
        "crowding": crowding(truth_dist),
    }
    if args.alt_only:
        await alt_index_sweeps(part, loaded, args, questions, qmap, timed_for(kind, base, qmap),
                               truth_idx, truth_dist, mwm)
        if kind == "local" and n >= args.shared_buffers_min and not args.no_variants:
            sq = questions[: args.queries]
            ip = part["index_params"][-1]
            part["shared_buffers_alt_index"] = {
                "m": ip["m"], "ef_construction": ip["ef_construction"],
                **await shared_buffers_experiment(
                    pg, loaded, TimedEmbedder(base), sq, truth_idx[: len(sq)],
                    truth_dist[: len(sq)], tag=f"[{kind} {n:,}]",
                ),
            }
        return part
    part["ground_truth_sql_check"] = sql_exact_check(loaded, qvecs, truth_idx, truth_dist)
    part["generic_plan"] = generic_plan_check(loaded, qvecs[0])
    scoped_vids = [rng.choice(loaded.video_ids) for _ in range(len(queries))]
    warm = args.warmup
    timed = TimedEmbedder(base)

    def strip(r):
        return {k: v for k, v in r.items() if not k.startswith("_")}

    # 1. The product path, library-wide (repeated: stability) and scoped.
    repeats = []
    for rep in range(args.repeats):
        r = await measure_engine(loaded, timed, queries, warmup=warm)
        r.update(recall_at_k(
            r["_got"], truth_idx[: len(queries)], truth_dist[: len(queries)], loaded.chunk_key
        ))
        repeats.append(strip(r))
        log(f"[{kind} {n:,}] library-wide run {rep + 1}: {r['total_ms']} recall {r['recall']}")
    part["library_wide"] = repeats[0]
    part["library_wide_repeats"] = repeats
    part["stability"] = {
        "p50_ms": spread(r["total_ms"]["p50"] for r in repeats),
        "p95_ms": spread(r["total_ms"]["p95"] for r in repeats),
    }
    r = await measure_engine(loaded, timed, queries, warmup=warm, video_ids=scoped_vids)
    part["scoped"] = strip(r)
    log(f"[{kind} {n:,}] scoped: {r['total_ms']} rows<k {r['queries_with_fewer_than_k_rows']}")
    part["scoped_if_hnsw"] = scoped_hnsw_rows(loaded, qvecs[: min(len(queries), 100)], scoped_vids)

    # 2. ef_search sweep (library-wide). The API embedder: SQL only (cached vectors).
    sweep_embedder = timed if kind == "local" else TimedEmbedder(
        CachedEmbedder(base.model, base.dimensions, qmap)
    )
    sweep_queries = questions[: args.queries]
    ti, td = truth_idx[: len(sweep_queries)], truth_dist[: len(sweep_queries)]
    part["ef_search"] = []
    for ef in args.ef:
        r = await measure_engine(loaded, sweep_embedder, sweep_queries, warmup=warm, ef_search=ef)
        r.update(recall_at_k(r["_got"], ti, td, loaded.chunk_key))
        part["ef_search"].append({"ef_search": ef, **strip(r)})
        log(f"[{kind} {n:,}] ef_search={ef}: p95 {r['total_ms']['p95']} ms recall {r['recall']}")

    # 3. What each change of the SQL path gains (local embedder only).
    if kind == "local" and not args.no_variants:
        variants = [
            ("product (pre_ping, text vector, prepare after 5)", {}),
            ("pool_pre_ping=False", {"pre_ping": False}),
            ("prepare_threshold=None (never prepare)", {"prepare_threshold": None}),
            ("prepare_threshold=0 (always prepare)", {"prepare_threshold": 0}),
            ("binary vector bind", {"binary": True}),
            ("autocommit (no BEGIN/ROLLBACK)", {"autocommit": True}),
            ("pre_ping off + autocommit", {"pre_ping": False, "autocommit": True}),
            ("pre_ping off + autocommit + binary vector",
             {"pre_ping": False, "autocommit": True, "binary": True}),
            ("retriever-only AUTOCOMMIT (engine.execution_options)",
             {"retriever_autocommit": True}),
            ("pre_ping off + retriever-only AUTOCOMMIT + binary",
             {"pre_ping": False, "retriever_autocommit": True, "binary": True}),
        ]
        part["variants"] = []
        try:
            from backtalk.store.engine import make_retrieval_engine  # noqa: F401

            variants.append(("make_retrieval_engine (the agent's engine now)",
                             {"retrieval_engine": True}))
        except ImportError:
            pass
        if args.quick:
            variants = [variants[0], variants[-1]]
        ok = [e["ef_search"] for e in part["ef_search"] if e["recall"] >= 0.95]
        rec_ef = min(ok) if ok else max(args.ef)
        part["recommended_ef_search"] = rec_ef
        variants.append((
            f"pre_ping off + autocommit + binary + ef_search={rec_ef}",
            {"pre_ping": False, "autocommit": True, "binary": True, "ef_search": rec_ef},
        ))
        tuned = {"pre_ping": False, "retriever_autocommit": True, "binary": True}
        jobs = [
            (name, lambda v=variant: measure_engine(loaded, timed, sweep_queries, warmup=warm,
                                                    **v), True)
            for name, variant in variants
        ]
        if not args.quick:
            jobs += [
                (f"raw {raw} (no SQLAlchemy, binary vector, 1 connection)",
                 lambda raw=raw: measure_raw(raw, loaded, timed, sweep_queries, warmup=warm),
                 True)
                for raw in ("psycopg", "asyncpg")
            ]
        jobs += [
            ("scoped: product", lambda: measure_engine(
                loaded, timed, queries, warmup=warm, video_ids=scoped_vids), False),
            ("scoped: pre_ping off + retriever AUTOCOMMIT + binary", lambda: measure_engine(
                loaded, timed, queries, warmup=warm, video_ids=scoped_vids, **tuned), False),
        ]
        if any(v.get("retrieval_engine") for _, v in variants):
            jobs.append(("scoped: make_retrieval_engine (the agent's engine now)",
                         lambda: measure_engine(loaded, timed, queries, warmup=warm,
                                                video_ids=scoped_vids, retrieval_engine=True),
                         False))
        # Interleaved rounds: machine drift and neighbours' load hit every variant alike.
        pooled: dict[str, list] = {name: [] for name, _, _ in jobs}
        for _ in range(args.variant_rounds):
            for name, run, _library in jobs:
                try:
                    pooled[name].append(await run())
                except ImportError as exc:
                    log(f"skipping {name}: {exc}")
        part["variants"] = []
        for name, _, library in jobs:
            runs = pooled[name]
            if not runs:
                continue
            total = np.concatenate([r["_total"] for r in runs])
            emb = np.concatenate([r["_embed"] for r in runs])
            row = {
                "variant": name,
                "scope": "library" if library else "1 video",
                "rounds": len(runs),
                "total_ms": summarize_ms(total),
                "embed_ms": summarize_ms(emb),
                "sql_ms": summarize_ms(total - emb),
                "p50_per_round": [r["total_ms"]["p50"] for r in runs],
                "p95_per_round": [r["total_ms"]["p95"] for r in runs],
                "queries_with_fewer_than_k_rows": runs[0]["queries_with_fewer_than_k_rows"],
            }
            if library:
                row.update(recall_at_k(runs[0]["_got"], ti, td, loaded.chunk_key))
            part["variants"].append(row)
            log(f"[{kind} {n:,}] {name}: {row['total_ms']} per-round p50 {row['p50_per_round']}")
            if name.startswith("scoped: pre_ping"):
                part["scoped_tuned"] = {**row, "rows_min": runs[0]["rows_min"]}

    # 4. shared_buffers (the embedded default is 128MB) at the large sizes.
    if kind == "local" and n >= args.shared_buffers_min and not args.no_variants:
        part["shared_buffers"] = await shared_buffers_experiment(
            pg, loaded, timed, sweep_queries, ti, td, tag=f"[{kind} {n:,}]"
        )

    # 5. Other index parameters.
    if n <= args.alt_index_max and args.alt_index:
        await alt_index_sweeps(part, loaded, args, questions, qmap, sweep_embedder, truth_idx,
                               truth_dist, mwm)
    return part


def timed_for(kind, base, qmap):
    if kind == "local":
        return TimedEmbedder(base)
    return TimedEmbedder(CachedEmbedder(base.model, base.dimensions, qmap))


async def alt_index_sweeps(part, loaded, args, questions, qmap, sweep_embedder, truth_idx,
                           truth_dist, mwm):
    """Rebuild the index with each ``--alt-index`` (m, ef_construction); sweep ef_search."""
    sweep_queries = questions[: args.queries]
    ti, td = truth_idx[: len(sweep_queries)], truth_dist[: len(sweep_queries)]
    tag = f"[{part['embedder']} {part['n']:,}]"
    part.setdefault("index_params", [])
    for m, efc in args.alt_index:
        build_s, mb, notices = rebuild_index(
            loaded, m=m, ef_construction=efc, mwm=mwm, workers=args.parallel_workers
        )
        log(f"{tag} index m={m} ef_construction={efc}: built in {build_s} s ({mb} MB)")
        rows = []
        for ef in args.ef:
            r = await measure_engine(
                loaded, sweep_embedder, sweep_queries, warmup=args.warmup, ef_search=ef
            )
            r.update(recall_at_k(r["_got"], ti, td, loaded.chunk_key))
            rows.append({"ef_search": ef, **{k: v for k, v in r.items() if k[0] != "_"}})
            log(f"{tag}   ef_search={ef}: p95 {r['total_ms']['p95']} recall {r['recall']}")
        part["index_params"].append(
            {"m": m, "ef_construction": efc, "build_s": build_s, "index_mb": mb,
             "maintenance_work_mem": mwm, "parallel_workers": args.parallel_workers,
             "notices": notices, "ef_search": rows}
        )
    return part


async def shared_buffers_experiment(pg, loaded, timed, queries, ti, td, *, tag) -> dict:
    """The product path at the embedded default shared_buffers and at 6 GB.

    pg_prewarm is not in the embedded build, so each setting gets a full untimed pass
    over the queries first (the same pages the timed pass reads are then cached).
    """
    out = {}
    old = pg.settings.get("shared_buffers", "128MB")
    for setting in (old, BIG_SHARED_BUFFERS):
        if setting != old:
            pg.restart({"shared_buffers": setting})
        try:
            r = await measure_engine(loaded, timed, queries, warmup=len(queries) + 30)
            r.update(recall_at_k(r["_got"], ti, td, loaded.chunk_key))
            out[setting] = {k: v for k, v in r.items() if k[0] != "_"}
            log(f"{tag} shared_buffers={setting} (warm): {r['total_ms']}")
        finally:
            if setting != old:
                pg.restart({"shared_buffers": old})
    return out


def _prewarm(uri: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            conn.execute("SELECT pg_prewarm('video_chunks_embedding_hnsw')")
            conn.execute("SELECT pg_prewarm('video_chunks')")
        except psycopg.Error as exc:
            log(f"pg_prewarm unavailable ({exc}); relying on warm-up queries")


# -- report ------------------------------------------------------------------------------------


def build_report(parts_dir, name: str, info: dict[str, Any]) -> None:
    parts = [json.loads(p.read_text()) for p in sorted(parts_dir.glob("*.json"))]
    parts.sort(key=lambda p: (p["embedder"] != "local", p["n"], p.get("tag", "")))
    if not parts:
        log("no parts to report")
        return
    info = parts[-1].get("machine", info)
    out = [f"# Retrieval benchmark{' (quick)' if 'quick' in name else ''}", "",
           machine_markdown(info), ""]
    out += [
        "End to end = `PgVectorRetriever.retrieve` (embed the query + SQL over the product's "
        "`make_async_engine` pool), sequential, warm pool, after warm-up queries; k = 5. "
        "SQL = end to end − embed. Recall@5 against exact search over the same vectors "
        "(numpy; cross-checked against Postgres with `enable_indexscan = off`).", "",
        "## Load and index build", "",
        md_table(
            ["embedder", "chunks", "videos", "embed corpus s", "COPY s", "HNSW build s",
             "maint. mem / workers", "table MB", "index MB", "SQL-exact check"],
            [
                (label(p), f"{p['n']:,}", p["videos"], p["load"]["corpus_embed_s"],
                 p["load"]["copy_s"], p["load"]["index_build_s"],
                 f"{p['index_build']['maintenance_work_mem']} / "
                 f"{p['index_build']['parallel_workers']}",
                 round(p["load"]["table_mb"]), round(p["load"]["index_mb"]),
                 p["ground_truth_sql_check"]["recall"])
                for p in parts
            ],
        ), "",
        "## End to end (the product's engine and connection settings, including its "
        "hnsw.ef_search, at the run's commit; pool_pre_ping, text vector bind)", "",
        md_table(
            ["embedder", "chunks", "scope", "p50 ms", "p95 ms", "p99 ms", "mean ms",
             "embed p50", "SQL p50", "SQL p95", "queries < 5 rows", "recall@5"],
            [
                (label(p), f"{p['n']:,}", scope, r["total_ms"]["p50"], r["total_ms"]["p95"],
                 r["total_ms"]["p99"], r["total_ms"]["mean"], r["embed_ms"]["p50"],
                 r["sql_ms"]["p50"], r["sql_ms"]["p95"],
                 f"{r['queries_with_fewer_than_k_rows']}/{r['total_ms']['n']}",
                 r.get("recall", "exact"))
                for p in parts
                for scope, r in (
                    ("library", p["library_wide"]),
                    ("1 video", p["scoped"]),
                    *((("1 video, tuned*", p["scoped_tuned"]),) if "scoped_tuned" in p else ()),
                )
            ],
        ), "",
        "\\* tuned = pool_pre_ping off + AUTOCOMMIT for the retriever's connections + "
        "binary vector bind (prototypes of the proposed patches). The voice agent always "
        "scopes retrieval to the session's videos (`AgentResources.retriever`), so the "
        "`1 video` rows are its path.", "",
        "Stability (library-wide product run repeated):", "",
        md_table(
            ["embedder", "chunks", "runs", "p50 mean ± sd ms", "p95 mean ± sd ms", "p95 CV %"],
            [
                (label(p), f"{p['n']:,}", p["stability"]["p50_ms"]["runs"],
                 f"{p['stability']['p50_ms']['mean']} ± {p['stability']['p50_ms']['stdev']}",
                 f"{p['stability']['p95_ms']['mean']} ± {p['stability']['p95_ms']['stdev']}",
                 p["stability"]["p95_ms"]["cv_pct"])
                for p in parts
            ],
        ), "",
        "## hnsw.ef_search: latency vs recall@5 (library-wide; default index m=16, "
        "ef_construction=64)", "",
        "OpenAI rows are SQL only (query vectors fetched once from FakeOpenAI).", "",
        md_table(
            ["embedder", "chunks", "ef_search", "p50 ms", "p95 ms", "p99 ms", "recall@5",
             "min recall", "queries < 0.8", "recall@5 qa.json 16", "recall@5 ε=1%",
             "queries < 5 rows"],
            [
                (label(p), f"{p['n']:,}", e["ef_search"], e["total_ms"]["p50"],
                 e["total_ms"]["p95"], e["total_ms"]["p99"], e["recall"], e["recall_min"],
                 e["queries_below_0.8"], e.get("recall_qa16", "-"),
                 e.get("recall_eps1pct", "-"), e["queries_with_fewer_than_k_rows"])
                for p in parts for e in p["ef_search"]
            ],
        ), "",
        "recall@5 ε=1% also counts a returned chunk whose distance is within 1% of the "
        "5th exact distance. How crowded the exact neighbourhoods of this synthetic "
        "corpus are (cosine distances; a vocabulary of two short transcripts makes many "
        "chunks near-equidistant from a query):", "",
        md_table(
            ["embedder", "chunks", "median d1", "median d5", "median d6−d5", "median d50−d5",
             "median chunks within 1% of d5", "queries with ≥ 50 within 1%"],
            [
                (label(p), f"{p['n']:,}", *p["crowding"].values())
                for p in parts if "crowding" in p
            ],
        ), "",
    ]
    if any("index_params" in p for p in parts):
        out += [
            "## Other HNSW build parameters", "",
            md_table(
                ["embedder", "chunks", "m", "ef_construction", "build s", "index MB",
                 "ef_search", "p50 ms", "p95 ms", "recall@5", "min recall", "recall@5 ε=1%"],
                [
                    (label(p), f"{p['n']:,}", ip["m"], ip["ef_construction"], ip["build_s"],
                     ip["index_mb"], e["ef_search"], e["total_ms"]["p50"], e["total_ms"]["p95"],
                     e["recall"], e["recall_min"], e.get("recall_eps1pct", "-"))
                    for p in parts for ip in p.get("index_params", []) for e in ip["ef_search"]
                ],
            ), "",
        ]
    if any("variants" in p for p in parts):
        rows = []
        for p in parts:
            if "variants" not in p:
                continue
            bases = {}
            for v in p["variants"]:
                base = bases.setdefault(v.get("scope", "library"), v["total_ms"])
                rows.append((f"{p['n']:,}", v.get("scope", "library"), v["variant"],
                             v["total_ms"]["p50"], v["total_ms"]["p95"], v["total_ms"]["p99"],
                             v["sql_ms"]["p50"], round(v["total_ms"]["p50"] - base["p50"], 3),
                             round(v["total_ms"]["p95"] - base["p95"], 3),
                             " / ".join(f"{x:.2f}" for x in v.get("p50_per_round", [])),
                             v.get("recall", "")))
            base = bases.get("library", {"p50": 0, "p95": 0})
            for setting, sb in p.get("shared_buffers", {}).items():
                rows.append((f"{p['n']:,}", "library", f"product, shared_buffers={setting}, "
                             "full warm-up pass (not interleaved)", sb["total_ms"]["p50"],
                             sb["total_ms"]["p95"], sb["total_ms"]["p99"], sb["sql_ms"]["p50"],
                             round(sb["total_ms"]["p50"] - base["p50"], 3),
                             round(sb["total_ms"]["p95"] - base["p95"], 3), "",
                             sb.get("recall", "")))
        out += [
            "## What each change of the query path gains (local embedder, the product's "
            "ef_search unless named)", "",
            "Variants run in interleaved rounds (default 3 × 300 queries each); percentiles "
            "over the pooled samples; Δ against the first row of the same scope.", "",
            md_table(["chunks", "scope", "variant", "p50 ms", "p95 ms", "p99 ms", "SQL p50 ms",
                      "Δ p50 ms", "Δ p95 ms", "p50 per round", "recall@5"], rows), "",
        ]
    out += [
        "## Scoped search and pgvector 0.6 post-filtering", "",
        "Rows a one-video query returns if the planner may use HNSW (ORDER BY without `+ 0`), "
        "versus the product's exact scoped scan:", "",
        md_table(
            ["embedder", "chunks", "HNSW-filtered: mean rows", "< 5 rows", "0 rows",
             "plan used HNSW", "product scoped: < 5 rows"],
            [
                (label(p), f"{p['n']:,}", p["scoped_if_hnsw"]["mean_rows"],
                 f"{p['scoped_if_hnsw']['queries_with_fewer_than_k_rows']}/{p['scoped_if_hnsw']['n']}",
                 p["scoped_if_hnsw"]["queries_with_zero_rows"],
                 p["scoped_if_hnsw"].get("uses_hnsw", "?"),
                 p["scoped"]["queries_with_fewer_than_k_rows"])
                for p in parts
            ],
        ), "",
        "Prepared-statement plans (psycopg prepares after 5 runs; Postgres may switch to a "
        "generic plan after 5 more): "
        + "; ".join(f"{p['model'][:9]} {p['n']:,}: {p['generic_plan']}" for p in parts), "",
    ]
    out += ["## Goals", "", *goals(parts), ""]
    payload = {"machine": info, "parts": parts}
    write_results(name, payload, "\n".join(out), plot(parts))


def label(p) -> str:
    """The model, plus the configuration tag of a tagged run."""
    return p["model"] + (f" [{p['tag']}]" if p.get("tag") else "")


def goals(parts) -> list[str]:
    lines = []
    local = {p["n"]: p for p in parts if p["embedder"] == "local" and not p.get("tag")}
    tagged_1m = [p for p in parts if p["embedder"] == "local" and p.get("tag")
                 and p["n"] == 1_000_000]
    if 100_000 in local:
        p95 = local[100_000]["library_wide"]["total_ms"]["p95"]
        lines.append(f"- p95 ≤ 10 ms end to end, local embedder, 100k chunks, library-wide: "
                     f"**{'PASS' if p95 <= 10 else 'FAIL'}** (p95 {p95} ms)")
    if 1_000_000 in local:
        p = local[1_000_000]
        r = p["library_wide"]
        ok = r["total_ms"]["p95"] <= 10 and r["recall"] >= 0.95
        lines.append(f"- 1M chunks, p95 ≤ 10 ms with recall@5 ≥ 0.95, product defaults: "
                     f"**{'PASS' if ok else 'FAIL'}** (p95 {r['total_ms']['p95']} ms, "
                     f"recall {r['recall']})")
        best = []
        for q in [p, *tagged_1m]:
            cfg = q.get("tag") or "default server"
            best += [dict(e, cfg=f"{cfg}, m=16/efc=64") for e in q["ef_search"]
                     if e["recall"] >= 0.95 and e["total_ms"]["p95"] <= 10]
            for ip in q.get("index_params", []):
                best += [dict(e, cfg=f"{cfg}, m={ip['m']}/efc={ip['ef_construction']}")
                         for e in ip["ef_search"]
                         if e["recall"] >= 0.95 and e["total_ms"]["p95"] <= 10]
        lines.append(
            "- 1M with a tuned setting: "
            + (f"**PASS** with ef_search={best[0]['ef_search']}, {best[0]['cfg']} (p95 "
               f"{best[0]['total_ms']['p95']} ms, recall {best[0]['recall']})"
               if best else "**FAIL** at every setting tried "
               f"({1 + len(tagged_1m)} server configuration(s), every index and ef_search)")
        )
    return lines or ["- (the goal sizes were not run)"]


def plot(parts):
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    for kind, style in (("local", "-"), ("openai", "--")):
        ps = [p for p in parts if p["embedder"] == kind and not p.get("tag")]
        if not ps:
            continue
        ns = [p["n"] for p in ps]
        colors = ("tab:blue", "tab:orange") if kind == "local" else ("tab:green", "tab:red")
        for scope, color in zip(("library_wide", "scoped"), colors, strict=True):
            ax.plot(ns, [p[scope]["total_ms"]["p95"] for p in ps], style, marker="o", color=color,
                    label=f"{kind} {scope} p95")
            ax.plot(ns, [p[scope]["total_ms"]["p50"] for p in ps], style, marker=".",
                    color=color, alpha=0.5, label=f"{kind} {scope} p50")
    ax.axhline(10, color="red", lw=0.8, ls=":", label="10 ms goal")
    ax.set(xscale="log", yscale="log", xlabel="chunks", ylabel="ms (end to end)",
           title="Retrieval latency vs library size")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for p in parts:
        if p["embedder"] != "local":
            continue
        xs = [e["total_ms"]["p95"] for e in p["ef_search"]]
        ys = [e["recall"] for e in p["ef_search"]]
        ax.plot(xs, ys, marker="o", label=f"{p['n']:,} (m16/efc64) {p.get('tag', '')}")
        for e, x, y in zip(p["ef_search"], xs, ys, strict=True):
            ax.annotate(str(e["ef_search"]), (x, y), fontsize=7)
        for ip in p.get("index_params", []):
            ax.plot([e["total_ms"]["p95"] for e in ip["ef_search"]],
                    [e["recall"] for e in ip["ef_search"]], ls=":", marker="x",
                    label=f"{p['n']:,} m{ip['m']}/efc{ip['ef_construction']} {p.get('tag', '')}")
    ax.axhline(0.95, color="red", lw=0.8, ls=":")
    ax.axvline(10, color="red", lw=0.8, ls=":")
    ax.set(xlabel="p95 ms (local, end to end)", ylabel="recall@5",
           title="hnsw.ef_search trade-off (labels = ef_search)")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    vp = [p for p in parts if "variants" in p and not p.get("tag")]
    if vp:
        p = vp[-1]
        names = [v["variant"] for v in p["variants"]]
        vals = [v["total_ms"]["p50"] for v in p["variants"]]
        p95s = [v["total_ms"]["p95"] for v in p["variants"]]
        for setting, sb in p.get("shared_buffers", {}).items():
            names.append(f"product, shared_buffers={setting} (warm)")
            vals.append(sb["total_ms"]["p50"])
            p95s.append(sb["total_ms"]["p95"])
        y = np.arange(len(names))
        ax.barh(y - 0.2, vals, 0.4, label="p50")
        ax.barh(y + 0.2, p95s, 0.4, label="p95")
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="ms (log)", xscale="log",
               title=f"Query-path variants at {p['n']:,} chunks (product ef_search unless named)")
        ax.legend(fontsize=7)
    ax = axes[1][1]
    labels = [f"{p['embedder']}\n{p['n']:,}" for p in parts]
    x = np.arange(len(parts))
    ax.bar(x - 0.2, [p["library_wide"]["embed_ms"]["p50"] for p in parts], 0.4,
           color="tab:green", label="embed p50")
    ax.bar(x + 0.2, [p["library_wide"]["sql_ms"]["p50"] for p in parts], 0.4,
           color="tab:purple", label="SQL p50 (library-wide)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set(yscale="log", ylabel="ms", title="Split: query embedding vs SQL (p50)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- main ----------------------------------------------------------------------------------------


def _pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k chunks, few queries (< 30 s)")
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--openai-sizes", default="1000,10000,100000")
    ap.add_argument("--skip-openai", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--corpus", choices=("fixtures", "docstrings"), default="fixtures",
                    help="chunk text source: the two fixture transcripts (default), or the "
                    "installed packages' docstrings, one topic per module "
                    "(_corpus.docstring_sources)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--openai-queries", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ef", default=",".join(map(str, EF_SEARCH)))
    ap.add_argument("--alt-index", default="16:128,24:128", help="m:ef_construction,...")
    ap.add_argument("--alt-index-max", type=int, default=100_000,
                    help="try --alt-index only up to this size")
    ap.add_argument("--shared-buffers-min", type=int, default=100_000)
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--variant-rounds", type=int, default=3,
                    help="interleaved rounds of the query-path variants (pooled percentiles)")
    ap.add_argument("--maintenance-work-mem", default=None)
    ap.add_argument("--parallel-workers", type=int, default=1,
                    help="max_parallel_maintenance_workers for the index build")
    ap.add_argument("--report", action="store_true", help="only rebuild the report")
    ap.add_argument("--shared-buffers", default=None,
                    help="run the whole size with this server shared_buffers (e.g. 6GB)")
    ap.add_argument("--name", default=None,
                    help="results name (default retrieval[_quick]); parts go to <name>_parts/")
    ap.add_argument("--tag", default="",
                    help="label of this configuration; parts are saved as <embedder>_<n>_<tag>")
    ap.add_argument("--alt-only", action="store_true",
                    help="only build the --alt-index indexes and sweep them; merge the results "
                         "into the size's existing part (skips the default index)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.openai_sizes = "1000", "1000"
        args.queries, args.openai_queries, args.warmup, args.repeats = 30, 6, 5, 1
        args.ef, args.alt_index, args.variant_rounds = "40,100", "", 1
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.openai_sizes = [int(s) for s in args.openai_sizes.split(",") if s]
    args.ef = [int(s) for s in args.ef.split(",") if s]
    args.alt_index = _pairs(args.alt_index)
    return args


async def amain(args) -> None:
    name = args.name or ("retrieval_quick" if args.quick else "retrieval")
    parts_dir = RESULTS / f"{name}_parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    if args.report:
        build_report(parts_dir, name, machine_info())
        return
    from backtalk.store import LocalEmbedder, OpenAIEmbedder

    FakeOpenAI, _ = _fakes()
    started = time.perf_counter()
    settings = dict(SERVER_SETTINGS)
    if args.shared_buffers:
        settings["shared_buffers"] = args.shared_buffers
    with EmbeddedPostgres(settings) as pg:
        info = None
        local = None

        def local_factory():
            nonlocal local
            local = local or LocalEmbedder()
            return local

        jobs = []
        if not args.skip_local:
            jobs += [("local", n) for n in args.sizes]
        if not args.skip_openai:
            jobs += [("openai", n) for n in args.openai_sizes]
        for kind, n in jobs:
            if kind == "local":
                part = await bench_size(pg, kind, n, args, local_factory, None)
            else:
                with FakeOpenAI(embedding_delay_s=0.2) as fake:
                    part = await bench_size(
                        pg, kind, n, args,
                        lambda fake=fake: OpenAIEmbedder("sk-bench", base_url=fake.base_url),
                        fake,
                    )
                    part["fake_openai"] = {"embedding_delay_s": 0.2,
                                           "requests": len(fake.embedding_requests)}
            info = info or machine_info(pg.uri(f"bench_{kind}_{n}"))
            part["machine"] = info
            part["tag"] = args.tag
            part["server_settings"] = settings
            path = parts_dir / f"{kind}_{n}{'_' + args.tag if args.tag else ''}.json"
            if args.alt_only and path.exists():
                merged = json.loads(path.read_text())
                done = {(ip["m"], ip["ef_construction"]) for ip in part["index_params"]}
                merged["index_params"] = [
                    ip for ip in merged.get("index_params", [])
                    if (ip["m"], ip["ef_construction"]) not in done
                ] + part["index_params"]
                part = merged
            path.write_text(json.dumps(part, indent=2) + "\n")
            import psycopg

            with psycopg.connect(pg.uri(), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE bench_{kind}_{n} WITH (FORCE)")
        build_report(parts_dir, name, info or machine_info())
    log(f"done in {time.perf_counter() - started:.1f} s")


def main(argv=None) -> None:
    stop_on_sigterm()
    asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    main()
