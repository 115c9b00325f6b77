"""Shared fixtures: services the tests need that a fresh CI machine does not run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = Path("/lib/systemd/systemd-journald")


@pytest.fixture(scope="session")
def journald():
    """A real systemd-journald: the running one, or one started standalone for the session
    (PID 1 is not systemd on the dev machines and in CI)."""
    if JOURNAL_SOCKET.exists():
        yield JOURNAL_SOCKET
        return
    if os.geteuid() != 0 or not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("needs root and systemd-journald (Debian package systemd)")
    JOURNAL_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not JOURNAL_SOCKET.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not JOURNAL_SOCKET.exists():
        proc.kill()
        pytest.fail("systemd-journald did not create its socket")
    yield JOURNAL_SOCKET
    proc.terminate()
    proc.wait(timeout=10)
