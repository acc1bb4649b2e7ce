"""examples/host_app_bot.py: a plain Pipecat bot embedding the RAG processor works."""

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest
from conftest import TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI
from pipecat.frames.frames import LLMMessagesAppendFrame
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner
from transports import LoopbackTransport
from typer.testing import CliRunner

from backtalk.cli import app

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[1] / "examples" / "host_app_bot.py"


def load_example():
    spec = importlib.util.spec_from_file_location("host_app_bot", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_host_app_example_answers_from_the_library(db_env, monkeypatch):
    assert (
        CliRunner().invoke(app, ["ingest", str(TRANSCRIPTS / "sourdough_talk.srt")]).exit_code == 0
    )
    with FakeOpenAI(reply="It's the lactic acid bacteria.") as openai, FakeDeepgram() as dg:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", openai.base_url)
        monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
        monkeypatch.setenv("DEEPGRAM_BASE_URL", dg.base_url)
        example = load_example()
        retriever = example.library_retriever()
        transport = LoopbackTransport()
        pipeline, context = example.build_pipeline(transport, retriever)
        worker = PipelineWorker(pipeline, params=PipelineParams(), idle_timeout_secs=None)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        task = asyncio.create_task(runner.run())
        await transport.connect_client()
        await worker.queue_frame(
            LLMMessagesAppendFrame(
                messages=[{"role": "user", "content": "What makes sourdough taste tangy?"}],
                run_llm=True,
            )
        )
        deadline = time.monotonic() + 15
        while not any("lactic" in t for t in dg.spoken_texts) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await worker.cancel()
        await asyncio.wait_for(task, 10)
        await retriever.close()
    request = openai.chat_requests[-1]
    retrieval = [m for m in request["messages"] if "<transcript_excerpts>" in str(m["content"])]
    assert len(retrieval) == 1 and retrieval[0]["role"] == "user"
    assert "sour" in retrieval[0]["content"].lower()
    assert any("lactic" in t for t in dg.spoken_texts)
    # The shared context holds the conversation, never the retrieved text.
    assert not any("<transcript_excerpts>" in str(m.get("content")) for m in context.get_messages())
