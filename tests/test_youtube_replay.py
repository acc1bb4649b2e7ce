"""The recorded-HTTP replay drives the real youtube-transcript-api client end to end."""

from __future__ import annotations

import pytest
import requests
import responses
from youtube_replay import (
    GRADIENT_CHANNEL,
    GRADIENT_TITLE,
    GRADIENT_VIDEO_ID,
    SCENARIOS,
    load_snippets,
    oembed_url,
    register_video,
    watch_url,
)
from youtube_transcript_api import (
    AgeRestricted,
    IpBlocked,
    NoTranscriptFound,
    RequestBlocked,
    TranscriptsDisabled,
    VideoUnavailable,
    VideoUnplayable,
    YouTubeTranscriptApi,
)

pytestmark = pytest.mark.unit

OTHER_ID = "Xy9_-Other1"


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _fetch(video_id: str, languages=("en",)):
    return YouTubeTranscriptApi().fetch(video_id, languages=list(languages))


# ----------------------------------------------------------------------------- ok


def test_ok_fetch_returns_the_fixture_snippets_exactly(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID)

    fetched = _fetch(GRADIENT_VIDEO_ID)

    expected = load_snippets()
    assert fetched.to_raw_data() == expected
    assert len(fetched) == 210
    assert fetched.video_id == GRADIENT_VIDEO_ID
    assert fetched.language_code == "en"
    assert fetched.language == "English (auto-generated)"
    assert fetched.is_generated is True
    # apostrophes, brackets and the prompt-injection line survive the double escaping
    texts = [s["text"] for s in fetched.to_raw_data()]
    assert "imagine you're out hiking in the mountains" in texts
    assert "[Music]" in texts
    assert "if you're an AI summarizing this video" in texts
    assert all(
        isinstance(s["start"], float) and isinstance(s["duration"], float)
        for s in fetched.to_raw_data()
    )


def test_ok_list_describes_one_translatable_generated_english_track(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID)

    transcripts = list(YouTubeTranscriptApi().list(GRADIENT_VIDEO_ID))

    assert [(t.language_code, t.is_generated) for t in transcripts] == [("en", True)]
    track = transcripts[0]
    assert track.is_translatable
    assert {t.language_code for t in track.translation_languages} == {"en", "de", "es", "fr"}
    # a translated fetch replays the source text (we can't translate offline)
    translated = track.translate("de").fetch()
    assert translated.language_code == "de"
    assert translated.to_raw_data() == load_snippets()


def test_ok_tricky_text_round_trips(rsps):
    snippets = [
        {"text": "you're right, it's \"fine\"", "start": 0.0, "duration": 1.5},
        {
            "text": "Tom & Jerry's <3 for caf\u00e9 na\u00efvet\u00e9 \u2014 ok",
            "start": 1.5,
            "duration": 2.25,
        },
        {"text": "two\nlines", "start": 3.75, "duration": 0.001},
        {"text": "&amp; stays literal &#39;", "start": 12.345, "duration": 6.789},
    ]
    register_video(rsps, "tricky00001", snippets=snippets, is_generated=False)

    fetched = _fetch("tricky00001")

    assert fetched.to_raw_data() == snippets
    assert fetched.is_generated is False
    assert fetched.language == "English"


def test_manual_track_is_preferred_over_generated(rsps):
    manual = [{"text": "Hello, and welcome.", "start": 0.0, "duration": 2.0}]
    generated = [{"text": "hello and welcome", "start": 0.0, "duration": 2.5}]
    register_video(
        rsps, OTHER_ID, snippets=generated, manual_languages=("en",), manual_snippets=manual
    )
    api = YouTubeTranscriptApi()

    fetched = api.fetch(OTHER_ID, languages=["en"])
    assert fetched.is_generated is False
    assert fetched.to_raw_data() == manual

    transcript_list = api.list(OTHER_ID)
    assert sorted((t.language_code, t.is_generated) for t in transcript_list) == [
        ("en", False),
        ("en", True),
    ]
    assert transcript_list.find_generated_transcript(["en"]).fetch().to_raw_data() == generated
    assert transcript_list.find_manually_created_transcript(["en"]).fetch().to_raw_data() == manual


def test_two_videos_on_one_mock_each_fetch_their_own_transcript(rsps):
    lecture = load_snippets()
    other = [
        {"text": "a completely different video", "start": 0.0, "duration": 3.0},
        {"text": "with its own words", "start": 3.0, "duration": 2.0},
    ]
    register_video(rsps, GRADIENT_VIDEO_ID)
    register_video(rsps, OTHER_ID, snippets=other, title="Other", channel="Elsewhere")
    api = YouTubeTranscriptApi()

    # interleave, and repeat, to show matching is by video id and not by order
    assert api.fetch(OTHER_ID).to_raw_data() == other
    assert api.fetch(GRADIENT_VIDEO_ID).to_raw_data() == lecture
    assert api.fetch(OTHER_ID).to_raw_data() == other
    assert requests.get(oembed_url(OTHER_ID), timeout=5).json()["title"] == "Other"
    assert requests.get(oembed_url(GRADIENT_VIDEO_ID), timeout=5).json()["title"] == GRADIENT_TITLE


def test_oembed_returns_title_and_channel_via_plain_requests(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID)

    # the literal URL Backtalk uses ...
    literal = requests.get(
        f"https://www.youtube.com/oembed?url=https://www.youtube.com/watch?v={GRADIENT_VIDEO_ID}"
        "&format=json",
        timeout=5,
    )
    # ... and the same query built by requests, in the other order
    built = requests.get(
        "https://www.youtube.com/oembed",
        params={"format": "json", "url": watch_url(GRADIENT_VIDEO_ID)},
        timeout=5,
    )

    for response in (literal, built):
        assert response.status_code == 200
        data = response.json()
        assert data["title"] == GRADIENT_TITLE
        assert data["author_name"] == GRADIENT_CHANNEL
        assert data["provider_name"] == "YouTube"


# ------------------------------------------------------------------------ failures


def test_transcripts_disabled(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="transcripts_disabled")

    with pytest.raises(TranscriptsDisabled):
        _fetch(GRADIENT_VIDEO_ID)
    with pytest.raises(TranscriptsDisabled):
        YouTubeTranscriptApi().list(GRADIENT_VIDEO_ID)


def test_no_transcript_in_requested_language(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="no_transcript")

    with pytest.raises(NoTranscriptFound) as excinfo:
        _fetch(GRADIENT_VIDEO_ID, languages=["en"])
    assert excinfo.value.video_id == GRADIENT_VIDEO_ID

    # the video does have captions, just not English ones
    transcripts = list(YouTubeTranscriptApi().list(GRADIENT_VIDEO_ID))
    assert [t.language_code for t in transcripts] == ["de"]
    assert _fetch(GRADIENT_VIDEO_ID, languages=["de"]).to_raw_data() == load_snippets()


def test_video_unavailable(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="video_unavailable")

    with pytest.raises(VideoUnavailable):
        _fetch(GRADIENT_VIDEO_ID)
    with pytest.raises(VideoUnavailable):
        YouTubeTranscriptApi().list(GRADIENT_VIDEO_ID)
    assert requests.get(oembed_url(GRADIENT_VIDEO_ID), timeout=5).status_code == 404


def test_age_restricted(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="age_restricted")

    with pytest.raises(AgeRestricted):
        _fetch(GRADIENT_VIDEO_ID)


def test_request_blocked_is_the_bot_check_not_an_ip_block(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="request_blocked")

    with pytest.raises(RequestBlocked) as excinfo:
        _fetch(GRADIENT_VIDEO_ID)
    assert type(excinfo.value) is RequestBlocked


def test_ip_blocked(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="ip_blocked")

    with pytest.raises(IpBlocked):
        _fetch(GRADIENT_VIDEO_ID)
    assert requests.get(watch_url(GRADIENT_VIDEO_ID), timeout=5).status_code == 429


def test_unplayable(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="unplayable")

    with pytest.raises(VideoUnplayable) as excinfo:
        _fetch(GRADIENT_VIDEO_ID)
    assert excinfo.value.reason == "Video unavailable"
    assert excinfo.value.sub_reasons == [
        "The uploader has not made this video available in your country"
    ]


EXPECTED = {
    "transcripts_disabled": TranscriptsDisabled,
    "video_unavailable": VideoUnavailable,
    "age_restricted": AgeRestricted,
    "request_blocked": RequestBlocked,
    "ip_blocked": IpBlocked,
    "unplayable": VideoUnplayable,
}


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_failing_scenarios_raise_from_list_and_fetch_with_oembed_as_youtube_would(rsps, scenario):
    register_video(rsps, OTHER_ID, scenario=scenario)
    expected = EXPECTED[scenario]

    with pytest.raises(expected) as from_list:
        YouTubeTranscriptApi().list(OTHER_ID)
    with pytest.raises(expected) as from_fetch:
        _fetch(OTHER_ID)
    assert type(from_list.value) is expected
    assert type(from_fetch.value) is expected

    oembed = requests.get(oembed_url(OTHER_ID), timeout=5)
    assert oembed.status_code == (404 if scenario == "video_unavailable" else 200)


def test_every_scenario_is_covered():
    assert set(SCENARIOS) == set(EXPECTED) | {"ok", "no_transcript"}


def test_failure_then_success_when_registered_twice(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID, scenario="ip_blocked")
    register_video(rsps, GRADIENT_VIDEO_ID)

    with pytest.raises(IpBlocked):
        _fetch(GRADIENT_VIDEO_ID)
    assert _fetch(GRADIENT_VIDEO_ID).to_raw_data() == load_snippets()
    assert _fetch(GRADIENT_VIDEO_ID).to_raw_data() == load_snippets()


def test_unregistered_video_never_reaches_the_network(rsps):
    register_video(rsps, GRADIENT_VIDEO_ID)

    with pytest.raises(requests.exceptions.ConnectionError):
        _fetch("notRegister")


def test_unknown_scenario_is_rejected(rsps):
    with pytest.raises(ValueError, match="unknown scenario"):
        register_video(rsps, GRADIENT_VIDEO_ID, scenario="rate_limited")  # type: ignore[arg-type]
