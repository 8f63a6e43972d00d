"""Transfer helpers: per-account rate limits (token buckets), backoff delays, splitting large copies.

Pure except for the clock: the executor (`sync.py`) decides what to copy, this module only paces it.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mailmirror.config.account import Account

#: The longest wait between two retries of a throttled or disconnected transfer.
BACKOFF_CAP = 300.0
#: glibc's mallopt(M_MMAP_THRESHOLD): blocks from this size get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 256 * 1024
_heap_bounded = False

T = TypeVar("T")


WAIT_SLICE = 0.25  # seconds: how late a rate-limited wait notices a stop request


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

    def take(self, amount: float, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait for `amount` tokens, in short slices so that a stop request is not held up by a slow
        limit (a batch of megabytes at a few KB/s); False when `cancelled` said so before the end."""
        wait = self.delay(amount)
        while wait > 0:
            if cancelled():
                return False
            step = min(wait, WAIT_SLICE)
            self.sleep(step)
            wait -= step
        return True


class RateLimit:
    """An account's optional limits (max_messages_per_second, max_bytes_per_second), shared by every
    connection of the process to that account."""

    def __init__(self, messages_per_second: float | None, bytes_per_second: int | None) -> None:
        # a second's worth of burst: smooth enough, and a batch is never held back longer than needed
        self.messages = TokenBucket(messages_per_second, messages_per_second) if messages_per_second else None
        self.bytes = TokenBucket(bytes_per_second, bytes_per_second) if bytes_per_second else None

    def take(self, messages: int, size: int, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait until `messages` messages of `size` bytes may go; False when cancelled meanwhile."""
        if self.messages is not None and not self.messages.take(messages, cancelled):
            return False
        return self.bytes is None or self.bytes.take(size, cancelled)


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


class ByteBudget:
    """Message bytes a pass holds in memory at once (transfer.memory), over all its workers: a batch
    takes its size before it is fetched and gives it back once appended. A batch larger than the
    whole budget (one huge message) waits until nothing else is held, then goes alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.cond = threading.Condition()

    def acquire(self, amount: int, cancelled: Callable[[], bool]) -> bool:
        """Wait for `amount` bytes; False (nothing taken) when `cancelled()` turns true meanwhile."""
        with self.cond:
            while self.used and self.used + amount > self.limit:
                if cancelled():
                    return False
                self.cond.wait(0.1)
            self.used += amount
            self.peak = max(self.peak, self.used)
            return True

    def release(self, amount: int) -> None:
        with self.cond:
            self.used -= amount
            self.cond.notify_all()


def bound_heap() -> None:
    """Keep message bodies out of the heap (Linux, glibc), once per process.

    glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so after the
    first batches message bodies are carved from the heap, whose fragmentation keeps the process at
    its high-water mark and beyond. A fixed threshold gives every body of 256 KiB or more its own
    mapping, returned to the system as soon as the batch is done with: peak RSS follows the formula
    in docs/architecture.md."""
    global _heap_bounded
    if _heap_bounded or not sys.platform.startswith("linux"):
        return
    _heap_bounded = True
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to do
        pass


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
