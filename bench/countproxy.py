"""A counting TCP proxy for plain-text IMAP: put it in front of a server, point a tool at it, and it
counts the commands the tool sends (by name) and the bytes each way.

Only tagged command lines are counted: a line that begins a command is the first line of a connection
or the line after a completed command.  A line ending with a literal announcement (``{123}`` or
``{123+}``) continues after the literal's bytes, so message bodies of an APPEND (or the many messages
of one MULTIAPPEND) are skipped, not parsed.  ``DONE`` (the end of IDLE) is not a command.  It cannot
see inside TLS: the counted runs use ``tls: none`` (STARTTLS would be counted once, then nothing).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")
_CHUNK = 256 * 1024


@dataclass
class Counts:
    commands: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0  # client → server
    bytes_down: int = 0  # server → client
    connections: int = 0

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "commands": dict(self.commands.most_common()),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": self.connections,
        }


class CommandParser:
    """Feed it the client → server byte stream of one connection; it counts command names."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts
        self.literal_left = 0
        self.line = bytearray()
        self.at_command_start = True

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.literal_left:
                take = min(self.literal_left, n - i)
                self.literal_left -= take
                i += take
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                return
            self.line += data[i : j + 1]
            i = j + 1
            self._line(bytes(self.line))
            self.line.clear()

    def _line(self, line: bytes) -> None:
        if self.at_command_start:
            self._count(line)
        match = _LITERAL.search(line)
        if match:
            self.literal_left = int(match.group(1))
            self.at_command_start = False
        else:
            self.at_command_start = True

    def _count(self, line: bytes) -> None:
        words = line.split(None, 3)
        if len(words) < 2:
            if words and words[0].upper() != b"DONE":
                self.counts["(unparsed)"] += 1
            return
        name = words[1].decode("ascii", "replace").upper()
        if name == "UID" and len(words) > 2:
            name = "UID " + words[2].decode("ascii", "replace").upper()
        self.counts[name] += 1


class CountingProxy:
    """Listens on 127.0.0.1 (a free port), forwards every connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.counts = Counts()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 10) -> None:
        """Stop accepting and wait for the open connections to end (the tool has exited by now)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(timeout)
        for thread in list(self._threads):
            thread.join(timeout)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):  # forward small writes at once (no Nagle / delayed-ACK stalls)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.counts.connections += 1
            thread = threading.Thread(target=self._connection, args=(client, server), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _connection(self, client: socket.socket, server: socket.socket) -> None:
        parser = CommandParser(Counter())
        down = threading.Thread(target=self._pump, args=(server, client, None), daemon=True)
        down.start()
        self._pump(client, server, parser)
        down.join()
        for sock in (client, server):
            sock.close()
        with self._lock:
            self.counts.commands.update(parser.counts)

    def _pump(self, source: socket.socket, sink: socket.socket, parser: CommandParser | None) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if parser is not None:
                    parser.feed(data)
                sink.sendall(data)
                with self._lock:
                    if parser is None:
                        self.counts.bytes_down += len(data)
                    else:
                        self.counts.bytes_up += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
