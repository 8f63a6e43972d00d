"""Connection limits shared by the passes of one process (`mailmirror run`, and `mailmirror sync` of several
pairs): at most the accounts' `max_connections` per server and side, and `daemon.max_connections` in all."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from mailmirror.config.config_file import Config
from mailmirror.config.pair import Pair


class ConnectionLimits:
    """At most the accounts' max_connections per server (host:port), shared by all pairs, per side; and at
    most daemon.max_connections connections in all. A pass waits for its first connection per side; the
    extra ones of its transfer workers are taken only when free (`extra`), so passes never wait on
    each other for them."""

    def __init__(self, config: Config) -> None:
        limits: dict[str, int] = {}
        for account in config.accounts.values():
            key = f"{account.host}:{account.effective_port}"
            limits[key] = min(limits.get(key, account.max_connections), account.max_connections)
        self._slots = {key: threading.BoundedSemaphore(value) for key, value in limits.items()}
        self._total = _Slots(config.daemon.max_connections)

    def _keys(self, config: Config, pair: Pair) -> list[str]:
        names = (pair.source, pair.destination)
        return sorted({f"{config.accounts[name].host}:{config.accounts[name].effective_port}" for name in names})

    @contextlib.contextmanager
    def for_pair(self, config: Config, pair: Pair) -> Iterator[None]:
        keys = self._keys(config, pair)
        taken = []
        total = False
        try:
            for key in keys:  # sorted: two pairs never wait on each other in opposite orders
                self._slots[key].acquire()
                taken.append(key)
            total = self._total.acquire(2)  # last: whoever holds these is running, not waiting
            yield
        finally:
            if total:
                self._total.release(2)
            for key in reversed(taken):
                self._slots[key].release()

    def extra(self, config: Config, pair: Pair) -> _ExtraSlots:
        return _ExtraSlots(self, self._keys(config, pair))


class _Slots:
    """A counting semaphore that takes several units at once (all or none)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.cond = threading.Condition()

    def acquire(self, count: int, *, blocking: bool = True) -> bool:
        with self.cond:
            if not blocking and self.free < count:
                return False
            self.cond.wait_for(lambda: self.free >= count)
            self.free -= count
            return True

    def release(self, count: int) -> None:
        with self.cond:
            self.free += count
            self.cond.notify_all()


class _ExtraSlots:
    """One more connection per side for a pass's transfer worker, if free now (sync.ExtraConnections)."""

    def __init__(self, limits: ConnectionLimits, keys: list[str]) -> None:
        self.limits = limits
        self.keys = keys

    def try_acquire(self) -> bool:
        taken: list[str] = []
        for key in self.keys:
            if not self.limits._slots[key].acquire(blocking=False):
                break
            taken.append(key)
        if len(taken) == len(self.keys) and self.limits._total.acquire(2, blocking=False):
            return True
        for key in taken:
            self.limits._slots[key].release()
        return False

    def release(self) -> None:
        self.limits._total.release(2)
        for key in self.keys:
            self.limits._slots[key].release()
