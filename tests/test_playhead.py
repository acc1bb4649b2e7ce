"""Questions about "this part": the playhead, its cue words, and retrieval around it.

The retrieval cases run on a real (embedded) Postgres with the fixture lecture: the
store's time index, the similarity search and the RAG processor's rendering are all
the product's own; only the playhead's reported position is set by the test.
"""

from __future__ import annotations

import re

import pytest
from conftest import TRANSCRIPTS
from pipecat.frames.frames import LLMContextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import run_test

from backtalk.ingest import ingest_sources, parse_source
from backtalk.processors import RAGContextProcessor
from backtalk.processors.playhead import (
    STALE_WHILE_PLAYING_S,
    Playhead,
    PlayheadRetriever,
    refers_to_playhead,
)
from backtalk.store import PgVectorRetriever, make_async_engine
from tests.test_cli_ingest import invoke

LECTURE = str(TRANSCRIPTS / "gradient_descent_lecture.json")
_EXCERPT = re.compile(r'<excerpt [^>]*start_seconds="(\d+)" end_seconds="(\d+)"([^>]*)>')


@pytest.mark.unit
@pytest.mark.parametrize(
    "question",
    [
        "What did she just say?",
        "what did he just say there",
        "Can you explain this part more simply?",
        "I didn't get that bit.",
        "What is he talking about right now?",
        "What does he mean here?",
        "Wait, what's she saying?",
        "Why did he just mention that?",
        "What's happening at this point?",
    ],
)
def test_questions_about_the_moment_being_watched_are_recognised(question: str):
    assert refers_to_playhead(question)


@pytest.mark.unit
@pytest.mark.parametrize(
    "question",
    [
        "Why does momentum help gradient descent?",
        "What does the speaker say about choosing the learning rate?",
        "Is there a quick way to check my starter?",
        "Just tell me what a saddle point is.",
        "What's the weather going to be like in Paris tomorrow?",
        "Can you explain that again, but more simply?",  # about the last answer
    ],
)
def test_questions_about_something_else_are_not(question: str):
    assert not refers_to_playhead(question)


@pytest.mark.unit
def test_the_playhead_advances_while_playing_and_holds_while_paused():
    playhead = Playhead()
    assert playhead.position() is None
    playhead.update("lecture", 100.0, playing=True, now=1000.0)
    assert playhead.position(now=1002.5) == ("lecture", 102.5)
    # A page that stopped reporting while "playing" is not trusted.
    assert playhead.position(now=1000.0 + STALE_WHILE_PLAYING_S + 1) is None
    playhead.update("lecture", 220.0, playing=False, now=1003.0)
    assert playhead.position(now=5000.0) == ("lecture", 220.0)
    playhead.update("lecture", -4, playing=False)
    assert playhead.position() == ("lecture", 0.0)


@pytest.fixture
async def lecture_retriever(store, local_embedder, database_url):
    report = ingest_sources([parse_source(LECTURE)], store=store, embedder=local_embedder)
    assert report.ok
    engine = make_async_engine(store.engine.url)
    video = store.list_videos()[0]
    yield PgVectorRetriever(engine, local_embedder, video_ids=[video.id])
    await engine.dispose()


def excerpts(frame: LLMContextFrame) -> list[tuple[int, int, str]]:
    text = next(
        m["content"]
        for m in frame.context.get_messages()
        if isinstance(m.get("content"), str) and "<transcript_excerpts>" in m["content"]
    )
    return [(int(a), int(b), rest) for a, b, rest in _EXCERPT.findall(text)]


async def ask(retriever, question: str) -> LLMContextFrame:
    rag = RAGContextProcessor(retriever, top_k=4, min_score=0.25)
    context = LLMContext(messages=[{"role": "user", "content": question}])
    down, _ = await run_test(rag, frames_to_send=[LLMContextFrame(context=context)])
    return next(f for f in down if isinstance(f, LLMContextFrame))


@pytest.mark.integration
async def test_what_did_he_just_say_gets_the_passage_under_the_playhead(lecture_retriever):
    playhead = Playhead()
    retriever = PlayheadRetriever(lecture_retriever, lecture_retriever, playhead)
    # Without a position the question matches nothing above the floor.
    assert excerpts(await ask(retriever, "What did he just say there?")) == []
    playhead.update("gradient_descent_lecture", 220.0, playing=False)
    found = excerpts(await ask(retriever, "What did he just say there?"))
    assert found, "no excerpt was given for a question about the playhead"
    start, end, attributes = found[0]
    assert start <= 220 <= end, found
    assert 'playhead="03:40"' in attributes
    # Everything given is either under the playhead or up to 30 s before it.
    assert all(s <= 220 and e >= 190 for s, e, a in found if "playhead" in a), found


@pytest.mark.integration
async def test_a_question_about_something_else_still_searches_the_whole_video(
    lecture_retriever,
):
    playhead = Playhead()
    playhead.update("gradient_descent_lecture", 220.0, playing=True)
    retriever = PlayheadRetriever(lecture_retriever, lecture_retriever, playhead)
    found = excerpts(await ask(retriever, "Why does momentum help gradient descent?"))
    assert found and not any("playhead" in a for _, _, a in found)
    assert any(s < 400 and e > 359 for s, e, _ in found), found  # momentum, 359.5-400 s


@pytest.mark.integration
async def test_the_playhead_of_another_video_adds_nothing(lecture_retriever):
    playhead = Playhead()
    playhead.update("sourdough_talk", 220.0, playing=False)
    retriever = PlayheadRetriever(lecture_retriever, lecture_retriever, playhead)
    assert excerpts(await ask(retriever, "What did she just say?")) == []


@pytest.mark.integration
def test_eval_scores_position_bearing_questions_with_and_without_the_playhead(db_env):
    assert invoke("ingest", LECTURE, str(TRANSCRIPTS / "sourdough_talk.vtt")).exit_code == 0
    qa = str(TRANSCRIPTS / "qa_playhead.json")

    def playhead_row(*flags: str) -> list[str]:
        result = invoke("eval", qa, "-k", "5", *flags)
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if "│ playhead" in line)
        return [cell.strip() for cell in row.split("│")[1:-1]]

    with_position = playhead_row()
    without = playhead_row("--no-position")
    # kind, n, recall@5, MRR, kept by floor
    assert with_position[2] == "1.00" and with_position[3] == "1.00", with_position
    # Without the playhead these questions match nothing above the floor: the agent
    # would say the video does not cover them.
    assert float(without[4]) <= 0.2, without
    assert float(without[3]) < 0.7, without

