"""Every engine Backtalk opens searches the HNSW index with the same candidate list."""

import pytest
from conftest import sqlalchemy_url
from sqlalchemy import text

from backtalk.store.engine import (
    HNSW_EF_SEARCH,
    make_async_engine,
    make_engine,
    make_retrieval_engine,
)


def test_the_cli_engine_searches_with_backtalks_ef_search(database_url):
    # `backtalk search` without --video is the library-wide search: pgvector's default
    # candidate list (40) loses recall@5 there (benchmarks/RETRIEVAL.md).
    engine = make_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW hnsw.ef_search")).scalar() == str(HNSW_EF_SEARCH)
    finally:
        engine.dispose()


@pytest.mark.parametrize("factory", [make_async_engine, make_retrieval_engine])
async def test_async_engines_search_with_backtalks_ef_search(database_url, factory):
    engine = factory(sqlalchemy_url(database_url))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW hnsw.ef_search"))).scalar() == str(HNSW_EF_SEARCH)
    finally:
        await engine.dispose()
