"""The systemd notify protocol (sd_notify(3)), without a dependency on libsystemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: the address of an AF_UNIX datagram socket,
either a path (``/run/systemd/notify``) or, with a leading ``@``, a Linux abstract socket name. Each
datagram is a few newline-separated ``KEY=VALUE`` assignments:

* ``READY=1``: start-up (or a reload) is complete;
* ``STATUS=...``: one line shown by ``systemctl status``;
* ``RELOADING=1`` with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>``: a reload began (systemd ≥ 253 wants the
  timestamp for ``Type=notify-reload``; older versions ignore the extra field); ``READY=1`` ends it;
* ``STOPPING=1``: shutdown began;
* ``WATCHDOG=1``: keep-alive, due at least every ``$WATCHDOG_USEC`` µs when ``WatchdogSec=`` is set.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every method is a no-op. A failed send is logged at
debug level and otherwise ignored: the service must never stop because its supervisor is unreachable.
Every method may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 2.0  # a datagram to a wedged systemd must not hang the daemon's main loop


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address for ``sendto`` from a ``$NOTIFY_SOCKET`` value, or None when there is none
    (unset, empty, or a kind this module does not speak, e.g. systemd 254's ``vsock:`` addresses)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace: a leading NUL byte instead of "@"
    if value.startswith("/"):
        return value
    log.debug("NOTIFY_SOCKET=%r is not an AF_UNIX path or abstract name: systemd notifications are off", value)
    return None


class Notifier:
    """Talks to the service manager through ``$NOTIFY_SOCKET``.

    ``environ`` defaults to ``os.environ``, read once, here. Tests pass their own mapping.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = notify_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to talk to."""
        return self._address is not None

    # -- the messages --------------------------------------------------------------------------------

    def ready(self) -> None:
        """Start-up or reload complete."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """One line for ``systemctl status`` (line breaks become spaces: the protocol is line-based)."""
        self.send("STATUS=" + " ".join(text.splitlines()))

    def reloading(self) -> None:
        """A reload began; call :meth:`ready` when it is over (whether the new config was taken or not)."""
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        """Shutdown began."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive for ``WatchdogSec=``."""
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between two :meth:`watchdog` calls (half the watchdog timeout, as sd_watchdog_enabled(3)
        recommends), or None when the service manager does not expect pings from this process."""
        if self._address is None or not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.debug("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                log.debug("ignoring WATCHDOG_PID=%r: not an integer", self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None  # the watchdog is meant for another process (e.g. our parent)
        return usec / 2 / 1_000_000

    # -- the transport -------------------------------------------------------------------------------

    def send(self, message: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines. True when it went out; False when notifications are
        off or the send failed (logged at debug level, never raised)."""
        address = self._address
        if address is None:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:  # one datagram at a time: RELOADING=1 ... READY=1 from two threads stay in order
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                    sock.settimeout(SEND_TIMEOUT_SECONDS)
                    sock.sendto(data, address)
            except OSError as error:
                log.debug("systemd notification %r not sent to %r: %s", message, address, error)
                return False
        return True
