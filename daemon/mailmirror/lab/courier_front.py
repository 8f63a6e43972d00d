"""The pre-login front of a lab Courier-IMAP server (run as ``python -m mailmirror.lab.courier_front
CONFIG.json``; started by :class:`mailmirror.lab.courier.CourierServer`).

Courier's own pre-login chain (couriertcpd -> imaplogin -> authdaemond) has its paths compiled in under
``/run/courier`` and ``/etc/courier``, so a private instance cannot use it.  This front does what
imaplogin does: it greets, answers CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN and AUTHENTICATE PLAIN
against the lab's user table (a JSON file re-read on every login), and then runs Courier's ``imapd``
for the session with the environment imaplogin gives it (``IMAPLOGINTAG`` -- imapd then answers the
LOGIN itself --, ``AUTHENTICATED``, ``TCPREMOTEIP``/``TCPREMOTEPORT``, ``PROTOCOL=IMAP``, the
``IMAP_*`` settings of Debian's /etc/courier/imapd except ``IMAP_EMPTYTRASH``) in the user's home,
as the lab's unprivileged user when running as root.  Without TLS, imapd reads and writes the client's
socket itself; with TLS (STARTTLS or the implicit-TLS port) the front relays between the TLS socket and
imapd, as couriertls does for Courier.

Pre-login failures answer ``NO Login failed.``; nothing is logged but one line per login to stderr.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_LITERAL_RE = re.compile(rb"\{(\d+)(\+?)\}$")


class _Connection:
    def __init__(self, sock: socket.socket, config: dict[str, Any], tls_context: ssl.SSLContext) -> None:
        self.sock: socket.socket = sock
        self.config = config
        self.tls_context = tls_context
        self.buffer = b""
        self.tls = isinstance(sock, ssl.SSLSocket)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def read_line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > 65536:
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def read_exact(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def capabilities(self) -> str:
        caps = str(self.config["capability"])
        if not self.tls:
            caps += " STARTTLS"
        return caps + " AUTH=PLAIN"

    def read_command(self) -> tuple[bytes, list[bytes]] | None:
        """One command line with its literals resolved: (tag, [words]); astring arguments unquoted."""
        line = self.read_line()
        if line is None:
            return None
        parts: list[bytes] = []
        while True:
            match = _LITERAL_RE.search(line)
            if not match:
                break
            if not match.group(2):
                self.send("+ OK")
            literal = self.read_exact(int(match.group(1)))
            rest = self.read_line()
            if literal is None or rest is None:
                return None
            parts.append(line[: match.start()])
            parts.append(b"\0LITERAL\0" + literal)
            line = rest
        parts.append(line)
        words: list[bytes] = []
        for part in parts:
            if part.startswith(b"\0LITERAL\0"):
                words.append(part[len(b"\0LITERAL\0") :])
            else:
                words.extend(_split_words(part))
        if not words:
            return b"*", []
        return words[0], words[1:]

    def serve(self) -> None:
        self.send(f"* OK [CAPABILITY {self.capabilities()}] Courier-IMAP lab front ready.")
        while True:
            command = self.read_command()
            if command is None:
                return
            tag, words = command
            tag_text = tag.decode(errors="replace")
            verb = words[0].upper() if words else b""
            if verb == b"CAPABILITY":
                self.send(f"* CAPABILITY {self.capabilities()}")
                self.send(f"{tag_text} OK CAPABILITY completed")
            elif verb == b"NOOP":
                self.send(f"{tag_text} OK NOOP completed")
            elif verb == b"LOGOUT":
                self.send("* BYE Courier-IMAP server shutting down")
                self.send(f"{tag_text} OK LOGOUT completed")
                return
            elif verb == b"STARTTLS" and not self.tls:
                self.send(f"{tag_text} OK Begin SSL/TLS negotiation now.")
                self.sock = self.tls_context.wrap_socket(self.sock, server_side=True)
                self.tls = True
                self.buffer = b""
            elif verb == b"LOGIN" and len(words) == 3:
                if self.login(tag_text, words[1], words[2]):
                    return
            elif verb == b"AUTHENTICATE" and len(words) in (2, 3) and words[1].upper() == b"PLAIN":
                initial = words[2] if len(words) == 3 else None
                if initial is None:
                    self.send("+ ")
                    initial = self.read_line()
                    if initial is None:
                        return
                try:
                    _authzid, user, password = base64.b64decode(initial, validate=True).split(b"\0")
                except (ValueError, TypeError):
                    self.send(f"{tag_text} NO Login failed.")
                    continue
                if self.login(tag_text, user, password):
                    return
            else:
                self.send(f"{tag_text} BAD Error in IMAP command received by server.")

    def login(self, tag: str, user: bytes, password: bytes) -> bool:
        users = json.loads(Path(self.config["users"]).read_text())
        name = user.decode(errors="replace")
        if users.get(name) != password.decode(errors="replace"):
            self.send(f"{tag} NO Login failed.")
            return False
        self.run_imapd(tag, name)
        return True

    def run_imapd(self, tag: str, user: str) -> None:
        home = Path(self.config["mail_root"]) / user
        peer = self.sock.getpeername()
        local = self.sock.getsockname()
        env = {
            **self.config["environment"],
            "IMAPLOGINTAG": tag,
            "AUTHENTICATED": user,
            "AUTHADDR": user,
            "HOME": str(home),
            "MAILDIR": str(home / "Maildir"),
            "TCPREMOTEIP": peer[0],
            "TCPREMOTEPORT": str(peer[1]),
            "TCPLOCALIP": local[0],
            "TCPLOCALPORT": str(local[1]),
            "PROTOCOL": "IMAP",
        }
        if self.tls:
            env["IMAP_TLS"] = "1"
        root = os.geteuid() == 0
        print(f"login {user} from {peer[0]}:{peer[1]} tls={self.tls}", file=sys.stderr, flush=True)
        inner, outer = (None, None) if not self.tls else socket.socketpair()
        # Without TLS, imapd talks to the client's socket directly; with TLS through a socket pair.
        channel = self.sock.fileno() if inner is None else inner.fileno()
        with open(self.config["log"], "ab") as log:
            proc = subprocess.Popen(
                [self.config["imapd"], "Maildir"],
                stdin=channel,
                stdout=channel,
                stderr=log,
                cwd=home,
                env=env,
                user=self.config["uid"] if root else None,
                group=self.config["gid"] if root else None,
                extra_groups=[] if root else None,
            )
        if inner is None or outer is None:
            self.sock.close()
        else:
            inner.close()
            _relay(self.sock, outer)
        proc.wait()


def _split_words(text: bytes) -> list[bytes]:
    words: list[bytes] = []
    index = 0
    while index < len(text):
        if text[index : index + 1] == b" ":
            index += 1
        elif text[index : index + 1] == b'"':
            index += 1
            word = bytearray()
            while index < len(text) and text[index : index + 1] != b'"':
                if text[index : index + 1] == b"\\":
                    index += 1
                word += text[index : index + 1]
                index += 1
            index += 1
            words.append(bytes(word))
        else:
            end = text.find(b" ", index)
            end = len(text) if end < 0 else end
            words.append(text[index:end])
            index = end
    return words


def _relay(tls_sock: socket.socket, plain: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    other = threading.Thread(target=pump, args=(plain, tls_sock), daemon=True)
    other.start()
    pump(tls_sock, plain)
    other.join(timeout=5)
    tls_sock.close()
    plain.close()


def _handle(sock: socket.socket, config: dict[str, Any], context: ssl.SSLContext, implicit_tls: bool) -> None:
    try:
        if implicit_tls:
            sock = context.wrap_socket(sock, server_side=True)
        _Connection(sock, config, context).serve()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _listen(port: int, host: str) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    return listener


def _accept_loop(listener: socket.socket, config: dict[str, Any], context: ssl.SSLContext, tls: bool) -> None:
    while True:
        sock, _addr = listener.accept()
        threading.Thread(target=_handle, args=(sock, config, context, tls), daemon=True).start()


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["cert"], config["key"])
    plain = _listen(config["port"], config["host"])
    implicit = _listen(config["tls_port"], config["host"])
    Path(config["pidfile"]).write_text(f"{os.getpid()}\n")
    threading.Thread(target=_accept_loop, args=(implicit, config, context, True), daemon=True).start()
    _accept_loop(plain, config, context, False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
