"""Deepgram's websockets after a fault: what Pipecat 1.14 does, and what Backtalk adds.

Measured against the loopback fake (``tests/test_reliability_deepgram.py``), Pipecat's
own services already survive the faults of the reliability catalogue:

* **A dropped socket** (1006 abort or a 1011 close). Nova (``DeepgramSTTService``)
  reports a non-permanent ``ErrorFrame`` and reconnects after its backoff (4 s, then up
  to 10 s; ``pipecat.utils.network.exponential_backoff_time``); the microphone's audio
  during the gap is lost. Aura (``DeepgramTTSService``, a ``WebsocketService``)
  reconnects at once from its receive loop; a reply being synthesised at that moment
  loses its unsynthesised part.
* **A refused handshake** (HTTP 401/403). Both give up on the first attempt and
  become unusable (``is_usable`` False, a permanent ``ErrorFrame``): no retry loop.
  The Deepgram SDK redacts the ``Authorization`` header in its error.
* **A flapping socket** (accepted, then closed at once). Three connections in a row
  that last under 5 s (``QuickFailureTracker``) and they give up, unusable.

What Pipecat does not say is *what to fix*: :class:`DeepgramKeyHint` adds one log line
naming the key's environment variable when Deepgram refuses the key.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import ErrorFrame
from pipecat.utils.errors import ErrorCategory, extract_http_status_code

__all__ = ["DEEPGRAM_KEY_ENV_VAR", "DeepgramKeyHint"]

#: Where Backtalk reads the Deepgram key from (``Settings.deepgram_api_key``).
DEEPGRAM_KEY_ENV_VAR = "DEEPGRAM_API_KEY"

_REFUSED_KEY = (ErrorCategory.AUTHENTICATION, ErrorCategory.AUTHORIZATION)


class DeepgramKeyHint:
    """Mixin for Pipecat's Deepgram services: name the key's variable when it is refused.

    Pipecat logs the refusal (``status 401 ... invalid credentials``) and makes the
    service unusable; this adds, once per service, an error naming the variable to
    fix. It never quotes the key.
    """

    _key_hint_logged = False

    async def push_error_frame(self, error: ErrorFrame, force_treat_as_permanent: bool = False):
        """Pipecat's error handling; then, for a refused key, the hint."""
        await super().push_error_frame(  # type: ignore[misc]
            error, force_treat_as_permanent=force_treat_as_permanent
        )
        if error.category in _REFUSED_KEY and not self._key_hint_logged:
            self._key_hint_logged = True
            status = extract_http_status_code(error.exception) if error.exception else None
            logger.error(
                f"{self}: Deepgram refused the API key (HTTP {status or 'auth error'}); "
                f"check {DEEPGRAM_KEY_ENV_VAR}. The service is off for this conversation."
            )
