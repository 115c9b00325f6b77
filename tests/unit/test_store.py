"""The SQLite store on real files: schema and migrations, batching, ids, derived
columns, incidents, retention, corruption at open, a full database, and read-only
readers next to the writer. (Real tmpfs full-disk and kill -9: tests/host.)"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from rasd.encode import cper as enc
from rasd.decode import cper
from rasd.events import Event, Incident, Task
from rasd.sinks import store as store_mod
from rasd.sinks.store import (MINUTE_NS, PAGE_SHIFT, EventQuery, Store, StoreError, StoreReader,
                              migrate, schema_version)

T0 = 1_764_000_000 * 10**9  # 2025-11-24T16:00:00Z


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ce_event(pa: int = 0x8_1234_5040, t: int = T0, cpu: int = 1, **kw) -> Event:
    mem = enc.memory_error(physical_addr=pa, node=1, card=2, module=3, rank=1, bank=4, row=77,
                           error_type=2)
    block = enc.encode_status_block([enc.section(mem, severity=enc.CORRECTED)])
    return Event("ghes", "ghes_do_proc", t, mono_ns=5, cpu=cpu, task=Task(0, 0, "swapper/1"),
                 raw=block, cper=cper.try_decode(block), fields={"notify": "sea"},
                 severity="corrected", containment="corrected", reason="CE", **kw)


def plain_event(kind: str = "memory_failure", t: int = T0, incident_id: int | None = None,
                **fields) -> Event:
    return Event(kind, kind, t, cpu=0, task=Task(77, 78, "kworker/0:1"), fields=fields,
                 severity=fields.pop("severity", "recoverable"), incident_id=incident_id)


def count(path: Path, where: str = "1") -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT count(*) FROM events WHERE {where}").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "rasd.db"


@pytest.fixture(params=["inline", "process"])
def writer(request) -> str:
    """The store's SQLite writes: in the caller's process, or in the writer process
    (rasd.sinks.store_writer, the daemon's default): the same outcome either way."""
    return request.param


# --- schema, ids, migrations ---------------------------------------------------------------

def test_fresh_store_is_wal_v1_and_ids_continue_after_reopen(db: Path, writer: str) -> None:
    s = Store(db, writer=writer)
    events = [ce_event(t=T0 + i) for i in range(3)]
    for e in events:
        s.handle(e)
    assert [e.id for e in events] == [1, 2, 3]  # known at handle() time, before any commit
    s.close()
    s = Store(db, writer=writer)
    assert s.next_event_id == 4 and s.next_incident_id == 1
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert s.conn.execute("SELECT version FROM schema_version").fetchall() == \
        [(v,) for v in range(1, store_mod.SCHEMA_VERSION + 1)]
    e = ce_event()
    s.handle(e)
    assert e.id == 4
    s.close()
    assert count(db) == 4


def test_pipeline_ids_below_the_stored_range_are_renumbered_not_overwritten(db: Path, writer: str) -> None:
    s = Store(db, writer=writer)
    s.handle(ce_event())
    s.close()
    alerts = []
    s = Store(db, writer=writer, on_alert=alerts.append)
    clash = ce_event(t=T0 + 1, id=1)  # a pipeline started at 1 instead of next_event_id
    s.handle(clash)
    s.close()
    assert clash.id == 2
    assert count(db) == 2
    assert [a["kind"] for a in alerts] == ["store_id_collision"]


def test_migration_path_applies_new_steps_in_order_and_keeps_data(db: Path) -> None:
    s = Store(db)
    s.handle(ce_event())
    s.close()

    def v1_to_v2(conn: sqlite3.Connection) -> None:
        conn.executescript("BEGIN; ALTER TABLE events ADD COLUMN dimm_label TEXT;"
                           "UPDATE events SET dimm_label = 'DIMM_B3'; COMMIT;")

    conn = sqlite3.connect(db, isolation_level=None)
    now = store_mod.SCHEMA_VERSION
    assert schema_version(conn) == now
    assert migrate(conn, store_mod.MIGRATIONS + [v1_to_v2]) == (now, now + 1)
    assert migrate(conn, store_mod.MIGRATIONS + [v1_to_v2]) == (now + 1, now + 1)  # idempotent
    assert conn.execute("SELECT id, dimm_label FROM events").fetchall() == [(1, "DIMM_B3")]
    assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == \
        list(range(1, now + 2))
    conn.close()


def test_a_v1_store_gains_the_incident_syndrome_columns(db: Path) -> None:
    """v1 -> v2: incidents keep their first ESR, its AET and the CPER section types; old
    incident rows stay and read with those unknown."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, store_mod.MIGRATIONS[:1])
    conn.execute("INSERT INTO incidents (id, kind, key, first_wall_ns, last_wall_ns, "
                 "event_count, closed) VALUES (1, 'guest_sea', 'tid:7', 1, 2, 1, 1)")
    conn.close()
    s = Store(db)
    inc = Incident(kind="guest_sea", key="tid:8", first_wall_ns=T0, last_wall_ns=T0, id=2,
                   esr=0x93C48017, aet=None, sections=["memory"], closed=True)
    s.save_incident(inc)
    s.close()
    from rasd.cli.rasdctl import incident_json
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["id"]: incident_json(r) for r in conn.execute("SELECT * FROM incidents")}
    assert schema_version(conn) == 2
    assert (rows[1]["esr"], rows[1]["sections"]) == (None, None)
    assert (rows[2]["esr"], rows[2]["sections"]) == ("0x93c48017", ["memory"])
    conn.close()


def test_migrating_an_empty_file_builds_v1(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    assert migrate(conn) == (0, store_mod.SCHEMA_VERSION)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "incidents", "incident_events", "event_counts", "schema_version"} <= tables


def test_a_store_from_a_newer_rasd_is_moved_aside_not_destroyed(db: Path) -> None:
    s = Store(db)
    s.handle(ce_event())
    s.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.close()
    alerts = []
    s = Store(db, on_alert=alerts.append)
    s.close()
    kept = [p for p in db.parent.iterdir() if ".newer-" in p.name and not p.name.endswith(
        ("-wal", "-shm"))]
    assert len(kept) == 1 and alerts[0]["kind"] == "store_corrupt"
    assert sqlite3.connect(kept[0]).execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert count(db) == 0
    with pytest.raises(StoreError, match="schema v99"):
        StoreReader(kept[0])


# --- corruption at open ------------------------------------------------------------------------

def test_a_file_that_is_not_a_database_is_moved_aside_with_an_alert(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    s = Store(db)
    assert s.counters.corrupt_moved == 1
    assert [a["kind"] for a in s.alerts] == ["store_corrupt"]
    s.handle(ce_event())
    s.close()
    kept = [p for p in db.parent.iterdir() if ".corrupt-" in p.name]
    assert [p.read_bytes() for p in kept] == [garbage]  # kept byte for byte
    assert count(db) == 1


def test_a_damaged_table_page_fails_integrity_check_and_is_moved_aside(db: Path) -> None:
    s = Store(db, batch_events=10_000)
    for i in range(400):
        s.handle(ce_event(pa=0x8000_0000 + i * 4096, t=T0 + i))
    s.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:  # scribble over pages in the middle of the file
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xa5" * 4096 * 4)
    alerts = []
    s = Store(db, on_alert=alerts.append)
    assert [a["kind"] for a in alerts] == ["store_corrupt"]
    assert s.next_event_id == 1  # a fresh store
    s.close()
    assert any(".corrupt-" in p.name for p in db.parent.iterdir())
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- batching and readers ----------------------------------------------------------------------

def test_events_commit_in_batches_of_n_and_readers_see_only_commits(db: Path) -> None:
    clock = Clock()
    s = Store(db, batch_events=5, batch_ms=10_000, clock=clock)
    reader = StoreReader(db)  # read-only, open next to the writer
    for i in range(4):
        s.handle(ce_event(t=T0 + i))
    assert len(list(reader.events(EventQuery()))) == 0
    s.handle(ce_event(t=T0 + 4))
    assert [r["id"] for r in reader.events(EventQuery())] == [1, 2, 3, 4, 5]
    assert s.counters.commits == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM events")
    reader.close()
    s.close()


def test_a_batch_older_than_batch_ms_commits_on_poll_or_the_next_event(db: Path) -> None:
    clock = Clock()
    s = Store(db, batch_events=1000, batch_ms=200, clock=clock)
    s.handle(ce_event())
    s.poll()
    assert count(db) == 0  # not due yet
    clock.t += 0.25
    s.poll()
    assert count(db) == 1
    s.handle(ce_event(t=T0 + 1))
    clock.t += 0.25
    s.handle(ce_event(t=T0 + 2))  # the batch is due: this handle() commits both
    assert count(db) == 3
    s.close()


def test_background_flusher_commits_a_quiet_tail_without_flush(db: Path, writer: str) -> None:
    s = Store(db, writer=writer, batch_events=1000, batch_ms=50, background=True)
    s.handle(ce_event())
    deadline = time.monotonic() + 5
    while count(db) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count(db) == 1
    s.close()


def test_flush_and_close_commit_what_is_pending(db: Path, writer: str) -> None:
    s = Store(db, writer=writer, batch_events=1000, batch_ms=10_000)
    s.handle(ce_event())
    s.flush()
    assert count(db) == 1
    s.handle(ce_event(t=T0 + 1))
    s.close()
    assert count(db) == 2


# --- what a row holds ----------------------------------------------------------------------------

def test_event_row_columns_come_from_the_cper_record(db: Path) -> None:
    s = Store(db)
    e = ce_event(pa=0x8_1234_5040)
    e.fields["_symbols"] = {"type": {1: "x"}}  # per-format tables: not stored per event
    s.handle(e)
    s.close()
    row = StoreReader(db).event(1)
    assert row["pfn"] == 0x8_1234_5040 >> PAGE_SHIFT and row["phys_addr"] == 0x8_1234_5040
    assert row["location"] == "node 1 card 2 module 3 rank 1"
    assert (row["severity"], row["sev_rank"], row["reason"]) == ("corrected", 1, "CE")
    assert bytes(row["raw"]) == e.raw
    stored = json.loads(row["decoded"])
    assert "raw" not in stored and "_symbols" not in stored["fields"]
    assert stored["cper"] == store_mod.CPER_FROM_RAW  # the raw column holds the record
    decoded = StoreReader(db).decoded(row)
    assert decoded["cper"]["sections"][0]["body"]["physical_addr"] == "0x812345040"
    assert decoded["id"] == 1 and decoded["task"]["comm"] == "swapper/1"
    # the same document event.to_dict() gave, less raw bytes and per-format tables
    expected = json.loads(store_mod._dumps(e.to_dict()))
    del expected["raw"], expected["fields"]["_symbols"]
    assert decoded == expected


def test_a_cper_record_its_raw_bytes_do_not_give_keeps_its_decoding(db: Path) -> None:
    """A BERT record found at an offset of the BERT region: decoding its bytes alone
    would lose the offset, so the store keeps the decoded form itself."""
    block = ce_event().raw
    region = bytes(64) + block
    rec = cper.try_decode(region, 64)
    e = Event("bert", "bert", T0, raw=rec.raw, cper=rec, severity="corrected")
    s = Store(db)
    s.handle(e)
    s.close()
    reader = StoreReader(db)
    row = reader.event(1)
    stored = json.loads(row["decoded"])
    assert stored["cper"]["offset"] == 64 and reader.decoded(row)["cper"] == stored["cper"]


def test_fields_give_pfn_address_and_dimm_label_and_huge_values_do_not_break(db: Path) -> None:
    s = Store(db)
    s.handle(plain_event("memory_failure", pfn=0x1234, flags=0, result="recovered"))
    s.handle(plain_event("mc_event", address=0x4000_1000, label="DIMM_A1", severity="corrected"))
    s.handle(plain_event("memory_failure", pfn=1 << 64, blob=b"\x01\x02"))  # garbage pfn
    s.close()
    r = StoreReader(db)
    rows = {row["id"]: row for row in r.events(EventQuery())}
    assert rows[1]["pfn"] == 0x1234 and rows[1]["phys_addr"] is None
    assert rows[2]["phys_addr"] == 0x4000_1000 and rows[2]["pfn"] == 0x4000_1000 >> PAGE_SHIFT
    assert rows[2]["location"] == "DIMM_A1"
    assert rows[3]["pfn"] is None  # above SQLite's int64: kept in the JSON only
    assert json.loads(rows[3]["decoded"])["fields"] == {"pfn": 1 << 64, "blob": "0102"}


def test_kernel_log_events_give_their_address_and_location(db: Path) -> None:
    """Under lockdown=confidentiality the [Hardware Error] lines are the record: the
    address and DIMM place they print reach the columns queries and summaries use."""
    s = Store(db)
    s.handle(plain_event("kmsg", kmsg_kind="hw_error", severity="corrected", sections=[
        {"section_type": "memory error", "physical_address": 0x6000_1000,
         "location": {"node": 0, "card": 0, "module": 1, "bank": 2, "row": 7}}]))
    s.handle(plain_event("kmsg", kmsg_kind="hw_error", severity="recoverable",
                         sections=[{"section_type": "memory error", "location": {"node": 1}}]))
    s.close()
    rows = {row["id"]: row for row in StoreReader(db).events(EventQuery())}
    assert rows[1]["phys_addr"] == 0x6000_1000 and rows[1]["pfn"] == 0x6000_1000 >> PAGE_SHIFT
    assert rows[1]["location"] == "node 0 card 0 module 1"
    assert rows[2]["phys_addr"] is None and rows[2]["pfn"] is None
    assert rows[2]["location"] == "node 1"


def test_incidents_are_upserted_with_members_and_the_vm_reaches_their_events(db: Path, writer: str) -> None:
    s = Store(db, writer=writer, batch_events=1000)
    inc = Incident("guest_sea", "tid:4242", T0, T0, severity="uncorrected")
    s.save_incident(inc)
    assert inc.id == 1  # assigned at once
    first = plain_event("guest_sea", t=T0, incident_id=1)
    s.handle(first)
    inc.event_ids.append(first.id)
    s.save_incident(inc)
    s.flush()
    inc.vm = {"name": "web-1", "tgid": 4242, "vcpu": 3, "how": "cgroup"}
    second = plain_event("vserror_injected", t=T0 + 5, incident_id=1)
    s.handle(second)
    inc.event_ids.append(second.id)
    s.save_incident(inc)
    s.flush()
    third = plain_event("guest_sea", t=T0 + 6, incident_id=1)  # after the VM was known
    s.handle(third)
    inc.last_wall_ns, inc.closed, inc.containment = T0 + 6, True, "vm_contained"
    s.save_incident(inc)  # 3 is not in event_ids: its incident_id column makes it a member
    s.close()
    r = StoreReader(db)
    row = r.incident(1)
    assert (row["closed"], row["containment"], row["vm_name"]) == (1, "vm_contained", "web-1")
    assert json.loads(row["vm"])["vcpu"] == 3 and row["event_count"] == 2
    assert [e["id"] for e in r.incident_events(1)] == [1, 2, 3]
    assert [e["vm"] for e in r.events(EventQuery(vm="web-1"))] == ["web-1"] * 3
    assert r.conn.execute("SELECT count(*) FROM incidents").fetchone()[0] == 1
    assert [i["id"] for i in r.incidents(vm="web-1")] == [1]
    assert r.incidents(open_only=True) == []


def test_a_merged_incident_keeps_its_pointer_and_the_survivor_lists_all_events(db: Path, writer: str) -> None:
    s = Store(db, writer=writer)
    a, b = Incident("x", "page:1", T0, T0), Incident("x", "tid:1", T0 + 1, T0 + 1)
    ea, eb = plain_event(t=T0), plain_event(t=T0 + 1)
    for inc, e in ((a, ea), (b, eb)):
        s.save_incident(inc)
        e.incident_id = inc.id
        s.handle(e)
        inc.event_ids.append(e.id)
    a.event_ids.extend(b.event_ids)  # what Correlator._merge does
    b.closed, b.merged_into = True, a.id
    s.save_incident(a)
    s.save_incident(b)
    s.close()
    r = StoreReader(db)
    assert r.incident(b.id)["merged_into"] == a.id
    assert [e["id"] for e in r.incident_events(a.id)] == [ea.id, eb.id]


# --- summary ------------------------------------------------------------------------------------

def test_summary_is_exact_over_ragged_ranges(db: Path, writer: str) -> None:
    """Whole minutes come from the rollup, the edges from the events: compare with a
    brute-force count over many ranges."""
    s = Store(db, writer=writer, batch_events=97)
    times = [T0 + i * 7_300_000_000 + (i * i % 13) * 10**8 for i in range(120)]  # ~15 minutes
    for i, t in enumerate(times):
        e = ce_event(pa=0x8000_0000 + (i % 7 << PAGE_SHIFT), t=t, cpu=i % 3) if i % 4 else \
            plain_event("memory_failure", t=t, pfn=0x99)
        s.handle(e)
    s.close()
    r = StoreReader(db)
    edges = [None, T0 - 1, T0, T0 + 59 * 10**9, T0 + MINUTE_NS, T0 + 3 * MINUTE_NS + 1,
             T0 + 7 * MINUTE_NS + 10**9 * 31, T0 + 20 * MINUTE_NS]
    for lo in edges:
        for hi in edges:
            if lo is not None and hi is not None and hi < lo:
                continue
            picked = [i for i, t in enumerate(times)
                      if (lo is None or t >= lo) and (hi is None or t < hi)]
            got = r.summary(lo, hi)
            assert got["total"] == len(picked), (lo, hi)
            cpus = {}
            for i in picked:
                c = i % 3 if i % 4 else 0
                cpus[c] = cpus.get(c, 0) + 1
            assert dict((k, n) for k, n in got["by_cpu"]) == cpus, (lo, hi)
            kinds = dict(got["by_type"])
            assert kinds.get("memory_failure", 0) == sum(1 for i in picked if i % 4 == 0)


def test_summary_counts_by_location_severity_page_and_vm(db: Path) -> None:
    s = Store(db)
    for i in range(6):
        s.handle(ce_event(pa=0x8000_0000 + (i % 2 << PAGE_SHIFT), t=T0 + i))
    s.handle(plain_event("guest_sea", t=T0 + 10, vm={"name": "db-2"}, severity="uncorrected"))
    s.close()
    got = StoreReader(db).summary()
    assert got["total"] == 7
    assert got["by_location"] == [["node 1 card 2 module 3 rank 1", 6]]
    assert got["by_severity"] == [["uncorrected", 1], ["corrected", 6]]
    pfn = 0x8000_0000 >> PAGE_SHIFT
    assert got["top_pages"] == [[pfn, 3], [pfn + 1, 3]]
    assert got["by_vm"] == [["db-2", 1]]


# --- retention ----------------------------------------------------------------------------------

def test_retention_by_age_deletes_old_events_and_keeps_the_rollup_exact(db: Path, writer: str) -> None:
    now = T0 + 100 * 86400 * 10**9
    s = Store(db, writer=writer, retention_days=30)
    old = Incident("x", "page:1", T0, T0, closed=True)
    s.save_incident(old)
    for i in range(50):
        s.handle(ce_event(t=T0 + i * 10**9, incident_id=old.id))  # 100 days old
        old.event_ids.append(i + 1)
    s.save_incident(old)
    for i in range(30):
        s.handle(ce_event(t=now - 86400 * 10**9 + i))  # a day old
    assert s.retain(now_ns=now) == 50
    s.close()
    r = StoreReader(db)
    assert [e["id"] for e in r.events(EventQuery())] == list(range(51, 81))
    assert r.summary()["total"] == 30
    assert r.incident(old.id) is None
    assert r.conn.execute("SELECT count(*) FROM incident_events").fetchone()[0] == 0
    s = Store(db, writer=writer)
    assert s.next_event_id == 81  # ids are never reused after retention
    s.close()


def test_retention_by_size_trims_the_oldest_to_fit(db: Path, writer: str) -> None:
    s = Store(db, writer=writer, max_size_mb=0.5, batch_events=500)
    for i in range(1500):
        e = ce_event(t=T0 + i)
        e.raw += bytes(600)  # ~1.8 KB a row
        s.handle(e)
    s.flush()
    assert s.used_bytes() > 0.5 * 2**20
    deleted = s.retain()
    assert deleted > 0 and s.used_bytes() <= 0.5 * 2**20
    s.close()
    r = StoreReader(db)
    ids = [e["id"] for e in r.events(EventQuery())]
    assert ids == list(range(1501 - len(ids), 1501))  # the newest stayed
    assert r.summary()["total"] == len(ids)


def test_retention_runs_periodically_from_poll_not_per_insert(db: Path, writer: str) -> None:
    clock = Clock()
    s = Store(db, writer=writer, retention_days=1, retention_interval_s=600, clock=clock)
    s.handle(ce_event(t=T0))  # ancient
    s.flush()
    assert count(db) == 1 and s.counters.retention_deleted == 0
    clock.t += 61  # the first run comes a minute after open, then every interval
    s.poll()
    assert count(db) == 0 and s.counters.retention_deleted == 1
    s.handle(ce_event(t=T0))
    clock.t += 300
    s.poll()
    assert count(db) == 1
    clock.t += 301
    s.poll()
    assert count(db) == 0
    s.close()


# --- write failures ------------------------------------------------------------------------------

def test_a_full_database_is_a_counted_loss_and_writes_resume(db: Path) -> None:
    """SQLITE_FULL for real, through max_page_count (tests/host does it with a tmpfs)."""
    alerts = []
    s = Store(db, batch_events=10, on_alert=alerts.append)
    s.handle(ce_event())
    s.flush()
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(40):
        e = ce_event(t=T0 + i)
        e.raw += bytes(3000)
        s.handle(e)  # never raises
    s.flush()
    assert s.counters.lost_events == 40 and s.counters.write_errors == 4
    assert [a["kind"] for a in alerts] == ["store_write_failed"]
    assert "disk full" in alerts[0]["message"]
    s.conn.execute("PRAGMA max_page_count = 1073741823")
    later = [ce_event(t=T0 + 100 + i) for i in range(5)]
    for e in later:
        s.handle(e)
    s.flush()
    assert [a["kind"] for a in alerts] == ["store_write_failed", "store_resumed"]
    assert "40 event(s) lost" in alerts[1]["message"]
    s.close()
    assert count(db) == 6
    assert count(db, f"id IN ({','.join(str(e.id) for e in later)})") == 5


def test_an_unopenable_store_loses_events_then_reopens_without_reusing_ids(
        db: Path) -> None:
    old = Store(db)
    for i in range(5):
        old.handle(ce_event(t=T0 + i))
    old.close()
    db.parent.rename(db.parent.with_name("away"))
    db.parent.write_text("x")  # the store's directory is a file now (root ignores modes)
    clock = Clock()
    s = Store(db, clock=clock)
    assert s.conn is None and s.alerts[0]["kind"] == "store_unavailable"
    lost = ce_event(t=T0 + 10)
    s.handle(lost)  # numbered from 1: the store never saw its file
    s.flush()
    assert s.counters.lost_events == 1 and lost.id == 1
    db.parent.unlink()
    db.parent.with_name("away").rename(db.parent)
    clock.t += store_mod.REOPEN_INTERVAL_S + 1
    later = ce_event(t=T0 + 11, id=2)  # a pipeline that kept counting from 1
    s.handle(later)
    s.flush()  # reopens, learns ids 1..5 are taken, renumbers instead of overwriting
    assert s.conn is not None and later.id == 6
    s.close()
    assert count(db) == 6


def test_reader_errors_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        StoreReader(tmp_path / "missing.db")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError):
        StoreReader(bad)


def test_integrity_check_after_crash_only_runs_when_a_wal_was_left_behind(db: Path) -> None:
    s = Store(db, integrity_check="after_crash")
    s.handle(ce_event())
    s.close()  # clean: the WAL is checkpointed and removed
    s = Store(db, integrity_check="after_crash")
    assert not s.checked_integrity
    s.handle(ce_event(t=T0 + 1))
    s.flush()
    # a writer that dies leaves its WAL: simulate by copying the files while it is open
    crashed = db.with_name("crashed.db")
    for suffix in ("", "-wal"):
        crashed.with_name(crashed.name + suffix).write_bytes(
            db.with_name(db.name + suffix).read_bytes())
    s.close()
    s = Store(crashed, integrity_check="after_crash")
    assert s.checked_integrity and s.next_event_id == 3  # the WAL's commit is there
    s.close()
    s = Store(db)  # "always", the default
    assert s.checked_integrity
    s.close()



def test_rows_pending_while_the_file_was_unreachable_are_renumbered_at_reopen(db: Path) -> None:
    old = Store(db)
    for i in range(3):
        old.handle(ce_event(t=T0 + i))
    old.close()
    db.parent.rename(db.parent.with_name("away"))
    db.parent.write_text("x")
    clock = Clock()
    s = Store(db, batch_events=100, clock=clock)
    pending = ce_event(t=T0 + 10)
    s.handle(pending)  # id 1, pending in the batch (not due yet)
    db.parent.unlink()
    db.parent.with_name("away").rename(db.parent)
    clock.t += store_mod.REOPEN_INTERVAL_S + 1
    s.handle(ce_event(t=T0 + 11))  # reopens first, then numbers this one 5
    s.close()
    r = StoreReader(db)
    rows = list(r.events(EventQuery()))
    assert [e["id"] for e in rows] == [1, 2, 3, 4, 5]
    assert [e["wall_ns"] - T0 for e in rows] == [0, 1, 2, 10, 11]  # nothing overwritten
    assert r.decoded(rows[3])["id"] == 4
