"""Reliability cases R9 and R10: the OpenAI LLM stalls, or answers 429/500/400.

Backtalk's conversation (``build_conversation``: aggregators, RAG over a real embedded
Postgres, the LLM service from ``make_llm``, the apology processor, guard, citations,
Deepgram TTS, recorder) runs with typed turns (the RTVI ``send-text`` path) against
the loopback fakes; the faults are injected by the fake OpenAI server
(``tests/fakes/openai_server.py``: ``stall_chat``, ``fail_chat``). What is asserted is
what a user notices: what reaches the TTS (the fake Deepgram's ``Speak`` messages),
after how many requests and how long, and that the next question is answered.

Only lower bounds on time are asserted: the machine may be busy.

What Backtalk does: ``backtalk/agent/services.py`` (``DirectBodyOpenAILLMService``,
``make_llm``) and ``backtalk/agent/recovery.py``.
"""

from __future__ import annotations

import time

import openai
import pytest
import test_conversation_text as text_conv
from fakes import FakeDeepgram, FakeOpenAI
from test_conversation_text import conversation, last_user_text, say, wait_until
from test_services import conversation as llm_context
from test_services import drain

from backtalk.agent.recovery import LLM_APOLOGY
from backtalk.agent.services import make_llm
from backtalk.config import Settings
from backtalk.store import Store

pytestmark = pytest.mark.integration

# The conversation's fixture (the fakes, the videos ingested), shared.
fakes = text_conv.fakes

VIDEO = "gradient_descent_lecture"
Q1 = "What does the speaker say about choosing the learning rate?"
Q2 = "Why does momentum help gradient descent?"
A1 = "He says to start with a small learning rate and raise it while training stays smooth."
A2 = "Momentum keeps the direction of the last steps, which smooths the zigzags."
#: The first-token budget in these tests, seconds (the default is 5).
FIRST_TOKEN_S = 1.0
#: How long a stalled request withholds its first token, seconds (longer than the budget).
STALL_S = 5.0
#: Upper bound for anything that should happen; polled, never slept for.
TURN_TIMEOUT_S = 20.0


def answer(body: dict) -> str:
    """The fake model: A1 to Q1, A2 to anything else."""
    return A1 if last_user_text(body) == Q1 else A2


def spoken(dg: FakeDeepgram) -> str:
    """Everything the bot has said (the text of every ``Speak`` message)."""
    return " ".join(t.strip() for t in dg.spoken_texts)


def gaps(times: list[float]) -> list[float]:
    """Seconds between consecutive requests."""
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]


def mentions_apology(request: dict) -> bool:
    return any(LLM_APOLOGY.split(",")[0] in str(m.get("content")) for m in request["messages"])


async def heard(dg: FakeDeepgram, text: str, what: str) -> float:
    """Wait until ``text`` has been sent to the TTS. Returns ``time.monotonic()`` then."""
    await wait_until(lambda: text in spoken(dg), TURN_TIMEOUT_S, what)
    return time.monotonic()


async def next_turn_answered(conv, fake: FakeOpenAI, dg: FakeDeepgram) -> dict:
    """Ask Q2; it is answered out loud. Returns its chat request."""
    before = len(fake.chat_requests)
    await say(conv, Q2)
    await heard(dg, A2, "the answer to the next question")
    (request,) = [r for r in fake.chat_requests[before:] if last_user_text(r) == Q2]
    return request


# -- R9: the LLM stalls ------------------------------------------------------------------------


def test_R9_client_timeout_is_never_the_sdk_default(monkeypatch):
    default = make_llm(Settings(openai_api_key="sk-test"), "Be brief.")
    assert default._client.timeout == 20.0
    assert default._client.timeout != openai.DEFAULT_TIMEOUT  # read=600 s
    assert default._client.max_retries == 2
    assert (default._retry_on_timeout, default._retry_timeout_secs) == (True, 5.0)

    monkeypatch.setenv("BACKTALK_LLM_TIMEOUT_S", "7.5")
    monkeypatch.setenv("BACKTALK_LLM_FIRST_TOKEN_S", "3")
    monkeypatch.setenv("BACKTALK_LLM_MAX_RETRIES", "0")
    configured = make_llm(Settings(openai_api_key="sk-test"), "Be brief.")
    assert configured._client.timeout == 7.5
    assert configured._client.max_retries == 0
    assert configured._retry_timeout_secs == 3.0


async def test_R9_client_timeout_and_retries_reach_the_wire():
    """A server that never answers: each request gives up after ``llm_timeout_s``."""
    settings = dict(openai_api_key="sk-test", llm_timeout_s=0.5, llm_max_retries=1)
    with FakeOpenAI() as fake:
        fake.stall_chat(10, STALL_S, before_headers=True)
        # A first-token budget longer than everything, so that only the client times out.
        llm = make_llm(
            Settings(openai_base_url=fake.base_url, llm_first_token_s=30, **settings), "Hi."
        )
        started = time.monotonic()
        with pytest.raises((TimeoutError, openai.APITimeoutError)):
            await drain(llm, llm_context(1))
        elapsed = time.monotonic() - started
        attempts = len(fake.chat_requests)
    print(f"\nR9: {attempts} requests timed out after {elapsed:.2f} s")
    # The SDK's retry (max_retries=1), and Pipecat's re-issue of a timed-out request
    # with its own retry: 2 x 2 requests, each waited for 0.5 s, not 600 s.
    assert attempts == 4
    assert elapsed >= 4 * 0.5


@pytest.mark.parametrize("before_headers", [False, True], ids=["tokens-late", "headers-late"])
async def test_R9_llm_stall_retries_once_then_apologises(
    before_headers: bool, fakes, monkeypatch, store: Store
):
    fake, dg = fakes
    fake.reply = answer
    monkeypatch.setenv("BACKTALK_LLM_FIRST_TOKEN_S", str(FIRST_TOKEN_S))
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.stall_chat(2, STALL_S, before_headers=before_headers)
        asked = time.monotonic()
        await say(conv, Q1)
        apologised = await heard(dg, LLM_APOLOGY, "the apology")
        attempts = fake.chat_requests
        times = fake.chat_request_times
        assert A1 not in spoken(dg)

        request = await next_turn_answered(conv, fake, dg)
        assert conv.stages["recovery"].apologies == 1
        assert conv.stages.llm.is_usable

        def saved_once_answered() -> list | None:
            rows = store.conversation_messages(conv.recorder.conversation_id)
            return rows if any(A2 in content for _, content, _ in rows) else None

        saved = await wait_until(saved_once_answered, 5, "the answer saved")
    waited = apologised - asked
    print(f"\nR9 ({'headers' if before_headers else 'tokens'} late): apology after {waited:.2f} s")

    # The request was re-issued once, after the budget, and then given up: the user
    # heard the apology, not silence for the stall's 5 s (or the SDK's 600 s).
    assert [last_user_text(r) for r in attempts] == [Q1, Q1]
    assert gaps(times)[0] >= 0.9 * FIRST_TOKEN_S
    assert waited >= 2 * 0.9 * FIRST_TOKEN_S
    # The next question was answered, and the apology is not the assistant's answer
    # in its context or in the saved conversation.
    assert not mentions_apology(request)
    assert {"role": "user", "content": Q1} in request["messages"]
    assert not any(LLM_APOLOGY in content for _, content, _ in saved)


async def test_R9_one_stall_is_answered_by_the_reissued_request(fakes, monkeypatch):
    fake, dg = fakes
    fake.reply = answer
    monkeypatch.setenv("BACKTALK_LLM_FIRST_TOKEN_S", str(FIRST_TOKEN_S))
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.stall_chat(1, STALL_S)
        asked = time.monotonic()
        await say(conv, Q1)
        answered = await heard(dg, A1, "the answer")
        attempts, times = fake.chat_requests, fake.chat_request_times
        assert conv.stages["recovery"].apologies == 0
    print(f"\nR9 (one stall): answered after {answered - asked:.2f} s")
    assert [last_user_text(r) for r in attempts] == [Q1, Q1]
    assert gaps(times)[0] >= 0.9 * FIRST_TOKEN_S
    assert LLM_APOLOGY not in spoken(dg)


# -- R10: 429 / 500 / 400 --------------------------------------------------------------------


async def test_R10_llm_429_retries_honour_retry_after_then_apologise(fakes, monkeypatch):
    fake, dg = fakes
    fake.reply = answer
    # A budget longer than the retries take, so that only the SDK's retries are seen.
    monkeypatch.setenv("BACKTALK_LLM_FIRST_TOKEN_S", "15")
    retry_after_s = 1.0
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(3, 429, retry_after_s=retry_after_s)
        asked = time.monotonic()
        await say(conv, Q1)
        apologised = await heard(dg, LLM_APOLOGY, "the apology")
        attempts, times = fake.chat_requests, fake.chat_request_times

        await next_turn_answered(conv, fake, dg)
        assert conv.stages.llm.is_usable  # a rate limit is not a permanent failure
    print(
        f"\nR10 (429): {len(attempts)} requests, gaps "
        + ", ".join(f"{g:.2f}" for g in gaps(times))
        + f" s; apology after {apologised - asked:.2f} s"
    )
    # One request and the SDK's 2 retries, each after the server's Retry-After.
    assert [last_user_text(r) for r in attempts] == [Q1] * 3
    assert all(g >= 0.95 * retry_after_s for g in gaps(times))
    assert A1 not in spoken(dg)


async def test_R10_transient_500_recovers_within_the_turn(fakes):
    fake, dg = fakes
    fake.reply = answer
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(1, 500)
        await say(conv, Q1)
        await heard(dg, A1, "the answer")
        attempts, times = fake.chat_requests, fake.chat_request_times
        assert conv.stages["recovery"].apologies == 0
    # The SDK retried after its backoff (0.5 s less up to 25 % jitter); the user heard
    # the answer, and no apology.
    assert [last_user_text(r) for r in attempts] == [Q1, Q1]
    assert gaps(times)[0] >= 0.3
    assert LLM_APOLOGY not in spoken(dg)
    assert spoken(dg).count(A1) == 1


async def test_R10_rejected_request_apologises_and_the_next_turn_is_answered(fakes):
    fake, dg = fakes
    fake.reply = answer
    async with conversation([VIDEO]) as conv:
        fake.reset()
        fake.fail_chat(1, 400)
        await say(conv, Q1)
        await heard(dg, LLM_APOLOGY, "the apology")
        assert len(fake.chat_requests) == 1  # a 400 is not retried
        await next_turn_answered(conv, fake, dg)
