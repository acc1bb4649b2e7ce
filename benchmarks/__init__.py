"""Backtalk benchmarks: ``python -m benchmarks.retrieval`` and ``python -m benchmarks.ingest``."""
