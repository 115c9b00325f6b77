"""The store under real failures: a full filesystem (a tmpfs mounted for the test) and
``kill -9`` of a writer process in the middle of a storm. Needs root (mount)."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rasd.events import Event, Task
from rasd.sinks.store import Store, StoreReader

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a tmpfs")
T0 = 1_764_000_000 * 10**9


def big_event(i: int, size: int = 32 * 1024) -> Event:
    return Event("ghes", "ghes_do_proc", T0 + i, cpu=0, task=Task(0, 0, "swapper/0"),
                 raw=os.urandom(size), fields={"seq": i}, severity="corrected")


@pytest.fixture
def tmpfs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "rasd-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.parametrize("writer", ["inline", "process"])
def test_full_disk_is_a_counted_loss_and_an_alert_and_writes_resume(tmpfs: Path,
                                                                     writer: str) -> None:
    alerts = []
    db = tmpfs / "rasd.db"
    store = Store(db, batch_events=4, on_alert=alerts.append, writer=writer)
    before = [big_event(i, 1024) for i in range(8)]
    for e in before:
        store.handle(e)
    store.flush()
    assert store.counters.committed_events == 8
    filler = tmpfs / "filler"
    fill(filler)
    storm = [big_event(100 + i) for i in range(64)]  # 2 MB: more than any space left
    for e in storm:
        store.handle(e)  # never raises
    store.flush()
    c = store.counters
    assert c.lost_events > 0 and c.write_errors > 0
    assert c.committed_events + c.lost_events == 8 + 64  # every event is one or the other
    assert alerts[-1]["kind"] == "store_write_failed" and "disk full" in alerts[-1]["message"]
    assert store.status()["failing"] == "disk full"

    filler.unlink()  # space returns
    after = [big_event(1000 + i, 1024) for i in range(8)]
    for e in after:
        store.handle(e)
    store.flush()
    assert alerts[-1]["kind"] == "store_resumed"
    assert store.counters.lost_events == c.lost_events  # nothing more lost
    store.close()
    reader = StoreReader(db)
    stored = {r["id"] for r in reader.conn.execute("SELECT id FROM events")}
    assert {e.id for e in before + after} <= stored
    assert len(stored) == store.counters.committed_events
    assert reader.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader.close()


WRITER = textwrap.dedent("""
    import os, sys
    from rasd.events import Event, Task
    from rasd.sinks.store import Store
    store = Store(sys.argv[1], batch_events=200, batch_ms=60_000, writer=sys.argv[2])
    out = os.fdopen(1, "w", buffering=1)
    out.write(f"start {store.next_event_id}\\n")
    reported = 0
    i = 0
    while True:  # a storm that only SIGKILL stops
        i += 1
        e = Event("ghes", "ghes_do_proc", 10**18 + i, cpu=i % 2, task=Task(0, 0, "swapper"),
                  raw=os.urandom(200), fields={"seq": i}, severity="corrected")
        store.handle(e)
        done = store.counters.last_committed_event_id  # COMMIT returned through this id
        if done != reported:
            reported = done
            out.write(f"committed {done}\\n")
""")


def run_writer_and_kill(db: Path, commits_before_kill: int, how: str = "inline"
                        ) -> tuple[int, int]:
    """Start a writer, let it commit a few batches, SIGKILL it mid-storm.
    Returns (first id it used, highest id it reported committed).

    ``how``: "inline" (SQLite in the daemon); "process" (SQLite in the writer process,
    only the daemon killed: the orphaned writer must stop); "group" (the writer
    process, daemon and writer killed at once, as systemd's SIGKILL does)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db),
                             "inline" if how == "inline" else "process"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    start = int(proc.stdout.readline().split()[1])
    last = 0
    for _ in range(commits_before_kill):
        line = proc.stdout.readline()
        assert line.startswith("committed"), line
        last = int(line.split()[1])
    time.sleep(0.05)  # it is inside the next batch (or its commit) now
    if how == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # commits reported between our last read and the kill
        if line.startswith("committed"):
            last = int(line.split()[1])
    assert proc.returncode == -signal.SIGKILL
    return start, last


@pytest.mark.parametrize("how", ["inline", "process", "group"])
def test_kill_9_mid_storm_loses_nothing_committed_and_leaves_a_sound_store(
        tmp_path: Path, how: str) -> None:
    db = tmp_path / "rasd.db"
    committed_ranges = []
    for round_ in range(3):  # again and again: each restart continues the numbering
        start, last = run_writer_and_kill(db, 5 + round_ * 3, how)
        committed_ranges.append((start, last))
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {r[0] for r in conn.execute("SELECT id FROM events")}
        conn.close()
        for lo, hi in committed_ranges:
            missing = set(range(lo, hi + 1)) - ids
            assert not missing, f"round {round_}: committed ids lost: {sorted(missing)[:10]}"
        if round_:
            assert start > committed_ranges[round_ - 1][1]  # ids never reused
    alerts = []
    store = Store(db, on_alert=alerts.append)  # the daemon's own open: no corruption found
    assert alerts == [] and store.counters.corrupt_moved == 0
    store.close()
