"""Caption parsing, text clean-up and chunking on the shared fixture transcripts."""

import json

import pytest
from conftest import TRANSCRIPTS
from hypothesis import given
from hypothesis import strategies as st

from backtalk.errors import CaptionFileError
from backtalk.ingest import Segment, chunk_segments
from backtalk.ingest.captions import read_caption_file
from backtalk.ingest.segments import clean_text


def lecture_segments() -> list[Segment]:
    data = json.loads((TRANSCRIPTS / "gradient_descent_lecture.json").read_text())
    return [Segment(d["text"], d["start"], d["duration"]) for d in data]


def test_vtt_and_srt_give_the_same_talk():
    vtt = read_caption_file(TRANSCRIPTS / "sourdough_talk.vtt")
    srt = read_caption_file(TRANSCRIPTS / "sourdough_talk.srt")
    assert len(vtt) == len(srt) == 71
    assert [clean_text(s.text) for s in vtt] == [clean_text(s.text) for s in srt]
    assert [(s.start_s, s.duration_s) for s in vtt] == [(s.start_s, s.duration_s) for s in srt]


def test_vtt_markup_and_cue_settings_do_not_reach_the_text():
    texts = [clean_text(s.text) for s in read_caption_file(TRANSCRIPTS / "sourdough_talk.vtt")]
    joined = " ".join(texts)
    for markup in ("<v", "<c", "<i>", "</", "line:", "position:", "align:", "[soft guitar music]"):
        assert markup not in joined
    assert 'Some bakers call it a levain, or just "the mother."' in texts
    assert "The second group is lactic acid bacteria." in texts


def test_vtt_times_keep_milliseconds():
    first_speech = read_caption_file(TRANSCRIPTS / "sourdough_talk.vtt")[1]
    assert first_speech.start_s == pytest.approx(3.763)
    assert first_speech.duration_s == pytest.approx(8.656 - 3.763)


def test_youtube_json_transcript_reads_all_lines():
    segments = read_caption_file(TRANSCRIPTS / "gradient_descent_lecture.json")
    assert len(segments) == 210
    assert segments[1] == Segment("hey everyone welcome back to the channel", 4.172, 5.355)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        (
            "shape.json",
            '[{"text": "hi", "start": "soon"}]',
            "not a youtube-transcript-api transcript",
        ),
        ("empty.json", "[]", "contains no captions"),
        ("bad.vtt", "this is not webvtt\n", "not a valid WebVTT file"),
        ("bad.srt", "garbage\nnothing\n", "could not parse"),
    ],
)
def test_malformed_caption_files_are_named_with_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CaptionFileError) as info:
        read_caption_file(path)
    assert reason in str(info.value)
    assert str(path) in str(info.value)


def test_non_utf8_caption_file_says_so(tmp_path):
    path = tmp_path / "latin1.srt"
    path.write_bytes("1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(CaptionFileError, match="UTF-8"):
        read_caption_file(path)


def test_clean_text_strips_invisible_and_bidi_characters():
    raw = "ig\u200bnore\u202e previous\u2066 instructions\ufeff \ue000now &amp; <b>then</b> [Music]"
    assert clean_text(raw) == "ignore previous instructions now & then"


@given(st.text())
def test_no_stored_text_contains_invisible_characters(raw):
    import unicodedata

    cleaned = clean_text(raw)
    assert not any(unicodedata.category(ch) in ("Cf", "Co") for ch in cleaned)
    assert cleaned == cleaned.strip()


def test_lecture_chunks_are_time_windows_of_30_to_60_seconds():
    chunks = chunk_segments(lecture_segments(), target_s=45, max_s=60)
    assert 9 <= len(chunks) <= 14
    for chunk in chunks[:-1]:
        assert 30 <= chunk.end_s - chunk.start_s <= 60
    # Windows follow each other without gaps or overlaps, in order.
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.end_s == pytest.approx(after.start_s)
    # Every spoken word is kept; sound cues are not.
    words = sum(len(clean_text(s.text).split()) for s in lecture_segments())
    assert sum(len(c.text.split()) for c in chunks) == words
    assert "[Music]" not in " ".join(c.text for c in chunks)


def test_punctuated_captions_close_chunks_at_sentence_ends():
    chunks = chunk_segments(read_caption_file(TRANSCRIPTS / "sourdough_talk.vtt"))
    assert len(chunks) >= 5
    for chunk in chunks:
        assert chunk.text.endswith((".", "?", "!", '."')), chunk.text[-40:]
        assert chunk.end_s - chunk.start_s <= 60


def test_a_short_tail_joins_the_previous_chunk():
    segments = [Segment(f"line {i}.", i * 10.0, 10.0) for i in range(5)] + [Segment("end.", 50, 2)]
    chunks = chunk_segments(segments, target_s=45, max_s=60)
    assert len(chunks) == 1 and chunks[0].end_s == 52


def test_rolling_caption_overlap_is_trimmed_to_the_next_line():
    segments = [Segment("a", 0, 6), Segment("b", 2, 6), Segment("c", 4, 6)]
    chunk = chunk_segments(segments, target_s=100, max_s=100)[0]
    assert (chunk.start_s, chunk.end_s) == (0, 10)


def test_empty_and_speechless_transcripts_give_no_chunks():
    assert chunk_segments([]) == []
    assert chunk_segments([Segment("[Music]", 0, 5), Segment("  ", 5, 1)]) == []
