"""The daemon's status socket: a Unix stream socket that answers each connection with
one JSON document (probe table, counters, lockdown, start time) and closes it.

``rasdctl status`` reads it; anything that speaks Unix sockets can
(``socat - UNIX-CONNECT:/run/rasd/status.sock``). Root only (mode 0600).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable

SOCKET_NAME = "status.sock"


class StatusServer:
    def __init__(self, runtime_dir: str | Path, snapshot: Callable[[], dict]) -> None:
        self.path = Path(runtime_dir) / SOCKET_NAME
        self.snapshot = snapshot
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_pending(self) -> None:
        """Answer every client waiting now; never blocks the main loop for long."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    conn.sendall(json.dumps(self.snapshot()).encode() + b"\n")
                except OSError:
                    pass  # a client that went away is its own problem

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def query(runtime_dir: str | Path, timeout: float = 5.0) -> dict:
    """Fetch the running daemon's status (raises OSError when it is not running)."""
    path = Path(runtime_dir) / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
