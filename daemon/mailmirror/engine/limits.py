"""Connection limits shared by the passes of one process (`mailmirror run`, and `mailmirror sync` of several
pairs): at most an account's `max_connections` into that mailbox, `daemon.max_connections_per_server` into
one server (host:port), and `daemon.max_connections` in all."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from mailmirror.config.config_file import Config
from mailmirror.config.pair import Pair


class ConnectionLimits:
    """The caps, shared by all pairs. A pass waits for its first connection per side; the extra ones of
    its transfer workers are taken only when free (`extra`), so passes never wait on each other for them.

    Caps are keyed by mailbox (two account names for one mailbox share the smaller `max_connections`) and
    by server: a fleet of thousands of accounts on one server gets each account's cap, and the server's
    cap over them all — not the smallest account cap for the whole server."""

    def __init__(self, config: Config) -> None:
        sizes: dict[str, int] = {}
        for account in config.accounts.values():
            mailbox = _mailbox_key(str(account.identity))
            sizes[mailbox] = min(sizes.get(mailbox, account.max_connections), account.max_connections)
            sizes[_server_key(account.host, account.effective_port)] = config.daemon.max_connections_per_server
        self._slots = {key: _Slots(size) for key, size in sizes.items()}
        self._total = _Slots(config.daemon.max_connections)

    def _needs(self, config: Config, pair: Pair) -> list[tuple[str, int]]:
        """One connection per side: the caps it counts against, with how many (a pair within one server
        takes two of that server's), in one global order so that two pairs never wait on each other."""
        needs: Counter[str] = Counter()
        for name in (pair.source, pair.destination):
            account = config.accounts[name]
            needs[_mailbox_key(str(account.identity))] += 1
            needs[_server_key(account.host, account.effective_port)] += 1
        return sorted(needs.items())

    def _take(self, needs: list[tuple[str, int]], *, blocking: bool) -> bool:
        taken: list[tuple[str, int]] = []
        for key, count in needs:
            if not self._slots[key].acquire(count, blocking=blocking):
                self._give_back(taken)
                return False
            taken.append((key, count))
        if self._total.acquire(2, blocking=blocking):  # last: whoever holds it is running, not waiting
            return True
        self._give_back(taken)
        return False

    def _give_back(self, taken: list[tuple[str, int]]) -> None:
        for key, count in reversed(taken):
            self._slots[key].release(count)

    @contextlib.contextmanager
    def for_pair(self, config: Config, pair: Pair) -> Iterator[None]:
        needs = self._needs(config, pair)
        self._take(needs, blocking=True)
        try:
            yield
        finally:
            self._total.release(2)
            self._give_back(needs)

    def extra(self, config: Config, pair: Pair) -> _ExtraSlots:
        return _ExtraSlots(self, self._needs(config, pair))


def _mailbox_key(identity: str) -> str:
    return f"mailbox {identity}"


def _server_key(host: str, port: int) -> str:
    return f"server {host.lower()}:{port}"


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

    def __init__(self, limits: ConnectionLimits, needs: list[tuple[str, int]]) -> None:
        self.limits = limits
        self.needs = needs

    def try_acquire(self) -> bool:
        return self.limits._take(self.needs, blocking=False)

    def release(self) -> None:
        self.limits._total.release(2)
        self.limits._give_back(self.needs)
