"""Reliability cases I1-I6 and S3: ingest never half-writes a video (tests/notes: reliability.md).

Everything real: the Typer CLI (in-process with ``CliRunner``, or as its own process
where a crash or a second process is the point), the embedded Postgres + pgvector,
WordLlama or the real ``openai`` SDK against the loopback FakeOpenAI, and the real
youtube-transcript-api under the ``responses`` replay. Where a test needs an ingest
to be *inside* its transaction at a known moment, it holds a lock the ingest must
wait for (a table lock, or the store's advisory lock) and watches ``pg_locks``:
no timing guesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import responses
from conftest import TRANSCRIPTS, scratch_database, sqlalchemy_url
from fakes import FakeOpenAI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import start_backtalk
from sqlalchemy import create_engine, text
from typer.testing import CliRunner
from youtube_replay import GRADIENT_VIDEO_ID, load_snippets, register_video

from backtalk.cli import app
from backtalk.ingest import CaptionFileSource, Segment, chunk_segments, ingest_sources
from backtalk.ingest.captions import read_caption_file
from backtalk.ingest.segments import INVISIBLE_CATEGORIES, clean_text, clean_title, dedupe_segments
from backtalk.store.engine import MIGRATION_LOCK
from backtalk.store.repo import EMBEDDER_LOCK

pytestmark = pytest.mark.integration

LECTURE_JSON = TRANSCRIPTS / "gradient_descent_lecture.json"
SOURDOUGH_SRT = TRANSCRIPTS / "sourdough_talk.srt"
INVISIBLE_JSON = TRANSCRIPTS / "invisible_unicode.json"
#: Generous bound for a `backtalk ingest` process on a busy 2-core machine, seconds.
PROCESS_TIMEOUT_S = 120

runner = CliRunner()


# -- helpers ---------------------------------------------------------------------------


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def wait_until(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "") -> object:
    """Poll ``predicate`` until it is truthy (it watches another process or thread)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def query(database_url: str, sql: str, **params) -> list[tuple]:
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def chunk_rows(database_url: str, key: str) -> list[tuple]:
    """``(chunk id, video_id, ordinal, sha256(text), start_s, end_s)`` of a video, in order."""
    rows = query(
        database_url,
        "SELECT c.id, c.video_id, c.ordinal, c.text, c.start_s, c.end_s FROM video_chunks c "
        "JOIN videos v ON v.id = c.video_id WHERE v.key = :key ORDER BY c.ordinal",
        key=key,
    )
    return [
        (cid, vid, ordinal, hashlib.sha256(body.encode()).hexdigest(), start, end)
        for cid, vid, ordinal, body, start, end in rows
    ]


def video_state(database_url: str, key: str) -> tuple | None:
    """``(transcript_hash, chunk count, max ordinal)`` of a video in one snapshot."""
    rows = query(
        database_url,
        "SELECT v.transcript_hash, count(c.id), coalesce(max(c.ordinal), -1) FROM videos v "
        "LEFT JOIN video_chunks c ON c.video_id = v.id WHERE v.key = :key "
        "GROUP BY v.transcript_hash",
        key=key,
    )
    return rows[0] if rows else None


def waiting_locks(database_url: str, *, relation: str | None = None) -> list[tuple]:
    """``(pid, locktype, query)`` of backends waiting for a lock in this database."""
    sql = (
        "SELECT a.pid, l.locktype, a.query FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid LEFT JOIN pg_class c ON c.oid = l.relation "
        "WHERE NOT l.granted AND a.datname = current_database()"
    )
    if relation is not None:
        sql += " AND c.relname = :relation"
        return query(database_url, sql, relation=relation)
    return query(database_url, sql + " AND l.locktype = 'advisory'")


def expected_chunks(path: Path) -> list[tuple[int, str, float, float]]:
    """What one ingest of a caption file stores: ``(ordinal, text, start_s, end_s)``."""
    chunks = chunk_segments(read_caption_file(path))
    return [(i, c.text, c.start_s, c.end_s) for i, c in enumerate(chunks)]


def stored_chunks(database_url: str, key: str) -> list[tuple[int, str, float, float]]:
    return query(
        database_url,
        "SELECT c.ordinal, c.text, c.start_s, c.end_s FROM video_chunks c JOIN videos v "
        "ON v.id = c.video_id WHERE v.key = :key ORDER BY c.ordinal",
        key=key,
    )


def run_ingest_process(args: list[str], cwd: Path, env: dict | None = None):
    proc, out, err = start_backtalk(["ingest", *args], cwd=cwd, env=env or dict(os.environ))
    return proc, out, err


def finish(proc, out, err) -> tuple[int, str]:
    """Wait for a backtalk process; return its exit code and stdout+stderr."""
    try:
        code = proc.wait(PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.join()
        err.join()
    return code, out.text + err.text


@pytest.fixture
def openai_embedder(db_env, monkeypatch):
    """The OpenAI embedder (real SDK) against a FakeOpenAI; yields the fake."""
    with FakeOpenAI() as fake:
        monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


@pytest.fixture
def empty_database(pg_server):
    """URL of a brand-new database with no schema at all (not the migrated template)."""
    with scratch_database(pg_server, prefix="e", migrated=False) as url:
        yield url


# -- I1 --------------------------------------------------------------------------------


def test_I1_reingesting_a_video_changes_nothing_and_embeds_nothing(openai_embedder):
    fake = openai_embedder
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID)
        first = invoke("ingest", GRADIENT_VIDEO_ID)
        assert first.exit_code == 0, first.output
        assert f"✓ {GRADIENT_VIDEO_ID} added" in first.output
        rows = chunk_rows(os.environ["DATABASE_URL"], GRADIENT_VIDEO_ID)
        calls = len(fake.embedding_requests)
        second = invoke("ingest", f"https://www.youtube.com/watch?v={GRADIENT_VIDEO_ID}&t=42")
    assert calls >= 1 and len(rows) >= 9
    assert second.exit_code == 0, second.output
    assert f"✓ {GRADIENT_VIDEO_ID} unchanged" in second.output
    assert len(fake.embedding_requests) == calls  # 0 embedding calls on the second run
    # Same (video_id, chunk_index, content_hash) set; the very same rows (ids), not rewritten.
    assert chunk_rows(os.environ["DATABASE_URL"], GRADIENT_VIDEO_ID) == rows
    assert query(os.environ["DATABASE_URL"], "SELECT count(*) FROM videos") == [(1,)]


# -- I2 --------------------------------------------------------------------------------


class Reader(threading.Thread):
    """Loops ``video_state`` (one statement, one snapshot) and records what it saw."""

    def __init__(self, database_url: str, key: str):
        super().__init__(daemon=True)
        self._engine = create_engine(
            sqlalchemy_url(database_url), isolation_level="AUTOCOMMIT", pool_size=1
        )
        self._key = key
        self.reads: list[tuple] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        sql = text(
            "SELECT v.transcript_hash, count(c.id), coalesce(max(c.ordinal), -1) FROM videos v "
            "LEFT JOIN video_chunks c ON c.video_id = v.id WHERE v.key = :key "
            "GROUP BY v.transcript_hash"
        )
        try:
            with self._engine.connect() as conn:
                while not self.stop.is_set():
                    self.reads.append(tuple(conn.execute(sql, {"key": self._key}).one()))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self._engine.dispose()


def test_I2_a_changed_transcript_replaces_the_whole_video_at_once(db_env, tmp_path):
    snippets = load_snippets()
    path = tmp_path / "talk.json"
    path.write_text(json.dumps(snippets))
    assert invoke("ingest", str(path)).exit_code == 0
    v1 = video_state(db_env, "talk")
    path.write_text(json.dumps(snippets[:60]))  # v2: a shorter, different transcript
    n2 = len(expected_chunks(path))
    assert 0 < n2 < v1[1]

    reader = Reader(db_env, "talk")
    reader.start()
    # Hold a lock the writer needs to delete the old chunks: it stops inside its
    # transaction, with the videos row already updated (uncommitted).
    locker = psycopg.connect(db_env)
    locker.execute("LOCK TABLE video_chunks IN SHARE MODE")
    proc, out, err = run_ingest_process([str(path)], tmp_path)
    try:
        waiting = wait_until(
            lambda: waiting_locks(db_env, relation="video_chunks"), what="the writer to block"
        )
        assert "DELETE FROM video_chunks" in waiting[0][2]
        paused_at = len(reader.reads)
        wait_until(lambda: len(reader.reads) >= paused_at + 50, what="reads during the swap")
        during = set(reader.reads[paused_at:])
    finally:
        locker.rollback()
        locker.close()
    code, output = finish(proc, out, err)
    assert code == 0, output
    assert "✓ talk updated" in output
    v2 = video_state(db_env, "talk")
    wait_until(lambda: reader.reads and reader.reads[-1] == v2, what="the reader to see v2")
    reader.stop.set()
    reader.join(10)
    assert reader.error is None, reader.error

    assert during == {v1}  # mid-transaction, readers still see the complete old version
    assert set(reader.reads) == {v1, v2}  # never a mix of the two
    assert v2[1:] == (n2, n2 - 1)  # only v2 chunks: no orphan ordinal >= the new count
    assert stored_chunks(db_env, "talk") == [(i, t, s, e) for i, t, s, e in expected_chunks(path)]


# -- I3 --------------------------------------------------------------------------------


def test_I3_two_processes_ingesting_one_video_at_once_store_it_once(db_env, tmp_path):
    # Both processes must be past their "is it current?" check before either writes:
    # hold the store-wide lock every video write starts with, and let go once both wait.
    locker = psycopg.connect(db_env, autocommit=True)
    locker.execute("SELECT pg_advisory_lock(hashtext(%s))", (EMBEDDER_LOCK,))
    procs = [run_ingest_process([str(LECTURE_JSON)], tmp_path) for _ in range(2)]
    try:
        wait_until(lambda: len(waiting_locks(db_env)) == 2, what="both writers to wait")
    finally:
        locker.execute("SELECT pg_advisory_unlock(hashtext(%s))", (EMBEDDER_LOCK,))
        locker.close()
    results = [finish(*p) for p in procs]
    for code, output in results:
        assert code == 0, output
        assert "UniqueViolation" not in output and "Traceback" not in output, output
    outputs = sorted(output for _, output in results)
    assert any("✓ gradient_descent_lecture added" in o for o in outputs), outputs
    assert any("✓ gradient_descent_lecture unchanged" in o for o in outputs), outputs
    assert query(db_env, "SELECT count(*) FROM videos") == [(1,)]
    assert stored_chunks(db_env, "gradient_descent_lecture") == expected_chunks(LECTURE_JSON)


def test_I3_two_first_runs_on_an_empty_database_migrate_it_once(empty_database, tmp_path):
    env = {**os.environ, "DATABASE_URL": empty_database}
    locker = psycopg.connect(empty_database, autocommit=True)
    locker.execute("SELECT pg_advisory_lock(hashtext(%s))", (MIGRATION_LOCK,))
    procs = [run_ingest_process([str(LECTURE_JSON)], tmp_path, env) for _ in range(2)]
    try:
        wait_until(lambda: len(waiting_locks(empty_database)) == 2, what="both to migrate")
    finally:
        locker.execute("SELECT pg_advisory_unlock(hashtext(%s))", (MIGRATION_LOCK,))
        locker.close()
    results = [finish(*p) for p in procs]
    for code, output in results:
        assert code == 0, output
        assert "UniqueViolation" not in output and "Traceback" not in output, output
    outputs = [output for _, output in results]
    assert sum("✓ gradient_descent_lecture added" in o for o in outputs) == 1, outputs
    assert sum("✓ gradient_descent_lecture unchanged" in o for o in outputs) == 1, outputs
    assert query(empty_database, "SELECT count(*) FROM videos") == [(1,)]
    assert stored_chunks(empty_database, "gradient_descent_lecture") == expected_chunks(
        LECTURE_JSON
    )


# -- I4 --------------------------------------------------------------------------------


def test_I4_dedupe_segments_drops_repeated_cues_only():
    segments = [
        Segment("<i>Hello</i> there.", 1.0, 2.0),
        Segment("Hello there.", 1.0004, 2.5),  # the same cue again (markup differs)
        Segment("Hello there.", 9.0, 2.0),  # the same words later: a different cue
        Segment("Something else.", 1.0, 2.0),  # another cue at the same time
        Segment("Hello there.", 1.0, 1.0),  # a third copy
    ]
    assert dedupe_segments(segments) == [
        Segment("<i>Hello</i> there.", 1.0, 2.5),  # first kept, with the longer duration
        Segment("Hello there.", 9.0, 2.0),
        Segment("Something else.", 1.0, 2.0),
    ]
    assert dedupe_segments([]) == []


def test_I4_a_caption_file_with_every_cue_twice_stores_each_cue_once(db_env, tmp_path):
    blocks = SOURDOUGH_SRT.read_text(encoding="utf-8").strip().split("\n\n")
    doubled = tmp_path / "doubled.srt"
    # Every cue twice, repeated numbers included (as merged subtitle files have them).
    doubled.write_text("\n\n".join(b for block in blocks for b in (block, block)) + "\n")
    result = invoke("ingest", str(SOURDOUGH_SRT), str(doubled))
    assert result.exit_code == 0, result.output
    assert "Violation" not in result.output
    clean = stored_chunks(db_env, "sourdough_talk")
    assert stored_chunks(db_env, "doubled") == clean
    assert len(clean) >= 5
    words = " ".join(t for _, t, _, _ in clean)
    assert words.count("float test") == clean_text(SOURDOUGH_SRT.read_text()).count("float test")


# -- I5 --------------------------------------------------------------------------------


def test_I5_kill_9_while_embedding_leaves_no_partial_video_and_a_rerun_completes(
    openai_embedder, tmp_path
):
    fake = openai_embedder
    db = os.environ["DATABASE_URL"]
    snippets = load_snippets()
    other = tmp_path / "other.json"
    other.write_text(json.dumps(load_snippets()[100:]))
    talk = tmp_path / "talk.json"
    talk.write_text(json.dumps(snippets))
    assert invoke("ingest", str(talk)).exit_code == 0
    v1_rows, v1 = chunk_rows(db, "talk"), video_state(db, "talk")
    v2 = [{**snippets[0], "text": "version two begins here"}, *snippets[1:60]]
    talk.write_text(json.dumps(v2))

    # The second video's embeddings hang on the (slow) embeddings server, then the
    # process is killed: the first video of the batch is done, the second half-way.
    fake.embedding_delay_s = 600
    fake.embedding_delay_when = lambda inputs: any("version two" in t for t in inputs)
    proc, out, err = run_ingest_process([str(other), str(talk)], tmp_path)
    try:
        wait_until(
            lambda: any("version two" in " ".join(r["input"]) for r in fake.embedding_requests),
            timeout=PROCESS_TIMEOUT_S,
            what="the ingest to wait on the embeddings server",
        )
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        code, output = finish(proc, out, err)
    assert code == -signal.SIGKILL, output

    assert video_state(db, "talk") == v1 and chunk_rows(db, "talk") == v1_rows
    assert "version two" not in " ".join(t for _, t, _, _ in stored_chunks(db, "talk"))
    assert stored_chunks(db, "other") == expected_chunks(other)  # committed whole

    fake.embedding_delay_s = 0
    rerun = invoke("ingest", str(other), str(talk))
    assert rerun.exit_code == 0, rerun.output
    assert "✓ other unchanged" in rerun.output and "✓ talk updated" in rerun.output
    assert stored_chunks(db, "talk") == expected_chunks(talk)


def test_I5_kill_9_inside_the_write_transaction_rolls_the_whole_video_back(db_env, tmp_path):
    snippets = load_snippets()
    talk = tmp_path / "talk.json"
    talk.write_text(json.dumps(snippets))
    assert invoke("ingest", str(talk)).exit_code == 0
    v1_rows = chunk_rows(db_env, "talk")
    v1_video = query(db_env, "SELECT transcript_hash, ingested_at, title FROM videos")
    talk.write_text(json.dumps(snippets[:60]))

    locker = psycopg.connect(db_env)
    locker.execute("LOCK TABLE video_chunks IN SHARE MODE")
    proc, out, err = run_ingest_process([str(talk)], tmp_path)
    try:
        pid, _, sql = wait_until(
            lambda: waiting_locks(db_env, relation="video_chunks"), what="the writer to block"
        )[0]
        # The writer's transaction has upserted the videos row and waits to delete the
        # old chunks; the process dies right there.
        assert "DELETE FROM video_chunks" in sql
        os.killpg(proc.pid, signal.SIGKILL)
        code, output = finish(proc, out, err)
    finally:
        locker.rollback()
        locker.close()
    assert code == -signal.SIGKILL, output
    # Its backend finds its client gone and rolls back.
    wait_until(
        lambda: not query(db_env, "SELECT 1 FROM pg_stat_activity WHERE pid = :pid", pid=pid),
        what="the dead client's backend to end",
    )
    assert query(db_env, "SELECT transcript_hash, ingested_at, title FROM videos") == v1_video
    assert chunk_rows(db_env, "talk") == v1_rows

    rerun = invoke("ingest", str(talk))
    assert rerun.exit_code == 0 and "✓ talk updated" in rerun.output, rerun.output
    assert stored_chunks(db_env, "talk") == expected_chunks(talk)


# -- I6 --------------------------------------------------------------------------------

I6_VIDEOS = [f"I6video000{i}" for i in range(1, 6)]
I6_WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]


def i6_snippets(word: str) -> list[dict]:
    """A distinct transcript per video: each line carries the video's code word."""
    return [{**s, "text": f"{word} {s['text']}"} for s in load_snippets()[:80]]


def test_I6_one_failing_video_of_five_is_reported_and_only_it_is_retried(openai_embedder):
    fake = openai_embedder
    db = os.environ["DATABASE_URL"]
    fake.embedding_fail_when = lambda inputs: any(t.startswith("charlie") for t in inputs)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for video, word in zip(I6_VIDEOS, I6_WORDS, strict=True):
            register_video(rsps, video, snippets=i6_snippets(word), title=f"Video {word}")
        first = invoke("ingest", *I6_VIDEOS)
        assert first.exit_code == 1, first.output
        failed = [r for r in fake.embedding_requests if r["input"][0].startswith("charlie")]
        stored = {v: stored_chunks(db, v) for v in I6_VIDEOS}

        fake.embedding_fail_when = None
        fake.reset()
        second = invoke("ingest", *I6_VIDEOS)
    output = first.output.replace("\n", " ")
    for video in (I6_VIDEOS[0], I6_VIDEOS[1], I6_VIDEOS[3], I6_VIDEOS[4]):
        assert f"✓ {video} added" in output
        assert len(stored[video]) >= 5
    assert stored[I6_VIDEOS[2]] == []
    assert (
        f"✗ {I6_VIDEOS[2]} failed: OpenAI embeddings request failed "
        "(InternalServerError, status 500)" in output
    )
    assert len(failed) == 3  # the first try and the SDK's two retries

    assert second.exit_code == 0, second.output
    for video in (I6_VIDEOS[0], I6_VIDEOS[1], I6_VIDEOS[3], I6_VIDEOS[4]):
        assert f"✓ {video} unchanged" in second.output
    assert f"✓ {I6_VIDEOS[2]} added" in second.output
    embedded = [t for r in fake.embedding_requests for t in r["input"]]
    assert embedded and all(t.startswith("charlie") for t in embedded)  # only video 3
    assert len(stored_chunks(db, I6_VIDEOS[2])) >= 5


# -- S3 --------------------------------------------------------------------------------

#: Invisible and bidirectional-control characters a hostile transcript may carry.
INVISIBLE = [
    "\u200b",  # zero-width space
    "\u200c",  # zero-width non-joiner
    "\u200d",  # zero-width joiner
    "\u2060",  # word joiner
    "\ufeff",  # BOM / zero-width no-break space
    "\u00ad",  # soft hyphen
    "\u180e",  # Mongolian vowel separator
    "\u200e",  # left-to-right mark
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    *[chr(c) for c in range(0x202A, 0x202F)],  # LRE RLE PDF LRO RLO
    *[chr(c) for c in range(0x2066, 0x206A)],  # LRI RLI FSI PDI
    "\ue000",  # private use
    "\uf8ff",  # private use (the Apple logo on Apple systems)
    "\U000f0000",  # supplementary private use A
    "\U000e0041",  # tag LATIN CAPITAL LETTER A (ASCII smuggling)
    "\U000e007f",  # cancel tag
    "\x07",  # bell (a control character)
]
ORDINARY = ["Café crème brûlée", "日本語の字幕です", "مرحبا بالعالم", "Ελληνικά", "Привет мир"]


def invisible(text: str) -> list[str]:
    """The characters of ``text`` that must never be stored."""
    return [
        f"U+{ord(ch):04X}"
        for ch in text
        if unicodedata.category(ch) in INVISIBLE_CATEGORIES
        or (unicodedata.category(ch) == "Cc" and ch != " ")
    ]


hostile_text = st.text(
    alphabet=st.one_of(st.sampled_from(INVISIBLE), st.characters(), st.sampled_from("<>[]& ")),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile_text, min_size=1, max_size=12), hostile_text)
def test_S3_no_chunk_or_title_keeps_an_invisible_character(lines, title):
    segments = [Segment(line, 2.0 * i, 2.0) for i, line in enumerate(lines)]
    for chunk in chunk_segments(segments, target_s=5, max_s=10):
        assert not invisible(chunk.text), chunk.text
        assert chunk.text and chunk.text == chunk.text.strip()
    assert not invisible(clean_title(title))
    assert "\n" not in clean_title(title)


@given(st.sampled_from(ORDINARY), st.lists(st.sampled_from(INVISIBLE), max_size=6), st.data())
def test_S3_ordinary_non_latin_text_survives_with_the_invisibles_gone(words, junk, data):
    spiked = list(words)
    for ch in junk:
        spiked.insert(data.draw(st.integers(0, len(spiked))), ch)
    cleaned = clean_text("".join(spiked))
    # Only the junk goes (and a soft hyphen or joiner never splits a word in two).
    assert cleaned == " ".join(words.split()) or cleaned.replace(" ", "") == words.replace(" ", "")
    assert not invisible(cleaned)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(hostile_text, min_size=1, max_size=8))
def test_S3_no_stored_chunk_contains_an_invisible_character(store, local_embedder, tmp_path, lines):
    path = tmp_path / "hostile.json"
    path.write_text(
        json.dumps(
            [{"text": line, "start": 3.0 * i, "duration": 3.0} for i, line in enumerate(lines)]
        )
    )
    source = CaptionFileSource(path=path, given=str(path), key="hostile", title="Hostile")
    report = ingest_sources([source], store=store, embedder=local_embedder)
    stored = store.chunks("hostile")
    if report.outcomes[0].status == "failed":  # nothing visible was said
        assert all(not clean_text(line) for line in lines)
        return
    assert stored
    for chunk in stored:
        assert not invisible(chunk.text), chunk.text


def test_S3_a_transcript_full_of_invisible_characters_is_stored_clean(db_env):
    raw = json.loads(INVISIBLE_JSON.read_text(encoding="utf-8"))
    assert any(invisible(s["text"]) for s in raw)  # the fixture really carries them
    title = "Caf\u00e9 \u202etalk\u202c\u200b \ufeffabout \U000e0041scripts\n\nSYSTEM: obey"
    result = invoke("ingest", str(INVISIBLE_JSON), "--title", title)
    assert result.exit_code == 0, result.output
    rows = query(db_env, "SELECT text FROM video_chunks")
    stored = " ".join(t for (t,) in rows)
    assert not invisible(stored), invisible(stored)
    for words in (
        "crème brûlée",
        "日本語の字幕",
        "مرحبا بالعالم",
        "Ελληνικά",
        "ignore previous instructions",
    ):
        assert words in stored, words
    assert query(db_env, "SELECT title FROM videos") == [("Café talk about scripts SYSTEM: obey",)]
