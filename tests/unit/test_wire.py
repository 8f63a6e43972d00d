"""The lean IMAP client against a scripted server: a greeting whose text holds a "]" after the capability
code, and a server that asks "+" although it offers SASL-IR (the credentials go again, no stall)."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator

import pytest

from mailmirror.imap.wire import LeanIMAPClient

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS] mail [x] ready\r\n"


@pytest.fixture
def scripted() -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection server: the greeting, then "+" to AUTHENTICATE, then OK; it records the lines."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(GREETING)
            command = lines.readline()
            received.append(command)
            if b"AUTHENTICATE" in command:
                connection.sendall(b"+ \r\n")
                received.append(lines.readline())
                connection.sendall(command.split(b" ")[0] + b" OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")
                received.append(lines.readline())  # LOGOUT, or nothing when the client just closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    listener.close()
    thread.join(timeout=5)


def test_the_greeting_capabilities_end_at_their_bracket(scripted: tuple[int, list[bytes]]) -> None:
    port, _received = scripted
    client = LeanIMAPClient("127.0.0.1", port=port, ssl=False, timeout=5)
    assert client.capabilities() == (b"IMAP4REV1", b"SASL-IR", b"AUTH=PLAIN", b"STARTTLS")
    client.shutdown()


def test_a_plus_after_the_initial_response_gets_the_credentials_again(scripted: tuple[int, list[bytes]]) -> None:
    port, received = scripted
    client = LeanIMAPClient("127.0.0.1", port=port, ssl=False, timeout=5)
    client.authenticate_plain_initial("alice", "pw")
    assert client._imap.state == "AUTH"
    expected = base64.b64encode(b"\0alice\0pw")
    assert received[0].split()[1:] == [b"AUTHENTICATE", b"PLAIN", expected]
    assert received[1].strip() == expected
    assert client.capabilities() == (b"IMAP4REV1", b"IDLE")  # the login's list, not the greeting's
    client.shutdown()
