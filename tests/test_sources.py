"""Input parsing: every YouTube URL form, caption files, and rejections (no I/O)."""

import pytest

from backtalk.errors import InvalidVideoIdError
from backtalk.ingest import CaptionFileSource, YouTubeSource, parse_source, parse_video_id

VID = "dQw4w9WgXcQ"

ACCEPTED = [
    VID,
    f"  {VID}  ",
    f"https://www.youtube.com/watch?v={VID}",
    f"http://www.youtube.com/watch?v={VID}",
    f"https://youtube.com/watch?v={VID}",
    f"www.youtube.com/watch?v={VID}",
    f"youtube.com/watch?v={VID}",
    f"https://m.youtube.com/watch?v={VID}",
    f"https://music.youtube.com/watch?v={VID}",
    f"https://www.youtube.com/watch?v={VID}&t=42s",
    f"https://www.youtube.com/watch?v={VID}&t=1m2s",
    f"https://www.youtube.com/watch?t=42&v={VID}",
    f"https://www.youtube.com/watch?v={VID}&list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG&index=3",
    f"https://www.youtube.com/watch?v={VID}&si=AbCdEfGh",
    f"https://www.youtube.com/watch?v={VID}&feature=youtu.be",
    f"https://www.youtube.com/watch?feature=share&v={VID}",
    f"https://youtu.be/{VID}",
    f"http://youtu.be/{VID}",
    f"youtu.be/{VID}",
    f"https://youtu.be/{VID}?t=42",
    f"https://youtu.be/{VID}?si=xyz123",
    f"https://youtu.be/{VID}?list=PLabc&t=5",
    f"https://www.youtube.com/shorts/{VID}",
    f"https://youtube.com/shorts/{VID}?feature=share",
    f"https://m.youtube.com/shorts/{VID}",
    f"https://www.youtube.com/embed/{VID}",
    f"https://www.youtube.com/embed/{VID}?start=30&autoplay=1",
    f"https://www.youtube-nocookie.com/embed/{VID}",
    f"https://youtube-nocookie.com/embed/{VID}?rel=0",
    f"https://www.youtube.com/live/{VID}",
    f"https://www.youtube.com/live/{VID}?si=abc&t=10",
    f"https://www.youtube.com/v/{VID}",
    f"HTTPS://WWW.YOUTUBE.COM/watch?v={VID}",
    f"https://www.youtube.com/watch/?v={VID}",
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_every_youtube_form_maps_to_the_same_id(value):
    assert parse_video_id(value) == VID


def test_ids_with_dash_and_underscore_are_kept_exactly():
    assert parse_video_id("https://youtu.be/a-b_C1234_Z") == "a-b_C1234_Z"


REJECTED = [
    ("", "empty"),
    ("   ", "empty"),
    ("dQw4w9WgXc", "not a YouTube URL"),  # 10 chars
    ("dQw4w9WgXcQQ", "not a YouTube URL"),  # 12 chars
    ("javascript:alert(1)", "scheme"),
    ("ftp://youtube.com/watch?v=dQw4w9WgXcQ", "scheme"),
    ("https://www.youtube.com/playlist?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG", "playlist"),
    ("https://youtube.com.evil.com/watch?v=dQw4w9WgXcQ", "not a YouTube host"),
    ("https://evil.com/youtube.com/watch?v=dQw4w9WgXcQ", "not a YouTube host"),
    ("https://vimeo.com/123456", "not a YouTube host"),
    ("https://www.youtube.com/watch?v=short", "is not a YouTube video id"),
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ<script>", "is not a YouTube video id"),
    ("https://www.youtube.com/watch", "no video id"),
    ("https://www.youtube.com/@somechannel", "no video id"),
    ("https://youtu.be/", "no video id"),
    ("https://www.youtube.com/shorts/", "no video id"),
    ("not a url at all", "not a YouTube URL"),
    ("missing.vtt", "no such caption file"),
]


@pytest.mark.parametrize(("value", "reason"), REJECTED)
def test_bad_inputs_are_rejected_with_a_reason(value, reason):
    with pytest.raises(InvalidVideoIdError) as info:
        parse_source(value)
    assert reason in str(info.value)
    assert info.value.value == value


def test_youtube_source_key_is_the_video_id():
    source = parse_source(f"https://youtu.be/{VID}?t=3")
    assert source == YouTubeSource(video_id=VID, given=f"https://youtu.be/{VID}?t=3")
    assert source.key == VID


def test_caption_file_source_derives_key_and_title(tmp_path):
    path = tmp_path / "My Talk_2024.vtt"
    path.write_text("WEBVTT\n")
    source = parse_source(str(path))
    assert isinstance(source, CaptionFileSource)
    assert source.key == "my-talk_2024"
    assert source.title == "My talk 2024"
    assert source.youtube_id is None


def test_caption_file_named_after_a_video_id_links_to_it(tmp_path):
    path = tmp_path / f"{VID}.srt"
    path.write_text("")
    source = parse_source(str(path))
    assert source.youtube_id == VID and source.key == VID


def test_caption_file_with_explicit_youtube_id_and_title(tmp_path):
    path = tmp_path / "talk.json"
    path.write_text("[]")
    source = parse_source(str(path), title="A Talk", youtube_id=f"https://youtu.be/{VID}")
    assert (source.key, source.title, source.youtube_id) == (VID, "A Talk", VID)


def test_existing_file_with_unsupported_suffix_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidVideoIdError, match="unsupported caption format"):
        parse_source(str(path))
