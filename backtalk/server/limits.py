"""Session-start rate limits per API key and per client address (the ``limits`` library)."""

from __future__ import annotations

import math
import time

from limits import parse, storage, strategies

__all__ = ["SessionStartLimiter"]


class SessionStartLimiter:
    """At most ``per_minute`` session starts per API key and per client address.

    A moving window (``limits.strategies.MovingWindowRateLimiter``) in this process's
    memory: one ``backtalk serve`` process admits sessions, so one window is exact.
    Several servers behind a load balancer would share a window through the same
    library's Redis or Memcached storage.

    Args:
        per_minute: Starts allowed per key, and per address, in any 60 s.
    """

    def __init__(self, per_minute: int):
        self._limit = parse(f"{per_minute}/minute")
        self._limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def hit(self, api_key_id: int | None, client: str) -> int | None:
        """Count one start; or, over either limit, count nothing and say when to retry.

        Args:
            api_key_id: The caller's key (None without authentication).
            client: The client's address.

        Returns:
            None if allowed; else seconds until a start would be allowed (``Retry-After``).
        """
        scopes = [("address", client)]
        if api_key_id is not None:
            scopes.append(("key", str(api_key_id)))
        for scope in scopes:
            if not self._limiter.test(self._limit, *scope):
                reset = self._limiter.get_window_stats(self._limit, *scope).reset_time
                return max(1, math.ceil(reset - time.time()))
        for scope in scopes:
            self._limiter.hit(self._limit, *scope)
        return None
