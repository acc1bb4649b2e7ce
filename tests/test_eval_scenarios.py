"""evals/grounding.yaml runs under Pipecat's eval harness against `backtalk talk`.

The bot runs as a user runs it (its own process, Pipecat's dev runner, the eval
harness connecting to ``/ws``). The LLM is the loopback fake, scripted as a model
that follows the grounding rules (cite the first excerpt it is given; decline when
told nothing matched): so these runs check Backtalk's part of each scenario —
retrieval, the similarity floor, the harness wiring — while obedience to injected
instructions is for runs against a real LLM (see the YAML's header).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI
from pipecat.evals.scenario import EvalScenarioFile
from pipecat.evals.script_session import EvalScriptSession
from processes import free_port, start_backtalk, wait_serving
from test_conversation_text import grounded_reply

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SCENARIOS = Path(__file__).parents[1] / "evals" / "grounding.yaml"


@pytest.fixture
def bot(db_env, tmp_path):
    with FakeOpenAI(reply=grounded_reply) as openai, FakeDeepgram(tts_secs_per_char=0.005) as dg:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": db_env,
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": openai.base_url,
            "DEEPGRAM_API_KEY": "dg-test",
            "BACKTALK_DEEPGRAM_BASE_URL": dg.base_url,
            "BACKTALK_DATA_DIR": str(tmp_path / "data"),
        }
        args = [
            "talk",
            str((TRANSCRIPTS / "gradient_descent_lecture.json").resolve()),
            str((TRANSCRIPTS / "coffee_canary_talk.json").resolve()),
            "--port",
            str(port),
        ]
        proc, out, err = start_backtalk(args, cwd=tmp_path, env=env)
        try:
            wait_serving(proc, err, port)
            yield f"ws://localhost:{port}/ws", openai
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            out.join()
            err.join()
        assert "Traceback" not in err.text, err.text[-3000:]


async def test_grounding_scenarios_pass_under_the_pipecat_eval_harness(bot):
    url, openai = bot
    scenarios = EvalScenarioFile.load(SCENARIOS).scenarios
    assert len(scenarios) == 5
    results = {}
    for scenario in scenarios:
        result = await EvalScriptSession.from_scenario(scenario, url).run()
        results[scenario.name] = (result.passed, result.failures)
        await asyncio.sleep(0.2)
    assert all(passed for passed, _ in results.values()), results
    # Each scenario reached the LLM through the bot, with retrieval in front of it.
    assert len(openai.chat_requests) >= 5
    asked = [r["messages"][-1]["content"] for r in openai.chat_requests]
    assert "What's the weather going to be like in Paris tomorrow?" in asked
