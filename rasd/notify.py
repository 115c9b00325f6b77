"""systemd notification (sd_notify): READY, STATUS, WATCHDOG, STOPPING, RELOADING.

Uses python3-systemd's ``systemd.daemon.notify`` when installed, else speaks the
datagram protocol itself; without $NOTIFY_SOCKET (a plain foreground run) every
call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        ours = pid is None or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and ours else None

    @property
    def active(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> None:
        if not self.address:
            return
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(text.encode(), addr)
            except OSError:
                pass  # systemd gone or socket closed: notification is best effort

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def stopping(self) -> None:
        self.send(stopping=1)
