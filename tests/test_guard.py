"""The prompt-leak guard: the bot never reads out its instructions."""

import random

from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.tests.utils import run_test
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

from backtalk.processors.guard import PromptLeakGuard
from backtalk.prompts import protected_texts, system_instruction


def tokens(text, size=7):
    return [LLMTextFrame(text[i : i + size]) for i in range(0, len(text), size)]


def spoken(frames):
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


async def test_a_reply_quoting_the_system_prompt_is_replaced():
    prompt = system_instruction([("Gradient descent lecture", 543)])
    leaked_line = prompt.splitlines()[0]  # the persona's first line, verbatim
    reply = f"Sure! My instructions say: {leaked_line} Anyway, the video is about descent. "
    guard = PromptLeakGuard(protected_texts())
    down, _ = await run_test(
        guard,
        frames_to_send=[LLMFullResponseStartFrame(), *tokens(reply), LLMFullResponseEndFrame()],
    )
    text = spoken(down)
    assert leaked_line not in text
    assert "Sorry, I can't share my instructions." in text
    assert guard.blocked >= 1


async def test_ordinary_answers_pass_through_whole():
    reply = (
        "The speaker says to start with a small learning rate, like 0.01, about four minutes "
        'in <cite v="GDlecture01" t="255"/>. If the loss explodes, make it smaller! Does that help?'
    )
    guard = PromptLeakGuard(protected_texts())
    down, _ = await run_test(
        guard,
        frames_to_send=[LLMFullResponseStartFrame(), *tokens(reply), LLMFullResponseEndFrame()],
    )
    assert spoken(down) == reply and guard.blocked == 0


async def test_a_leak_split_across_sentences_and_tokens_is_caught():
    words = protected_texts()[-1].split()[:12]
    reply = " ".join(words[:5]) + ". " + " ".join(words[5:]) + ". "
    guard = PromptLeakGuard(protected_texts())
    await run_test(
        guard,
        frames_to_send=[LLMFullResponseStartFrame(), *tokens(reply, 3), LLMFullResponseEndFrame()],
    )
    assert guard.blocked == 1


GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa"


async def released_so_far(guard, text, size=4):
    """What the guard has let through while the reply is still streaming (no end frame)."""
    down, _ = await run_test(
        guard, frames_to_send=[LLMFullResponseStartFrame(), *tokens(text, size)]
    )
    return spoken(down)


async def test_ordinary_text_streams_through_without_lag():
    # Nothing here begins a protected run: all of it is released as it arrives, except the
    # last word, which may still be growing.
    reply = "One two three four five six seven eight nine ten. Eleven twelve"
    released = await released_so_far(PromptLeakGuard([GREEK]), reply)
    assert released == "One two three four five six seven eight nine ten. Eleven "


async def test_a_run_that_could_become_a_leak_is_held_until_it_breaks():
    assert await released_so_far(PromptLeakGuard([GREEK]), "We saw alpha beta gamma") == "We saw "
    assert (
        await released_so_far(PromptLeakGuard([GREEK]), "We saw alpha beta gamma and more")
        == "We saw alpha beta gamma and "
    )


async def test_a_sentence_end_is_released_once_the_next_word_cannot_continue_the_run():
    # "alpha" starts the protected run; the next word's first letters decide.
    assert await released_so_far(PromptLeakGuard([GREEK]), "I like alpha. Xe", 100) == (
        "I like alpha. X"
    )
    assert await released_so_far(PromptLeakGuard([GREEK]), "I like alpha. Be", 100) == "I like "


async def test_a_finished_sentence_reaches_the_tts_aggregator_while_the_next_word_is_held():
    # Pipecat's sentence aggregator confirms "lost." only on the next non-space character;
    # "Alpha" is held (it starts the protected run), but its first letter goes ahead.
    reply = "The loss was lost. Alpha"
    released = await released_so_far(PromptLeakGuard([GREEK]), reply, 100)
    assert released == "The loss was lost. A"
    aggregator = SimpleTextAggregator()
    sentences = [a.text async for a in aggregator.aggregate(released)]
    assert sentences == ["The loss was lost."]


async def test_a_leak_is_caught_however_the_tokens_fall():
    protected = protected_texts()
    leak = " ".join(protected[-1].split()[3:11])  # exactly one protected run of 8 words
    false_start = " ".join(protected[-1].split()[3:8])  # the same opening, then it diverges
    reply = f"Good question. {false_start} bananas, honestly. Well: {leak}. That is all."
    rng = random.Random(7)
    splits = [[reply[:cut], reply[cut:]] for cut in range(1, len(reply))]  # every two-way cut
    for _ in range(25):  # and random token sizes
        pieces, i = [], 0
        while i < len(reply):
            size = rng.randint(1, 9)
            pieces.append(reply[i : i + size])
            i += size
        splits.append(pieces)
    for pieces in splits:
        frames = [LLMTextFrame(p) for p in pieces]
        guard = PromptLeakGuard(protected)
        down, _ = await run_test(
            guard, frames_to_send=[LLMFullResponseStartFrame(), *frames, LLMFullResponseEndFrame()]
        )
        text = spoken(down)
        assert guard.blocked == 1
        assert leak not in text
        assert text.startswith(f"Good question. {false_start} bananas")


async def test_interruption_discards_held_text():
    guard = PromptLeakGuard(["never say this secret sentence about the hidden rules ok"])
    down, _ = await run_test(
        guard,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("Well, never say this secr"),  # "never say this secr" is held
            InterruptionFrame(),
            LLMFullResponseStartFrame(),
            LLMTextFrame("Fresh answer. "),
            LLMFullResponseEndFrame(),
        ],
    )
    assert spoken(down) == "Well, Fresh answer. "
