"""Ingest jobs for the page: one video at a time in a worker thread, with progress.

``POST /api/videos`` validates the input *before* anything is fetched (a bad link is
a 400 and nothing is written), then queues a job; ``GET /api/jobs/{id}`` reports its
stage as the ingest advances (the same ``fetch``/``embed``/``store`` stages as the
CLI's progress bar). The ingest itself is :func:`backtalk.ingest.ingest_with_settings`,
so the page gets the CLI's behaviour exactly: one transaction per video (never half
written), and the CLI's message and remedy for every youtube-transcript-api failure.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from loguru import logger

from backtalk.config import Settings
from backtalk.errors import BacktalkError
from backtalk.ingest import YouTubeSource, ingest_with_settings, parse_video_id
from backtalk.server.schemas import JobOut, VideoOut
from backtalk.store import Embedder, Store

__all__ = ["IngestJobs"]

#: Finished jobs kept for ``GET /api/jobs/{id}``; older ones are forgotten.
KEEP_JOBS = 100


@dataclass
class _Job:
    id: str
    input: str
    source: YouTubeSource
    status: str = "queued"
    stage: str | None = None
    done: int = 0
    total: int | None = None
    error: str | None = None
    video: VideoOut | None = None

    def out(self) -> JobOut:
        return JobOut(
            id=self.id,
            input=self.input,
            key=self.source.key,
            status=self.status,  # type: ignore[arg-type]
            stage=self.stage,  # type: ignore[arg-type]
            done=self.done,
            total=self.total,
            error=self.error,
            video=self.video,
        )


class IngestJobs:
    """Runs ingest jobs one at a time, off the event loop.

    One worker thread: an ingest embeds and writes in bursts of CPU, and the
    conversations sharing the process come first.

    Args:
        settings: Languages, proxy, chunking.
        store: The library.
        embedder: The library's embedder.
    """

    def __init__(self, settings: Settings, store: Store, embedder: Embedder):
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backtalk-ingest")

    def submit(self, value: str) -> JobOut:
        """Validate ``value`` and queue its ingest.

        Args:
            value: A YouTube URL (any form) or an 11-character video id.

        Returns:
            The queued job.

        Raises:
            InvalidVideoIdError: ``value`` is not a YouTube video (nothing is queued).
        """
        video_id = parse_video_id(value)
        job = _Job(
            id=uuid.uuid4().hex, input=value.strip(), source=YouTubeSource(video_id, value.strip())
        )
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_JOBS:
                self._jobs.popitem(last=False)
        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._executor, self._run, job)
        return job.out()

    def get(self, job_id: str) -> JobOut | None:
        """The job's state now, or None if there is no such job."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.out() if job is not None else None

    def _run(self, job: _Job) -> None:
        def progress(_key: str, stage: str, done: int, total: int) -> None:
            with self._lock:
                job.stage, job.done, job.total = stage, done, total

        with self._lock:
            job.status = "running"
        try:
            report = ingest_with_settings(
                self._settings,
                self._store,
                [job.source],
                embedder=self._embedder,
                progress=progress,
            )
            (outcome,) = report.outcomes
            if outcome.status in ("failed", "skipped"):
                error = str(outcome.error) if outcome.error else "The ingest failed."
                self._finish(job, error=error)
                return
            videos = self._store.find_videos([job.source.key])
            self._finish(job, video=VideoOut.of(videos[job.source.key]))
        except BacktalkError as exc:
            self._finish(job, error=str(exc))
        except Exception as exc:  # a bug must fail the job, not kill the worker thread
            logger.exception(f"Ingest job {job.id} failed")
            self._finish(job, error=f"The ingest failed unexpectedly ({type(exc).__name__}).")

    def _finish(self, job: _Job, *, error: str | None = None, video: VideoOut | None = None):
        with self._lock:
            job.status = "failed" if error else "done"
            job.error, job.video = error, video

    def close(self) -> None:
        """Stop taking jobs; a running one finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
