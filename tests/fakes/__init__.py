"""Loopback fakes of Deepgram, OpenAI and Daily's REST API: test doubles speaking the real wire protocols.

Each fake is an aiohttp server on 127.0.0.1 (OS-assigned port) running in a background
thread, so the real SDKs and Pipecat services can be pointed at it from sync tests,
async tests and benchmarks alike.
"""

from ._thread_server import ThreadedAiohttpServer
from .daily_server import FakeDaily
from .deepgram_server import FakeDeepgram
from .openai_server import FakeOpenAI, FakeReply, fake_embedding

__all__ = [
    "FakeDaily",
    "FakeDeepgram",
    "FakeOpenAI",
    "FakeReply",
    "ThreadedAiohttpServer",
    "fake_embedding",
]
