"""The page's JSON API, served by the real app on a real (embedded) Postgres.

The app runs in this process (FastAPI's TestClient, with its lifespan), so YouTube
can be replayed under the real ``youtube-transcript-api`` client with ``responses``
(the ingest job runs in the app's worker thread, where the replay applies too). The
WebRTC session endpoints are exercised end to end in ``test_talk_webrtc.py`` and
the browser tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import responses
from conftest import TRANSCRIPTS
from fastapi.testclient import TestClient
from youtube_replay import GRADIENT_TITLE, GRADIENT_VIDEO_ID, register_video

from backtalk.agent.bot import AgentResources
from backtalk.config import Settings
from backtalk.ingest import ingest_sources, parse_source
from backtalk.server import create_app
from backtalk.store import LocalEmbedder, Store
from backtalk.store.repo import conversation_start, message_insert

pytestmark = pytest.mark.integration

LECTURE = str(TRANSCRIPTS / "gradient_descent_lecture.json")
SOURDOUGH = str(TRANSCRIPTS / "sourdough_talk.vtt")


@pytest.fixture
def library(store: Store, local_embedder: LocalEmbedder) -> Store:
    report = ingest_sources(
        [parse_source(LECTURE), parse_source(SOURDOUGH)], store=store, embedder=local_embedder
    )
    assert report.ok
    store.add_to_collection("weekend", [v.id for v in store.list_videos()])
    return store


@pytest.fixture
def client(db_env: str, library: Store) -> Iterator[TestClient]:
    resources = AgentResources.open(Settings(), library)
    app = create_app(resources, videos=["gradient_descent_lecture"], persona="casual")
    with TestClient(app) as test_client:
        yield test_client


def wait_for_job(client: TestClient, job_id: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        seen.append((job["status"], job["stage"]))
        if job["status"] in ("done", "failed"):
            job["seen"] = seen
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout_s}s")


def test_the_page_opens_on_the_talk_videos_with_every_persona(client: TestClient):
    config = client.get("/api/config").json()
    assert [v["key"] for v in config["videos"]] == ["gradient_descent_lecture"]
    assert config["persona"] == "casual"
    assert set(config["personas"]) == {"tutor", "casual", "analyst"}
    library = client.get("/api/videos").json()["videos"]
    assert {v["key"] for v in library} == {"gradient_descent_lecture", "sourdough_talk"}
    lecture = next(v for v in library if v["key"] == "gradient_descent_lecture")
    assert lecture["youtube_id"] is None and lecture["chunks"] > 5
    assert lecture["duration_s"] == pytest.approx(543.8, abs=1.0)
    assert client.get("/api/collections").json() == {
        "collections": [
            {"name": "weekend", "videos": ["gradient_descent_lecture", "sourdough_talk"]}
        ]
    }


def test_the_transcript_comes_back_in_order(client: TestClient):
    body = client.get("/api/videos/sourdough_talk/chunks").json()
    chunks = body["chunks"]
    assert body["video"]["title"] == "Sourdough talk"
    assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    assert all(a["end_s"] <= b["start_s"] + 1 for a, b in zip(chunks, chunks[1:], strict=False))
    assert any("float" in c["text"].lower() for c in chunks)
    missing = client.get("/api/videos/nope/chunks")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_a_youtube_link_is_ingested_as_a_job_with_the_cli_stages(client: TestClient):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID)
        accepted = client.post(
            "/api/videos", json={"input": f"https://youtu.be/{GRADIENT_VIDEO_ID}?t=42"}
        )
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["job"]
        assert job["key"] == GRADIENT_VIDEO_ID and job["status"] in ("queued", "running")
        done = wait_for_job(client, job["id"])
    assert done["status"] == "done", done
    assert done["video"]["title"] == GRADIENT_TITLE
    assert done["video"]["youtube_id"] == GRADIENT_VIDEO_ID
    stages = {stage for _, stage in done["seen"] if stage}
    assert stages <= {"fetch", "embed", "store"} and "store" in stages, done["seen"]
    keys = {v["key"] for v in client.get("/api/videos").json()["videos"]}
    assert GRADIENT_VIDEO_ID in keys


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("transcripts_disabled", "subtitles are turned off"),
        ("video_unavailable", "unavailable"),
        ("ip_blocked", "proxy"),
    ],
)
def test_a_youtube_failure_shows_the_cli_message_and_writes_nothing(
    client: TestClient, scenario: str, words: str
):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID, scenario=scenario)
        job = client.post("/api/videos", json={"input": GRADIENT_VIDEO_ID}).json()["job"]
        failed = wait_for_job(client, job["id"])
    assert failed["status"] == "failed" and failed["video"] is None
    assert words in failed["error"].lower(), failed["error"]
    keys = {v["key"] for v in client.get("/api/videos").json()["videos"]}
    assert GRADIENT_VIDEO_ID not in keys


@pytest.mark.parametrize(
    "value",
    ["https://example.com/watch?v=dQw4w9WgXcQ", "not a video", "https://youtu.be/short", ""],
)
def test_a_bad_link_is_refused_by_name_before_anything_happens(client: TestClient, value: str):
    with responses.RequestsMock() as rsps:  # any HTTP request would fail the test
        response = client.post("/api/videos", json={"input": value})
        assert len(rsps.calls) == 0
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "YouTube" in detail and "nothing was added" in detail
    assert len(client.get("/api/videos").json()["videos"]) == 2


def test_history_lists_conversations_about_a_video_with_their_citations(
    client: TestClient, library: Store
):
    citation = {
        "type": "citation",
        "video_id": None,
        "video_key": "gradient_descent_lecture",
        "title": "Gradient descent lecture",
        "seconds": 214,
        "timestamp": "03:34",
        "url": None,
        "start_s": 187.5,
        "end_s": 233.4,
    }
    with library.engine.begin() as conn:
        about_lecture = conn.execute(
            conversation_start(["gradient_descent_lecture"], transport="webrtc", persona="tutor")
        ).scalar_one()
        conn.execute(message_insert(about_lecture, "user", "What about the learning rate?"))
        conn.execute(
            message_insert(about_lecture, "assistant", "Start small.", citations=[citation])
        )
        conn.execute(
            conversation_start(["sourdough_talk"], transport="webrtc", persona="tutor")
        ).scalar_one()
    listed = client.get("/api/conversations", params={"video": "gradient_descent_lecture"})
    (summary,) = listed.json()["conversations"]
    assert summary["id"] == about_lecture and summary["messages"] == 2
    assert summary["preview"] == "What about the learning rate?"
    assert len(client.get("/api/conversations").json()["conversations"]) == 2
    full = client.get(f"/api/conversations/{about_lecture}").json()
    assert [(m["role"], m["content"]) for m in full["messages"]] == [
        ("user", "What about the learning rate?"),
        ("assistant", "Start small."),
    ]
    assert full["messages"][1]["citations"] == [citation]
    assert full["messages"][0]["citations"] == []
    assert client.get("/api/conversations/999999").status_code == 404


def test_a_session_names_library_videos_and_a_known_persona(client: TestClient):
    started = client.post("/api/sessions", json={"videos": ["sourdough_talk"]})
    assert started.status_code == 200
    session_id = started.json()["sessionId"]
    assert started.json()["offerUrl"] == f"/sessions/{session_id}/api/offer"
    # Pipecat's /start shape, as its client SDK and prebuilt UI send it.
    pipecat = client.post("/start", json={"transport": "webrtc", "body": {"persona": "analyst"}})
    assert pipecat.status_code == 200 and pipecat.json()["sessionId"] != session_id
    unknown = client.post("/api/sessions", json={"videos": ["nope", "sourdough_talk"]})
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]
    persona = client.post("/api/sessions", json={"persona": "pirate"})
    assert persona.status_code == 400 and "tutor" in persona.json()["detail"]
    stale = client.post("/sessions/not-a-session/api/offer", json={"sdp": "x", "type": "offer"})
    assert stale.status_code == 404
    no_sdp = client.post(f"/sessions/{session_id}/api/offer", json={"type": "offer"})
    assert no_sdp.status_code == 400 and "sdp" in no_sdp.json()["detail"]


def test_removing_a_video_removes_it_from_the_library(client: TestClient):
    assert client.delete("/api/videos/sourdough_talk").status_code == 204
    assert client.delete("/api/videos/sourdough_talk").status_code == 404
    keys = [v["key"] for v in client.get("/api/videos").json()["videos"]]
    assert keys == ["gradient_descent_lecture"]


def test_the_api_is_documented(client: TestClient):
    spec = client.get("/openapi.json").json()
    for path in ("/api/videos", "/api/jobs/{job_id}", "/api/sessions", "/api/conversations"):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200
