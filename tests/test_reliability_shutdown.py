"""Reliability case R12: a conversation that ends closes its Deepgram sockets, for good.

The voice conversation of ``tests/test_e2e_voice.py`` (real Pipecat Deepgram services
against the loopback fake Deepgram) ends the two ways a call ends: the participant
leaves (the transport's client disconnects), or the bot ends it (an ``EndFrame``, as
the session limits do). The catalogue's criteria: every websocket closed within
Pipecat's ``WS_CLOSE_TIMEOUT`` (2 s) of the end, no reconnect attempt afterwards
(longer than Pipecat's 4 s reconnect backoff is waited), nothing still open later
(pipecat#4409).
"""

from __future__ import annotations

import asyncio

import pytest
import test_e2e_voice as e2e
from fakes import FakeDeepgram, FakeOpenAI
from pipecat.frames.frames import EndFrame
from processes import wait_until
from test_e2e_voice import ingest_lecture, running_conversation, wait_greeted

from backtalk.config import Settings
from backtalk.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

fake_openai = e2e.fake_openai
fake_deepgram = e2e.fake_deepgram
services_env = e2e.services_env

#: Pipecat's ``WS_CLOSE_TIMEOUT``: the catalogue's bound on closing each socket, seconds.
WS_CLOSE_TIMEOUT_S = 2.0
#: Longer than Pipecat's first reconnect backoff (4 s): a reconnect would have happened.
AFTERWARDS_S = 5.0


@pytest.mark.parametrize("stt", ["deepgram", "deepgram_flux"], ids=["nova", "flux"])
@pytest.mark.parametrize("ending", ["participant-leaves", "end-frame"])
async def test_R12_clean_shutdown_closes_every_socket_and_never_reconnects(
    ending: str,
    stt: str,
    monkeypatch,
    services_env,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
    store: Store,
):
    monkeypatch.setenv("BACKTALK_STT_SERVICE", stt)
    listen = "/v2/listen" if stt == "deepgram_flux" else "/v1/listen"
    ingest_lecture()
    async with running_conversation(Settings(), store) as s:
        await wait_greeted(s, fake_deepgram)
        assert fake_deepgram.open_sockets(listen) == 1
        assert fake_deepgram.open_sockets("/v1/speak") == 1
        attempts = {p: fake_deepgram.connection_attempts(p) for p in (listen, "/v1/speak")}
        if ending == "end-frame":
            await s.conversation.worker.queue_frame(EndFrame())
        # Leaving the block: the client disconnects and the runner has ended.
    await wait_until(
        lambda: fake_deepgram.open_sockets() == 0, WS_CLOSE_TIMEOUT_S, "every socket closed"
    )
    await asyncio.sleep(AFTERWARDS_S)
    assert fake_deepgram.open_sockets() == 0
    assert {p: fake_deepgram.connection_attempts(p) for p in attempts} == attempts
