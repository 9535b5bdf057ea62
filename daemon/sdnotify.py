"""The systemd notification protocol (sd_notify), which is one datagram on a unix socket.

systemd passes the socket in NOTIFY_SOCKET (a path, or an abstract name starting with "@") and, when the
unit sets WatchdogSec=, the watchdog period in WATCHDOG_USEC. Outside systemd both are absent and every
call here does nothing, so the service runs the same in a terminal.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``... as one message; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # non-blocking: if the receiver stops reading (its queue holds 10 datagrams), the message is dropped
    # rather than the service's main loop stopping with it
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
    return True


def watchdog_period() -> float | None:
    """How often to send WATCHDOG=1 (half the unit's WatchdogSec), or None without a watchdog."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
