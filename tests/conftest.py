"""Shared fixtures: services the tests need that a fresh CI machine does not run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = Path("/lib/systemd/systemd-journald")


def journald_listening() -> bool:
    """True when something accepts datagrams on the journal socket. The socket file alone
    proves nothing: a journald that was stopped leaves it behind, and sending then fails
    with ECONNREFUSED."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(JOURNAL_SOCKET))
        except OSError:
            return False
    return True


def remove_stale_journal_sockets() -> None:
    for name in ("socket", "stdout", "dev-log", "io.systemd.journal"):
        (JOURNAL_SOCKET.parent / name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def journald():
    """A real systemd-journald: the running one, or one started standalone for the session
    (PID 1 is not systemd on the dev machines and in CI)."""
    if journald_listening():
        yield JOURNAL_SOCKET
        return
    if os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("needs root and systemd-journald (Debian package systemd)")
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_journal_sockets()
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not journald_listening() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not journald_listening():
        proc.kill()
        pytest.fail("systemd-journald did not create its socket")
    yield JOURNAL_SOCKET
    proc.terminate()
    proc.wait(timeout=10)
    remove_stale_journal_sockets()  # the next session must not mistake them for a running journald
