"""The storm path: what makes ingest fast must not change what is decided or stored.

- the decode stage's CPER cache shares one Record among byte-identical blocks only;
- the correlator's repeat shortcut gives the incidents a full absorb would;
- the store rewrites an unchanged open incident at most every INCIDENT_REWRITE_S, and
  writes incident_events only for members the event rows do not already name;
- the writer process commits what the inline writer would, answers in order, and a
  writer that dies is a counted loss and is started again;
- the writer's chunked INSERTs leave what INSERT OR REPLACE left, and it writes a
  storm's full batches a group at a time.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from rasd import config
from rasd.assembly import build
from rasd.decode import cper
from rasd.decode.event import CperCache, EventDecoder
from rasd.encode import cper as enc
from rasd.events import Event, Incident, Task
from rasd.sinks import store as store_mod
from rasd.sinks.store import PAGE_SHIFT, EventQuery, Store, StoreReader
from rasd.sources.records import Record

T0 = 1_764_000_000 * 10**9
BASE_PA = 0x80_0000_0000


def block(pa: int, severity: int = enc.CORRECTED) -> bytes:
    mem = enc.memory_error(physical_addr=pa, node=0, card=1, module=2, rank=1, error_type=2)
    return enc.encode_status_block([enc.section(mem, severity=severity)])


def ghes_record(blob: bytes, t: int) -> Record:
    return Record("ghes", "ghes_do_proc", 1, frozenset(), 0, 0, 0, "swapper", t,
                  {"source_id": 1, "hest_type": 10, "notify_type": 0,
                   "error_block_length": 1024, "estatus_len": len(blob),
                   "captured_len": len(blob)}, blob)


def ce(i: int, pa: int, shared: dict | None = None) -> Event:
    """A decoded CE event; ``shared`` hands out one Record per distinct block (as the
    decode stage's cache does), without it each event decodes its own."""
    raw = block(pa)
    rec = cper.try_decode(raw) if shared is None else shared.setdefault(raw, cper.try_decode(raw))
    return Event("ghes", "ghes_do_proc", T0 + i * 1000, cpu=i % 2, task=Task(0, 0, "swapper/0"),
                 raw=raw, cper=rec, fields={"notify": "polled", "notify_type": 0})


# --- the decode cache --------------------------------------------------------------------------

def test_the_cper_cache_shares_a_record_only_between_identical_bytes() -> None:
    cache = CperCache(size=2)
    a, a2, b = block(BASE_PA), block(BASE_PA), block(BASE_PA + 0x1000)
    assert a == a2 and a is not a2
    ra, rb = cache.decode(a), cache.decode(b)
    assert cache.decode(a2) is ra  # equal bytes, another object: the same record
    assert rb is not ra
    assert ra.sections[0].body.physical_addr == BASE_PA
    assert rb.sections[0].body.physical_addr == BASE_PA + 0x1000
    cache.decode(block(BASE_PA + 0x2000))  # a third block: the oldest goes
    assert len(cache._records) == 2 and cache.decode(a) is not ra
    assert (cache.hits, cache.misses) == (1, 4)


def test_events_decoded_through_the_cache_keep_their_own_fields() -> None:
    """Two events with the same block share the record, never the event fields; a
    one-bit difference (another page) is decoded on its own."""
    dec = EventDecoder()
    one, two = block(BASE_PA), block(BASE_PA + 0x1000)
    e1 = dec.decode(ghes_record(one, 100))
    e2 = dec.decode(ghes_record(bytes(one), 200))
    e3 = dec.decode(ghes_record(two, 300))
    assert e1.cper is e2.cper and e3.cper is not e1.cper
    assert e1.fields is not e2.fields and (e1.wall_ns, e2.wall_ns) == (100, 200)
    assert e3.cper.sections[0].body.physical_addr == BASE_PA + 0x1000
    assert e1.cper.to_dict() == cper.try_decode(one).to_dict()
    # a broken block decodes to its error, and the error stays with its own events
    bad = dec.decode(ghes_record(one[:30], 400))
    assert bad.decode_error and not e1.decode_error


# --- correlation: the repeat shortcut ----------------------------------------------------------

def run_storm(events: list[Event]) -> list[dict]:
    seen: dict[int, Incident] = {}
    asm = build(config.defaults(), EventDecoder(), [], on_incident=lambda i: seen.__setitem__(
        i.id, i))
    for e in events:
        asm.pipeline.feed_event(e)
    asm.correlator.expire(2**63 - 1)
    return [i.to_dict() for i in sorted(seen.values(), key=lambda i: i.id)]


def test_shared_records_give_the_incidents_a_decode_per_event_gives() -> None:
    """The same storm, records shared (repeats take the shortcut) or decoded per event
    (every event absorbed in full), with an uncorrected error on one of the pages and
    thresholds tripping: the incidents are identical."""
    pages = [BASE_PA + (p << PAGE_SHIFT) for p in range(5)]
    shared: dict = {}
    def storm(share: bool) -> list[Event]:
        out = [ce(i, pages[i % 5], shared if share else None) for i in range(400)]
        raw = block(pages[2], severity=enc.RECOVERABLE)
        out.insert(200, Event("ghes", "ghes_do_proc", T0 + 199_500, cpu=1,
                              task=Task(0, 0, "swapper/1"), raw=raw, cper=cper.try_decode(raw),
                              fields={"notify": "polled", "notify_type": 0}))
        return out
    fast, slow = run_storm(storm(True)), run_storm(storm(False))
    assert fast == slow
    kinds = [i["kind"] for i in fast]
    assert kinds.count("predictive_failure") >= 5 and "uncorrected_memory" in kinds
    (page2,) = [i for i in fast if i["key"] == f"page:{pages[2] >> PAGE_SHIFT:#x}"]
    assert page2["severity"] == "recoverable" and len(page2["event_ids"]) == 81


# --- what a row holds ----------------------------------------------------------------------------

def test_rows_of_an_older_rasd_with_the_whole_decoded_form_read_the_same(db: Path) -> None:
    """Rows written before the decoded column was slimmed hold all of event.to_dict()
    (CPER included): the reader gives the same document for both."""
    e = ce(0, BASE_PA)
    e.severity, e.reason = "corrected", "CE"
    s = Store(db)
    s.handle(e)
    s.close()
    whole = json.loads(store_mod._dumps(e.to_dict()))
    del whole["raw"]
    r = StoreReader(db)
    new = r.decoded(r.event(1))
    r.close()
    conn = __import__("sqlite3").connect(db)
    conn.execute("UPDATE events SET decoded = ? WHERE id = 1", (json.dumps(whole),))
    conn.commit()
    conn.close()
    r = StoreReader(db)
    assert r.decoded(r.event(1)) == new == whole
    r.close()


# --- metrics: counted per event, applied at scrape time -----------------------------------------

def test_metrics_counted_per_event_are_in_every_scrape() -> None:
    from prometheus_client import generate_latest

    from rasd.sinks.metrics import Metrics

    m = Metrics()
    def value(text: str, series: str) -> float:
        (line,) = [l for l in text.splitlines() if l.startswith(series + " ")]
        return float(line.split()[-1])
    for i in range(3):
        e = ce(i, BASE_PA)
        e.severity = "corrected"
        m.handle(e)
    text = generate_latest(m.registry).decode()
    events = 'rasd_events_total{kind="ghes",severity="corrected",source="ghes_do_proc"}'
    memory = ('rasd_memory_errors_total{location="node 0 card 1 module 2 rank 1",'
              'severity="corrected"}')
    assert value(text, events) == 3 and value(text, memory) == 3
    assert value(text, "rasd_last_event_timestamp_seconds") == (T0 + 2000) / 1e9
    e = ce(9, BASE_PA)
    e.severity, e.decode_error = "corrected", "cut short"
    m.handle(e)
    text = generate_latest(m.registry).decode()
    assert value(text, events) == 4
    assert value(text, 'rasd_decode_errors_total{source="ghes_do_proc"}') == 1


# --- store: incident rewrites and memberships ---------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def stored_incident(db: Path, iid: int) -> dict:
    r = StoreReader(db)
    try:
        row = r.incident(iid)
        return {k: row[k] for k in row.keys()}
    finally:
        r.close()


def test_an_unchanged_open_incident_is_rewritten_at_most_every_interval(db: Path) -> None:
    clock = Clock()
    s = Store(db, batch_events=2, clock=clock)
    inc = Incident("corrected_memory", "page:0x1", T0, T0, severity="corrected")

    def one_more(t: int) -> None:
        """What the pipeline does: the correlator adds the event and saves its incident,
        then the store handles the event."""
        e = ce(t, BASE_PA)
        e.id, e.incident_id = s.next_event_id, inc.id
        inc.add_member(e.id, e.kind)
        inc.last_wall_ns = e.wall_ns
        s.save_incident(inc)
        s.handle(e)

    one_more(0)
    one_more(1)  # a batch of 2 commits: new incident, written
    assert stored_incident(db, inc.id)["event_count"] == 2
    one_more(2)
    one_more(3)  # only times and counts changed, 0 s later: held back
    assert stored_incident(db, inc.id)["event_count"] == 2
    assert [e["id"] for e in StoreReader(db).incident_events(inc.id)] == [1, 2, 3, 4]
    inc.severity = "recoverable"  # a change that matters goes at once
    one_more(4)
    one_more(5)
    row = stored_incident(db, inc.id)
    assert (row["severity"], row["event_count"]) == ("recoverable", 6)
    one_more(6)
    clock.t += store_mod.INCIDENT_REWRITE_S
    one_more(7)  # the interval passed: rewritten
    assert stored_incident(db, inc.id)["event_count"] == 8
    one_more(8)
    s.flush()  # flush writes everything
    assert stored_incident(db, inc.id)["event_count"] == 9
    s.close()


def test_counted_incidents_are_rewritten_every_interval_and_need_no_member_rows(db: Path
                                                                                ) -> None:
    """The correlator's repeats reach the store as count_incident: the incident's row
    catches up every INCIDENT_REWRITE_S (and at flush), and the counted events, whose
    rows name the incident, get no incident_events row, not even when the incident
    later changes for real."""
    clock = Clock()
    s = Store(db, batch_events=2, clock=clock)
    inc = Incident("corrected_memory", "page:0x1", T0, T0, severity="corrected",
                   id=s.next_incident_id)  # numbered, as the correlator's are

    def one_more(t: int, counted: bool = True) -> None:
        e = ce(t, BASE_PA)
        e.id, e.incident_id = s.next_event_id, inc.id
        inc.add_member(e.id, e.kind)
        inc.last_wall_ns = e.wall_ns
        (s.count_incident if counted else s.save_incident)(inc)
        s.handle(e)

    one_more(0, counted=False)  # opened: saved in full
    one_more(1)  # counted while pending in full: that write has it
    assert stored_incident(db, inc.id)["event_count"] == 2
    for t in range(2, 6):
        one_more(t)  # two batches, 0 s later: the row waits
    assert stored_incident(db, inc.id)["event_count"] == 2
    clock.t += store_mod.INCIDENT_REWRITE_S
    one_more(6)
    one_more(7)  # the interval passed: the counted incident is rewritten
    assert stored_incident(db, inc.id)["event_count"] == 8
    one_more(8)
    inc.severity = "recoverable"
    one_more(9, counted=False)  # a real change: written at once
    row = stored_incident(db, inc.id)
    assert (row["severity"], row["event_count"]) == ("recoverable", 10)
    one_more(10)
    s.flush()  # flush writes the counted ones too
    assert stored_incident(db, inc.id)["event_count"] == 11
    s.close()
    r = StoreReader(db)
    assert [tuple(m) for m in r.conn.execute("SELECT * FROM incident_events")] == []
    assert [e["id"] for e in r.incident_events(inc.id)] == list(range(1, 12))


def test_a_storm_through_the_pipeline_stores_its_incident_whole(db: Path) -> None:
    """The daemon's wiring (on_count = the store's count_incident): a storm on one page
    ends as one incident row with every event counted and named."""
    s = Store(db, batch_events=7)
    asm = build(config.defaults(), EventDecoder(), [s], on_incident=s.save_incident,
                on_count=s.count_incident, first_event_id=s.next_event_id,
                first_incident_id=s.next_incident_id)
    raw = block(BASE_PA)
    for i in range(100):
        asm.pipeline.feed(ghes_record(raw, T0 + i * 1000))
    asm.correlator.expire(2**63 - 1)
    asm.pipeline.close()
    r = StoreReader(db)
    (iid, count, closed), = r.conn.execute("SELECT id, event_count, closed FROM incidents "
                                          "WHERE kind = 'corrected_memory'").fetchall()
    assert (count, closed) == (100, 1)
    assert len(r.incident_events(iid)) == 100
    assert r.conn.execute("SELECT COUNT(*) FROM incident_events WHERE incident_id = ?",
                          (iid,)).fetchone()[0] == 0


def test_members_the_event_rows_name_are_not_written_twice(db: Path) -> None:
    s = Store(db)
    inc = Incident("corrected_memory", "page:0x1", T0, T0)
    s.save_incident(inc)
    for i in range(5):
        e = ce(i, BASE_PA)
        e.incident_id = inc.id
        s.handle(e)
        inc.event_ids.append(e.id)
    predict = Incident("predictive_failure", "predict:page:1", T0, T0, event_ids=[5])
    s.save_incident(predict)  # event 5 belongs to inc: this membership needs a row
    s.close()
    r = StoreReader(db)
    assert [tuple(x) for x in r.conn.execute("SELECT * FROM incident_events")] == [(predict.id, 5)]
    assert [e["id"] for e in r.incident_events(inc.id)] == [1, 2, 3, 4, 5]
    assert [e["id"] for e in r.incident_events(predict.id)] == [5]


def test_the_decoded_text_of_ghes_events_is_shared_only_when_it_is_the_same() -> None:
    text = store_mod.DecodedText(size=2)
    a, b = ce(0, BASE_PA), ce(1, BASE_PA + 0x1000)
    c = ce(2, BASE_PA)
    c.fields["source_id"] = 7  # another GHES source
    d = ce(3, BASE_PA)
    d.fields["flag_names"] = ["x"]  # unhashable: encoded on its own
    mf = Event("memory_failure", "memory_failure", T0, fields={"pfn": 5})
    for e in (a, b, c, d, mf, a):
        assert text(e) == store_mod._dumps(store_mod.event_decoded(e))
    assert text(a) is text(b)  # same fields, CPER in raw: one text
    assert json.loads(text(c))["fields"]["source_id"] == 7
    assert json.loads(text(a)) == {"fields": {"notify": "polled", "notify_type": 0},
                                   "truncated": False, "cper": "from_raw"}



def test_a_record_s_events_share_their_row_tail_only_while_it_is_the_same() -> None:
    """EventRows makes the tail once per record; an event of that record that differs in
    anything the tail holds (classification, fields, raw bytes, kind) gets its own, and
    every row equals what event_row() makes from scratch."""
    from rasd.classify.severity import classify

    shared: dict = {}
    rows = store_mod.EventRows()
    first, again = classify(ce(0, BASE_PA, shared)), classify(ce(1, BASE_PA, shared))
    assert first.cper is again.cper and first.raw is not again.raw  # one record, own bytes
    other_fields = classify(ce(2, BASE_PA, shared))
    other_fields.fields["source_id"] = 7
    reclassified = classify(ce(3, BASE_PA, shared))
    reclassified.severity = "recoverable"
    other_raw = classify(ce(4, BASE_PA, shared))
    other_raw.raw = other_raw.raw + b"\0"  # (a record its raw no longer gives)
    seen = []
    for e in (first, again, other_fields, reclassified, other_raw, again):
        head, tail = rows(e, None)
        assert (head, tail) == store_mod.event_row(e, None)
        assert head[0] == e.id and head[1] == e.wall_ns
        seen.append(tail)
    assert seen[1] is seen[0]  # the storm's case: one tail
    assert all(t is not seen[0] for t in seen[2:5])
    assert seen[2][9] != seen[0][9]  # its own decoded text (tail[9])
    assert seen[3][2] == "recoverable" and seen[4][10].endswith(b"\0")


def test_the_decoded_text_follows_the_order_and_values_of_the_fields() -> None:
    """The last text is reused only for equal fields in the same order (JSON keeps it)."""
    text = store_mod.DecodedText()
    a, b, c = ce(0, BASE_PA), ce(1, BASE_PA), ce(2, BASE_PA)
    b.fields = {"notify_type": 0, "notify": "polled"}  # a's items, another order
    c.fields = {"notify": "polled", "notify_type": 1}
    for e in (a, b, a, c, c, a):
        assert text(e) == store_mod._dumps(store_mod.event_decoded(e))
    assert text(a) != text(b) and text(a) != text(c)
    a.truncated = True
    assert text(a) == store_mod._dumps(store_mod.event_decoded(a))

# --- the writer process --------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "rasd.db"


def test_the_writer_process_stores_what_the_inline_writer_stores(tmp_path: Path) -> None:
    """Same events and incidents through both writers, batches of 7 (many in flight):
    the same rows, incidents, memberships and rollup."""
    dumps = []
    for writer in ("inline", "process"):
        db = tmp_path / writer / "rasd.db"
        s = Store(db, batch_events=7, writer=writer)
        assert s._writer is None  # started with the first batch
        shared: dict = {}
        asm = build(config.defaults(), EventDecoder(), [s], on_incident=s.save_incident,
                    first_event_id=s.next_event_id, first_incident_id=s.next_incident_id)
        for i in range(300):
            asm.pipeline.feed_event(ce(i, BASE_PA + (i % 9 << PAGE_SHIFT), shared))
        asm.correlator.expire(2**63 - 1)
        asm.pipeline.flush()
        assert (s._writer is not None) == (writer == "process")
        asm.pipeline.close()
        assert s.counters.committed_events == 300 and s.counters.lost_events == 0
        r = StoreReader(db)
        dumps.append({t: r.conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                      for t in ("events", "incidents", "incident_events", "event_counts")})
        r.close()
    assert dumps[0] == dumps[1]
    assert len(dumps[0]["events"]) == 300 and len(dumps[0]["incidents"]) >= 9


def test_flush_means_committed_with_the_writer_process(db: Path) -> None:
    s = Store(db, batch_events=3, writer="process")
    for i in range(10):
        s.handle(ce(i, BASE_PA))
    s.flush()
    assert s.counters.committed_events == 10 and not s._in_flight
    r = StoreReader(db)
    assert len(list(r.events(EventQuery()))) == 10  # another connection sees them
    r.close()
    s.close()
    assert s._writer is None
    assert not Path(f"{db}-wal").exists()  # a clean close leaves no WAL: no "crash" next open


def test_a_writer_that_dies_is_a_counted_loss_and_is_started_again(db: Path) -> None:
    alerts = []
    s = Store(db, batch_events=5, writer="process", on_alert=alerts.append)
    for i in range(10):
        s.handle(ce(i, BASE_PA))
    s.flush()
    first = s._writer.pid
    os.kill(first, signal.SIGKILL)
    s._writer.proc.wait(timeout=10)
    for i in range(10, 20):
        s.handle(ce(i, BASE_PA))  # the batch sent to the dead writer is lost, and said so
    s.flush()
    c = s.counters
    assert c.writer_restarts == 1 and s._writer is not None and s._writer.pid != first
    assert c.committed_events + c.lost_events == 20 and c.lost_events >= 5
    assert "store_write_failed" in [a["kind"] for a in alerts]
    for i in range(20, 25):
        s.handle(ce(i, BASE_PA))
    s.close()
    assert s.counters.committed_events == c.committed_events  # the same object: counted on
    assert alerts[-1]["kind"] == "store_resumed"
    r = StoreReader(db)
    ids = [e["id"] for e in r.events(EventQuery())]
    assert ids[:10] == list(range(1, 11)) and ids[-5:] == list(range(21, 26))


def test_the_writer_process_reports_a_write_failure_like_the_inline_writer(db: Path) -> None:
    """A write the child cannot do (here: the table is gone) comes back as a counted
    loss with the inline writer's reason text, and writes resume."""
    alerts = []
    s = Store(db, batch_events=2, writer="process", on_alert=alerts.append)
    s.handle(ce(0, BASE_PA))
    s.handle(ce(1, BASE_PA))
    s.flush()
    s.conn.execute("ALTER TABLE event_counts RENAME TO event_counts_away")
    s.handle(ce(2, BASE_PA))
    s.handle(ce(3, BASE_PA))
    s.flush()
    assert s.counters.lost_events == 2 and s.counters.write_errors == 1
    assert alerts[-1]["kind"] == "store_write_failed"
    assert "write failed: OperationalError: no such table: event_counts" in alerts[-1]["message"]
    s.conn.execute("ALTER TABLE event_counts_away RENAME TO event_counts")
    s.handle(ce(4, BASE_PA))
    s.close()
    assert alerts[-1]["kind"] == "store_resumed"
    assert s.counters.committed_events == 3


def test_status_names_the_writer(db: Path) -> None:
    s = Store(db, writer="process")
    s.handle(ce(0, BASE_PA))
    s.flush()
    st = s.status()
    assert st["writer"] == "process" and st["writer_pid"] == s._writer.pid
    s.close()
    assert Store(db).status()["writer"] == "inline"


def test_from_config_writes_through_a_process(tmp_path: Path) -> None:
    cfg = config.defaults()
    cfg["store"]["path"] = str(tmp_path / "rasd.db")
    s = Store.from_config(cfg)
    try:
        s.handle(ce(0, BASE_PA))
        s.flush()
        assert s.writer == "process" and s._writer is not None
    finally:
        s.close()


def test_an_orphaned_writer_writes_nothing_more(db: Path) -> None:
    """The writer serves its parent only: once the daemon that started it is gone
    (SIGKILL), batches still queued in the pipe are dropped, never committed (the
    daemon never reported them committed, and a restarted daemon reuses their ids)."""
    from rasd.sinks import store_writer as sw

    Store(db).close()  # a store with its schema
    rows = [store_mod.event_row(ce(i, BASE_PA), None) for i in range(3)]
    for i, (head, tail) in enumerate(rows):
        rows[i] = (i + 1, *head[1:]), tail

    def serve(parent: int) -> bytes:
        r, w = os.pipe()
        with os.fdopen(w, "wb") as out:
            out.write(sw.encode_frame(("open", str(db))))
            out.write(sw.encode_frame(("batch", rows, [], [], {})))
        replies = __import__("io").BytesIO()
        with os.fdopen(r, "rb", buffering=0) as requests:
            sw.serve(requests, replies, parent)
        return replies.getvalue()

    assert serve(os.getppid() + 1_000_000) == b""  # not our parent: nothing written
    reader = StoreReader(db)
    assert list(reader.events(EventQuery())) == []
    reader.close()
    assert serve(os.getppid()) == sw.encode_frame(("ok",))
    reader = StoreReader(db)
    assert [e["id"] for e in reader.events(EventQuery())] == [1, 2, 3]
    reader.close()


def test_a_writer_that_cannot_run_at_all_leaves_the_store_writing_inline(db: Path,
                                                                         monkeypatch) -> None:
    """A writer process that dies before answering anything (it cannot even start
    here): that batch is a counted loss, and the store writes inline from then on."""
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")
    s = Store(db, batch_events=2, writer="process")
    for i in range(6):
        s.handle(ce(i, BASE_PA))  # sent before its death shows, or not: lost either way
    s.flush()
    c = s.counters
    # (its death shows when the store points it at the file, or at the first batches)
    assert s.writer == "inline" and s._writer is None and c.writer_restarts <= 1
    assert c.lost_events in (0, 2, 4, 6) and c.committed_events == 6 - c.lost_events
    for i in range(6, 10):
        s.handle(ce(i, BASE_PA))
    s.close()
    assert c.committed_events == 10 - c.lost_events


# --- the writer's SQL ----------------------------------------------------------------------------

def test_insert_events_leaves_what_insert_or_replace_left(tmp_path: Path) -> None:
    """Chunked multi-row INSERTs, and the fall-back to OR REPLACE when an id is taken (a
    stored one, or twice in one batch: the later row wins), leave exactly the rows a
    plain INSERT OR REPLACE per row leaves."""
    import sqlite3

    from rasd.sinks import store_writer as sw

    def row(eid: int, tag: str) -> tuple:
        head, tail = store_mod.event_row(ce(eid, BASE_PA), None)
        reason = sw.ROW_TAIL.index("reason")
        return (eid, *head[1:]), (*tail[:reason], f"{tail[reason]} {tag}", *tail[reason + 1:])

    batches = [[row(i, "a") for i in range(1, 124)],  # 100 + 2 x 10 + 3 rows
               [row(i, "b") for i in range(120, 135)] + [row(130, "c")],  # taken ids
               [row(i, "d") for i in range(135, 137)]]
    replace = ("INSERT OR REPLACE INTO events (" + ", ".join(sw.EVENT_COLUMNS) + ") VALUES ("
               + ", ".join("?" * len(sw.EVENT_COLUMNS)) + ")")
    dumps = []
    for how in ("chunked", "reference"):
        db = tmp_path / how / "rasd.db"
        Store(db).close()
        conn = sqlite3.connect(db, isolation_level=None)
        for rows in batches:
            conn.execute("BEGIN")
            if how == "chunked":
                sw.insert_events(conn, rows)
            else:
                conn.executemany(replace, [head + tail for head, tail in rows])
            conn.execute("COMMIT")
        dumps.append(conn.execute("SELECT * FROM events ORDER BY id").fetchall())
        conn.close()
    assert dumps[0] == dumps[1]
    assert len(dumps[0]) == 136 and dumps[0][129][12].endswith(" c")


def test_a_full_batch_waits_for_the_next_one_and_others_commit_at_once(monkeypatch) -> None:
    """The writer groups batches into one transaction: after a full one (a storm) it
    waits a little for the next; after one that is not full (flush, timer) it takes
    only what is already queued."""
    import time

    from rasd.sinks import store_writer as sw

    def batch(full: bool | None) -> bytes:
        message = ("batch", [(1,)], [], [], {}) + (() if full is None else (full,))
        return sw.encode_frame(message)

    monkeypatch.setattr(sw, "GROUP_WAIT_S", 1.0)
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as requests, os.fdopen(w, "wb", buffering=0) as out:
        queue = sw._Requests(requests)
        out.write(batch(True) + batch(True))
        start = time.monotonic()
        assert len(sw._group(queue, queue.next())) == 2
        assert time.monotonic() - start >= 0.9  # waited for a third that never came
        # not full, then a frame without the flag (an older daemon's: not full either):
        # what is queued joins, nothing is waited for
        out.write(batch(False) + batch(None))
        start = time.monotonic()
        group = sw._group(queue, queue.next())
        assert time.monotonic() - start < 0.5
        assert len(group) == 2 and group[0] == ([(1,)], [], [], {})


def test_a_new_store_gets_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    import sqlite3

    new = tmp_path / "new.db"
    Store(new).close()
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    store_mod.migrate(conn)
    conn.close()
    for path, size in ((new, store_mod.PAGE_BYTES), (old, 4096)):
        s = Store(path)
        s.handle(ce(0, BASE_PA))
        s.close()
        r = StoreReader(path)
        assert r.conn.execute("PRAGMA page_size").fetchone()[0] == size
        assert len(list(r.events(EventQuery()))) == 1
        r.close()
