"""Backup providers (reliability R6, R9, R10 with a backup): a failed turn is answered anyway.

The conversation of ``tests/test_reliability_llm.py`` (typed turns through the real
pipeline) with a second loopback OpenAI server as the backup LLM
(``BACKTALK_BACKUP_LLM_BASE_URL``), and the voice conversation of
``tests/test_e2e_voice.py`` with a second fake Deepgram as the backup STT and TTS
(``BACKTALK_BACKUP_DEEPGRAM_BASE_URL``). Faults are injected by the fakes; what is
asserted is what the user hears and which server answered.

What Backtalk does: ``backtalk/agent/failover.py``.
"""

from __future__ import annotations

import time

import pytest
import test_conversation_text as text_conv
import test_e2e_voice as e2e
from fakes import FakeDeepgram, FakeOpenAI
from processes import wait_until
from test_conversation_text import conversation, last_user_text, say
from test_e2e_voice import (
    Q1_TEXT,
    Q1_WAV,
    TURN_TIMEOUT_S,
    ingest_lecture,
    request_for,
    running_conversation,
    wait_greeted,
)
from test_reliability_llm import A1, A2, Q1, Q2, VIDEO, answer, heard, spoken

from backtalk.agent.recovery import LLM_APOLOGY
from backtalk.config import Settings
from backtalk.store import Store

pytestmark = pytest.mark.integration

fakes = text_conv.fakes
fake_openai = e2e.fake_openai
fake_deepgram = e2e.fake_deepgram
services_env = e2e.services_env

BACKUP_MODEL = "backup-model"
#: The first-token budget in these tests, seconds (the default is 5).
FIRST_TOKEN_S = 1.0
#: How long a stalled request withholds its first token, seconds.
STALL_S = 8.0


@pytest.fixture
def backup_llm(monkeypatch):
    """A second OpenAI-compatible server, configured as the backup LLM."""
    with FakeOpenAI(reply=answer) as backup:
        monkeypatch.setenv("BACKTALK_BACKUP_LLM_BASE_URL", backup.base_url)
        monkeypatch.setenv("BACKTALK_BACKUP_LLM_MODEL", BACKUP_MODEL)
        yield backup


def models(fake: FakeOpenAI) -> list[str]:
    return [r.get("model") for r in fake.chat_requests]


def system_prompt(request: dict) -> str:
    return next(m["content"] for m in request["messages"] if m["role"] == "system")


async def test_R10_rate_limited_turn_is_answered_by_the_backup_llm(fakes, backup_llm):
    fake, dg = fakes
    fake.reply = answer
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(10, 429, retry_after_s=0.2)
        await say(conv, Q1)
        await heard(dg, A1, "the answer, from the backup")
        primary_requests = list(fake.chat_requests)
        (backup_request,) = backup_llm.chat_requests

        # The next turn stays on the backup (the primary is still rate limited).
        await say(conv, Q2)
        await heard(dg, A2, "the next answer")
        assert conv.stages["recovery"].apologies == 0
        assert conv.stages.llm.failovers == 1
    # The primary was tried (its request and the SDK's 2 retries), then the same turn
    # went to the backup once, with the same conversation and system prompt.
    assert [last_user_text(r) for r in primary_requests] == [Q1] * 3
    assert last_user_text(backup_request) == Q1
    assert backup_request["messages"] == primary_requests[0]["messages"]
    assert models(backup_llm) == [BACKUP_MODEL, BACKUP_MODEL]
    assert len(fake.chat_requests) == 3
    assert LLM_APOLOGY not in spoken(dg)
    assert spoken(dg).count(A1) == 1


async def test_R9_backup_llm_answers_when_the_first_token_never_comes(
    fakes, backup_llm, monkeypatch
):
    fake, dg = fakes
    fake.reply = answer
    monkeypatch.setenv("BACKTALK_LLM_FIRST_TOKEN_S", str(FIRST_TOKEN_S))
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.stall_chat(10, STALL_S)
        asked = time.monotonic()
        await say(conv, Q1)
        answered = await heard(dg, A1, "the answer, from the backup")
        assert conv.stages["recovery"].apologies == 0
    print(f"\nR9 with a backup: answered {answered - asked:.2f} s after the question")
    # The primary's attempt and its re-issue, each given the budget; then the backup,
    # long before the stall would have ended.
    assert [last_user_text(r) for r in fake.chat_requests] == [Q1, Q1]
    assert [last_user_text(r) for r in backup_llm.chat_requests] == [Q1]
    assert answered - asked < STALL_S
    assert LLM_APOLOGY not in spoken(dg)


async def test_R10_when_the_backup_fails_too_the_user_hears_one_apology(
    fakes, backup_llm, monkeypatch
):
    fake, dg = fakes
    fake.reply = answer
    monkeypatch.setenv("BACKTALK_LLM_MAX_RETRIES", "0")
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(10, 503)
        backup_llm.fail_chat(1, 500)
        await say(conv, Q1)
        await heard(dg, LLM_APOLOGY, "the apology")
        # No ping-pong between the two within the turn: one request each.
        assert [last_user_text(r) for r in fake.chat_requests] == [Q1]
        assert [last_user_text(r) for r in backup_llm.chat_requests] == [Q1]

        # The conversation goes on: the next question is answered (by the backup,
        # whose one failure is over).
        await say(conv, Q2)
        await heard(dg, A2, "the next answer")
        assert conv.stages["recovery"].apologies == 1
    assert A1 not in spoken(dg)
    assert spoken(dg).count(LLM_APOLOGY) == 1
    assert len(fake.chat_requests) == 1


async def test_backup_llm_hands_back_to_the_primary_after_the_failback_time(
    fakes, backup_llm, monkeypatch
):
    fake, dg = fakes
    fake.reply = answer
    monkeypatch.setenv("BACKTALK_BACKUP_LLM_FAILBACK_S", "0")
    monkeypatch.setenv("BACKTALK_LLM_MAX_RETRIES", "0")
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(1, 500)
        await say(conv, Q1)
        await heard(dg, A1, "the answer, from the backup")
        await say(conv, Q2)
        await heard(dg, A2, "the next answer, from the primary")
    assert [last_user_text(r) for r in fake.chat_requests] == [Q1, Q2]
    assert [last_user_text(r) for r in backup_llm.chat_requests] == [Q1]


def test_an_empty_backup_setting_means_no_backup(monkeypatch):
    monkeypatch.setenv("BACKTALK_BACKUP_LLM_BASE_URL", "")  # "KEY=" left in .env
    monkeypatch.setenv("BACKTALK_BACKUP_DEEPGRAM_BASE_URL", "")
    settings = Settings()
    assert settings.backup_llm_base_url is None
    assert settings.backup_deepgram_base_url is None


# -- Deepgram: a backup STT and TTS ---------------------------------------------------------


@pytest.fixture
def backup_deepgram(monkeypatch):
    """A second fake Deepgram, configured as the backup STT and TTS."""
    with FakeDeepgram(tts_secs_per_char=e2e.TTS_SECS_PER_CHAR) as backup:
        monkeypatch.setenv("BACKTALK_BACKUP_DEEPGRAM_BASE_URL", backup.base_url)
        yield backup


@pytest.mark.e2e
async def test_R6_refused_deepgram_key_the_backup_hears_and_speaks(
    services_env,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
    backup_deepgram: FakeDeepgram,
    store: Store,
):
    fake_openai.reply = "He says to start small, about four minutes in."
    fake_deepgram.refuse(100, status=401)
    ingest_lecture()
    async with running_conversation(Settings(), store) as s:
        await wait_greeted(s, backup_deepgram)
        stopped_at = await s.ask(backup_deepgram, Q1_WAV, Q1_TEXT)
        await wait_until(request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the q1 request")
        await s.reply_heard(since=stopped_at, what="the answer, spoken by the backup")
    # The refused key was tried once per socket (no retry loop); the backup did the rest.
    assert fake_deepgram.connection_attempts("/v1/listen") == 1
    assert fake_deepgram.connection_attempts("/v1/speak") == 1
    assert fake_deepgram.listen_connections == 0
    assert backup_deepgram.listen_connections == 1
    assert any("start small" in t for t in backup_deepgram.spoken_texts), (
        backup_deepgram.spoken_texts
    )


@pytest.mark.e2e
async def test_R5_dropped_listen_socket_the_backup_transcribes_at_once(
    services_env,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
    backup_deepgram: FakeDeepgram,
    store: Store,
):
    fake_openai.reply = "He says to start small, about four minutes in."
    ingest_lecture()
    async with running_conversation(Settings(), store) as s:
        await wait_greeted(s, fake_deepgram)
        assert fake_deepgram.drop("/v1/listen", code=1011) == 1
        dropped_at = time.monotonic()
        # Asked at once: the primary would be back only after its 4 s backoff.
        stopped_at = await s.ask(backup_deepgram, Q1_WAV, Q1_TEXT)
        await wait_until(request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the q1 request")
        transcribed_at = time.monotonic()
        await s.reply_heard(since=stopped_at, what="the answer")
    print(f"\nR5 with a backup: q1 transcribed {transcribed_at - dropped_at:.2f} s after the drop")
    assert backup_deepgram.audio_bytes_received > 0
