"""Embedders: WordLlama offline from the wheel; OpenAI through the real SDK."""

import subprocess
import sys

import numpy as np
import pytest
from fakes import FakeOpenAI

from backtalk.errors import EmbeddingError
from backtalk.store.embedders import OPENAI_MAX_BATCH, LocalEmbedder, OpenAIEmbedder

OFFLINE = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network access attempted while loading the local embedder")
socket.socket.connect = refuse
socket.create_connection = refuse
from backtalk.store.embedders import LocalEmbedder
vectors = LocalEmbedder().embed(["what is the learning rate", "how do I bake bread"])
print(vectors.shape)
"""


def test_local_embedder_loads_from_the_wheel_without_network():
    # A fresh interpreter where any network connection raises, and no hub cache.
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(2, 256)")


def test_local_embeddings_are_unit_vectors_that_rank_by_meaning(local_embedder):
    v = local_embedder.embed(
        ["choosing the learning rate", "pick a step size for training", "sourdough starter"]
    )
    assert v.shape == (3, 256) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert local_embedder.embed([]).shape == (0, 256)


def test_openai_embedder_batches_at_the_api_limit():
    texts = [f"chunk number {i}" for i in range(OPENAI_MAX_BATCH + 10)]
    with FakeOpenAI() as fake:
        embedder = OpenAIEmbedder("sk-test", base_url=fake.base_url)
        vectors = embedder.embed(texts)
        sizes = [len(r["input"]) for r in fake.embedding_requests]
    assert vectors.shape == (len(texts), 1536)
    assert sizes == [OPENAI_MAX_BATCH, 10]


async def test_openai_embedder_failures_are_named_without_the_key():
    with FakeOpenAI(fail_next=10, fail_status=401) as fake:
        embedder = OpenAIEmbedder("sk-test-LEAKCHECK", base_url=fake.base_url)
        with pytest.raises(EmbeddingError) as info:
            await embedder.aembed(["hello"])
    assert "OPENAI_API_KEY" in str(info.value) and "LEAKCHECK" not in str(info.value)


def test_local_embedder_model_id_names_its_dimension():
    assert LocalEmbedder(dimensions=128).model == "wordllama-l2_supercat-128"
