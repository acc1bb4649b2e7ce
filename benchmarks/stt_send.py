"""What streaming the microphone to Deepgram Nova costs the event loop, per second of audio.

Pipecat's ``DeepgramSTTService`` sends each input frame as its own websocket message
through the Deepgram SDK. This benchmark pushes ``--seconds`` of 16 kHz mono PCM in
20 ms ``InputAudioRawFrame``s through one STT service (Pipecat's ``run_test``, no
pacing) connected to FakeDeepgram (``tests/fakes``, in a thread of this process) and
reports the CPU time of the event-loop thread (``time.thread_time``) per second of
audio, for three variants, interleaved ``--rounds`` times:

* ``stock``: Pipecat's ``DeepgramSTTService`` as the SDK opens it (permessage-deflate
  offered, and the fake, like any server that supports it, accepts);
* ``no-deflate``: the same after ``backtalk.agent.services.listen_without_compression``;
* ``chunked``: a prototype, :class:`ChunkedDeepgramSTTService` below (no deflate, and
  two input frames per 40 ms message). Measured and not shipped: see ``VOICE.md``.

The fake's own work runs in its thread and is not counted; the loopback TCP stack's
receive work, which Linux runs inside the sender's ``send()``, is. Run:
``python -m benchmarks.stt_send`` (~1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from benchmarks._common import (
    cpu_cells,
    cpu_figure,
    cpu_rounds,
    machine_info,
    machine_markdown,
    md_table,
    write_results,
)
from benchmarks._voice import TESTS  # noqa: F401  (puts tests/ on sys.path for the fakes)

SAMPLE_RATE = 16000
FRAME_S = 0.02


def chunked_service_class():
    """The prototype: ``DeepgramSTTService`` sending ``chunk_s`` of audio per message.

    Audio held when the VAD reports the end of speech goes out before Pipecat's
    ``Finalize``, so the final transcript still covers all of it.
    """
    from pipecat.frames.frames import VADUserStoppedSpeakingFrame
    from pipecat.services.deepgram.stt import DeepgramSTTService

    class ChunkedDeepgramSTTService(DeepgramSTTService):
        def __init__(self, *, chunk_s: float = 0.04, **kwargs):
            super().__init__(**kwargs)
            self._chunk_s = chunk_s
            self._pending = bytearray()

        async def run_stt(self, audio: bytes):
            self._pending += audio
            if len(self._pending) < int(self.sample_rate * self._chunk_s) * 2:
                yield None
                return
            async for frame in self._send_pending():
                yield frame

        async def _send_pending(self):
            chunk, self._pending = bytes(self._pending), bytearray()
            async for frame in super().run_stt(chunk):
                yield frame

        async def process_frame(self, frame, direction):
            if isinstance(frame, VADUserStoppedSpeakingFrame) and self._pending:
                async for _ in self._send_pending():
                    pass
            await super().process_frame(frame, direction)

    return ChunkedDeepgramSTTService


def _listen_modules():
    import deepgram.listen.v1.client as client
    import deepgram.listen.v1.raw_client as raw

    return (client, raw)


async def one_run(variant: str, seconds: float, base_url: str) -> float:
    """Event-loop CPU seconds per second of audio for one variant."""
    from pipecat.frames.frames import InputAudioRawFrame, VADUserStoppedSpeakingFrame
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.tests.utils import SleepFrame, run_test

    from backtalk.agent.services import listen_without_compression

    originals = {m: m.websockets_client_connect for m in _listen_modules()}
    try:
        if variant == "stock":
            from websockets.legacy.client import connect

            for m in originals:
                m.websockets_client_connect = connect
            service = DeepgramSTTService(api_key="dg-test", base_url=base_url)
        elif variant == "no-deflate":
            listen_without_compression()
            service = DeepgramSTTService(api_key="dg-test", base_url=base_url)
        else:
            listen_without_compression()
            service = chunked_service_class()(api_key="dg-test", base_url=base_url)
        # A quiet tone, so the fake hears audio but no speech worth transcribing.
        t = np.arange(int(SAMPLE_RATE * FRAME_S)) / SAMPLE_RATE
        pcm = (200 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).tobytes()
        frames = [
            InputAudioRawFrame(audio=pcm, sample_rate=SAMPLE_RATE, num_channels=1)
            for _ in range(int(seconds / FRAME_S))
        ]
        c0 = time.thread_time()
        await run_test(
            service,
            frames_to_send=[*frames, VADUserStoppedSpeakingFrame(stop_secs=0.2), SleepFrame(0.2)],
        )
        return (time.thread_time() - c0) / seconds
    finally:
        for m, connect in originals.items():
            m.websockets_client_connect = connect


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s of audio, one round (~10 s)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per run, s")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="results name (default stt_send[_quick])")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    args.out = args.out or ("stt_send_quick" if args.quick else "stt_send")

    from fakes import FakeDeepgram
    from loguru import logger

    logger.remove()
    variants = ["stock", "no-deflate", "chunked"]
    with FakeDeepgram() as fake:
        cpu = cpu_rounds(
            variants,
            args.rounds,
            lambda v: asyncio.run(one_run(v, args.seconds, fake.base_url)),
            lambda v: f"{v:10}",
        )
        log_sizes = fake.listen_log
    info = machine_info()
    rows = [[v, *cpu_cells(cpu[v], cpu["stock"], digits=2)] for v in variants]
    sizes = sorted({n for kind, n in log_sizes if kind == "audio"})
    md = (
        "# Streaming the microphone to Deepgram Nova: event-loop CPU\n\n"
        + machine_markdown(info)
        + f"\n\n{args.seconds:.0f} s of 16 kHz mono PCM in 20 ms frames per run, "
        f"{args.rounds} interleaved rounds; audio message sizes seen: {sizes} bytes.\n\n"
        + md_table(
            [
                "variant",
                "CPU ms per s of audio (median)",
                "range",
                "of one core, per conversation",
                "vs stock",
            ],
            rows,
        )
        + "\n"
    )
    fig = cpu_figure(
        variants,
        [cpu[v] for v in variants],
        "event-loop CPU, ms per s of audio",
        "Streaming the microphone to Deepgram Nova",
    )
    write_results(
        args.out,
        {
            "benchmark": "stt_send",
            "machine": info,
            "seconds": args.seconds,
            "frame_s": FRAME_S,
            "audio_message_sizes": sizes,
            "cpu_s_per_audio_s": cpu,
        },
        md,
        fig,
    )
    print(md)


if __name__ == "__main__":
    main()
