"""Transfer helpers: per-account rate limits (token buckets), backoff delays, splitting large copies.

Pure except for the clock: the executor (`sync.py`) decides what to copy, this module only paces it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mailmirror.config import Account

#: The longest wait between two retries of a throttled or disconnected transfer.
BACKOFF_CAP = 300.0

T = TypeVar("T")


class TokenBucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved up.

    `take(n)` waits until n tokens are there (a request larger than the burst waits for the whole
    burst, then goes into debt, so one huge message is never blocked for ever).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def delay(self, amount: float) -> float:
        """Reserve `amount` tokens; returns how long the caller must wait before using them."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            self.tokens -= amount
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def take(self, amount: float) -> None:
        wait = self.delay(amount)
        if wait > 0:
            self.sleep(wait)


class RateLimit:
    """An account's optional limits (max_messages_per_second, max_bytes_per_second), shared by every
    connection of the process to that account."""

    def __init__(self, messages_per_second: float | None, bytes_per_second: int | None) -> None:
        # a second's worth of burst: smooth enough, and a batch is never held back longer than needed
        self.messages = TokenBucket(messages_per_second, messages_per_second) if messages_per_second else None
        self.bytes = TokenBucket(bytes_per_second, bytes_per_second) if bytes_per_second else None

    def take(self, messages: int, size: int) -> None:
        if self.messages is not None:
            self.messages.take(messages)
        if self.bytes is not None:
            self.bytes.take(size)


_limits: dict[tuple[str, int, str, float | None, int | None], RateLimit] = {}
_limits_lock = threading.Lock()


def rate_limit(account: Account) -> RateLimit | None:
    """The process-wide limiter of an account (by server and user), or None when it has no limit."""
    if account.max_messages_per_second is None and account.max_bytes_per_second is None:
        return None
    key = (
        account.host,
        account.effective_port,
        account.username,
        account.max_messages_per_second,
        account.max_bytes_per_second,
    )
    with _limits_lock:
        if key not in _limits:
            _limits[key] = RateLimit(account.max_messages_per_second, account.max_bytes_per_second)
        return _limits[key]


def backoff_delay(attempt: int, first: float, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): first, 2×first, 4×first, ... up to cap."""
    return float(min(cap, first * 2.0 ** max(0, attempt - 1)))


def split_evenly(items: Sequence[T], parts: int, minimum: int) -> list[list[T]]:
    """`items` in at most `parts` consecutive runs of at least `minimum` items (UID ranges of a folder,
    when its copies are sorted by UID); one run when there are too few."""
    if not items:
        return []
    count = max(1, min(parts, len(items) // max(1, minimum)))
    size = math.ceil(len(items) / count)
    return [list(items[start : start + size]) for start in range(0, len(items), size)]
