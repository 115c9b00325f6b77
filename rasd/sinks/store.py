"""The event store: embedded SQLite, one writer (the daemon), any number of readers.

Design, and why:

- **Batched commits.** ``handle()`` only turns the event into a row and appends it
  to an in-memory batch; the batch is committed when it holds ``batch_events`` rows,
  when it is ``batch_ms`` old (checked on every ``handle()`` and by ``poll()``, which a
  background thread calls when ``background=True``), and on ``flush()``/``close()``.
  One transaction per batch is what lets a storm go at tens of thousands of events/s.
- **WAL, synchronous=NORMAL.** A committed batch survives ``kill -9`` of the daemon
  (the WAL is written before COMMIT returns); only a power loss can take the last
  commits. Readers (``rasdctl``) open ``mode=ro`` and never block the writer.
- **Ids known at handle() time.** Event and incident ids come from in-memory counters
  initialised from MAX(id)+1 at open (``next_event_id``/``next_incident_id``), so the
  pipeline and the correlator can refer to an event before it is written.
- **Summary in O(groups), not O(events).** Every commit also adds the batch's counts
  to ``event_counts`` (per minute × kind × severity × CPU × memory location × page),
  in the same transaction, so ``rasdctl summary`` reads a few thousand rows instead of
  scanning a million; retention subtracts what it deletes.
- **Failures are counted, never raised.** A full disk (SQLITE_FULL, ENOSPC) or any
  other write error drops that batch (``lost_events``), raises an alert once, and the
  next batch tries again, so writes resume by themselves when space returns. A store
  that fails ``PRAGMA integrity_check`` at open is moved aside (kept, renamed with a
  timestamp) and a fresh one started, with an alert.
- **The SQLite half on the other core.** With ``writer="process"`` (the daemon's,
  ``from_config``) each batch goes, as rows, to a writer process (store_writer), which
  commits it and answers; the counters (``committed_events``, ``lost_events``...) move
  on its answers, and ``flush()``/``close()``/retention wait for them. ``"inline"``
  writes in this process (tests, tools).
- **Small rows.** The ``decoded`` column holds what no column holds (fields, ESR,
  CPER); a GHES block's decoded CPER is not stored at all but made again from the raw
  column on read (``StoreReader.decoded``): it was most of a storm's write time and
  ~1.6 kB of the ~2.1 kB each event took.
- **Incidents without a row per event.** An open incident whose state did not change
  is rewritten at most every INCIDENT_REWRITE_S; ``incident_events`` gets only the
  members an event row does not already name (merges, predictive incidents). The
  correlator says which events only counted (``count_incident``: a storm's repeats),
  so those cost a dict entry, not a look at the incident per batch.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import operator
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..decode import cper
from ..decode.cper.sections.memory import MemorySection
from ..events import GHES, KMSG, MC_EVENT, SEVERITY_RANK, Event, Incident
from .store_writer import (MAX_IN_FLIGHT, WriterProcess, failure_reason, is_corruption,
                           rollback, set_writer_pragmas, write_batch)

log = logging.getLogger("rasd.store")

DEFAULT_PATH = "/var/lib/rasd/rasd.db"
PAGE_SHIFT = (os.sysconf("SC_PAGE_SIZE") - 1).bit_length()
MINUTE_NS = 60 * 10**9
INT64_MAX = (1 << 63) - 1
RETENTION_CHUNK = 20_000  # rows per retention transaction: bounds the writer's pause
REOPEN_INTERVAL_S = 30.0  # how often to retry a store that could not be opened
# SQLite page size of a new store (an existing one keeps its own). In a storm
# (bench/store.py) the writer spends clearly less CPU with 16 KiB pages than with the
# 4 KiB default: fewer pages to split, dirty and write to the WAL per event. The rows
# are the same.
PAGE_BYTES = 16384


class StoreError(Exception):
    """A store rasd cannot use (readers: missing, unreadable, newer schema)."""


# --- schema and migrations --------------------------------------------------------------
# MIGRATIONS[n] takes a store from version n to n+1. Version 0 is an empty file.
# A new layout is a new function appended here, never an edit of an old one.

SCHEMA_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_wall_ns INTEGER NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    wall_ns INTEGER NOT NULL,
    mono_ns INTEGER,
    cpu INTEGER,
    tgid INTEGER,
    tid INTEGER,
    comm TEXT,
    severity TEXT,
    sev_rank INTEGER,               -- SEVERITY_RANK of severity: "at least" is a range
    containment TEXT,
    reason TEXT,
    incident_id INTEGER,
    vm TEXT,                        -- VM name, when attribution named one
    pfn INTEGER,
    phys_addr INTEGER,
    location TEXT,                  -- memory location down to the rank, or the DIMM label
    decoded TEXT NOT NULL,          -- event.to_dict() without raw, JSON (see event_decoded)
    raw BLOB,
    decode_error TEXT
);
CREATE INDEX events_wall ON events (wall_ns);
CREATE INDEX events_kind_wall ON events (kind, wall_ns);
CREATE INDEX events_sev_wall ON events (sev_rank, wall_ns);
CREATE INDEX events_vm ON events (vm, wall_ns) WHERE vm IS NOT NULL;
CREATE INDEX events_incident ON events (incident_id) WHERE incident_id IS NOT NULL;
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    first_wall_ns INTEGER NOT NULL,
    last_wall_ns INTEGER NOT NULL,
    severity TEXT,
    sev_rank INTEGER,
    containment TEXT,
    summary TEXT,
    pfn INTEGER,
    phys_addr INTEGER,
    location TEXT,                  -- JSON
    cpu INTEGER,
    mpidr INTEGER,
    vm TEXT,                        -- JSON {"name", "tgid", "vcpu", "how"}
    vm_name TEXT,
    blast_radius TEXT,              -- JSON
    disagreements TEXT,             -- JSON list
    event_kinds TEXT,               -- JSON {kind: count}
    event_count INTEGER NOT NULL,
    closed INTEGER NOT NULL,
    merged_into INTEGER             -- a later event proved it part of that incident
);
CREATE INDEX incidents_last ON incidents (last_wall_ns);
CREATE INDEX incidents_first ON incidents (first_wall_ns);
CREATE INDEX incidents_vm ON incidents (vm_name) WHERE vm_name IS NOT NULL;
CREATE INDEX incidents_open ON incidents (closed) WHERE closed = 0;
CREATE TABLE incident_events (
    incident_id INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (incident_id, event_id)
) WITHOUT ROWID;
CREATE INDEX incident_events_event ON incident_events (event_id);
-- Rollup for `rasdctl summary`. NULLs are stored as -1 / '' so the key stays unique.
CREATE TABLE event_counts (
    minute INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sev_rank INTEGER NOT NULL,
    cpu INTEGER NOT NULL,
    location TEXT NOT NULL,
    pfn INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, sev_rank, cpu, location, pfn)
) WITHOUT ROWID;
"""


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    conn.executescript("BEGIN;" + SCHEMA_V1 + "COMMIT;")


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Incidents keep the syndrome (first ESR, its AET) and the CPER section types seen:
    a guest SEA's incident must show its ESR without opening the events."""
    conn.executescript("BEGIN;"
                       "ALTER TABLE incidents ADD COLUMN esr INTEGER;"
                       "ALTER TABLE incidents ADD COLUMN aet TEXT;"
                       "ALTER TABLE incidents ADD COLUMN sections TEXT;"  # JSON list
                       "COMMIT;")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """0 for an empty file; the stored version otherwise."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
                       ).fetchone()
    if not has:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(conn: sqlite3.Connection, migrations: list | None = None) -> tuple[int, int]:
    """Bring the store to the newest version; returns (from, to). Each step commits on
    its own with its version row, so an interrupted upgrade resumes where it stopped."""
    migrations = MIGRATIONS if migrations is None else migrations
    start = current = schema_version(conn)
    if current > len(migrations):
        raise StoreError(f"store schema v{current} is newer than this rasd (v{len(migrations)})")
    while current < len(migrations):
        migrations[current](conn)
        current += 1
        with conn:
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (current, time.time_ns()))
    return start, current


# --- rows from events and incidents -----------------------------------------------------

def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def _dumps(value: Any) -> str:
    """_ENCODER.encode(value), without its two Python-level calls: what that makes when
    the C encoder is there (it is in CPython), made directly (a store write encodes
    several small values per incident row)."""
    if c_make_encoder is None:
        return _ENCODER.encode(value)
    e = _ENCODER
    return "".join(c_make_encoder({}, e.default, encode_basestring_ascii, e.indent,
                                  e.key_separator, e.item_separator, e.sort_keys,
                                  e.skipkeys, e.allow_nan)(value, 0))


def _int64(value: Any) -> int | None:
    """SQLite integers are signed 64-bit; a garbage address above that stays in the JSON."""
    return value if isinstance(value, int) and 0 <= value <= INT64_MAX else None


def where_in_memory(event: Event) -> tuple[int | None, int | None, str | None]:
    """(pfn, physical address, memory location) from the event's CPER or fields."""
    f, record = event.fields, event.cper
    if record is not None and "pfn" not in f and "phys_addr" not in f and \
            event.kind != MC_EVENT:  # the record alone decides: once per record
        return record.derived.get("store_place") or _cper_place(record)
    phys, location = _int64(f.get("phys_addr")), None
    if event.kind == MC_EVENT:  # ras:mc_event: EDAC's physical address and DIMM label
        phys = phys or _int64(f.get("address"))
        location = f.get("label") or None
    elif event.kind == KMSG:    # [Hardware Error] lines: what each section printed
        phys, location = _kmsg_memory(f)
    if event.cper is not None:
        cper_phys, cper_location = _cper_memory(event.cper)
        phys = cper_phys if phys is None else phys
        location = location or cper_location
    pfn = _int64(f.get("pfn"))
    if pfn is None and phys is not None:
        pfn = phys >> PAGE_SHIFT
    return pfn, phys, location


def _cper_place(record: Any) -> tuple[int | None, int | None, str | None]:
    place = record.derived.get("store_place")
    if place is None:
        phys, location = _cper_memory(record)
        pfn = None if phys is None else phys >> PAGE_SHIFT
        place = record.derived["store_place"] = (pfn, phys, location)
    return place


def _cper_memory(record: Any) -> tuple[int | None, str | None]:
    """(physical address, location text) of a CPER record's memory sections, once per
    record (the decode stage shares one Record among identical blocks)."""
    found = record.derived.get("store_memory")
    if found is None:
        phys = location = None
        for sec in record.sections:
            body = sec.body
            if isinstance(body, MemorySection):
                if phys is None and body.physical_addr_valid:
                    phys = _int64(body.physical_addr)
                location = location or _location_text(body)
        found = record.derived["store_memory"] = (phys, location)
    return found


_LOCATION_KEYS = ("node", "card", "module", "rank")


def _kmsg_memory(fields: dict) -> tuple[int | None, str | None]:
    """(physical address, location text) of a kernel-log event's memory sections (the
    kernel prints "physical_address: 0x..." and "node:0 card:0 module:1 ...")."""
    phys = location = None
    for sec in fields.get("sections", ()):
        if phys is None:
            phys = _int64(sec.get("physical_address"))
        loc = sec.get("location") or {}
        if location is None and any(k in loc for k in _LOCATION_KEYS):
            location = " ".join(f"{k} {loc[k]}" for k in _LOCATION_KEYS if k in loc)
    return phys, location


def _location_text(body: Any) -> str | None:
    """Node/card/module/rank (+ SMBIOS DIMM handle): where a DIMM or rank goes bad.
    Bank/row/column stay in the decoded JSON: as a grouping key they split a bad
    DIMM into thousands of one-event groups. (Reads the valid bits directly: this runs
    once per event in a storm, MemorySection.location() builds every field.)"""
    valid, bits = body.validation_bits, body.valid_map
    parts = [f"{k} {getattr(body, k)}" for k in _LOCATION_KEYS if valid & bits[k]]
    if valid & bits["mem_dev_handle"]:
        parts.append(f"handle {body.mem_dev_handle:#06x}")
    return " ".join(parts) or None


def vm_name(vm: Any) -> str | None:
    if isinstance(vm, dict):
        name = vm.get("name")
        return str(name) if name else None
    return str(vm) if vm else None


# The stored "cper" of an event whose CPER record is what its raw bytes decode to: the
# decoded form is made from the raw column when read (StoreReader.decoded), not stored.
# Serialising a decoded record per event was most of a storm's write cost and most of
# its bytes on disk (~1.6 kB of ~2.1 kB per corrected memory error).
CPER_FROM_RAW = "from_raw"


def event_decoded(event: Event) -> dict:
    """What the ``decoded`` column holds: event.to_dict() less what has a column of its
    own (id, kind, source, times, CPU, task, classification, incident, decode error, raw
    bytes), less per-format tables (``_symbols``) and less a CPER record its raw bytes
    give again. StoreReader.decoded() puts the whole to_dict() back together. (Rows
    written before held all of to_dict(); the reader takes both.) Built directly and
    kept small: this runs once per event, and the row's size is the insert's cost."""
    fields = event.fields
    if "_symbols" in fields:  # per-format tables (tracepoints), not per-event
        fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    d: dict = {"fields": fields, "truncated": event.truncated}
    if event.esr is not None:
        d["esr"] = event.esr.to_dict()
    if event.cper is not None:
        d["cper"] = CPER_FROM_RAW if cper_in_raw(event) else event.cper.to_dict()
    return d


def cper_in_raw(event: Event) -> bool:
    """Whether decoding the event's raw bytes gives its CPER record: they are exactly the
    record's bytes, from offset 0 (a GHES block; not a BERT record found further into
    the BERT region, whose offset the decoded form keeps)."""
    rec = event.cper
    return rec.offset == 0 and bool(rec.raw) and rec.raw == event.raw


class DecodedText:
    """event_decoded() as JSON text, remembered for GHES events: a storm's differ in
    nothing it holds (their fields are the GHES source's, their CPER is in the raw
    column), so one text serves them all. Keyed by the field items, whose types the
    GHES handler fixes (an int never stands where a bool did). The last text is kept
    apart with a copy of its fields: a storm's next event has equal fields, and
    comparing two dicts (and their key order) costs less than making and hashing the
    key."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._texts: dict[tuple, str] = {}
        self._last: tuple | None = None  # (fields copy, their keys, truncated, no CPER, text)

    def __call__(self, event: Event) -> str:
        rec, fields = event.cper, event.fields
        if event.kind != GHES or event.esr is not None or rec is not None and not (
                rec.raw == event.raw and rec.offset == 0 and rec.raw):  # cper_in_raw()
            return _dumps(event_decoded(event))
        last = self._last
        if last is not None and fields == last[0] and last[2] == event.truncated and \
                last[3] == (rec is None) and tuple(fields) == last[1]:
            return last[4]  # the same items as the last event's: its key, its text
        try:
            key = (tuple(fields.items()), event.truncated, rec is None)
            text = self._texts.get(key)
        except TypeError:  # an unhashable field value
            return _dumps(event_decoded(event))
        if text is None:
            if len(self._texts) >= self.size:
                self._texts.clear()
            text = self._texts[key] = _dumps(event_decoded(event))
        self._last = (dict(fields), tuple(fields), event.truncated, rec is None, text)
        return text


def event_row(event: Event, vm: str | None, decoded: Callable[[Event], str] | None = None
              ) -> tuple[tuple, tuple]:
    """The events table row as (head, tail) (store_writer.ROW_HEAD, ROW_TAIL);
    ``decoded`` gives the JSON text (default: event_decoded() encoded)."""
    return row_head(event, vm), row_tail(event, decoded)


def row_head(event: Event, vm: str | None) -> tuple:
    """What each event has of its own: id, times, CPU, task, incident, VM."""
    task = event.task
    if task is None:
        tgid = tid = comm = None
    else:
        tgid, tid, comm = task.tgid, task.tid, task.comm
    return (event.id, event.wall_ns, event.mono_ns, event.cpu, tgid, tid, comm,
            event.incident_id, vm)


def row_tail(event: Event, decoded: Callable[[Event], str] | None = None) -> tuple:
    """What a storm's events of one record share: kind, classification, place, decoded
    text, raw bytes, decode error."""
    severity = event.severity
    pfn, phys, location = where_in_memory(event)
    text = decoded(event) if decoded is not None else _dumps(event_decoded(event))
    return (event.kind, event.source, severity, SEVERITY_RANK.get(severity),
            event.containment, event.reason, pfn, phys, location, text, event.raw or None,
            event.decode_error)


class EventRows:
    """event_row() for the store's events, the tail made once per CPER record: a
    storm's events of one record share it (their decoded record is one object, see
    the decode stage's CperCache) while what it is made of is the same. That is
    checked per event, cheaply: the classification strings by identity (the verdict
    is remembered per record, so repeats hand out the same strings; a string equal but
    not identical only makes the tail again), the fields, kind and raw bytes by value."""

    def __init__(self) -> None:
        self.decoded = DecodedText()
        self._memo = object()  # this instance's entry in Record.derived

    def __call__(self, event: Event, vm: str | None) -> tuple[tuple, tuple]:
        rec = event.cper
        if rec is None or event.esr is not None or event.decode_error is not None:
            return row_head(event, vm), row_tail(event, self.decoded)
        seen = rec.derived.get(self._memo)
        # (the checks as one expression: this runs per event)
        if seen is None or not (seen[0] is event.severity and seen[1] is event.reason and
                                seen[2] is event.containment and seen[3] == event.kind and
                                seen[4] == event.source and seen[5] == event.truncated and
                                seen[6] == event.fields and seen[7] == event.raw):
            tail = row_tail(event, self.decoded)
            rec.derived[self._memo] = seen = (
                event.severity, event.reason, event.containment, event.kind, event.source,
                event.truncated, dict(event.fields), event.raw, tail)
        return row_head(event, vm), seen[8]


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def incident_row(inc: Incident) -> tuple:
    kinds = inc.kind_counts
    return (inc.id, inc.kind, inc.key, inc.first_wall_ns, inc.last_wall_ns, inc.severity,
            SEVERITY_RANK.get(inc.severity), inc.containment, inc.summary, _int64(inc.pfn),
            _int64(inc.phys_addr), _json_or_none(inc.location), inc.cpu, _int64(inc.mpidr),
            _json_or_none(inc.vm), vm_name(inc.vm), _json_or_none(inc.blast_radius),
            _dumps(list(inc.disagreements)), _dumps(kinds),
            max(len(inc.event_ids), inc.event_count), int(inc.closed),
            getattr(inc, "merged_into", None), _int64(inc.esr), inc.aet,
            _dumps(list(inc.sections)) if inc.sections else None)


def _row_id(row: tuple[tuple, tuple]) -> int:
    return row[0][0]

# How often an open incident whose state did not change is rewritten (_due_incidents).
INCIDENT_REWRITE_S = 1.0


_STATE_FIELDS = operator.attrgetter("kind", "severity", "containment", "summary", "closed",
                                    "merged_into", "vm", "blast_radius", "location", "pfn", "cpu")


def _state_of(inc: Incident) -> tuple:
    """What, changed, gets an incident rewritten at once (not its times or counts).
    (attrgetter: asked per incident and batch, in a storm about once per event.)"""
    return _STATE_FIELDS(inc), len(inc.disagreements)


# --- the writer ---------------------------------------------------------------------------

@dataclass
class StoreCounters:
    committed_events: int = 0
    committed_incidents: int = 0
    commits: int = 0
    lost_events: int = 0  # handed to the store, never written (disk full, I/O error, no store)
    write_errors: int = 0  # failed commits
    retention_deleted: int = 0
    corrupt_moved: int = 0
    writer_restarts: int = 0  # the writer process died and was started again
    last_committed_event_id: int = 0  # every event up to here that was handed over is in


@dataclass
class _Batch:
    """What one transaction writes (incidents as rows: their state at commit time)."""

    rows: list[tuple]
    incident_rows: list[tuple]
    members: list[tuple[int, int]]
    vms: dict[int, str]  # incident id -> VM name
    closed: list[int]
    full: bool = False  # committed because it filled up (a storm: more follow at once)
    # what booking its answer needs (kept when the rows are shed)
    n_rows: int = field(init=False)
    n_incidents: int = field(init=False)
    last_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_rows, self.n_incidents = len(self.rows), len(self.incident_rows)
        self.last_id = max(map(_row_id, self.rows)) if self.rows else 0

    def shed(self) -> None:
        """The writer process has the rows: drop the daemon's copy while the batch waits
        for its answer (up to MAX_IN_FLIGHT of them)."""
        self.rows, self.incident_rows, self.members = [], [], []


class Store:
    """The daemon's sink (``handle``/``flush``/``close``) and incident writer.

    Wiring (rasd.assembly.build)::

        store = Store.from_config(cfg, on_alert=...)
        build(cfg, decoder, [store, ...], on_incident=store.save_incident,
              first_event_id=store.next_event_id, first_incident_id=store.next_incident_id)

    ``status()`` gives the counters (``lost_events``...) and recent ``alerts``.
    """

    def __init__(self, path: str | os.PathLike, *, batch_events: int = 4000,
                 batch_ms: float = 200, retention_days: float = 0, max_size_mb: float = 0,
                 retention_interval_s: float = 600, background: bool = False,
                 integrity_check: str = "always",
                 on_alert: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, writer: str = "inline") -> None:
        self.path = Path(path)
        self.batch_events = batch_events
        self.batch_s = batch_ms / 1000
        self.retention_ns = int(retention_days * 86400 * 10**9)
        self.max_bytes = int(max_size_mb * 1024 * 1024)
        self.retention_interval_s = retention_interval_s
        self.integrity_check = integrity_check  # "always" or "after_crash"
        self.checked_integrity = False  # whether the last open ran PRAGMA integrity_check
        self.on_alert = on_alert
        self.clock = clock
        self.counters = StoreCounters()
        self.alerts: deque[dict] = deque(maxlen=100)
        self.conn: sqlite3.Connection | None = None
        self.next_event_id = 1
        self.next_incident_id = 1
        self._id_floor = 1  # ids below this were in the store at open
        self._renumbered = False
        self._ids_loaded = False  # MAX(id) read from the file (not yet, if it never opened)
        self._lock = threading.RLock()  # handle() vs the background flusher
        self._rows: list[tuple] = []
        self._incidents: dict[int, Incident] = {}
        self._counted: dict[int, Incident] = {}  # gained events only (count_incident)
        self._next_counted_s = clock() + INCIDENT_REWRITE_S  # the counted ones: next rewrite
        self._members_written: dict[int, int] = {}  # incident id -> event_ids already written
        self._vm_by_incident: dict[int, str] = {}
        self._incident_written: dict[int, tuple[float, tuple]] = {}  # id -> (when, _state_of)
        self._row_incident: dict[int, int] = {}  # event id -> incident id, for pending rows
        self._event_row = EventRows()
        self._batch_started = 0.0
        self._failing: str | None = None  # the reason writes fail, while they do
        self._lost_since_alert = 0
        self._next_retention = clock() + min(60.0, retention_interval_s)
        self._next_reopen = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        # "process": SQLite writes run in a child process on another core (store_writer)
        self.writer = writer
        self._writer: WriterProcess | None = None
        self._in_flight: deque[_Batch] = deque()  # sent to the writer, not yet answered
        self.writer_waited_s = 0.0  # blocked on writers since closed (backpressure; bench)
        self._open()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._flusher, name="rasd-store", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> "Store":
        s = cfg["store"]
        kw.setdefault("writer", "process")
        return cls(store_path(cfg), batch_events=s["batch_events"], batch_ms=s["batch_ms"],
                   retention_days=s["retention_days"], max_size_mb=s["max_size_mb"],
                   retention_interval_s=s["retention_interval_s"],
                   integrity_check=s["integrity_check"], background=True, **kw)

    # --- open, integrity, migration ---------------------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = self._connect_checked()
        except (sqlite3.Error, OSError, StoreError) as exc:
            self.conn = None
            self._next_reopen = self.clock() + REOPEN_INTERVAL_S
            self._alert("store_unavailable", f"cannot open the store {self.path}: {exc}")
            return
        if self._writer is not None:
            self._point_writer()  # a reopen (a corrupt file moved aside): the new file
        if not self._ids_loaded:
            # once: a reopen (after corruption) keeps counting where this process was
            self._load_ids()
            self._id_floor = self.next_event_id
            self._ids_loaded = True
            self._rows = [self._renumber_row(r) for r in self._rows]

    def _connect_checked(self) -> sqlite3.Connection:
        """Open, check, migrate; a corrupt or too-new file is moved aside once."""
        try:
            return self._connect()
        except (sqlite3.DatabaseError, StoreError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise  # locked, unreadable directory, disk full: not the file's fault
            moved = self._move_aside(exc)
            self._alert("store_corrupt", f"store {self.path} unusable ({exc}); moved to "
                        f"{moved.name}, starting a fresh one")
            return self._connect()

    def _crashed(self) -> bool:
        """A WAL left behind: the last writer did not close (a clean close checkpoints
        and deletes it)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return wal.exists() and wal.stat().st_size > 0

    def _connect(self) -> sqlite3.Connection:
        check = self.integrity_check == "always" or self._crashed()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.checked_integrity = False
            if not self._fresh(conn):
                if check:  # O(file size): ~10-20 s for a 2 GB store
                    verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
                    if verdict != "ok":
                        raise sqlite3.DatabaseError(f"integrity_check: {verdict}")
                    self.checked_integrity = True
            else:
                # only before the first table and WAL (page size first: auto_vacuum
                # fixes it); the file keeps both
                conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("cannot switch to WAL")
            set_writer_pragmas(conn)
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _fresh(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0

    def _move_aside(self, exc: Exception) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        reason = "newer" if isinstance(exc, StoreError) else "corrupt"
        target = self.path.with_name(f"{self.path.name}.{reason}-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.{reason}-{stamp}.{n}")
            n += 1
        for suffix in ("-wal", "-shm"):  # the WAL belongs with its file; keep them together
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        self.path.rename(target)
        self.counters.corrupt_moved += 1
        return target

    def _load_ids(self) -> None:
        """Continue the numbering: an id is never reused, even after retention."""
        conn = self.conn
        ev = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        inc = conn.execute("SELECT MAX(id) FROM incidents").fetchone()[0] or 0
        mem = conn.execute("SELECT MAX(event_id) FROM incident_events").fetchone()[0] or 0
        self.next_event_id = max(self.next_event_id, ev + 1, mem + 1)
        self.next_incident_id = max(self.next_incident_id, inc + 1)

    def incident_ids(self):
        """An id iterator for the correlator that stays in step with the store."""
        while True:
            with self._lock:
                iid = self.next_incident_id
                self.next_incident_id += 1
            yield iid

    # --- the sink -----------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        with self._lock:
            if self.conn is None:
                self._reopen()  # before numbering: the file's ids decide what is free
            if event.id is None or event.id < self._id_floor:
                self._renumber(event)
            eid, iid = event.id, event.incident_id
            if eid >= self.next_event_id:
                self.next_event_id = eid + 1
            vm = event.fields.get("vm")
            vm = vm_name(vm) if vm else self._vm_by_incident.get(iid)
            rows = self._rows
            if not rows:
                self._batch_started = self.clock()
                self._wake.set()  # the flusher sleeps until a batch starts
            rows.append(self._event_row(event, vm))
            if iid is not None:
                self._row_incident[eid] = iid
            # full, or due (_batch_due(), inline: rows are pending)
            if len(rows) >= self.batch_events or \
                    self.clock() - self._batch_started >= self.batch_s:
                self._commit(force=False)

    def _renumber(self, event: Event) -> None:
        """An id below what the store held at open would overwrite a stored event: the
        pipeline was not started at ``next_event_id``. Keep the data, say so once."""
        if event.id is not None:
            self._renumber_alert(event.id)
        event.id = self.next_event_id

    def _renumber_row(self, row: tuple) -> tuple:
        """A row numbered while the file could not be opened, now that its ids are
        known."""
        head, tail = row
        old = head[0]
        if old >= self._id_floor:
            return row
        self._renumber_alert(old)
        new = self.next_event_id
        self.next_event_id += 1
        return (new, *head[1:]), tail

    def _renumber_alert(self, old: int) -> None:
        if not self._renumbered:
            self._renumbered = True
            self._alert("store_id_collision", f"event id {old} is already used in the "
                        f"store (ids continue at {self._id_floor}); start the pipeline at "
                        "store.next_event_id. Renumbering.")

    def save_incident(self, incident: Incident) -> None:
        """An incident opened or changed (the correlator's ``on_change``): written with
        the next batch, as it is at commit time (saved ten times in one batch, written
        once)."""
        if self._incidents.get(incident.id) is incident:
            return  # pending already (a storm saves it per event): the lock is not needed
        with self._lock:
            if incident.id is None:
                incident.id = self.next_incident_id
            self.next_incident_id = max(self.next_incident_id, incident.id + 1)
            if not self._rows and not self._incidents:
                self._batch_started = self.clock()
                self._wake.set()  # the flusher sleeps until a batch starts
            self._incidents[incident.id] = incident

    def count_incident(self, incident: Incident) -> None:
        """An incident gained an event that changed nothing but its counts and times (the
        correlator's ``on_count``: a storm's repeats). That event's row names the
        incident, so it needs no membership row; the incident's row is rewritten with
        the counted ones every INCIDENT_REWRITE_S (or with its next real change)."""
        if self._incidents.get(incident.id) is incident:
            return  # pending in full already: that write books it (see save_incident)
        with self._lock:
            iid, n = incident.id, len(incident.event_ids)
            written = self._members_written
            if written.get(iid) == n - 1:  # all before it booked: so is this one, by its row
                written[iid] = n
            if not self._rows and not self._incidents and not self._counted:
                self._batch_started = self.clock()
                self._wake.set()
            self._counted[iid] = incident

    def flush(self) -> None:
        with self._lock:
            self._commit()
            self._maybe_retain()

    def poll(self) -> None:
        """Commit a batch that is old enough; run retention when due; retry a lost store."""
        with self._lock:
            if self._batch_due():
                self._commit(force=False)
                if self._incidents or self._counted:  # rewrites held back: come back
                    self._batch_started = self.clock()
                    self._wake.set()
                # a quiet tail (a storm fills batches by size first): the writer is
                # idle, waiting for its answer is short and makes "committed" true now
                self._collect(keep=0)
            else:
                self._collect(keep=MAX_IN_FLIGHT)  # book what was answered meanwhile
            self._maybe_retain()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._commit()
            if self._writer is not None:
                self.writer_waited_s += self._writer.waited_s
                self._writer.close()  # end of file: it closes its connection and exits
                self._writer = None
            if self.conn is not None:
                try:
                    self.conn.execute("PRAGMA optimize")
                    self.conn.close()
                except sqlite3.Error as exc:
                    log.warning("closing the store: %s", exc)
                self.conn = None

    def _flusher(self) -> None:
        # Idle, it sleeps without a timeout (an idle daemon must cost no CPU); once a
        # batch starts it commits it batch_ms later. Retention runs from poll() on the
        # daemon's own periodic tick.
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(self.batch_s):
                return
            self._wake.clear()
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one failure
                log.exception("store flusher")

    def _batch_due(self) -> bool:
        pending = self._rows or self._incidents or self._counted
        return bool(pending) and self.clock() - self._batch_started >= self.batch_s

    # --- commit -------------------------------------------------------------------------------
    def _commit(self, force: bool = True) -> None:
        """Write what is pending. ``force=False`` (a batch filled up or came due) may hold
        back rewrites of open incidents (see _due_incidents); flush/close write all."""
        rows, incidents, row_incident = self._rows, self._incidents, self._row_incident
        now = self.clock()
        counted = self._counted_due(incidents, now, force)
        if not rows and not incidents and not counted:
            if force:
                self._collect(keep=0)
            return
        self._rows, self._row_incident = [], {}
        members = self._pending_members(incidents, row_incident)  # of all pending incidents
        if force:
            due, self._incidents = incidents, {}
        else:
            due = self._due_incidents(incidents, now)
            for iid in due:  # the others stay pending (held back)
                del incidents[iid]
        due.update(counted)
        batch = self._prepare(rows, members, due, now)
        batch.full = not force and len(rows) >= self.batch_events
        self._store_batch(batch)
        if force:
            self._collect(keep=0)  # flush, close, retention: what was handed over is in

    def _counted_due(self, incidents: dict[int, Incident], now: float, force: bool
                     ) -> dict[int, Incident]:
        """The incidents that only counted (count_incident) to rewrite now: all of them,
        every INCIDENT_REWRITE_S and at flush/close; one also pending in full goes (or
        waits) with that."""
        counted = self._counted
        if not counted or (not force and now < self._next_counted_s):
            return {}
        self._next_counted_s = now + INCIDENT_REWRITE_S
        self._counted = {}
        return {iid: inc for iid, inc in counted.items() if iid not in incidents}

    def _due_incidents(self, incidents: dict[int, Incident], now: float) -> dict[int, Incident]:
        """The incidents to write now. In a storm every event changes its incident (last
        time, event count), so every batch would rewrite every open incident: about one
        incident row per event, as costly as the event row. An incident already written
        whose state (_state_of) did not change is rewritten at most every
        INCIDENT_REWRITE_S; new, closed, merged or changed ones go at once. So an open
        incident's row may lag its committed events by that long (a kill -9 then leaves
        its last time and count that old; the events themselves name their incident)."""
        due, written = {}, self._incident_written
        for iid, inc in incidents.items():
            last = written.get(iid)
            if last is None or inc.closed or now - last[0] >= INCIDENT_REWRITE_S or \
                    last[1] != (_STATE_FIELDS(inc), len(inc.disagreements)):  # _state_of()
                due[iid] = inc
        return due

    def _prepare(self, rows: list[tuple], members: list[tuple[int, int]],
                 due: dict[int, Incident], now: float) -> "_Batch":
        inc_rows = [incident_row(i) for i in due.values()]
        vms = {iid: name for iid, i in due.items() if (name := vm_name(i.vm))}
        closed = [iid for iid, i in due.items() if i.closed]
        # booked as written now, not when the writer answers: the next batch must not
        # send them again (a batch that fails loses its events: their members are moot)
        self._incident_written.update((iid, (now, _state_of(i))) for iid, i in due.items()
                                      if not i.closed)
        return _Batch(rows, inc_rows, members, vms, closed)

    def _pending_members(self, incidents: dict[int, Incident], row_incident: dict[int, int]
                         ) -> list[tuple[int, int]]:
        """(incident, event) pairs to add to incident_events: only event ids not written
        yet (correlators append; rewriting a storm incident's whole list each time is
        O(n^2)), and only those the event row does not already tell: an event in this
        batch whose incident_id is the incident. What remains are events that joined
        through a merge or a predictive-failure incident. Books them as written (see
        _prepare)."""
        out = []
        written, named = self._members_written, row_incident.get
        for iid, inc in incidents.items():
            ids = inc.event_ids
            n = len(ids)
            done = written.get(iid, 0)
            if done != n:  # (a plain loop: mostly one new id, a comprehension costs more)
                for eid in ids[done if done < n else 0:n]:
                    if named(eid) != iid:
                        out.append((iid, eid))
                written[iid] = n
        return out

    def _store_batch(self, batch: "_Batch") -> None:
        if self.conn is None:
            self._collect(keep=0)  # what is in flight fails or lands before the reopen
            if not self._reopen():
                self._lose(batch.n_rows, self._failing or "store unavailable")
                return
        if self.writer == "process" and self._writer is None:
            self._point_writer()  # started with the first batch: not on the way to READY
        if self._writer is not None:
            self._send(batch)
            return
        try:
            self._write(batch)
        except (sqlite3.Error, OSError) as exc:
            self._write_failed(_failure_reason(exc), isinstance(exc, sqlite3.DatabaseError)
                               and _is_corruption(exc), batch.n_rows)
            return
        self._written(batch)

    def _write(self, b: "_Batch") -> None:
        write_batch(self.conn, b.rows, b.incident_rows, b.members, b.vms)

    # --- the writer process -------------------------------------------------------------------
    def _point_writer(self) -> None:
        """Start the writer process if need be and (re)point it at the file just opened.
        A writer that cannot start leaves the store writing inline, as before."""
        try:
            if self._writer is None:
                self._writer = WriterProcess()
            self._writer.open(str(self.path))
        except OSError as exc:
            log.error("store writer process unavailable, writing inline: %s", exc)
            if self._writer is not None:
                self._writer.close(timeout=5)
            self._writer, self.writer = None, "inline"

    def _send(self, batch: "_Batch") -> None:
        try:
            self._writer.send_batch(batch.rows, batch.incident_rows, batch.members, batch.vms,
                                    batch.full)
        except OSError:  # the child is gone (killed, crashed): its pipe broke
            self._in_flight.append(batch)
            self._collect(keep=0)
            return
        batch.shed()
        self._in_flight.append(batch)
        self._collect(keep=MAX_IN_FLIGHT - 1)  # blocks only when that many are unanswered

    def _collect(self, keep: int) -> None:
        """Book the writer's answers in order: written, or lost with the reason; block
        until at most ``keep`` batches are unanswered. A writer that died loses what it
        had not answered (counted) and is started again."""
        if self._writer is None:
            return
        replies, alive = self._writer.replies(keep)
        for reply in replies:
            batch = self._in_flight.popleft()
            if reply[0] == "ok":
                self._written(batch)
            else:
                self._write_failed(reply[1], reply[2], batch.n_rows)
        if not alive:
            self._writer_died()

    def _writer_died(self) -> None:
        """Lose (count) what it had not answered; start another, or write inline from
        now on if this one never answered anything (it cannot start here at all)."""
        for batch in self._in_flight:
            self._lose(batch.n_rows, "store writer process exited")
        self._in_flight.clear()
        dead, self._writer = self._writer, None
        self.writer_waited_s += dead.waited_s
        dead.close(timeout=5)
        self.counters.writer_restarts += 1
        if not dead.answered:
            log.error("store writer process exited without writing anything: writing inline")
            self.writer = "inline"
        elif self.conn is not None:
            self._point_writer()

    def _written(self, b: "_Batch") -> None:
        c = self.counters
        c.commits += 1
        c.committed_events += b.n_rows
        c.committed_incidents += b.n_incidents
        if b.last_id > c.last_committed_event_id:
            c.last_committed_event_id = b.last_id
        self._vm_by_incident.update(b.vms)
        for iid in b.closed:  # no more members will come: keep the bookkeeping bounded
            self._members_written.pop(iid, None)
            self._vm_by_incident.pop(iid, None)
            self._incident_written.pop(iid, None)
        if self._failing is not None:
            self._alert("store_resumed", f"store writes resumed after: {self._failing}; "
                        f"{self._lost_since_alert} event(s) lost meanwhile")
            self._failing, self._lost_since_alert = None, 0

    def _write_failed(self, reason: str, corrupt: bool, n: int) -> None:
        self.counters.write_errors += 1
        self._lose(n, reason)
        if corrupt:
            # the file went bad under us: reopen (integrity check moves it aside) later
            _close_quietly(self.conn)
            self.conn = None
            self._next_reopen = self.clock()

    def _lose(self, n: int, reason: str) -> None:
        self.counters.lost_events += n
        self._lost_since_alert += n
        if self._failing is None:
            self._failing = reason
            self._alert("store_write_failed", f"store {self.path}: {reason}; events are being "
                        f"lost (counted in lost_events) until writes succeed again")

    def _reopen(self) -> bool:
        if self.clock() < self._next_reopen:
            return False
        self._open()
        return self.conn is not None

    # --- retention ------------------------------------------------------------------------------
    def _maybe_retain(self) -> None:
        if self.clock() < self._next_retention or self.conn is None:
            return
        self._next_retention = self.clock() + self.retention_interval_s
        try:
            self.retain()
        except (sqlite3.Error, OSError) as exc:
            log.warning("store retention failed: %s", exc)

    def retain(self, now_ns: int | None = None) -> int:
        """Delete events past ``retention_days`` and the oldest beyond ``max_size_mb``;
        returns how many events went. Run periodically, never per insert."""
        with self._lock:
            self._commit()  # retention sees everything handled so far
            return self._retain(now_ns)

    def _retain(self, now_ns: int | None) -> int:
        if self.conn is None:
            return 0
        deleted = 0
        if self.retention_ns:
            cutoff = (now_ns or time.time_ns()) - self.retention_ns
            deleted += self._delete_events(
                "SELECT id FROM events WHERE wall_ns < ? LIMIT ?", (cutoff,))
            self._exec_tx("DELETE FROM incidents WHERE last_wall_ns < ? AND closed = 1",
                          (cutoff,))
        if self.max_bytes:
            deleted += self._trim_to_size()
        if deleted:
            self.conn.execute("PRAGMA incremental_vacuum")
        self.counters.retention_deleted += deleted
        return deleted

    def used_bytes(self) -> int:
        conn = self.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * conn.execute("PRAGMA page_size").fetchone()[0]

    def _trim_to_size(self) -> int:
        """Delete the oldest events until the used pages fit in 90% of the limit (the
        margin keeps the next run from firing at once)."""
        deleted = 0
        for _ in range(4):  # bytes per event is an estimate: converge in a few rounds
            used = self.used_bytes()
            if used <= self.max_bytes:
                break
            count = self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
            if not count:
                break
            excess = used - int(self.max_bytes * 0.9)
            n = min(count, math.ceil(excess / (used / count)))
            deleted += self._delete_events("SELECT id FROM events ORDER BY id LIMIT ?", (), n)
        if deleted:
            oldest = self.conn.execute("SELECT MIN(wall_ns) FROM events").fetchone()[0]
            if oldest is not None:
                self._exec_tx("DELETE FROM incidents WHERE last_wall_ns < ? AND closed = 1",
                              (oldest,))
        return deleted

    def _delete_events(self, select: str, args: tuple, limit: int | None = None) -> int:
        """Delete what ``select`` (ending in LIMIT ?) picks, in chunks, each its own
        transaction so the writer pauses briefly; the rollup is kept in step."""
        total = 0
        while limit is None or total < limit:
            chunk = RETENTION_CHUNK if limit is None else min(RETENTION_CHUNK, limit - total)
            n = self._delete_chunk(select, (*args, chunk))
            total += n
            if n < chunk:
                break
        return total

    def _delete_chunk(self, select: str, args: tuple) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM doomed")
            conn.execute(f"INSERT INTO doomed {select}", args)
            gone = conn.execute(
                f"SELECT wall_ns / {MINUTE_NS}, kind, coalesce(sev_rank, -1), coalesce(cpu, -1), "
                "coalesce(location, ''), coalesce(pfn, -1), count(*) FROM events "
                "WHERE id IN (SELECT id FROM doomed) GROUP BY 1, 2, 3, 4, 5, 6").fetchall()
            conn.executemany("UPDATE event_counts SET n = n - ? WHERE minute = ? AND kind = ? "
                             "AND sev_rank = ? AND cpu = ? AND location = ? AND pfn = ?",
                             [(g[6], *g[:6]) for g in gone])
            conn.execute("DELETE FROM event_counts WHERE n <= 0")
            conn.execute("DELETE FROM incident_events WHERE event_id IN (SELECT id FROM doomed)")
            n = conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM doomed)").rowcount
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return n

    def _exec_tx(self, sql: str, args: tuple) -> None:
        with _transaction(self.conn):
            self.conn.execute(sql, args)

    # --- alerts and status --------------------------------------------------------------------
    def _alert(self, kind: str, message: str) -> None:
        alert = {"wall_ns": time.time_ns(), "kind": kind, "message": message}
        self.alerts.append(alert)
        (log.info if kind == "store_resumed" else log.error)("%s", message)
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception:  # noqa: BLE001 - an alert hook must not break the store
                log.exception("store alert hook failed")

    def status(self) -> dict:
        """Counters and state for the status socket / metrics."""
        c = self.counters
        return {"path": str(self.path), "available": self.conn is not None,
                "failing": self._failing, "pending_events": len(self._rows),
                "writer": "process" if self._writer is not None else "inline",
                "writer_pid": self._writer.pid if self._writer is not None else None,
                "batches_in_flight": len(self._in_flight),
                "next_event_id": self.next_event_id, "next_incident_id": self.next_incident_id,
                **{k: getattr(c, k) for k in c.__dataclass_fields__},
                "alerts": list(self.alerts)[-10:]}


def store_path(cfg: Any) -> Path:
    """``store.path``, or ``rasd.db`` in ``daemon.state_dir`` when it is empty."""
    path = cfg["store"]["path"]
    return Path(path) if path else Path(cfg["daemon"]["state_dir"]) / "rasd.db"


_is_corruption, _failure_reason, _rollback = is_corruption, failure_reason, rollback


def _close_quietly(conn: sqlite3.Connection | None) -> None:
    try:
        if conn is not None:
            conn.close()
    except sqlite3.Error:
        pass


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            _rollback(self.conn)


# --- the reader -------------------------------------------------------------------------------

@dataclass
class EventQuery:
    since_ns: int | None = None
    until_ns: int | None = None
    kinds: Iterable[str] = ()
    min_severity: str | None = None
    vm: str | None = None
    limit: int | None = None
    newest_first: bool = False


class StoreReader:
    """Read-only access for rasdctl: ``mode=ro``, safe while the daemon writes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        try:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            self.conn.row_factory = sqlite3.Row
            version = schema_version(self.conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store {self.path}: {exc}") from None
        if version != SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema v{version}; this rasdctl reads "
                             f"v{SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def _all(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path}: {exc}") from None

    def _iter(self, sql: str, args: Iterable = ()) -> Iterator[sqlite3.Row]:
        """Rows as they come: `rasdctl events --json` on a million events streams."""
        try:
            yield from self.conn.execute(sql, tuple(args))
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path}: {exc}") from None

    def events(self, q: EventQuery) -> Iterable[sqlite3.Row]:
        where, args = _time_where("wall_ns", q.since_ns, q.until_ns)
        kinds = list(q.kinds)
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if q.min_severity is not None:
            where.append("sev_rank >= ?")
            args.append(SEVERITY_RANK[q.min_severity])
        if q.vm is not None:
            where.append("vm = ?")
            args.append(q.vm)
        order = "DESC" if q.newest_first else "ASC"
        # SQLite walks the time index to avoid a sort unless told otherwise; for a rare
        # type or severity, its own index and a small sort are far cheaper (+wall_ns)
        wall = "+wall_ns" if self._selective(kinds, q.min_severity, q.vm) else "wall_ns"
        sql = (f"SELECT * FROM events {_where_sql(where)} ORDER BY {wall} {order}, id {order}"
               + (" LIMIT ?" if q.limit is not None else ""))
        args += [q.limit] if q.limit is not None else []
        if q.newest_first:
            return self._all(sql, args)[::-1]
        return self._iter(sql, args)

    def _selective(self, kinds: list[str], min_severity: str | None, vm: str | None) -> bool:
        """Whether the filters keep under a tenth of the events (the rollup knows)."""
        if vm is not None:
            return True  # few events carry a VM
        if not kinds and min_severity is None:
            return False
        where, args = [], []
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if min_severity is not None:
            where.append("sev_rank >= ?")
            args.append(SEVERITY_RANK[min_severity])
        total, picked = self._all("SELECT SUM(n), SUM(CASE WHEN " + " AND ".join(where) +
                                  " THEN n ELSE 0 END) FROM event_counts", args)[0]
        return not total or (picked or 0) * 10 < total

    def incidents(self, since_ns: int | None = None, until_ns: int | None = None,
                  min_severity: str | None = None, vm: str | None = None,
                  open_only: bool = False) -> list[sqlite3.Row]:
        # an incident is in [since, until) when it overlaps it
        where, args = [], []
        if since_ns is not None:
            where.append("last_wall_ns >= ?")
            args.append(since_ns)
        if until_ns is not None:
            where.append("first_wall_ns < ?")
            args.append(until_ns)
        if min_severity is not None:
            where.append("sev_rank >= ?")
            args.append(SEVERITY_RANK[min_severity])
        if vm is not None:
            where.append("vm_name = ?")
            args.append(vm)
        if open_only:
            where.append("closed = 0")
        return self._all(f"SELECT * FROM incidents {_where_sql(where)} "
                         "ORDER BY first_wall_ns, id", args)

    def incident(self, iid: int) -> sqlite3.Row | None:
        rows = self._all("SELECT * FROM incidents WHERE id = ?", (iid,))
        return rows[0] if rows else None

    def incident_events(self, iid: int) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM events WHERE incident_id = ? OR id IN "
                         "(SELECT event_id FROM incident_events WHERE incident_id = ?) "
                         "ORDER BY wall_ns, id", (iid, iid))

    def event(self, eid: int) -> sqlite3.Row | None:
        rows = self._all("SELECT * FROM events WHERE id = ?", (eid,))
        return rows[0] if rows else None

    def decoded(self, row: sqlite3.Row) -> dict:
        """An event row's decoded form, event.to_dict() without raw: from its columns and
        the ``decoded`` JSON (see event_decoded), its CPER record decoded from the raw
        column where the store kept only the bytes."""
        task = None if row["comm"] is None and row["tid"] is None else \
            {"tgid": row["tgid"], "tid": row["tid"], "comm": row["comm"]}
        d = {"id": row["id"], "kind": row["kind"], "source": row["source"],
             "wall_ns": row["wall_ns"], "mono_ns": row["mono_ns"], "cpu": row["cpu"],
             "task": task, "fields": {}, "truncated": False,
             "decode_error": row["decode_error"]}
        d.update(json.loads(row["decoded"]))  # rows of an older rasd hold all of it: the same
        for name in ("severity", "containment", "reason", "incident_id"):
            if row[name] is not None:
                d.setdefault(name, row[name])
        if d.get("cper") == CPER_FROM_RAW:
            d["cper"] = json.loads(self._cper_json(bytes(row["raw"] or b"")))
        return d

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def _cper_json(raw: bytes) -> str:
        """The JSON the writer would have stored (``events --json`` over a storm decodes
        each distinct block once)."""
        return _dumps(cper.try_decode(raw).to_dict())

    def summary(self, since_ns: int | None = None, until_ns: int | None = None) -> dict:
        """Event counts by type, severity, CPU, memory location, page and VM.

        Whole minutes inside the range come from the rollup; the ragged minutes at
        either edge are counted from the events themselves, so the answer is exact."""
        counts: Counter = Counter()
        for lo, hi, exact in _split_minutes(since_ns, until_ns):
            counts.update(self._count_exact(lo, hi) if exact else self._count_rollup(lo, hi))
        return _summary_dict(counts, self._count_vm(since_ns, until_ns))

    def _count_rollup(self, lo_min: int | None, hi_min: int | None) -> Counter:
        where, args = _time_where("minute", lo_min, hi_min)
        rows = self._all("SELECT kind, sev_rank, cpu, location, pfn, SUM(n) FROM event_counts "
                         f"{_where_sql(where)} GROUP BY 1, 2, 3, 4, 5", args)
        return Counter({tuple(r[:5]): r[5] for r in rows})

    def _count_exact(self, lo_ns: int | None, hi_ns: int | None) -> Counter:
        where, args = _time_where("wall_ns", lo_ns, hi_ns)
        rows = self._all("SELECT kind, coalesce(sev_rank, -1), coalesce(cpu, -1), "
                         "coalesce(location, ''), coalesce(pfn, -1), count(*) FROM events "
                         f"{_where_sql(where)} GROUP BY 1, 2, 3, 4, 5", args)
        return Counter({tuple(r[:5]): r[5] for r in rows})

    def _count_vm(self, since_ns: int | None, until_ns: int | None) -> dict[str, int]:
        where, args = _time_where("wall_ns", since_ns, until_ns)
        where.append("vm IS NOT NULL")
        rows = self._all(f"SELECT vm, count(*) FROM events {_where_sql(where)} GROUP BY vm "
                         "ORDER BY 2 DESC, 1", args)
        return {r[0]: r[1] for r in rows}

    def info(self) -> dict:
        ev = self._all("SELECT count(*), MIN(wall_ns), MAX(wall_ns) FROM events")[0]
        inc = self._all("SELECT count(*), SUM(closed = 0) FROM incidents")[0]
        return {"events": ev[0], "first_wall_ns": ev[1], "last_wall_ns": ev[2],
                "incidents": inc[0], "open_incidents": inc[1] or 0}


def _time_where(column: str, lo: int | None, hi: int | None) -> tuple[list[str], list]:
    where, args = [], []
    if lo is not None:
        where.append(f"{column} >= ?")
        args.append(lo)
    if hi is not None:
        where.append(f"{column} < ?")
        args.append(hi)
    return where, args


def _where_sql(where: list[str]) -> str:
    return ("WHERE " + " AND ".join(where)) if where else ""


def _split_minutes(lo: int | None, hi: int | None) -> list[tuple[int | None, int | None, bool]]:
    """[lo, hi) as (exact ns head, whole-minute middle, exact ns tail) pieces."""
    m_lo = None if lo is None else -(-lo // MINUTE_NS)  # first whole minute at or after lo
    m_hi = None if hi is None else hi // MINUTE_NS  # minutes before this one are whole
    if m_lo is not None and m_hi is not None and m_lo >= m_hi:
        return [(lo, hi, True)]
    parts: list[tuple[int | None, int | None, bool]] = [(m_lo, m_hi, False)]
    if lo is not None and lo < m_lo * MINUTE_NS:
        parts.append((lo, m_lo * MINUTE_NS, True))
    if hi is not None and m_hi * MINUTE_NS < hi:
        parts.append((m_hi * MINUTE_NS, hi, True))
    return parts


def _summary_dict(counts: Counter, by_vm: dict[str, int]) -> dict:
    from ..events import SEVERITY_ORDER
    dims: list[Counter] = [Counter() for _ in range(5)]
    for key, n in counts.items():
        for i, value in enumerate(key):
            dims[i][value] += n
    by_kind, by_sev, by_cpu, by_loc, by_pfn = dims

    def ranked(c: Counter, drop: Any) -> list[list]:
        return [[k, n] for k, n in sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0])))
                if k != drop and n]

    severities = [[SEVERITY_ORDER[r] if 0 <= r < len(SEVERITY_ORDER) else "unclassified", n]
                  for r, n in sorted(by_sev.items(), reverse=True) if n]
    return {"total": sum(counts.values()), "by_type": ranked(by_kind, None),
            "by_severity": severities, "by_cpu": ranked(by_cpu, -1),
            "by_location": ranked(by_loc, ""), "by_vm": [[k, n] for k, n in by_vm.items()],
            "top_pages": ranked(by_pfn, -1)[:20]}
