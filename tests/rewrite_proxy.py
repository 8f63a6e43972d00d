"""A loopback TCP proxy that rewrites IMAP traffic so that the lab's Dovecot behaves like another server.

    with ServerMask(server.port, strip_uidnext=True) as mask:   # like Courier: no UIDNEXT in SELECT
        ...                                                      # connect to 127.0.0.1:mask.port

* ``strip_uidnext``: the ``* OK [UIDNEXT n]`` line of SELECT/EXAMINE answers is dropped (Courier-IMAP 5);
* ``strip_status_uidnext``: ``UIDNEXT n`` is also taken out of STATUS answers (LIST-STATUS included);
* ``munge_8bit``: 8-bit bytes in the header of APPENDed messages become ``X`` before Dovecot stores them,
  as Cyrus IMAP does with its default ``munge8bit: yes`` (same length: only the bytes differ).

Server answers are rewritten line by line (a message body line that looks like an answer would be
rewritten too: the test corpora have none); client commands are parsed with their literals, so that only
the literals of APPEND commands are touched.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from types import TracebackType

__all__ = ["ServerMask", "munge_header_8bit"]

_UIDNEXT_LINE = re.compile(rb"^\* OK \[UIDNEXT \d+\]")
_STATUS_UIDNEXT = re.compile(rb"(?i)^(\* STATUS .*\()(.*)\)$")
_LITERAL_END = re.compile(rb"\{(\d+)\+?\}$")
_APPEND_COMMAND = re.compile(rb"(?i)^\S+ (UID )?APPEND ")


def munge_header_8bit(message: bytes) -> bytes:
    """Every byte >= 0x80 of the header section replaced by ``X`` (Cyrus munge8bit)."""
    end = message.find(b"\r\n\r\n")
    header, body = (message, b"") if end < 0 else (message[: end + 4], message[end + 4 :])
    return bytes(b if b < 0x80 else ord("X") for b in header) + body


class _Answers:
    """Server → client: drop or edit whole lines."""

    def __init__(self, strip_uidnext: bool, strip_status_uidnext: bool) -> None:
        self.strip_uidnext = strip_uidnext
        self.strip_status_uidnext = strip_status_uidnext
        self.buffer = b""

    def feed(self, data: bytes) -> bytes:
        lines = (self.buffer + data).split(b"\r\n")
        self.buffer = lines.pop()
        out = bytearray()
        for line in lines:
            if self.strip_uidnext and _UIDNEXT_LINE.match(line):
                continue
            if self.strip_status_uidnext and (match := _STATUS_UIDNEXT.match(line)):
                items = re.sub(rb"(?i)\s*UIDNEXT \d+", b"", match.group(2)).strip()
                line = match.group(1) + items + b")"
            out += line + b"\r\n"
        return bytes(out)


class _Commands:
    """Client → server: commands with their literals; the literals of APPEND get their header munged."""

    def __init__(self, munge: bool) -> None:
        self.munge = munge
        self.buffer = b""
        self.literal_left = 0  # bytes of the current literal still to come
        self.literal = bytearray()
        self.in_append = False
        self.command_start = True

    def feed(self, data: bytes) -> bytes:
        if not self.munge:
            return data
        self.buffer += data
        out = bytearray()
        while self.buffer:
            if self.literal_left:
                take = self.buffer[: self.literal_left]
                self.buffer = self.buffer[len(take) :]
                self.literal_left -= len(take)
                if not self.in_append:
                    out += take
                    continue
                self.literal += take
                if not self.literal_left:
                    out += munge_header_8bit(bytes(self.literal))
                    self.literal = bytearray()
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if self.command_start:
                self.in_append = bool(_APPEND_COMMAND.match(line))
            out += line + b"\r\n"
            literal = _LITERAL_END.search(line)
            if literal:
                self.literal_left = int(literal.group(1))
                self.command_start = False
            else:
                self.command_start = True
        return bytes(out)


class ServerMask:
    """Forwards 127.0.0.1:<port> (a random free port) to 127.0.0.1:``target_port``, rewriting as asked."""

    def __init__(
        self,
        target_port: int,
        *,
        strip_uidnext: bool = False,
        strip_status_uidnext: bool = False,
        munge_8bit: bool = False,
    ) -> None:
        self.target = ("127.0.0.1", target_port)
        self.options = (strip_uidnext, strip_status_uidnext, munge_8bit)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name=f"server-mask-{self.port}", daemon=True)

    def __enter__(self) -> ServerMask:
        self.listener.listen(32)
        self.thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self.thread.join(5)

    def _accept(self) -> None:
        strip_uidnext, strip_status, munge = self.options
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            up = _Commands(munge)
            down = _Answers(strip_uidnext, strip_status)
            for source, sink, rewrite in ((client, server, up.feed), (server, client, down.feed)):
                threading.Thread(target=_pump, args=(source, sink, rewrite), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, rewrite: object) -> None:
    assert callable(rewrite)
    try:
        while data := source.recv(65536):
            out = rewrite(data)
            if out:
                sink.sendall(out)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
