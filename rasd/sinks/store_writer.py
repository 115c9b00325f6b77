"""The store's SQL writes, and the writer process that runs them beside the daemon.

A storm's cost splits in two: Python work per event (decode, classify, correlate,
turn the event into a row) and SQLite work per row (B-tree inserts into the events
table, its indexes and the rollup). On one core they add up; SQLite releases the GIL
only per row, so a writer *thread* would stall on the GIL once per row. A writer
*process* runs the SQLite half on the second core: the daemon (rasd.sinks.store.Store)
keeps every decision — ids, batching, incident bookkeeping, retention, alerts — and
hands each batch, already as rows, to this process, which writes it in one
transaction and answers ``ok`` or why it failed.

Why it keeps the store's promises:

- committed means committed by this process (the daemon counts a batch as written
  only on its ``ok``); its connection is WAL, synchronous=NORMAL like the daemon's;
- ``kill -9`` of the daemon: this process stops at once, committing nothing more (see
  parent_watch: what it holds was never reported committed), closes and exits;
  kill -9 of both loses only what was not committed, as before;
- memory stays bounded: the daemon keeps at most ``MAX_IN_FLIGHT`` batches
  unanswered and blocks (backpressure to the ring buffer) beyond that;
- a failed write (disk full, corruption) comes back as the same reason text the
  inline writer would give, and the daemon counts the loss and alerts as before.

Protocol on stdin/stdout: frames of a 1-byte codec tag (``M`` marshal, ``P``
pickle for values marshal cannot carry), a 4-byte little-endian length and the
payload. Requests: ``("open", path)``, ``("batch", rows, incident_rows, members,
vms, full)`` (rows as (head, tail), see ROW_HEAD; ``full``: the daemon sent it because
it filled up; may be left out).
Replies, one per batch, in order: ``("ok",)`` or ``("error", reason, corrupt)``.

    python -m rasd.sinks.store_writer PID  # started by Store(..., writer="process")
"""

from __future__ import annotations

import errno
import fcntl
import functools
import marshal
import os
import pickle
import queue
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from itertools import chain
from typing import Any, BinaryIO

MINUTE_NS = 60 * 10**9
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 11, 13, 26
# Batches sent and not yet answered, at most: bounds memory in the writer, which reads
# them ahead (24 x 4,000 rows: ~+40 MB; the daemon keeps only their counts). Room for a
# group being written (GROUP_BATCHES), a WAL checkpoint's fsync, and the two processes
# taking turns on a 2-CPU machine. bench/store.py, 1,000,000-event storm, events/s
# wall: 12 x 1,000 rows 36.7k, 32 x 1,000 41.8k-47.7k, 64 x 1,000 48.3k-48.9k,
# 16 x 4,000 52.3k-52.6k, 24 x 4,000 52.2k-55.5k (larger batches: fewer, larger
# transactions and frames on both sides).
MAX_IN_FLIGHT = 24
PIPE_BYTES = 8 << 20  # the request pipe's size, when allowed (see _grow_pipe)
_FRAME = struct.Struct("<cI")

# An event row is (head, tail): what each event has of its own, then what a storm's
# events of one record share (the daemon makes that tuple once per record, see
# store.EventRows). The INSERT takes the two flattened, in this column order.
ROW_HEAD = ("id", "wall_ns", "mono_ns", "cpu", "tgid", "tid", "comm", "incident_id", "vm")
ROW_TAIL = ("kind", "source", "severity", "sev_rank", "containment", "reason", "pfn",
            "phys_addr", "location", "decoded", "raw", "decode_error")
EVENT_COLUMNS = ROW_HEAD + ROW_TAIL
INCIDENT_COLUMNS = ("id", "kind", "key", "first_wall_ns", "last_wall_ns", "severity", "sev_rank",
                    "containment", "summary", "pfn", "phys_addr", "location", "cpu", "mpidr",
                    "vm", "vm_name", "blast_radius", "disagreements", "event_kinds",
                    "event_count", "closed", "merged_into", "esr", "aet", "sections")
UPSERT_INCIDENT = (f"INSERT OR REPLACE INTO incidents ({', '.join(INCIDENT_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(INCIDENT_COLUMNS))})")
ROLLUP_ADD = ("INSERT INTO event_counts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
              "SET n = n + excluded.n")
# Python's sqlite3 binds int, float, str and bytearray directly; any other value (None,
# bytes: two or three per event row) goes through its adapter lookup, which formats and
# clears an AttributeError each time unless an adapter is registered for the type. These
# give SQLite exactly what it got before (bytes(b) is b; NULL for None), without that.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), {}.get)  # any value -> None
# what every writing connection sets (journal_mode=WAL is kept in the file itself)
WRITER_PRAGMAS = ("synchronous = NORMAL", "temp_store = MEMORY", "journal_size_limit = 67108864",
                  "cache_size = -16384")
WAL_CHECKPOINT_BYTES = 32 << 20  # checkpoint at a 32 MB WAL: fewer checkpoint fsyncs


def set_writer_pragmas(conn: sqlite3.Connection) -> None:
    """WRITER_PRAGMAS, and wal_autocheckpoint (a page count) for WAL_CHECKPOINT_BYTES at
    this file's page size (a new store's pages are larger than an older one's)."""
    for pragma in WRITER_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page}")


def rollup_counts(rows: list) -> Counter:
    """Rows per rollup key: (minute, kind, sev_rank, cpu, location, pfn) of an event row,
    NULL as -1 / '' (event_counts' primary key)."""
    # head: id, wall_ns, mono_ns, cpu...; tail: kind, source, severity, sev_rank,
    # containment, reason, pfn, phys_addr, location...
    return Counter([(h[1] // MINUTE_NS, t[0], -1 if t[3] is None else t[3],
                     -1 if h[3] is None else h[3], t[8] or "", -1 if t[6] is None else t[6])
                    for h, t in rows])


def write_batch(conn: sqlite3.Connection, rows: list, incident_rows: list, members: list,
                vms: dict, before_commit: Any = None) -> None:
    """One batch, one transaction: events, their rollup counts, incidents, memberships.
    ``before_commit()`` may still call it off (by raising: the batch is rolled back)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        insert_events(conn, rows)
        counts = rollup_counts(rows)
        conn.executemany(ROLLUP_ADD, [(*k, n) for k, n in counts.items()])
        conn.executemany(UPSERT_INCIDENT, incident_rows)
        conn.executemany("INSERT OR IGNORE INTO incident_events VALUES (?, ?)", members)
        # Attribution names a VM on the incident, often after its first events were
        # handled: give those events the name too, so `events --vm` finds them.
        # (Cheap: the partial index on incident_id, and few incidents carry a VM.)
        conn.executemany("UPDATE events SET vm = ? WHERE incident_id = ? AND vm IS NULL",
                         [(name, iid) for iid, name in vms.items()])
        if before_commit is not None:
            before_commit()
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def insert_events(conn: sqlite3.Connection, rows: list) -> None:
    """INSERT OR REPLACE of the event rows (EVENT_COLUMNS), cheaper than one such
    statement per row (the per-row SQLite work is most of the writer's):

    - a plain INSERT first: ids are new (the daemon numbers on from the file's
      highest), and SQLite's OR REPLACE path costs markedly more per row.
      A row whose id is taken (not expected) fails it; all rows then go again with OR
      REPLACE, which leaves what OR REPLACE alone leaves (the rows the plain try
      inserted are replaced by themselves);
    - INSERT_CHUNKS[0] rows per statement: one statement's set-up and halt serve them
      all."""
    try:
        _insert_chunked(conn, rows, "INSERT")
    except sqlite3.IntegrityError:
        _insert_chunked(conn, rows, "INSERT OR REPLACE")


INSERT_CHUNKS = (100, 10, 1)  # rows per statement: as many of the largest as fit, then less


def _insert_chunked(conn: sqlite3.Connection, rows: list, verb: str) -> None:
    start = 0
    for size in INSERT_CHUNKS:
        end = start + (len(rows) - start) // size * size
        if end > start:
            # each row's head and tail, flattened in C: (head, tail) -> head..., tail...
            conn.executemany(_insert_sql(verb, size), [
                list(chain.from_iterable(chain.from_iterable(rows[i:i + size])))
                for i in range(start, end, size)])
            start = end


@functools.lru_cache(maxsize=None)
def _insert_sql(verb: str, rows: int) -> str:
    one = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return f"{verb} INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([one] * rows)}"


def rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:  # SQLite may have rolled back already (SQLITE_FULL does)
        pass


def is_corruption(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text or "integrity_check" in text


def failure_reason(exc: BaseException) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == SQLITE_FULL or \
            isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full"
    return f"write failed: {type(exc).__name__}: {exc}"


# --- framing ------------------------------------------------------------------------------

def encode_frame(message: tuple) -> bytes:
    try:
        tag, payload = b"M", marshal.dumps(message)  # about twice as fast as pickle here
    except ValueError:  # a value marshal does not know (never in rows rasd builds)
        tag, payload = b"P", pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(tag, len(payload)) + payload


def read_frame(stream: BinaryIO) -> tuple | None:
    """The next message, or None at end of file."""
    head = _read_exactly(stream, _FRAME.size)
    if head is None:
        return None
    tag, length = _FRAME.unpack(head)
    payload = _read_exactly(stream, length)
    if payload is None:
        return None  # cut short: the sender died mid-frame; that batch was never committed
    return marshal.loads(payload) if tag == b"M" else pickle.loads(payload)


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --- the child ----------------------------------------------------------------------------

class Orphaned(Exception):
    """The daemon that started this writer is gone."""


def parent_watch(parent: int) -> Any:
    """A check that raises Orphaned once ``parent`` is no longer this process' parent.

    A daemon killed with SIGKILL leaves batches in the pipe that it never saw
    committed; a restarted daemon numbers its events from the highest id in the file.
    An orphan that went on writing would race it for the same ids. So the orphan
    stops: before each batch and again right before COMMIT (the restart's own open
    takes far longer than a COMMIT). What it drops was never reported committed."""
    def check() -> None:
        if os.getppid() != parent:
            raise Orphaned()
    return check


def serve(requests: BinaryIO, replies: BinaryIO, parent: int | None = None) -> None:
    """Run requests until end of file (the daemon closed the pipe, or died).

    Batches are written a group at a time, in one transaction (see _group). Each batch
    still gets its own answer, once its group committed."""
    conn: sqlite3.Connection | None = None
    queue = _Requests(requests)
    watch = parent_watch(os.getppid() if parent is None else parent)
    try:
        while (message := queue.next()) is not None:
            watch()
            if message[0] == "open":
                conn = _reopen(conn, message[1])
            elif message[0] == "batch":
                group = _group(queue, message)
                reply = encode_frame(_run_batch(conn, _merge(group), watch))
                replies.write(reply * len(group))
                replies.flush()
    except Orphaned:
        pass  # the daemon died: stop, writing nothing more (see parent_watch)
    finally:
        if conn is not None:
            conn.close()


GROUP_ROWS = 20_000  # rows per grouped transaction, at most (plus one batch)
GROUP_BATCHES = 4  # batches a group waits for (see _group); well under MAX_IN_FLIGHT
GROUP_WAIT_S = 0.1  # how long, at most, from its first batch


def _group(queue: "_Requests", first: tuple) -> list[tuple]:
    """The batch request ``first`` and those to write with it in one transaction, as
    (rows, incident_rows, members, vms). Fewer, larger commits cost the writer less per
    row: each index page and rollup row is touched once per group, the WAL written
    once.

    - Batches already queued (the daemon outpaced the writer) join, up to GROUP_ROWS.
    - After a full batch (a storm: the next one is on its way) the group waits for
      more, up to GROUP_BATCHES and GROUP_WAIT_S after the first. That delays commits
      by at most that long, only while batches fill up; the daemon, allowed
      MAX_IN_FLIGHT unanswered batches, goes on meanwhile (it never waits on a group
      that is waiting for it). Flush, close and the batch_ms timer send batches that
      are not full: their group commits at once."""
    group, rows, full = [first[1:5]], len(first[1]), _full(first)
    deadline = time.monotonic() + GROUP_WAIT_S
    while rows < GROUP_ROWS:
        wait = max(0.0, deadline - time.monotonic()) \
            if full and len(group) < GROUP_BATCHES else 0.0
        message = queue.next_if_ready("batch", wait)
        if message is None:
            break
        group.append(message[1:5])
        rows += len(message[1])
        full = _full(message)
    return group


def _full(message: tuple) -> bool:
    return len(message) > 5 and bool(message[5])


class _Requests:
    """Messages from the daemon's pipe, read (and unmarshalled) ahead by a thread.

    While this process commits a group, the daemon goes on sending: without
    CAP_SYS_RESOURCE the pipe holds only pipe-max-size (1 MiB: two or three batches),
    and a daemon that filled it would wait for the commit to end. The thread takes
    what arrives meanwhile (SQLite lets go of the GIL while it works); the daemon's
    MAX_IN_FLIGHT still bounds how much that can be."""

    def __init__(self, stream: BinaryIO) -> None:
        self.held: tuple | None = None  # taken, not of the kind asked for
        self._messages: queue.SimpleQueue = queue.SimpleQueue()
        self._eof = False
        # The thread reads its own duplicate of the descriptor: it may outlive serve()
        # (blocked in a read), and must never read another pipe that reused the number.
        own = os.fdopen(os.dup(stream.fileno()), "rb", buffering=0)
        threading.Thread(target=self._read, args=(own,), name="rasd-store-requests",
                         daemon=True).start()

    def _read(self, stream: BinaryIO) -> None:
        with stream:
            try:
                while (message := read_frame(stream)) is not None:
                    self._messages.put(message)
                self._messages.put(None)  # end of file
            except BaseException as exc:  # noqa: BLE001 - raised again by next()
                self._messages.put(exc)

    def next(self) -> tuple | None:
        """The next message; None at end of file."""
        if self.held is not None:
            message, self.held = self.held, None
            return message
        return None if self._eof else self._take(self._messages.get())

    def next_if_ready(self, kind: str, wait: float = 0.0) -> tuple | None:
        """The next message if it is there (within ``wait`` seconds) and of this kind."""
        if self.held is not None or self._eof:
            return None
        try:
            message = self._take(self._messages.get(timeout=wait) if wait > 0 else
                                 self._messages.get_nowait())
        except queue.Empty:
            return None
        if message is None or message[0] != kind:
            self.held = message  # next() returns it (end of file: next() says so again)
            return None
        return message

    def _take(self, item: Any) -> tuple | None:
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if item is None:
            self._eof = True
        return item


def _merge(group: list[tuple]) -> tuple:
    """Batches as one: rows and memberships in order, incidents in order (a later row of
    the same incident replaces the earlier), VM names with the later winning."""
    if len(group) == 1:
        return group[0]
    rows, incident_rows, members, vms = [], [], [], {}
    for b in group:
        rows += b[0]
        incident_rows += b[1]
        members += b[2]
        vms.update(b[3])
    return rows, incident_rows, members, vms


def _reopen(conn: sqlite3.Connection | None, path: str) -> sqlite3.Connection | None:
    if conn is not None:
        conn.close()
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        set_writer_pragmas(conn)
        return conn
    except sqlite3.Error:
        return None  # each batch then says so; the daemon reopens on its own schedule


def _run_batch(conn: sqlite3.Connection | None, batch: tuple, watch: Any = None) -> tuple:
    if conn is None:
        return ("error", "write failed: the writer process could not open the store", False)
    try:
        write_batch(conn, *batch, before_commit=watch)
    except (sqlite3.Error, OSError) as exc:
        return ("error", failure_reason(exc), isinstance(exc, sqlite3.DatabaseError)
                and is_corruption(exc))
    return ("ok",)


def main() -> int:
    # Stop only at end of file, after the daemon's last batch: systemd's SIGTERM (and a
    # terminal's Ctrl-C) reach the whole group, and the daemon still flushes on them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the daemon names itself: it may have died before this process got to look
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    serve(sys.stdin.buffer.raw, sys.stdout.buffer, parent)  # raw: reads return what is there
    return 0


def _child_env() -> dict[str, str]:
    """This process' environment, with the directory this rasd package is in first on
    the child's path: it runs the same rasd, installed or from a source tree."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _grow_pipe(fd: int) -> None:
    """Make the request pipe hold several batches (Linux' default 64 KiB holds a tenth
    of one): the daemon then hands a batch over and goes on while the writer is busy,
    and batches that queue meanwhile are written as one group. Root may go beyond
    /proc/sys/fs/pipe-max-size (1 MiB by default); others get that much."""
    for size in (PIPE_BYTES, _pipe_max()):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


# --- the daemon's end ---------------------------------------------------------------------

class WriterProcess:
    """The daemon's handle on the child: send batches, collect their answers in order."""

    def __init__(self) -> None:
        # a fresh interpreter, not a fork: the daemon holds BPF fds, sockets and threads
        # unbuffered: replies are polled with select(), which sees no Python buffer
        self.proc = subprocess.Popen([sys.executable, "-m", "rasd.sinks.store_writer",
                                      str(os.getpid())],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True, bufsize=0, env=_child_env())
        self.in_flight = 0
        self.answered = 0  # replies received, over its life
        self.alive = True  # False once a pipe broke: the child is gone
        self.waited_s = 0.0  # time the daemon spent blocked on the writer (backpressure)
        _grow_pipe(self.proc.stdin.fileno())

    def open(self, path: str) -> None:
        self._send(("open", path))

    def send_batch(self, rows: list, incident_rows: list, members: list, vms: dict,
                   full: bool = False) -> None:
        """``full``: sent because it filled up (the writer may wait for the next, see
        _group)."""
        self._send(("batch", rows, incident_rows, members, vms, full))
        self.in_flight += 1

    def _send(self, message: tuple) -> None:
        """Blocks while the pipe is full: backpressure when the writer lags. Raises
        OSError (BrokenPipeError) when the child is gone."""
        data = memoryview(encode_frame(message))
        start = time.perf_counter()
        try:
            while data:
                data = data[self.proc.stdin.write(data):]
        except OSError:
            self.alive = False
            raise
        finally:
            self.waited_s += time.perf_counter() - start

    def replies(self, keep: int) -> tuple[list[tuple], bool]:
        """The answers that arrived, waiting until at most ``keep`` batches are owed;
        and whether the child is still there (False: what it still owes is lost)."""
        out = []
        start = time.perf_counter()
        while self.alive and self.in_flight and (self.in_flight > keep or self._readable()):
            try:
                reply = read_frame(self.proc.stdout)
            except OSError:
                reply = None
            if reply is None:
                self.alive = False
                break
            self.in_flight -= 1
            self.answered += 1
            out.append(reply)
        self.waited_s += time.perf_counter() - start
        return out, self.alive

    def _readable(self) -> bool:
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def close(self, timeout: float = 30) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    @property
    def pid(self) -> int:
        return self.proc.pid


if __name__ == "__main__":
    sys.exit(main())
