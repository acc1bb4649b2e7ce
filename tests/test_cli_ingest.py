"""The CLI against a real embedded Postgres: ingest, videos, search, remove, talk set-up."""

import json

import pytest
import responses
from conftest import TRANSCRIPTS, sqlalchemy_url
from sqlalchemy import create_engine, text
from typer.testing import CliRunner
from youtube_replay import GRADIENT_TITLE, GRADIENT_VIDEO_ID, load_snippets, register_video

from backtalk.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()
LECTURE_JSON = str(TRANSCRIPTS / "gradient_descent_lecture.json")
SOURDOUGH_VTT = str(TRANSCRIPTS / "sourdough_talk.vtt")
SOURDOUGH_SRT = str(TRANSCRIPTS / "sourdough_talk.srt")


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def counts(database_url):
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT (SELECT count(*) FROM videos), (SELECT count(*) FROM video_chunks)")
        ).one()
    engine.dispose()
    return tuple(result)


def test_ingest_caption_files_then_list_and_search(db_env):
    result = invoke("ingest", SOURDOUGH_VTT, LECTURE_JSON)
    assert result.exit_code == 0, result.output
    assert "✓ sourdough_talk added: Sourdough talk" in result.output
    assert "✓ gradient_descent_lecture added" in result.output

    listing = invoke("videos")
    assert "sourdough_talk" in listing.output and "05:00" in listing.output

    found = invoke("search", "how do I pick the learning rate", "-k", "2")
    assert found.exit_code == 0
    first = found.output.splitlines()[0]
    assert first.startswith("Gradient descent lecture")
    assert "03:07-03:53" in first or "03:53-04:39" in first  # windows overlapping 3:34-4:33


def test_search_prints_youtube_deep_links_and_scopes_to_a_video(db_env):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID)
        assert invoke("ingest", f"https://youtu.be/{GRADIENT_VIDEO_ID}?si=share").exit_code == 0
    assert invoke("ingest", SOURDOUGH_SRT).exit_code == 0

    result = invoke("search", "why does momentum help", "--video", GRADIENT_VIDEO_ID, "-k", "1")
    assert GRADIENT_TITLE in result.output
    assert f"https://youtu.be/{GRADIENT_VIDEO_ID}?t=" in result.output
    seconds = int(result.output.split("?t=")[1].split()[0])
    assert 325 <= seconds <= 418  # the momentum passage starts at 359.5 s

    scoped = invoke("search", "why does momentum help", "--video", "sourdough_talk", "-k", "3")
    assert GRADIENT_TITLE not in scoped.output and scoped.output.count("Sourdough talk") == 3


def test_reingest_is_idempotent_and_costs_no_embedding_work(db_env):
    assert invoke("ingest", LECTURE_JSON).exit_code == 0
    before = counts(db_env)
    again = invoke("ingest", LECTURE_JSON)
    assert again.exit_code == 0 and "unchanged" in again.output
    assert counts(db_env) == before == (1, before[1])


def test_changed_transcript_replaces_all_old_chunks(db_env, tmp_path):
    snippets = load_snippets()
    v1 = tmp_path / "talk.json"
    v1.write_text(json.dumps(snippets))
    assert invoke("ingest", str(v1)).exit_code == 0
    n1 = counts(db_env)[1]
    v1.write_text(json.dumps(snippets[:60]))  # a shorter, different transcript
    result = invoke("ingest", str(v1))
    assert "updated" in result.output
    videos, chunks = counts(db_env)
    assert videos == 1 and 0 < chunks < n1
    engine = create_engine(sqlalchemy_url(db_env))
    with engine.connect() as conn:
        ordinals = (
            conn.execute(text("SELECT ordinal FROM video_chunks ORDER BY ordinal")).scalars().all()
        )
    engine.dispose()
    assert ordinals == list(range(chunks))


def test_bad_inputs_exit_2_name_each_input_and_write_nothing(db_env):
    with responses.RequestsMock() as rsps:  # any HTTP request would fail the test
        result = invoke(
            "ingest",
            LECTURE_JSON,
            "https://youtube.com.evil.com/watch?v=dQw4w9WgXcQ",
            "dQw4w9WgXc",
            "missing.srt",
        )
        assert len(rsps.calls) == 0
    assert result.exit_code == 2
    for bad in ("youtube.com.evil.com", "dQw4w9WgXc", "missing.srt"):
        assert bad in result.output
    assert "nothing was ingested" in result.output
    assert "Traceback" not in result.output
    assert counts(db_env) == (0, 0)


def test_a_malformed_caption_file_fails_only_that_video(db_env, tmp_path):
    bad = tmp_path / "broken.vtt"
    bad.write_text("this is not webvtt")
    result = invoke("ingest", str(bad), SOURDOUGH_VTT)
    assert result.exit_code == 1
    assert "broken" in result.output and "not a valid WebVTT file" in result.output
    assert counts(db_env)[0] == 1


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("transcripts_disabled", "Subtitles are turned off"),
        ("no_transcript", "No transcript in en. Available: de"),
        ("video_unavailable", "unavailable (removed, private"),
        ("age_restricted", "age-restricted"),
        ("request_blocked", "BACKTALK_WEBSHARE_PROXY_USERNAME"),
        ("ip_blocked", "blocking requests from this IP"),
        ("unplayable", "cannot be played"),
    ],
)
def test_each_youtube_failure_has_its_own_message_and_writes_nothing(db_env, scenario, message):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID, scenario=scenario)
        result = invoke("ingest", GRADIENT_VIDEO_ID)
    assert result.exit_code == 1
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output
    assert counts(db_env) == (0, 0)


def test_blocked_ip_stops_the_batch_early(db_env):
    other = "abcdefghijk"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID, scenario="ip_blocked")
        register_video(rsps, other)
        result = invoke("ingest", GRADIENT_VIDEO_ID, other)
        assert not any(other in call.request.url for call in rsps.calls)
    assert result.exit_code == 1
    assert f"{other} skipped" in result.output


def test_language_preference_picks_the_manual_track(db_env):
    manual = [{"text": "Manual captions, carefully written.", "start": 0.0, "duration": 40.0}]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID, manual_languages=("en",), manual_snippets=manual)
        assert invoke("ingest", GRADIENT_VIDEO_ID, "--language", "en").exit_code == 0
    found = invoke("search", "carefully written captions", "-k", "1")
    assert "Manual captions, carefully written." in found.output


def test_remove_deletes_the_video_and_its_chunks(db_env):
    invoke("ingest", SOURDOUGH_VTT, LECTURE_JSON)
    result = invoke("remove", "sourdough_talk")
    assert result.exit_code == 0 and "Removed sourdough_talk" in result.output
    assert counts(db_env)[0] == 1
    missing = invoke("remove", "sourdough_talk")
    assert missing.exit_code == 2 and "not in the library" in missing.output


def test_a_different_embedder_is_refused_naming_both_models(db_env, monkeypatch):
    from tests.fakes import FakeOpenAI

    assert invoke("ingest", SOURDOUGH_VTT).exit_code == 0
    with FakeOpenAI() as fake:
        monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        result = invoke("ingest", LECTURE_JSON)
        search = invoke("search", "sourdough")
        assert fake.embedding_requests == []  # refused before any embedding call
    assert result.exit_code == 2 and search.exit_code == 2
    message = result.output.replace("\n", " ")
    assert "wordllama-l2_supercat-256" in message and "256 dimensions" in message
    assert "text-embedding-3-small" in message and "1536 dimensions" in message
    assert counts(db_env)[0] == 1


def test_openai_embedder_ingests_through_the_embeddings_api(db_env, monkeypatch):
    from tests.fakes import FakeOpenAI

    with FakeOpenAI() as fake:
        monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        assert invoke("ingest", LECTURE_JSON).exit_code == 0
        requests_made = fake.embedding_requests
        result = invoke("search", "what is a saddle point", "-k", "1")
    assert requests_made and requests_made[0]["model"] == "text-embedding-3-small"
    assert all(len(r["input"]) <= 2048 for r in requests_made)
    assert fake.auth_headers[0] == "Bearer sk-test"
    assert "Gradient descent lecture" in result.output


def test_invalid_setting_is_named(db_env, monkeypatch):
    monkeypatch.setenv("BACKTALK_EMBEDDER", "bert")
    result = invoke("videos")
    assert result.exit_code == 2 and "BACKTALK_EMBEDDER" in result.output


def test_talk_without_keys_names_each_missing_variable_before_doing_anything(db_env):
    result = invoke("talk", LECTURE_JSON)
    assert result.exit_code == 2
    assert "DEEPGRAM_API_KEY" in result.output and "OPENAI_API_KEY" in result.output
    assert counts(db_env) == (0, 0)  # nothing ingested


def test_talk_daily_without_room_or_key_needs_daily_key(db_env, monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    result = invoke("talk", LECTURE_JSON, "--transport", "daily")
    assert result.exit_code == 2
    assert "DAILY_API_KEY" in result.output and "DEEPGRAM_API_KEY" not in result.output


def test_secrets_never_appear_in_output(db_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-LEAKCHECK")
    monkeypatch.setenv("DATABASE_URL", db_env)
    result = invoke("talk", LECTURE_JSON, "--transport", "daily")
    assert "LEAKCHECK" not in result.output
    from backtalk.config import Settings

    assert "LEAKCHECK" not in repr(Settings()) and "LEAKCHECK" not in str(Settings().model_dump())


def test_eval_reports_recall_and_mrr_per_kind(db_env):
    assert invoke("ingest", LECTURE_JSON, SOURDOUGH_VTT).exit_code == 0
    result = invoke(
        "eval", str(TRANSCRIPTS / "qa.json"), str(TRANSCRIPTS / "qa_offtopic.json"), "-k", "5"
    )
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    for kind in ("conceptual", "factual", "follow_up", "off_topic", "all"):
        assert kind in rows
    recall_all = float(rows["all"].split("│")[3])
    assert recall_all >= 0.9  # measured 1.00 with the local embedder and 45 s chunks
    assert float(rows["off_topic"].split("│")[6]) >= 0.8  # measured 0.91 at the 0.25 floor


def test_eval_names_videos_missing_from_the_library(db_env):
    result = invoke("eval", str(TRANSCRIPTS / "qa.json"))
    assert result.exit_code == 2 and "gradient_descent_lecture" in result.output


def test_collections_group_videos_for_a_conversation(db_env):
    result = invoke("ingest", LECTURE_JSON, SOURDOUGH_VTT, "--collection", "weekend")
    assert result.exit_code == 0 and "Collection 'weekend': added 2" in result.output
    listing = invoke("collections")
    assert "weekend: gradient_descent_lecture, sourdough_talk" in listing.output
    assert invoke("collections", "baking", "sourdough_talk").exit_code == 0
    assert "baking: sourdough_talk" in invoke("collections").output
    missing = invoke("collections", "baking", "nope")
    assert missing.exit_code == 2 and "not in the library" in missing.output
    assert invoke("collections", "baking", "--delete").exit_code == 0
    assert "baking" not in invoke("collections").output
    assert counts(db_env)[0] == 2  # deleting a collection keeps its videos


def test_talk_checks_persona_and_collection_before_anything_else(db_env, monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    bad_persona = invoke("talk", LECTURE_JSON, "--persona", "pirate")
    assert bad_persona.exit_code == 2 and "tutor" in bad_persona.output
    no_collection = invoke("talk", "--collection", "nope")
    assert no_collection.exit_code == 2 and "no collection 'nope'" in no_collection.output
    nothing = invoke("talk")
    assert nothing.exit_code == 2 and "--collection" in nothing.output
