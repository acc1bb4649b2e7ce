"""InputAudioCoalescer: the transport's 20 ms microphone frames become 32 ms ones, losslessly.

The end-to-end tests check the product's effect (Deepgram receives 32 ms messages, the
conversation still works); these check the filter's contract with Pipecat's input
transport, which pushes only the frames the filter returns non-empty.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import AUDIO
from pipecat.frames.frames import FilterEnableFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.daily.transport import DailyParams
from transports import load_wav

from backtalk.agent.audio import InputAudioCoalescer, transport_params
from backtalk.config import Settings

RATE = 16000
FRAME_20MS = RATE // 50 * 2  # bytes of one 20 ms PCM16 mono frame, as WebRTC delivers
WINDOW = 512 * 2  # bytes of one Silero VAD window at 16 kHz (32 ms)


async def pushed(coalescer: InputAudioCoalescer, pcm: bytes, frame_bytes: int) -> list[bytes]:
    """What the input transport would push: the non-empty results, frame by frame."""
    out = []
    for i in range(0, len(pcm), frame_bytes):
        audio = await coalescer.filter(pcm[i : i + frame_bytes])
        if audio:
            out.append(audio)
    return out


async def test_speech_arrives_whole_in_vad_window_frames():
    pcm = load_wav(AUDIO / "q1_what_is_learning_rate.wav")
    pcm = pcm[: len(pcm) // (8 * FRAME_20MS) * (8 * FRAME_20MS)]  # whole 160 ms
    coalescer = InputAudioCoalescer(0.032)
    await coalescer.start(RATE)

    frames = await pushed(coalescer, pcm, FRAME_20MS)

    # 8 transport frames (160 ms) become 5 frames of one VAD window each.
    assert {len(f) for f in frames} == {WINDOW}
    assert len(frames) == len(pcm) // FRAME_20MS * 5 // 8
    assert b"".join(frames) == pcm


async def test_whole_frames_pass_through_and_the_remainder_waits():
    coalescer = InputAudioCoalescer(0.032)
    await coalescer.start(RATE)
    two = np.arange(2 * WINDOW // 2, dtype="<i2").tobytes()  # two windows: as they are
    assert await coalescer.filter(two) == two
    # 100 ms: three whole windows go out, 4 ms waits and leads the next frame.
    long = np.arange(RATE // 10, dtype="<i2").tobytes()
    assert await coalescer.filter(long) == long[: 3 * WINDOW]
    nxt = b"\x07" * FRAME_20MS
    assert await coalescer.filter(nxt) == b""  # 4 + 20 ms < 32 ms
    assert await coalescer.filter(nxt) == (long[3 * WINDOW :] + nxt + nxt)[:WINDOW]


async def test_disabling_flushes_pending_audio_and_passes_frames_through():
    coalescer = InputAudioCoalescer(0.032)
    await coalescer.start(RATE)
    a, b, c = (bytes([n]) * FRAME_20MS for n in (1, 2, 3))
    assert await coalescer.filter(a) == b""
    await coalescer.process_frame(FilterEnableFrame(enable=False))
    assert await coalescer.filter(b) == a + b
    assert await coalescer.filter(c) == c
    await coalescer.process_frame(FilterEnableFrame(enable=True))
    assert await coalescer.filter(a) == b""


async def test_stop_drops_pending_audio():
    coalescer = InputAudioCoalescer(0.032)
    await coalescer.start(RATE)
    assert await coalescer.filter(b"\x01" * FRAME_20MS) == b""
    await coalescer.stop()
    await coalescer.start(RATE)
    assert await coalescer.filter(b"\x02" * FRAME_20MS) == b""
    out = await coalescer.filter(b"\x03" * FRAME_20MS)
    assert out == (b"\x02" * FRAME_20MS + b"\x03" * FRAME_20MS)[:WINDOW]


async def test_vad_decides_as_and_when_it_does_on_the_transports_frames():
    """Silero VAD makes the same speech start/stop decisions on 32 ms frames as on the
    transport's 20 ms ones, on the same transport frame (so no later).

    The barge-in fixture has a 0.36 s pause inside the utterance ("Wait, stop. | Go
    back..."), barely longer than VAD's 0.2 s stop time once Silero's confidence has
    decayed. Frames holding two windows in some calls decide differently: at 40 ms
    some decisions come a transport frame later, at 80 ms the stop in that pause is
    missed altogether in some alignments (Pipecat's VADAnalyzer applies its thresholds
    once per call, after all the windows in it).
    """
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams, VADState

    async def decisions(pcm: bytes, frame_s: float) -> list[tuple[int, str]]:
        """(transport frame index, SPEAKING/QUIET) at each change of VAD state."""
        vad = SileroVADAnalyzer(params=VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.2))
        vad.set_sample_rate(RATE)
        coalescer = InputAudioCoalescer(frame_s)
        await coalescer.start(RATE)
        last, out = VADState.QUIET, []
        for i in range(0, len(pcm), FRAME_20MS):
            frame = await coalescer.filter(pcm[i : i + FRAME_20MS])
            state = await vad.analyze_audio(frame) if frame else last
            if state in (VADState.SPEAKING, VADState.QUIET) and state != last:
                out.append((i // FRAME_20MS, state.name))
                last = state
        return out

    speech = load_wav(AUDIO / "barge_in_wait.wav")
    for lead in range(8):  # every alignment of the speech to VAD windows
        pcm = bytes(FRAME_20MS * (50 + lead)) + speech + bytes(FRAME_20MS * 50)
        ours = await decisions(pcm, 0.032)
        assert [s for _, s in ours] == ["SPEAKING", "QUIET", "SPEAKING", "QUIET"], lead
        assert ours == await decisions(pcm, 0.0), lead  # 0: the transport's own frames


def test_negative_frame_length_is_refused():
    with pytest.raises(ValueError, match="frame_s"):
        InputAudioCoalescer(-0.02)


@pytest.mark.parametrize(
    ("stt", "env", "expected"),
    [("deepgram", None, 0.032), ("deepgram_flux", None, 0.08), ("deepgram", "0.02", 0.02)],
)
def test_transport_params_carry_the_configured_frame_length(monkeypatch, stt, env, expected):
    monkeypatch.setenv("BACKTALK_STT_SERVICE", stt)
    if env is not None:
        monkeypatch.setenv("BACKTALK_AUDIO_IN_FRAME_S", env)
    else:
        monkeypatch.delenv("BACKTALK_AUDIO_IN_FRAME_S", raising=False)
    settings = Settings(_env_file=None)
    for cls in (TransportParams, DailyParams):
        params = transport_params(settings, cls)
        assert isinstance(params, cls)
        assert params.audio_in_enabled and params.audio_out_enabled
        assert isinstance(params.audio_in_filter, InputAudioCoalescer)
        assert params.audio_in_filter.frame_s == expected
    # Each transport gets its own filter: it holds that conversation's pending audio.
    assert (
        transport_params(settings).audio_in_filter is not transport_params(settings).audio_in_filter
    )
