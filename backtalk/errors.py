"""The exception hierarchy of Backtalk.

Every error a user can cause or fix derives from :class:`BacktalkError`. Its message
says what failed, why, and what to do (the style of youtube-transcript-api's
``CAUSE_MESSAGE``). The CLI maps these to exit codes: :class:`UsageError` subclasses
exit with 2 (bad input, nothing done), everything else with 1 (runtime failure).
Inside a running pipeline errors are reported with ``push_error`` and never raised.
"""

from __future__ import annotations

__all__ = [
    "BacktalkError",
    "CaptionFileError",
    "ConfigError",
    "EmbedderMismatchError",
    "EmbeddingError",
    "InvalidVideoIdError",
    "MissingKeysError",
    "StoreError",
    "TranscriptUnavailableError",
    "UsageError",
    "VideoNotFoundError",
]


class BacktalkError(Exception):
    """Root of all Backtalk errors.

    Attributes:
        retryable: True when the same call may succeed later without any change
            by the user (a network blip, a rate limit). Follows LiveKit's
            ``APIError.retryable``.
    """

    retryable: bool = False


class UsageError(BacktalkError):
    """The user's input is invalid; nothing was done. The CLI exits with status 2."""


class ConfigError(UsageError):
    """A setting is missing or invalid."""


class MissingKeysError(ConfigError):
    """One or more provider keys needed for the requested action are not set.

    Args:
        missing: ``{ENV_VAR_NAME: "what needs it"}`` for each missing key.
    """

    def __init__(self, missing: dict[str, str]):
        self.missing = dict(missing)
        lines = [f"  {name}: needed for {purpose}" for name, purpose in self.missing.items()]
        super().__init__(
            "Missing settings:\n"
            + "\n".join(lines)
            + "\nSet them in the environment or in a .env file (see .env.example)."
        )


class InvalidVideoIdError(UsageError):
    """A string is neither a YouTube URL, an 11-character video id, nor a caption file.

    Args:
        value: The input as given.
        reason: Why it was rejected.
    """

    def __init__(self, value: str, reason: str):
        self.value = value
        self.reason = reason
        super().__init__(f"{value!r}: {reason}")


class CaptionFileError(UsageError):
    """A caption file could not be read or parsed.

    Args:
        path: The file as given.
        reason: Why it was rejected.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class VideoNotFoundError(UsageError):
    """A video named by the user is not in the store.

    Args:
        video: The id or input the user gave.
    """

    def __init__(self, video: str):
        self.video = video
        super().__init__(
            f"{video!r} is not in the library. Run `backtalk videos` to list what is, "
            f"or `backtalk ingest {video}` to add it."
        )


class TranscriptUnavailableError(BacktalkError):
    """YouTube gave no usable transcript for a video.

    Args:
        video_id: The 11-character YouTube id.
        cause: A short, user-facing statement of what YouTube said.
        remedy: What the user can do about it.
        stop_batch: True when continuing with other videos would only make things
            worse (YouTube is blocking this IP), so a batch ingest should stop.
    """

    def __init__(self, video_id: str, cause: str, remedy: str, *, stop_batch: bool = False):
        self.video_id = video_id
        self.cause = cause
        self.remedy = remedy
        self.stop_batch = stop_batch
        super().__init__(f"{video_id}: {cause} {remedy}")


class EmbeddingError(BacktalkError):
    """The embedding provider failed (after retries)."""

    retryable = True


class EmbedderMismatchError(ConfigError):
    """The store was built with a different embedding model or dimension.

    Mixing embeddings of two models in one index gives meaningless similarities,
    so Backtalk refuses instead.

    Args:
        store_model: Model recorded in the store.
        store_dimensions: Its vector length.
        model: The embedder asked for now.
        dimensions: Its vector length.
    """

    def __init__(self, store_model: str, store_dimensions: int, model: str, dimensions: int):
        self.store_model = store_model
        self.store_dimensions = store_dimensions
        self.model = model
        self.dimensions = dimensions
        super().__init__(
            f"This library was built with the embedding model {store_model!r} "
            f"({store_dimensions} dimensions), but {model!r} ({dimensions} dimensions) "
            "is configured. Set BACKTALK_EMBEDDER back to match the library, or use another "
            "library (BACKTALK_DATA_DIR or DATABASE_URL) for the new model."
        )


class StoreError(BacktalkError):
    """The database could not be reached or refused an operation."""

    retryable = True
