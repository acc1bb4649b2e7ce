"""What the microphone's path into the pipeline costs, per second of audio, by input frame length.

WebRTC and Daily deliver 20 ms microphone frames; ``backtalk.agent.audio.InputAudioCoalescer``
(``BACKTALK_AUDIO_IN_FRAME_S``) regroups them before the pipeline sees them. This
benchmark measures what that saves, away from the run-to-run noise of the concurrency
benchmark: it pushes ``--seconds`` of speech and silence (the q1-q4 fixtures, 1 s of
silence after each, repeated) in 20 ms ``InputAudioRawFrame``s, without pacing,
through the input side of a Backtalk conversation built from the product's own parts:

    input transport (Pipecat's ``BaseInputTransport`` with the coalescer as its
    ``audio_in_filter``) → Deepgram Nova STT (``make_stt``, to FakeDeepgram in a child
    process) → user aggregator (Silero VAD, smart-turn v3: ``make_vad``,
    ``make_turn_strategies``) → the filter that ends the microphone audio

with the agent's latency observer attached, and reports the CPU time of this process
(all threads: event loop, VAD and smart-turn executors) per second of audio, for
each ``--frames`` length (0.02 = the transport's own frames, no regrouping),
interleaved ``--rounds`` times. The fake runs in another process, as Deepgram would.
The transport's own per-frame work (aiortc or Daily decoding, its queue) is not
included: it is the same for every variant. ``--paced N`` runs N input paths side by
side, each fed a frame every 20 ms as a transport would, which counts the event loop's
wake-ups per frame too. Run: ``python -m benchmarks.input_frames`` (~1 min) or
``python -m benchmarks.input_frames --paced 8 --seconds 20 --rounds 4`` (~5 min).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks._common import (
    cpu_cells,
    cpu_figure,
    cpu_rounds,
    machine_info,
    machine_markdown,
    md_table,
    stop_on_sigterm,
    write_results,
)
from benchmarks._voice import AUDIO, PUBLISHED, Fakes  # also puts tests/ on sys.path

SAMPLE_RATE = 16000
TRANSPORT_FRAME_S = 0.02
SPEECH = ("q1_what_is_learning_rate.wav", "q2_why_momentum.wav", "q3_follow_up.wav")


def microphone(seconds: float) -> bytes:
    """``seconds`` of 16 kHz PCM16: the fixtures, each followed by 1 s of silence."""
    from transports import load_wav

    one = b"".join(load_wav(AUDIO / f) + bytes(2 * SAMPLE_RATE) for f in SPEECH)
    need = int(seconds * SAMPLE_RATE) * 2
    return (one * (need // len(one) + 1))[:need]


async def one_run(frame_s: float, pcm: bytes, settings, sessions: int = 0) -> float:
    """Process CPU seconds per second of audio for one input frame length.

    ``sessions`` 0: one input path, frames pushed as fast as it takes them. N > 0: N
    input paths side by side, each fed a frame every 20 ms (real time), CPU divided
    by N × the audio's length.
    """
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.tests.utils import SleepFrame, run_test
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.base_transport import TransportParams

    from backtalk.agent.audio import InputAudioCoalescer
    from backtalk.agent.latency import TurnLatencyReporter
    from backtalk.agent.pipeline import microphone_audio_end
    from backtalk.agent.services import make_stt, make_turn_strategies, make_vad

    class Input(BaseInputTransport):
        async def start(self, frame):
            await super().start(frame)
            await self.set_transport_ready(frame)

    async def ignore(_latency) -> None:
        return None

    def input_path() -> Pipeline:
        params = TransportParams(
            audio_in_enabled=True,
            audio_in_filter=InputAudioCoalescer(frame_s) if frame_s else None,
        )
        user, _assistant = LLMContextAggregatorPair(
            LLMContext(),
            user_params=LLMUserAggregatorParams(
                vad_analyzer=make_vad(settings),
                user_turn_strategies=make_turn_strategies(settings),
            ),
        )
        return Pipeline([Input(params), make_stt(settings), user, microphone_audio_end()])

    n = int(SAMPLE_RATE * TRANSPORT_FRAME_S) * 2
    to_send: list = []
    for i in range(0, len(pcm), n):
        to_send.append(
            InputAudioRawFrame(audio=pcm[i : i + n], sample_rate=SAMPLE_RATE, num_channels=1)
        )
        if sessions:
            to_send.append(SleepFrame(TRANSPORT_FRAME_S))
    to_send.append(SleepFrame(1.5))

    c0 = time.process_time()
    await asyncio.gather(
        *(
            run_test(
                input_path(),
                frames_to_send=to_send,
                observers=TurnLatencyReporter(ignore).observers,
                start_timeout=10.0,
            )
            for _ in range(max(1, sessions))
        )
    )
    return (time.process_time() - c0) / (max(1, sessions) * len(pcm) / 2 / SAMPLE_RATE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 s of audio, one round (~20 s)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per run, s")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", type=float, nargs="*", default=[0.02, 0.032, 0.04])
    p.add_argument(
        "--paced",
        type=int,
        default=0,
        metavar="N",
        help="N input paths side by side at real time (default: one, unpaced)",
    )
    p.add_argument("--out", help="results name (default input_frames[_quick])")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.rounds = 4.0, 1
    args.out = args.out or ("input_frames_quick" if args.quick else "input_frames")

    from loguru import logger

    from backtalk.config import Settings

    stop_on_sigterm()
    logger.remove()
    pcm = microphone(args.seconds)
    info = machine_info()
    # Only Deepgram is reached on this path: the fakes, no library (Postgres) needed.
    with Fakes(**PUBLISHED) as fakes:
        settings = Settings(
            stt_service="deepgram",
            deepgram_api_key="dg-bench",
            deepgram_base_url=fakes.info["deepgram"],
        )
        cpu = cpu_rounds(
            args.frames,
            args.rounds,
            lambda f: asyncio.run(one_run(f, pcm, settings, args.paced)),
            lambda f: f"{1e3 * f:4.0f} ms frames",
        )
    rows = [
        [
            f"{1e3 * f:.0f} ms" + (" (transport's own)" if f == TRANSPORT_FRAME_S else ""),
            f"{1 / f:.1f}",
            *cpu_cells(cpu[f], cpu[args.frames[0]]),
        ]
        for f in args.frames
    ]
    md = (
        "# The microphone's path into the pipeline: CPU by input frame length\n\n"
        + machine_markdown(info)
        + f"\n\n{args.seconds:.0f} s of speech and silence (q1-q3, 1 s of silence after each) "
        f"per run, in 20 ms frames, "
        + (
            f"{args.paced} input paths side by side, each fed at real time"
            if args.paced
            else "one input path, pushed unpaced"
        )
        + ": input transport → Nova STT → user aggregator (Silero VAD, smart-turn v3) → "
        f"audio end, latency observer attached; CPU of the process (all threads, start-up "
        f"included) per second of audio per input path; {args.rounds} interleaved rounds."
        "\n\n"
        + md_table(
            [
                "input frames",
                "frames / s",
                "CPU ms per s of audio (median)",
                "range",
                "of one core, per conversation",
                f"vs {1e3 * args.frames[0]:.0f} ms",
            ],
            rows,
        )
        + "\n"
    )
    fig = cpu_figure(
        [f"{1e3 * f:.0f} ms" for f in args.frames],
        [cpu[f] for f in args.frames],
        "CPU, ms per s of audio",
        "Microphone input path by input frame length",
    )
    write_results(
        args.out,
        {
            "benchmark": "input_frames",
            "machine": info,
            "seconds": args.seconds,
            "transport_frame_s": TRANSPORT_FRAME_S,
            "paced_sessions": args.paced,
            "cpu_s_per_audio_s": {str(f): v for f, v in cpu.items()},
        },
        md,
        fig,
    )


if __name__ == "__main__":
    main()
