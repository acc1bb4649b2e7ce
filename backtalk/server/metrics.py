"""``/metrics``: Prometheus text of this process, or of every worker process.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``backtalk serve`` sets it for itself and its
workers), the metrics of all processes are collected from that directory
(prometheus-client's multiprocess mode); otherwise the default registry is served.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

__all__ = ["CONTENT_TYPE_LATEST", "metrics_text"]


def metrics_text() -> bytes:
    """The Prometheus exposition of every Backtalk process's metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
