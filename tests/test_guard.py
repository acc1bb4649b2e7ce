"""The prompt-leak guard: the bot never reads out its instructions."""

from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.tests.utils import run_test

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


async def test_text_is_held_back_by_fewer_words_than_a_leak_needs():
    guard = PromptLeakGuard(["alpha beta gamma delta epsilon zeta eta theta iota kappa"])
    reply = "One two three four five six seven eight nine ten. Eleven twelve."
    down, _ = await run_test(
        guard,
        frames_to_send=[LLMFullResponseStartFrame(), *tokens(reply, 4)],
    )
    released = spoken(down)
    assert released.startswith("One two three")  # released before the reply ended
    assert len(reply.split()) - len(released.split()) <= 7


async def test_interruption_discards_held_text():
    guard = PromptLeakGuard(["never say this secret sentence about the hidden rules ok"])
    down, _ = await run_test(
        guard,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("half a sente"),
            InterruptionFrame(),
            LLMFullResponseStartFrame(),
            LLMTextFrame("Fresh answer. "),
            LLMFullResponseEndFrame(),
        ],
    )
    assert spoken(down) == "Fresh answer. "
