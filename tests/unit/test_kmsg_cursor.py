"""The kmsg cursor moves past a record only once the store holds its event: the 6.1
lab's rasd was killed by the kernel's SIGBUS (a memory error hit its own page) between
handing a [Hardware Error] block on and the store's commit, and the next start read on
after the saved cursor: the block was gone for good.

The kernel records are replayed from a list: a process cannot write kernel-facility
records to /dev/kmsg (the kernel makes them LOG_USER), and only those are RAS lines."""
from __future__ import annotations

import json
import sqlite3

import pytest

from rasd.sinks.store import Store
from rasd.sources.fallbacks import KmsgSource
from rasd.sources.kmsg import KmsgCursor, KmsgRecord

BLOCK = """{4}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1
{4}[Hardware Error]: event severity: recoverable
{4}[Hardware Error]:  Error 0, type: recoverable
{4}[Hardware Error]:   section_type: memory error
{4}[Hardware Error]:   physical_address: 0x0000000066203000
{4}[Hardware Error]:   node:0 module:11""".splitlines()


class ReplayedKmsg:
    """KmsgReader's interface over recorded kernel records."""

    def __init__(self, records: list[KmsgRecord], after: int | None = None) -> None:
        self.records = [r for r in records if after is None or r.seq > after]
        self.boot_id = "boot-1"
        self._last = after

    def read(self) -> list[KmsgRecord]:
        out, self.records = self.records, []
        if out:
            self._last = out[-1].seq
        return out

    @property
    def cursor(self) -> KmsgCursor | None:
        return None if self._last is None else KmsgCursor(self.boot_id, self._last)


RECORDS = [KmsgRecord(458 + i, 3, 0, 254_768_595 + i, "-", line) for i, line in enumerate(BLOCK)]


def _source(tmp_path, after=None) -> KmsgSource:
    src = KmsgSource(tmp_path / "state")
    src.reader = ReplayedKmsg(RECORDS, after)
    return src


def _stored(db) -> list[dict]:
    conn = sqlite3.connect(db)
    try:
        return [json.loads(d) for (d,) in conn.execute("SELECT decoded FROM events")]
    finally:
        conn.close()


def test_cursor_saved_only_after_the_store_commit(tmp_path):
    store = Store(tmp_path / "rasd.db", batch_ms=60_000, writer="inline")
    src = _source(tmp_path)
    seen_at_commit = []

    def commit():
        seen_at_commit.append(src.state_path.exists())
        store.flush()

    assert src.drain(store.handle, flush=True, commit=commit) == 1
    assert seen_at_commit == [False]  # the cursor was not saved before the commit
    assert json.loads(src.state_path.read_text())["seq"] == RECORDS[-1].seq
    store.close()
    (ev,) = _stored(tmp_path / "rasd.db")
    assert ev["fields"]["sections"][0]["physical_address"] == 0x66203000


def test_killed_before_the_commit_the_next_start_reads_the_block_again(tmp_path):
    src = _source(tmp_path)

    def killed():
        raise SystemExit("SIGBUS")  # the process dies here: nothing after runs

    with pytest.raises(SystemExit):
        src.drain(lambda event: None, flush=True, commit=killed)
    assert not src.state_path.exists()
    # the next start: no cursor saved, so the block is read (and stored) again
    store = Store(tmp_path / "rasd.db", writer="inline")
    again = _source(tmp_path)
    saved = json.loads(again.state_path.read_text()) if again.state_path.exists() else None
    assert saved is None
    assert again.drain(store.handle, flush=True, commit=store.flush) == 1
    store.close()
    assert len(_stored(tmp_path / "rasd.db")) == 1
