"""Injection vs tool retrieval: what each adds to a turn, with realistic LLM timing.

Method: the real conversation (``build_conversation``) over a real embedded Postgres
with both fixture transcripts ingested (local embedder), typed turns through the
RTVI send-text path, FakeOpenAI with ``ttft_s`` (default 0.55 s, gpt-4o-mini's
published median) and FakeDeepgram TTS (first audio after 0.3 s). The fake LLM
behaves like a model that follows each mode's rules: in tool mode it calls
``search_video`` for questions about the video and answers small talk directly.
Measured: user text queued → first TTS ``Speak`` message at the fake Deepgram, per
turn, for content questions (qa.json answerable ones) and small talk.

    python -m benchmarks.retrieval_modes [--turns N] [--ttft 0.55] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RESULTS = ROOT / "benchmarks" / "results"
SMALL_TALK = ["Hello!", "Thanks, that's helpful.", "Cool.", "Okay, got it.", "Nice one."]


async def run_mode(mode: str, questions: list[str], ttft_s: float, database_url: str) -> dict:
    from fakes import FakeDeepgram, FakeOpenAI, FakeReply
    from pipecat.frames.frames import LLMMessagesAppendFrame
    from pipecat.workers.runner import WorkerRunner
    from test_conversation_text import grounded_reply, last_user_text
    from transports import LoopbackTransport

    from backtalk.agent.audio import transport_params
    from backtalk.agent.bot import AgentResources, TalkSession, build_conversation
    from backtalk.config import Settings

    def model(request: dict):
        messages = request["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        searched = any(m["role"] == "tool" for m in messages[last_user:])
        if mode == "tool" and not searched:
            text = last_user_text(request)
            if text not in SMALL_TALK:
                return FakeReply(tool_calls=[{"name": "search_video", "arguments": {"query": text}}])
        if last_user_text(request) in SMALL_TALK and mode == "tool":
            return "You're welcome!"
        return grounded_reply(request)

    with (
        FakeOpenAI(reply=model, ttft_s=ttft_s) as openai,
        FakeDeepgram(tts_first_audio_s=0.3, tts_secs_per_char=0.002) as dg,
    ):
        os.environ.update(
            {
                "DATABASE_URL": database_url,
                "OPENAI_API_KEY": "sk-bench",
                "OPENAI_BASE_URL": openai.base_url,
                "DEEPGRAM_API_KEY": "dg-bench",
                "BACKTALK_DEEPGRAM_BASE_URL": dg.base_url,
                "BACKTALK_RETRIEVAL_MODE": mode,
            }
        )
        resources = AgentResources.open(Settings())
        videos = resources.store.list_videos()
        transport = LoopbackTransport(transport_params(resources.settings))
        conversation = await build_conversation(
            transport, TalkSession(videos=videos), resources, transport_name="bench",
            idle_timeout_secs=None,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(conversation.worker)
        task = asyncio.create_task(runner.run())
        await transport.connect_client()
        while not dg.spoken_texts:  # the greeting
            await asyncio.sleep(0.01)
        timings: dict[str, list[float]] = {"content": [], "small_talk": []}
        turns = [(q, "content") for q in questions]
        turns = [t for pair in zip(turns, [(s, "small_talk") for s in SMALL_TALK * 10], strict=False) for t in pair]
        for text, kind in turns:
            spoken = len(dg.spoken_texts)
            started = time.monotonic()
            await conversation.worker.queue_frame(
                LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True)
            )
            while len(dg.spoken_texts) == spoken:
                await asyncio.sleep(0.002)
            timings[kind].append(time.monotonic() - started)
            await asyncio.sleep(0.3)
        requests = len(openai.chat_requests)
        await transport.disconnect_client()
        await asyncio.wait_for(task, 15)
        await resources.close()
        resources.store.engine.dispose()
    return {
        "mode": mode,
        "llm_requests": requests,
        **{
            kind: {
                "n": len(values),
                "median_s": statistics.median(values),
                "p95_s": sorted(values)[max(0, int(len(values) * 0.95) - 1)],
            }
            for kind, values in timings.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12, help="content questions per mode")
    parser.add_argument("--ttft", type=float, default=0.55, help="LLM time to first token, s")
    parser.add_argument("--quick", action="store_true", help="3 questions per mode")
    args = parser.parse_args()

    import pgserver
    import psycopg
    from typer.testing import CliRunner

    from backtalk.cli import app

    qa = json.loads((ROOT / "tests/fixtures/transcripts/qa.json").read_text())
    questions = [q["question"] for q in qa if q["answer_start"] is not None]
    n = 3 if args.quick else args.turns
    questions = (questions * 3)[:n]
    pgdata = Path(tempfile.mkdtemp(prefix="bench-modes-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE modes")
        url = server.get_uri("modes")
        os.environ["DATABASE_URL"] = url
        ingest = CliRunner().invoke(
            app,
            [
                "ingest",
                str(ROOT / "tests/fixtures/transcripts/gradient_descent_lecture.json"),
                str(ROOT / "tests/fixtures/transcripts/sourdough_talk.vtt"),
            ],
        )
        assert ingest.exit_code == 0, ingest.output
        results = [asyncio.run(run_mode(m, questions, args.ttft, url)) for m in ("inject", "tool")]
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"ttft_s": args.ttft, "tts_first_audio_s": 0.3, "results": results}
    (RESULTS / "retrieval_modes.json").write_text(json.dumps(out, indent=2))
    lines = [
        "| mode | content question: median / p95 to first TTS text | small talk: median / p95 | LLM requests |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['content']['median_s'] * 1000:.0f} / {r['content']['p95_s'] * 1000:.0f} ms "
            f"| {r['small_talk']['median_s'] * 1000:.0f} / {r['small_talk']['p95_s'] * 1000:.0f} ms "
            f"| {r['llm_requests']} |"
        )
    table = "\n".join(lines)
    (RESULTS / "retrieval_modes.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
