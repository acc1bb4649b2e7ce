"""Citation tags: never spoken, checked against retrieved chunks, sent to the client."""

import pytest
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frameworks.rtvi.frames import RTVIServerMessageFrame
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.tests.utils import run_test

from backtalk.processors import RetrievedChunk
from backtalk.processors.citations import CitationProcessor, RetrievalResultFrame, strip_citations
from tests.fakes import FakeDeepgram

LR = RetrievedChunk(
    text="learning rate passage",
    start_s=187.5,
    end_s=233.4,
    video_title="Gradient Descent, Explained Simply",
    video_key="GDlecture01",
    youtube_id="GDlecture01",
)
SOURDOUGH = RetrievedChunk(
    text="float test",
    start_s=224.4,
    end_s=254.0,
    video_title="Sourdough talk",
    video_key="sourdough_talk",
)


async def test_strip_citations_leaves_only_the_spoken_words():
    text = 'That is about three and a half minutes in <cite v="GDlecture01" t="214"/>. Next <cite t="5">'
    assert (
        await strip_citations(text, "sentence") == "That is about three and a half minutes in. Next"
    )


async def test_valid_citations_become_rtvi_messages_and_invented_ones_are_dropped():
    processor = CitationProcessor()
    dropped = []

    @processor.event_handler("on_citation_dropped")
    async def _dropped(_p, tag):
        dropped.append(tag)

    down, _ = await run_test(
        processor,
        frames_to_send=[
            RetrievalResultFrame(query="q", chunks=[LR, SOURDOUGH]),
            LLMFullResponseStartFrame(),
            LLMTextFrame("He covers it about three and a half minutes in <ci"),
            LLMTextFrame(
                'te v="GDlecture01" t="214"/>, and the float test <cite v="sourdough_talk" '
            ),
            LLMTextFrame('t="230"/>. He also says <cite v="GDlecture01" t="900"/> something.'),
            LLMTextFrame(' Again <cite v="GDlecture01" t="214"/>.'),
            LLMFullResponseEndFrame(),
        ],
    )
    messages = [f.data for f in down if isinstance(f, RTVIServerMessageFrame)]
    assert messages == [
        {
            "type": "citation",
            "video_id": "GDlecture01",
            "video_key": "GDlecture01",
            "title": "Gradient Descent, Explained Simply",
            "seconds": 214,
            "timestamp": "03:34",
            "url": "https://youtu.be/GDlecture01?t=214",
            "start_s": LR.start_s,
            "end_s": LR.end_s,
        },
        {
            "type": "citation",
            "video_id": None,
            "video_key": "sourdough_talk",
            "title": "Sourdough talk",
            "seconds": 230,
            "timestamp": "03:50",
            "url": None,
            "start_s": SOURDOUGH.start_s,
            "end_s": SOURDOUGH.end_s,
        },
    ]
    assert processor.valid == 2 and processor.dropped == 1
    assert dropped == ['<cite v="GDlecture01" t="900"/>']
    # Text frames pass through untouched (the TTS strips the tags).
    assert sum(isinstance(f, LLMTextFrame) for f in down) == 4


@pytest.mark.parametrize(
    "tag",
    [
        '<cite v="sourdough_talk" t="214"/>',  # right second, wrong video
        '<cite t="abc"/>',
        "<cite/>",
        '<cite v="GDlecture01" t="240"/>',  # just past the chunk's end
    ],
)
async def test_citations_outside_the_retrieved_windows_are_not_valid(tag):
    processor = CitationProcessor(tolerance_s=2.0)
    await run_test(processor, frames_to_send=[RetrievalResultFrame(chunks=[LR, SOURDOUGH])])
    assert processor.check(tag) is None


async def test_no_retrieval_means_no_citation_is_valid():
    processor = CitationProcessor()
    down, _ = await run_test(
        processor,
        frames_to_send=[
            RetrievalResultFrame(chunks=[]),
            LLMFullResponseStartFrame(),
            LLMTextFrame('Made up <cite t="30"/>.'),
            LLMFullResponseEndFrame(),
        ],
    )
    assert not any(isinstance(f, RTVIServerMessageFrame) for f in down)


async def test_deepgram_tts_never_receives_the_tags():
    with FakeDeepgram() as fake:
        tts = DeepgramTTSService(
            api_key="dg-test", base_url=fake.base_url, text_transforms=[("*", strip_citations)]
        )
        down, _ = await run_test(
            tts,
            frames_to_send=[
                TTSSpeakFrame('Around four minutes in <cite v="GDlecture01" t="240"/>.')
            ],
        )
        spoken = " ".join(fake.spoken_texts)
    assert "Around four minutes in" in spoken and "<cite" not in spoken and "240" not in spoken
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)
