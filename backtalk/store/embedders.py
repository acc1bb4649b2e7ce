"""Embedders: text → unit vectors for pgvector.

Two implementations of :class:`Embedder`:

* :class:`LocalEmbedder` — WordLlama (``wordllama``, MIT), 256-d, no network, no torch;
  a query embeds in tens of microseconds, so retrieval adds almost nothing to a turn.
* :class:`OpenAIEmbedder` — OpenAI ``text-embedding-3-small``, 1536-d, batched
  (≤ 2048 inputs per request, the API's limit).

This module is the only place that calls an embeddings API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from backtalk.errors import ConfigError, EmbeddingError

__all__ = ["Embedder", "LocalEmbedder", "OpenAIEmbedder", "make_embedder"]

logger = logging.getLogger("backtalk.embedders")

#: OpenAI's embeddings endpoint takes at most 2048 inputs per request
#: (https://platform.openai.com/docs/api-reference/embeddings/create).
OPENAI_MAX_BATCH = 2048
#: ... and at most 300k tokens per request; we budget by characters (≈4 per English
#: token) with a margin.
OPENAI_MAX_BATCH_CHARS = 600_000


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of a fixed length.

    Attributes:
        model: Identifies the model (and its dimension) in the store; a store only
            ever holds vectors of one ``model``.
        dimensions: Length of every vector.
    """

    model: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed a batch of texts.

        Args:
            texts: N strings.

        Returns:
            ``float32`` array of shape ``(N, dimensions)``, rows of unit L2 norm.

        Raises:
            EmbeddingError: the provider failed after retries.
        """
        ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Asynchronous :meth:`embed`, for the voice path."""
        ...


class LocalEmbedder:
    """WordLlama ``l2_supercat`` at 256 dimensions, loaded from the wheel, offline.

    WordLlama's ``load()`` looks for its tokenizer under ``wordllama/tokenizer/`` while
    the wheel ships it in ``wordllama/tokenizers/``, and then tries to download it. We
    point its cache at the package's own folder (which has the ``weights/`` and
    ``tokenizers/`` layout it expects) and disable downloads, so loading never touches
    the network.

    Args:
        dimensions: 64, 128, 256 (the default; the weights in the wheel) — lower
            values truncate the Matryoshka embedding.
    """

    def __init__(self, dimensions: int = 256):
        # wordllama calls logging.basicConfig(level=INFO) on import, which would make
        # every library's INFO logs appear on stderr; undo that.
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        import wordllama

        root.handlers[:] = handlers
        root.setLevel(level)

        package_dir = Path(wordllama.__file__).parent
        try:
            self._model = wordllama.WordLlama.load(
                config="l2_supercat",
                dim=256,
                trunc_dim=dimensions if dimensions != 256 else None,
                cache_dir=package_dir,
                disable_download=True,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"The local embedder could not load WordLlama from {package_dir} ({exc}). "
                "Reinstall the `wordllama` package."
            ) from exc
        self.dimensions = dimensions
        self.model = f"wordllama-l2_supercat-{dimensions}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts on this CPU (about 40 µs per short query). See :meth:`Embedder.embed`."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self._model.embed(list(texts), norm=True)
        return np.asarray(vectors, dtype=np.float32)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Same as :meth:`embed`: a query embeds faster than a thread hop would take."""
        return self.embed(texts)


def _batches(texts: Sequence[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in texts:
        if batch and (len(batch) >= OPENAI_MAX_BATCH or chars + len(text) > OPENAI_MAX_BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text)
    if batch:
        yield batch


class OpenAIEmbedder:
    """OpenAI embeddings (default ``text-embedding-3-small``, 1536-d).

    Retries (2, with exponential backoff honouring ``Retry-After``) are the openai
    SDK's own; each request times out after ``timeout_s``.

    Args:
        api_key: OpenAI key.
        model: Embedding model name.
        base_url: OpenAI-compatible endpoint ending in ``/v1``; None for OpenAI.
        dimensions: Vector length; 1536 for ``text-embedding-3-small``.
        timeout_s: Per-request timeout, seconds.
    """

    def __init__(
        self,
        api_key: str,
        *,
        model: str = "text-embedding-3-small",
        base_url: str | None = None,
        dimensions: int = 1536,
        timeout_s: float = 30.0,
    ):
        import openai  # imported on use: the local embedder needs none of it

        #: Texts the ingest job may send per request (one round trip instead of 8).
        self.max_batch = OPENAI_MAX_BATCH
        self.model = model
        self.dimensions = dimensions
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=2
        )
        self._aclient = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=2
        )

    def _to_array(self, data: list, expected: int) -> np.ndarray:
        rows = sorted(data, key=lambda item: item.index)
        array = np.asarray([row.embedding for row in rows], dtype=np.float32)
        if array.shape != (expected, self.dimensions):
            raise EmbeddingError(
                f"The embeddings endpoint returned shape {array.shape}, "
                f"expected ({expected}, {self.dimensions}) for model {self.model!r}."
            )
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        return array / np.where(norms == 0, 1, norms)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches of ≤ 2048. See :meth:`Embedder.embed`."""
        parts = []
        for batch in _batches(texts):
            try:
                response = self._client.embeddings.create(
                    model=self.model, input=batch, dimensions=self.dimensions
                )
            except _openai_error() as exc:
                raise EmbeddingError(_describe(exc)) from exc
            parts.append(self._to_array(response.data, len(batch)))
        if not parts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.concatenate(parts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Asynchronous :meth:`embed`; cancelling it closes the HTTP request."""
        parts = []
        for batch in _batches(texts):
            try:
                response = await self._aclient.embeddings.create(
                    model=self.model, input=batch, dimensions=self.dimensions
                )
            except _openai_error() as exc:
                raise EmbeddingError(_describe(exc)) from exc
            parts.append(self._to_array(response.data, len(batch)))
        return np.concatenate(parts) if parts else np.zeros((0, self.dimensions), np.float32)


def _openai_error() -> type[Exception]:
    import openai

    return openai.OpenAIError


def _describe(exc: Exception) -> str:
    """A user-facing summary of an OpenAI error that never includes the key."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return "OpenAI rejected OPENAI_API_KEY (401). Check the key in your .env."
    if isinstance(exc, openai.RateLimitError):
        return "OpenAI rate-limited the embedding requests (429) after retries. Try again later."
    if isinstance(exc, openai.APIConnectionError):
        return "Could not reach the OpenAI embeddings endpoint (check OPENAI_BASE_URL/network)."
    status = getattr(exc, "status_code", None)
    return f"OpenAI embeddings request failed ({type(exc).__name__}, status {status})."


def make_embedder(
    kind: str,
    *,
    openai_api_key: str | None = None,
    openai_base_url: str | None = None,
    openai_model: str = "text-embedding-3-small",
) -> Embedder:
    """Build the embedder a setting names.

    Args:
        kind: ``local`` or ``openai`` (``BACKTALK_EMBEDDER``).
        openai_api_key: Needed for ``openai``.
        openai_base_url: Optional OpenAI-compatible endpoint.
        openai_model: OpenAI embedding model.

    Raises:
        ConfigError: unknown kind, or ``openai`` without a key.
    """
    if kind == "local":
        return LocalEmbedder()
    if kind == "openai":
        if not openai_api_key:
            raise ConfigError("BACKTALK_EMBEDDER=openai needs OPENAI_API_KEY.")
        return OpenAIEmbedder(openai_api_key, model=openai_model, base_url=openai_base_url)
    raise ConfigError(f"BACKTALK_EMBEDDER={kind!r} is not one of: local, openai.")
