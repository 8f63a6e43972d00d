"""The systemd notify protocol against a real AF_UNIX datagram socket, as systemd binds it."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailmirror.service.notify import Notifier, notify_address


class Receiver:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what NOTIFY_SOCKET would hold

    def notifier(self, **extra: str) -> Notifier:
        return Notifier({"NOTIFY_SOCKET": self.env_value, **extra})

    def receive(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # a short directory: sun_path holds 107 bytes, pytest's tmp_path may be longer
    with tempfile.TemporaryDirectory(prefix="mm-notify-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(5)
            yield Receiver(sock, path)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"mailmirror-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    fixture = "path_receiver" if request.param == "path" else "abstract_receiver"
    result: Receiver = request.getfixturevalue(fixture)
    return result


def test_each_message_is_exactly_what_systemd_expects(receiver: Receiver) -> None:
    notifier = receiver.notifier()
    assert notifier.enabled
    notifier.ready()
    assert receiver.receive() == b"READY=1"
    notifier.status("3 pairs, 0 failing")
    assert receiver.receive() == b"STATUS=3 pairs, 0 failing"
    notifier.stopping()
    assert receiver.receive() == b"STOPPING=1"
    notifier.watchdog()
    assert receiver.receive() == b"WATCHDOG=1"
    assert receiver.nothing_pending()


def test_reloading_carries_the_monotonic_clock_in_microseconds(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    receiver.notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.receive().decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit() and before <= int(value) <= after


def test_status_is_one_line(path_receiver: Receiver) -> None:
    path_receiver.notifier().status("config reload refused:\nline 3: unknown field\r\n")
    assert path_receiver.receive() == b"STATUS=config reload refused: line 3: unknown field"


def test_status_is_utf8(path_receiver: Receiver) -> None:
    path_receiver.notifier().status("Gesendete Objekte → Sent")
    assert path_receiver.receive() == "STATUS=Gesendete Objekte → Sent".encode()


def test_reads_os_environ_by_default(path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.env_value)
    Notifier().ready()
    assert path_receiver.receive() == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "relative/socket", "vsock:2:1234"])
def test_without_a_usable_socket_everything_is_a_no_op(value: str | None) -> None:
    notifier = Notifier({} if value is None else {"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "120000000"})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog()
    assert notifier.send("READY=1") is False
    assert notifier.watchdog_interval() is None


def test_unset_in_the_real_environment_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()


def test_a_send_error_is_logged_at_debug_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="mm-notify-") as directory:
        notifier = Notifier({"NOTIFY_SOCKET": str(Path(directory) / "nobody-listens")})
        assert notifier.enabled
        with caplog.at_level(logging.DEBUG, logger="mailmirror.service.notify"):
            notifier.ready()
            notifier.status("still running")
            assert notifier.send("WATCHDOG=1") is False
    messages = [record for record in caplog.records if record.name == "mailmirror.service.notify"]
    assert len(messages) == 3
    assert all(record.levelno == logging.DEBUG for record in messages)
    assert "READY=1" in messages[0].getMessage()


def test_a_receiver_that_went_away_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="mm-notify-") as directory:
        path = str(Path(directory) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})  # the file is there, nobody listens (ECONNREFUSED)
        with caplog.at_level(logging.DEBUG, logger="mailmirror.service.notify"):
            notifier.stopping()
    assert any("STOPPING=1" in record.getMessage() for record in caplog.records)


def test_abstract_address_is_a_leading_nul() -> None:
    assert notify_address("@/org/freedesktop/systemd1/notify") == b"\0/org/freedesktop/systemd1/notify"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address(None) is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_when_meant_for_us(
    path_receiver: Receiver, environ: dict[str, str], expected: float | None
) -> None:
    assert path_receiver.notifier(**environ).watchdog_interval() == expected


def test_watchdog_interval_without_notify_socket_is_none() -> None:
    assert Notifier({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() is None


def test_concurrent_senders_never_mix_their_datagrams(path_receiver: Receiver) -> None:
    notifier = path_receiver.notifier()
    threads_count, per_thread = 8, 50
    received: list[bytes] = []

    def drain() -> None:
        while len(received) < threads_count * per_thread:
            received.append(path_receiver.receive())

    def send(thread: int) -> None:
        for number in range(per_thread):
            if number % 2:
                notifier.status(f"thread {thread} message {number}")
            else:
                notifier.reloading()

    reader = threading.Thread(target=drain)
    reader.start()
    senders = [threading.Thread(target=send, args=(index,)) for index in range(threads_count)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    reader.join(timeout=10)
    assert not reader.is_alive()
    statuses = {message for message in received if message.startswith(b"STATUS=")}
    assert statuses == {
        f"STATUS=thread {thread} message {number}".encode()
        for thread in range(threads_count)
        for number in range(1, per_thread, 2)
    }
    reloads = [message for message in received if message.startswith(b"RELOADING=1\nMONOTONIC_USEC=")]
    assert len(reloads) == threads_count * per_thread // 2
