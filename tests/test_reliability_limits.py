"""Reliability case S9: bounded consumption, each limit exceeded.

The typed-turn conversation of ``tests/test_conversation_text.py`` (real pipeline, real
embedded Postgres, loopback fake OpenAI and Deepgram); what is asserted is what reaches
the LLM on the wire. The session's hard stop (``session_max_s``) is exceeded in
``tests/test_conversation_text.py::test_a_conversation_at_its_limit_says_goodbye_and_ends``; the injected
context budget in ``tests/test_rag_processor.py``.
"""

from __future__ import annotations

import json

import pytest
import test_conversation_text as text_conv
from test_conversation_text import conversation, last_user_text, say, wait_until

from backtalk.processors.limits import CUT_NOTE

pytestmark = pytest.mark.integration

fakes = text_conv.fakes

VIDEO = "gradient_descent_lecture"
QUESTION = "What does the speaker say about choosing the learning rate? "


def user_messages(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_S9_a_huge_typed_message_is_cut_before_the_llm_and_stays_cut(fakes, monkeypatch):
    fake, _ = fakes
    monkeypatch.setenv("BACKTALK_MAX_USER_CHARS", "500")
    huge = QUESTION + "and also " * 20_000  # ~180 000 characters pasted into the page
    async with conversation([VIDEO]) as conv:
        fake.reset()
        await say(conv, huge)
        await wait_until(lambda: len(fake.chat_requests) >= 1, what="the first request")
        await say(conv, "Why does momentum help?")
        await wait_until(lambda: len(fake.chat_requests) >= 2, what="the next request")
        assert conv.stages["limit"].cuts == 1
    first, second = fake.chat_requests[:2]
    cut = huge[:500] + CUT_NOTE.format(limit=500)
    # This turn and every later one carry the cut message, never the pasted text.
    assert last_user_text(first) == cut
    assert cut in user_messages(second)
    assert max(len(json.dumps(r)) for r in (first, second)) < 20_000
    # The question it started with still reaches the model (and retrieval).
    assert last_user_text(first).startswith(QUESTION)


async def test_S9_every_answer_is_capped_in_tokens_on_the_wire(fakes, monkeypatch):
    fake, _ = fakes
    monkeypatch.setenv("BACKTALK_LLM_MAX_TOKENS", "123")
    async with conversation([VIDEO]) as conv:
        fake.reset()
        await say(conv, QUESTION)
        await wait_until(lambda: fake.chat_requests, what="the request")
        assert conv.stages["limit"].cuts == 0
    assert fake.chat_requests[0]["max_completion_tokens"] == 123
