"""Microphone audio as the pipeline receives it: fewer, longer input audio frames.

WebRTC and Daily hand Pipecat's input transport one ``InputAudioRawFrame`` per 20 ms
of microphone audio, 50 a second per conversation. Each frame then costs the same
fixed amount of Python however short it is: a hop through the STT, the speculative
retrieval tap, the user aggregator and the filter that ends the audio (with every
observer notified at each hop), a thread hand-off to Silero VAD, and a websocket
message to Deepgram. :class:`InputAudioCoalescer` regroups the transport's frames into
longer ones before any of that runs, so the per-frame work is paid less often, while
the audio itself (what VAD, smart-turn and Deepgram hear) is unchanged.

With Nova the frames are 32 ms: 512 samples at 16 kHz, exactly one Silero VAD window
(Silero takes 512-sample windows at 16 kHz, 256 at 8 kHz:
``SileroVADAnalyzer.num_frames_required``). Pipecat's ``VADAnalyzer`` applies its
start/stop thresholds once per call, after all the windows a frame holds; with one
window per frame it decides exactly as it would window by window. Longer frames
(2+ windows) can miss a pause that is just ``stop_secs`` long, because the speech that
ends it arrives in the same call.

What it costs in latency: VAD, and so smart-turn and the end of the turn, decide on
the same transport frame as without it (the frame that completes a VAD window
completes a coalesced frame too; ``tests/test_audio_in.py``). Deepgram gets each
stretch of audio when its 32 ms frame is full instead of 20 ms at a time: the partial
window waits up to one transport frame. Measured in ``benchmarks/VOICE.md`` (section
4, "Input frames").
"""

from __future__ import annotations

from pipecat.audio.filters.base_audio_filter import BaseAudioFilter
from pipecat.frames.frames import FilterControlFrame, FilterEnableFrame
from pipecat.transports.base_transport import TransportParams

from backtalk.config import Settings

__all__ = ["InputAudioCoalescer", "transport_params"]


class InputAudioCoalescer(BaseAudioFilter):
    """An input-transport audio filter that regroups microphone audio into ``frame_s`` frames.

    Pipecat's input transport calls :meth:`filter` with each frame's audio and drops
    frames the filter returns empty (``BaseInputTransport._audio_task_handler``), so
    a filter that holds audio back until it has a whole ``frame_s`` makes the
    transport push ``frame_s`` frames instead of its own shorter ones. No audio is
    dropped, reordered or altered; what does not fill a frame waits for the next
    call. Set it as ``TransportParams.audio_in_filter``, one instance per transport
    (it holds that conversation's pending audio).

    Args:
        frame_s: Frame length, seconds (0.032: 512 samples at 16 kHz). Frames the
            transport already delivers at that length, or a multiple of it, pass
            straight through; 0 turns regrouping off.

    Raises:
        ValueError: ``frame_s`` is negative.

    A :class:`~pipecat.frames.frames.FilterEnableFrame` with ``enable=False`` turns it
    off (pending audio goes out with the next frame); ``enable=True`` back on.
    """

    def __init__(self, frame_s: float):
        if frame_s < 0:
            raise ValueError(f"frame_s must be ≥ 0 seconds, got {frame_s}")
        self.frame_s = frame_s
        self._frame_bytes = 0
        self._pending = bytearray()
        self._enabled = True

    async def start(self, sample_rate: int):
        """Size frames for the transport's input: ``sample_rate`` Hz, 16-bit samples.

        ``TransportParams.audio_in_channels`` is not passed to filters; Backtalk's
        input is mono, and with more channels a frame holds proportionally less time.
        """
        self._frame_bytes = round(self.frame_s * sample_rate) * 2
        self._pending.clear()

    async def stop(self):
        """Drop pending audio (the conversation is over)."""
        self._pending.clear()

    async def process_frame(self, frame: FilterControlFrame):
        """Handle :class:`FilterEnableFrame` (on/off); other control frames are ignored."""
        if isinstance(frame, FilterEnableFrame):
            self._enabled = frame.enable

    async def filter(self, audio: bytes) -> bytes:
        """Return the whole frames accumulated so far, keep the rest for the next call.

        Args:
            audio: One transport frame of PCM16 audio.

        Returns:
            The longest run of whole ``frame_s`` frames of pending audio followed by
            ``audio`` (``b""`` when that is less than one frame). Disabled, or with
            ``frame_s`` 0: pending audio followed by ``audio``.
        """
        self._pending += audio
        cut = len(self._pending)
        if self._enabled and self._frame_bytes:
            cut -= cut % self._frame_bytes
        out = bytes(self._pending[:cut])
        del self._pending[:cut]
        return out


def transport_params(
    settings: Settings, params_class: type[TransportParams] = TransportParams
) -> TransportParams:
    """The input and output settings every Backtalk transport is built with.

    Args:
        settings: For ``audio_in_frame_s`` (:attr:`Settings.audio_in_frame`).
        params_class: ``TransportParams`` or a transport's subclass of it
            (``DailyParams``, ``EvalTransportParams``).

    Returns:
        ``params_class`` with audio in and out enabled and an
        :class:`InputAudioCoalescer` as the input audio filter.
    """
    return params_class(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_filter=InputAudioCoalescer(settings.audio_in_frame),
    )
