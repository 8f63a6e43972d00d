"""A small threaded loopback TCP proxy that breaks connections on purpose, for fault tests.

    with FaultProxy("127.0.0.1", server.port) as proxy:          # listens on 127.0.0.1:proxy.port
        proxy.inject(Fault("up", pattern=b" APPEND ", after=500_000))
        ...                                                    # every new connection is cut there
        proxy.heal()                                           # new connections are left alone

A :class:`Fault` names a direction (``"up"``: client → server, ``"down"``: server → client) and a point
in that direction's byte stream: ``after`` bytes past the end of the ``count``-th occurrence of
``pattern`` (or past the start of the connection when ``pattern`` is None). Every byte before that point
is forwarded, none after it; ``Fault("down", pattern=b"\r\n", count=k)`` lets the client read exactly k
lines. Then, by ``action``:

* ``"cut"``: both sockets are shut down and closed (the peer sees the connection drop half-way);
* ``"blackhole"``: that direction is silently swallowed from then on (read and dropped) while the
  connection stays open -- e.g. the server's ``OK [APPENDUID ...]`` never reaches the client, which
  waits; the connection ends when either side closes it.
* ``"hold"`` (``"up"`` only): the client's bytes from then on are kept, not forwarded, and the server's
  side stays open when the client gives up and closes: a stalled server that has the commands in its
  socket buffer. :meth:`FaultProxy.release_held` delivers them late; the server's answers go nowhere.
  :meth:`FaultProxy.release_held_before` delivers them just before a client next sends a pattern (the
  resumed pass's APPEND) and waits until the server confirmed them.
* ``"answer"`` (``"down"`` only): the ``count``-th tagged answer line containing ``pattern`` gets its
  status and text replaced by ``answer``, e.g. ``NO [UNAVAILABLE] Server Unavailable. 15``: a server
  throttling the client. The command did run on the server (its effect stays): the client must treat
  such an answer as "maybe done", never as "not done". Everything else goes through unchanged.

A fault applies to connections accepted after :meth:`FaultProxy.inject`, each counted on its own.
``once=True``: only the first connection to reach the point gets the fault (the proxy heals then).
With ``record=True`` the proxy keeps what went through each connection (:meth:`FaultProxy.transcripts`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

__all__ = ["Fault", "FaultProxy"]

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Fault:
    direction: Direction
    after: int = 0
    pattern: bytes | None = None
    action: Literal["cut", "blackhole", "answer", "hold"] = "cut"
    count: int = 1
    answer: bytes = b"NO [UNAVAILABLE] Server Unavailable. 15"
    once: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {self.direction!r}")
        if self.action not in ("cut", "blackhole", "answer", "hold"):
            raise ValueError(f"action must be 'cut', 'blackhole', 'answer' or 'hold', not {self.action!r}")
        if self.action == "hold" and self.direction != "up":
            raise ValueError("action 'hold' keeps the client's bytes: direction 'up'")
        if self.action == "answer" and (self.direction != "down" or self.pattern is None):
            raise ValueError("action 'answer' rewrites server answers: direction 'down' and a pattern")
        if self.after < 0 or self.count < 1 or (self.pattern is not None and not self.pattern):
            raise ValueError("after must be >= 0, count >= 1 and pattern non-empty")


class _Trigger:
    """Finds the fault's point in one direction of one connection, chunk by chunk."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.seen = 0  # bytes of the stream before the current chunk
        self.limit: int | None = fault.after if fault.pattern is None else None  # stream offset of the point
        self.tail = b""  # end of the stream so far, for a pattern split across chunks
        self.found = 0  # occurrences of the pattern so far
        self.resume = 0  # stream offset where the search goes on (the end of the last occurrence)

    def split(self, chunk: bytes) -> tuple[bytes, bool]:
        """The part of ``chunk`` to forward, and whether the point is reached after it."""
        pattern = self.fault.pattern
        if self.limit is None and pattern is not None:
            window = self.tail + chunk
            base = self.seen - len(self.tail)  # stream offset of window[0]
            while (index := window.find(pattern, max(self.resume - base, 0))) >= 0:
                self.found += 1
                self.resume = base + index + len(pattern)
                if self.found == self.fault.count:
                    self.limit = self.resume + self.fault.after
                    break
            keep = len(pattern) - 1
            self.tail = window[-keep:] if keep else b""
        start = self.seen
        self.seen += len(chunk)
        if self.limit is not None and self.seen >= self.limit:
            return chunk[: max(self.limit - start, 0)], True
        return chunk, False


class _Answerer:
    """The "answer" action: rewrites one tagged answer line of the server's stream."""

    def __init__(self, fault: Fault | None, proxy: FaultProxy) -> None:
        assert fault is not None and fault.pattern is not None
        self.fault = fault
        self.pattern = fault.pattern
        self.proxy = proxy
        self.buffer = b""
        self.found = 0

    def rewrite(self, data: bytes) -> bytes:
        if self.found >= self.fault.count:
            return data
        lines = (self.buffer + data).split(b"\r\n")
        self.buffer = lines.pop()
        out = bytearray()
        for line in lines:
            if self.found < self.fault.count and self.pattern in line and not line.startswith((b"*", b"+")):
                self.found += 1
                if self.found == self.fault.count:
                    line = line.split(b" ", 1)[0] + b" " + self.fault.answer
                    self.proxy._fired()
            out += line + b"\r\n"
        if self.found >= self.fault.count:  # done: the rest goes through as it comes
            out += self.buffer
            self.buffer = b""
        return bytes(out)


class _Connection:
    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket, fault: Fault | None) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.fault = fault
        self.transcript: dict[Direction, bytearray] | None = (
            {"up": bytearray(), "down": bytearray()} if proxy.record else None
        )
        self.closed = threading.Event()
        self._close_lock = threading.Lock()
        self.holding = False  # a "hold" fault fired: client bytes go to `held`, the server side stays open
        self.held = bytearray()
        self.client_gone = False  # the client closed while its bytes were held
        self.appended = threading.Event()  # after a release: the server confirmed a held APPEND
        self._hold_lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=("up", client, server), daemon=True),
            threading.Thread(target=self._pump, args=("down", server, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, direction: Direction, source: socket.socket, sink: socket.socket) -> None:
        trigger = _Trigger(self.fault) if self.fault is not None and self.fault.direction == direction else None
        answering = (
            _Answerer(self.fault, self.proxy) if trigger is not None and trigger.fault.action == "answer" else None
        )
        swallowing = False
        try:
            while not self.closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if swallowing:
                    continue
                if self.holding and direction == "up":
                    with self._hold_lock:
                        if self.holding:
                            self.held += data
                            continue
                    sink.sendall(data)  # released meanwhile
                    continue
                if self.holding:  # the server's answers to a client that gave up: dropped
                    if self.transcript is not None:
                        self.transcript[direction] += data
                    if b" OK [APPENDUID" in data:
                        self.appended.set()
                    with contextlib.suppress(OSError):
                        sink.sendall(data)
                    continue
                if self.transcript is not None:
                    self.transcript[direction] += data
                if direction == "up" and self.proxy._release_point is not None and self.proxy._release_point in data:
                    self.proxy._release_before_forwarding()
                if answering is not None:
                    data = answering.rewrite(data)
                    if data:
                        sink.sendall(data)
                    continue
                if trigger is not None:
                    chunk = data
                    data, reached = trigger.split(chunk)
                    if data:
                        sink.sendall(data)
                    if reached:
                        if trigger.fault.once:
                            self.proxy._heal_from(trigger.fault)
                        self.proxy._fired()
                        if trigger.fault.action == "cut":
                            break
                        if trigger.fault.action == "hold":
                            self.held += chunk[len(data) :]
                            self.holding = True
                            trigger = None
                            continue
                        swallowing = True
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if self.holding and direction == "up":
                self.client_gone = True  # the server keeps its side until release_held() and stop()
            else:
                self.close()

    def release(self) -> int:
        """Deliver the held bytes to the server (late); how many. A client still connected gets the
        answers and talks on normally from then on."""
        with self._hold_lock:
            data, self.held = bytes(self.held), bytearray()
            with contextlib.suppress(OSError):
                self.server.sendall(data)
            if not self.client_gone:
                self.holding = False
        return len(data)

    def close(self) -> None:
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            for sock in (self.client, self.server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)


class FaultProxy:
    """Forwards 127.0.0.1:<port> (a random free port) to ``target_host:target_port``, both ways."""

    def __init__(self, target_host: str, target_port: int, *, record: bool = False) -> None:
        self.target = (target_host, target_port)
        self.record = record
        self.host = "127.0.0.1"
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._fault: Fault | None = None
        self._release_point: bytes | None = None
        self._connections: list[_Connection] = []
        self._all: list[_Connection] = []  # kept only when recording
        self._accepted = 0
        self._triggered = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)

    # -- control ---------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listener.listen(64)
        self._thread.start()
        return self

    def inject(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every connection accepted from now on (None: forward faithfully)."""
        with self._lock:
            self._fault = fault

    def heal(self) -> None:
        self.inject(None)

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._accepted

    @property
    def triggered(self) -> int:
        """Connections whose fault point was reached so far."""
        with self._lock:
            return self._triggered

    def transcripts(self) -> list[dict[Direction, bytes]]:
        """With ``record=True``: the bytes received from each side of every connection, oldest first."""
        with self._lock:
            connections = list(self._all)
        return [{k: bytes(v) for k, v in c.transcript.items()} for c in connections if c.transcript is not None]

    def wait_triggered(self, count: int = 1, timeout: float = 30) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._triggered >= count, timeout)

    def release_held_before(self, pattern: bytes) -> None:
        """When a client next sends ``pattern`` (e.g. the resumed pass's APPEND), first deliver the held
        bytes and wait (up to 30 s) until the server confirmed the held APPEND: a late write that lands
        after the resumed pass looked for it and before it copies again."""
        with self._lock:
            self._release_point = pattern

    def _release_before_forwarding(self) -> None:
        with self._lock:
            connections = [c for c in self._connections if c.holding]
            if self._release_point is None or not connections:
                return  # nothing held yet: this is the APPEND about to be held
            self._release_point = None
        for connection in connections:
            connection.release()
            connection.appended.wait(30)

    def release_held(self) -> int:
        """Send every "hold" connection's kept bytes to the server now; the number of bytes delivered."""
        with self._lock:
            connections = [c for c in self._connections if c.holding]
        return sum(connection.release() for connection in connections)

    def close_all(self) -> None:
        """Drop every open connection now (the listener stays)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        for connection in connections:
            connection.join(5)

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        if self._thread.is_alive():
            self._thread.join(5)
        self.close_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------------

    def _heal_from(self, fault: Fault) -> None:
        with self._lock:
            if self._fault is fault:
                self._fault = None

    def _fired(self) -> None:
        with self._lock:
            self._triggered += 1
            self._lock.notify_all()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                connection = _Connection(self, client, server, self._fault)
                self._connections = [c for c in self._connections if not c.closed.is_set()]
                self._connections.append(connection)
                if self.record:
                    self._all.append(connection)
                self._accepted += 1
            connection.start()
