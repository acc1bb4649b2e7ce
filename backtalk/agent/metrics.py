"""Prometheus metrics of conversations (``prometheus-client``), served at ``/metrics``.

The metrics live in the process that runs the conversation. ``backtalk serve`` runs
conversations in worker processes and sets ``PROMETHEUS_MULTIPROC_DIR`` for all of
them before any metric is created, so that the server's ``/metrics`` adds up every
process (prometheus-client's multiprocess mode); ``backtalk talk`` uses the default
registry of its one process.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "RETRIEVAL_FAILURES",
    "SESSIONS_ACTIVE",
    "SESSIONS_REJECTED",
    "SESSIONS_STARTED",
    "TURN_LATENCY",
    "observe_turn",
]

#: Stages of a turn's latency breakdown (:class:`backtalk.agent.latency.TurnLatency`).
TURN_STAGES = (
    "end_of_turn_s",
    "stt_s",
    "retrieval_s",
    "llm_s",
    "first_sentence_s",
    "tts_s",
    "total_s",
)

SESSIONS_ACTIVE = Gauge(
    "backtalk_sessions_active",
    "Conversations running now.",
    multiprocess_mode="livesum",
)
SESSIONS_STARTED = Counter("backtalk_sessions_started", "Conversations started.")
SESSIONS_REJECTED = Counter(
    "backtalk_sessions_rejected",
    "Session starts refused, by reason (rate_limit, capacity, draining).",
    ["reason"],
)
#: Buckets, seconds: voice turns live between ~0.3 s and a few seconds.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TURN_LATENCY = Histogram(
    "backtalk_turn_latency_seconds",
    "Each turn's latency by stage (end of the user's speech to the bot's first audio).",
    ["stage"],
    buckets=_BUCKETS,
)
RETRIEVAL_FAILURES = Counter(
    "backtalk_retrieval_failures",
    "Turns whose retrieval timed out or failed (answered without excerpts).",
)


def observe_turn(message: dict) -> None:
    """Record one turn's breakdown.

    Args:
        message: The ``turn-latency`` payload (seconds per stage; None for a stage
            that did not run).
    """
    for stage in TURN_STAGES:
        value = message.get(stage)
        if isinstance(value, int | float):
            TURN_LATENCY.labels(stage=stage.removesuffix("_s")).observe(value)
