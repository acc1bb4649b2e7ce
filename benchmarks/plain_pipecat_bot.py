"""A plain Pipecat 1.14 cascade bot: the baseline ``benchmarks/turn_taking.py`` measures against.

What a new Pipecat user writes from Pipecat's own template (the CLI's cascade template,
``pipecat/cli/templates``): SmallWebRTC, Deepgram STT (Nova by default, or Flux),
Pipecat's ``LLMContextAggregatorPair`` with Silero VAD and **Pipecat's default turn
strategies** (start: VAD or a transcription; stop: smart-turn v3 — or Flux's own turn
events, which Flux recommends), OpenAI LLM, Deepgram TTS. No RAG, no Backtalk code.
It greets with the same sentence as Backtalk, so both sessions start alike.

Run under Pipecat's dev runner, as its template does::

    python benchmarks/plain_pipecat_bot.py -t webrtc --port 7861

Environment: ``OPENAI_BASE_URL`` and ``BACKTALK_DEEPGRAM_BASE_URL`` (the loopback fakes),
``OPENAI_API_KEY``, ``DEEPGRAM_API_KEY``; ``PLAIN_BOT_STT`` = ``deepgram`` (Nova, default)
or ``deepgram_flux``; ``PLAIN_BOT_GREETING`` (the first sentence spoken). Pipecat's runner
loads a ``.env`` in the working directory over these, so run it from a directory
without one.
"""

from __future__ import annotations

import os

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

SYSTEM = "You are a friendly assistant who has watched a lecture on gradient descent."


def stt_service():
    """Nova (``/v1/listen``) or Flux (``/v2/listen``) at the fake's address."""
    base = os.environ["BACKTALK_DEEPGRAM_BASE_URL"]
    key = os.environ["DEEPGRAM_API_KEY"]
    if os.environ.get("PLAIN_BOT_STT", "deepgram") == "deepgram_flux":
        return DeepgramFluxSTTService(api_key=key, url=f"{base}/v2/listen")
    return DeepgramSTTService(api_key=key, base_url=base)


async def bot(runner_args: RunnerArguments):
    """One conversation (the dev runner calls this per session)."""
    transport = await create_transport(
        runner_args,
        {"webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True)},
    )
    llm = OpenAILLMService(
        api_key=os.environ["OPENAI_API_KEY"],
        base_url=os.environ["OPENAI_BASE_URL"],
        settings=OpenAILLMService.Settings(model="gpt-4o-mini", system_instruction=SYSTEM),
    )
    tts = DeepgramTTSService(
        api_key=os.environ["DEEPGRAM_API_KEY"],
        base_url=os.environ["BACKTALK_DEEPGRAM_BASE_URL"],
        settings=DeepgramTTSService.Settings(voice="aura-2-helena-en"),
    )
    context = LLMContext()
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [transport.input(), stt_service(), user, llm, tts, transport.output(), assistant]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport, _client):
        greeting = os.environ.get("PLAIN_BOT_GREETING", "Hi! What would you like to know?")
        await worker.queue_frames([TTSSpeakFrame(greeting)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport, _client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
