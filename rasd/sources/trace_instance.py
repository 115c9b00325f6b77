"""A dedicated tracefs instance that keeps buffering RAS tracepoints while rasd is down.

The BPF path only sees events while rasd runs. The kernel ring buffer of a tracefs
instance (``instances/rasd``) keeps recording without any reader, so at start the
daemon drains it and delivers what happened during the restart (the way rasdaemon
keeps its own instance). While the daemon runs it keeps draining the instance and
drops the copies the BPF path already delivered (``Deduper``), so an event is
delivered once whichever path saw it.

Raw reads (``per_cpu/cpuN/trace_pipe_raw``) give whole ring-buffer pages; parsing
them here (instead of the text ``trace_pipe``) keeps the exact bytes of each entry,
which are what the BPF path ships and what the dedup key is built from. The page
and event header layouts are read from ``events/header_page``/``header_event``.

Usage (daemon)::

    inst = TraceInstance()              # ras:* defaults, instance "rasd"
    inst.setup()                        # TracefsLockedDown under lockdown=confidentiality
    for e in inst.drain(): ...          # at start, then periodically / on poll(inst.fds())
    inst.counters                       # entries, lost, unknown_type, bad_timestamp, ...
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import lockdown
from .probes import SIGBUS
from .tracefs import EventFormat, parse_format

log = logging.getLogger("rasd.tracefs")

DEFAULT_TRACEFS = Path("/sys/kernel/tracing")
DEFAULT_INSTANCE = "rasd"
# "a|b": the first of the alternatives that exists (memory_failure_event moved
# between the ras and memory_failure systems across kernels).
DEFAULT_EVENTS: tuple[str, ...] = (
    "ras:mc_event",
    "ras:arm_event",
    "ras:non_standard_event",
    "ras:aer_event",
    "ras:memory_failure_event|memory_failure:memory_failure_event",
    # the end of a memory-error chain; every signal on the machine passes here, so the
    # instance keeps only SIGBUS (the kernel filter drops the rest before the buffer)
    "signal:signal_generate",
)
DEFAULT_FILTERS: dict[str, str] = {"signal:signal_generate": f"sig == {SIGBUS}"}
# ktime_get_mono_fast_ns: the clock bpf_ktime_get_ns() and CLOCK_MONOTONIC use.
DEFAULT_CLOCK = "mono"

# Commit-word flags set by ring_buffer_read_page() (kernel/trace/ring_buffer.c).
RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
COMMIT_MASK = (1 << 27) - 1  # the commit length never exceeds a sub-buffer
TS_SHIFT = 27
TS_MSB = 0x1F << 59  # absolute time stamps carry only 59 bits


class TracefsUnavailable(RuntimeError):
    """tracefs cannot be used (not mountable, no permission, no instance support)."""


class TracefsLockedDown(TracefsUnavailable):
    """Kernel lockdown=confidentiality refuses tracefs: fall back to kmsg/BERT."""

    def __init__(self, mode: str, detail: str = "") -> None:
        self.mode = mode
        msg = f"tracefs refused by kernel lockdown ({mode})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


# --------------------------------------------------------------------------- mount

def find_tracefs_mount(mounts: str = "/proc/mounts") -> Path | None:
    """A tracefs mount point from /proc/mounts, preferring one outside debugfs
    (debugfs is closed under lockdown=integrity and rasd must not depend on it)."""
    found: list[Path] = []
    try:
        text = Path(mounts).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            found.append(Path(parts[1].replace("\\040", " ")))
    outside = [p for p in found if not str(p).startswith("/sys/kernel/debug")]
    return (outside or [None])[0]


def ensure_tracefs(mounts: str = "/proc/mounts", target: Path = DEFAULT_TRACEFS) -> Path:
    """The tracefs mount point, mounting tracefs at ``target`` if none is mounted."""
    _refuse_if_locked_down()
    found = find_tracefs_mount(mounts)
    if found is not None:
        return found
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        _refuse_if_locked_down(os.strerror(err))
        raise TracefsUnavailable(f"mount tracefs at {target}: {os.strerror(err)}")
    return target


def _refuse_if_locked_down(detail: str = "") -> None:
    mode = lockdown.read_mode()
    if mode == lockdown.CONFIDENTIALITY:
        raise TracefsLockedDown(mode, detail)


# ------------------------------------------------------------------ page layout

@dataclass(frozen=True)
class PageLayout:
    """Ring-buffer sub-buffer layout from ``events/header_page`` + ``header_event``."""
    ts_off: int = 0
    commit_off: int = 8
    commit_size: int = 8
    data_off: int = 16
    page_size: int = 4096
    type_len_bits: int = 5
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max: int = 28

    @property
    def missed_size(self) -> int:
        return self.commit_size  # the stored missed-events count is a long, like commit


def parse_layout(header_page: str, header_event: str) -> PageLayout:
    fields = {}
    for m in re.finditer(r"field:\s*[\w ]*?\b(\w+);\s*offset:(\d+);\s*size:(\d+);", header_page):
        fields.setdefault(m.group(1), (int(m.group(2)), int(m.group(3))))
    ts_off = fields.get("timestamp", (0, 8))[0]
    commit_off, commit_size = fields.get("commit", (8, 8))
    data_off, data_size = fields.get("data", (16, 4080))

    def num(pattern: str, default: int) -> int:
        m = re.search(pattern, header_event)
        return int(m.group(1)) if m else default

    return PageLayout(ts_off, commit_off, commit_size, data_off, data_off + data_size,
                      num(r"type_len\s*:\s*(\d+)\s*bits", 5),
                      num(r"padding\s*:\s*type\s*==\s*(\d+)", 29),
                      num(r"time_extend\s*:\s*type\s*==\s*(\d+)", 30),
                      num(r"time_stamp\s*:\s*type\s*==\s*(\d+)", 31),
                      num(r"data max type_len\s*==\s*(\d+)", 28))


@dataclass
class PageResult:
    entries: list[tuple[int, bytes]]  # (timestamp, raw entry)
    missed: int  # events lost before this page: >0 count, -1 lost but count unknown
    corrupt: bool = False


def parse_page(page: bytes, lay: PageLayout) -> PageResult:
    """Walk one ring-buffer page: (absolute timestamp, raw entry bytes) per event."""
    ts = _u64(page, lay.ts_off)
    commit = int.from_bytes(page[lay.commit_off:lay.commit_off + lay.commit_size], "little")
    size = commit & COMMIT_MASK
    missed = _missed(page, lay, commit, size)
    data = page[lay.data_off:lay.data_off + size]
    entries, corrupt = _walk_events(data, ts, lay)
    return PageResult(entries, missed, corrupt)


def _missed(page: bytes, lay: PageLayout, commit: int, size: int) -> int:
    if not commit & RB_MISSED_EVENTS:
        return 0
    if commit & RB_MISSED_STORED:  # count stored right after the data, when it fit
        off = lay.data_off + size
        return int.from_bytes(page[off:off + lay.missed_size], "little")
    return -1


def _walk_events(data: bytes, ts: int, lay: PageLayout) -> tuple[list[tuple[int, bytes]], bool]:
    out: list[tuple[int, bytes]] = []
    mask = (1 << lay.type_len_bits) - 1
    off, n = 0, len(data)
    while off + 4 <= n:
        (hdr,) = struct.unpack_from("<I", data, off)
        type_len, delta = hdr & mask, hdr >> lay.type_len_bits
        if type_len == lay.padding:
            if delta == 0:
                break  # null event: the rest of the page is unused
            # Discarded (filtered) event: array[0] is its length; like the kernel's
            # own iterator (rb_update_read_stamp) its delta is not added.
            off += 4 + _u32(data, off + 4)
        elif type_len == lay.time_extend:
            ts += (_u32(data, off + 4) << TS_SHIFT) + delta
            off += 8
        elif type_len == lay.time_stamp:
            ts = _abs_ts((_u32(data, off + 4) << TS_SHIFT) | delta, ts)
            off += 8
        else:
            if type_len == 0:  # long event: length word (incl. itself) precedes data
                length = _u32(data, off + 4)
                start, length, step = off + 8, length - 4, 4 + length
            else:
                start, length, step = off + 4, type_len * 4, 4 + type_len * 4
            if length < 0 or start + length > n or step <= 4:
                return out, True
            ts += delta
            out.append((ts, data[start:start + length]))
            off += step
    return out, False


def _abs_ts(abs_ts: int, prev: int) -> int:
    # Mirrors rb_fix_abs_ts(): restore the top bits the 59-bit stamp cannot hold.
    if prev & TS_MSB:
        abs_ts |= prev & TS_MSB
        if abs_ts < prev:
            abs_ts += 1 << 59
    return abs_ts


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0] if off + 4 <= len(b) else 0


def _u64(b: bytes, off: int) -> int:
    return struct.unpack_from("<Q", b, off)[0]


# ------------------------------------------------------------------------ entries

@dataclass(frozen=True)
class TraceEntry:
    system: str
    event: str
    ts_ns: int  # trace clock (mono by default: comparable with bpf_ktime_get_ns)
    cpu: int
    raw: bytes  # the raw trace entry, common header included
    fields: dict[str, object]  # common_* fields plus the event's own fields

    @property
    def key(self) -> str:
        return f"{self.system}:{self.event}"


def common_size(fmt: EventFormat) -> int:
    """Bytes of the common header (common_type, flags, preempt_count, pid, ...)."""
    return max((f.offset + f.size for f in fmt.fields if f.name.startswith("common_")), default=0)


def decode_common(fmt: EventFormat, raw: bytes) -> dict[str, object]:
    # EventFormat.decode() skips common_*; they are plain integers.
    out: dict[str, object] = {}
    for f in fmt.fields:
        if f.name.startswith("common_") and f.size in (1, 2, 4, 8) and f.offset + f.size <= len(raw):
            out[f.name] = int.from_bytes(raw[f.offset:f.offset + f.size], "little", signed=f.signed)
    return out


def entry_length(fmt: EventFormat, raw: bytes) -> int:
    """Logical entry length (end of fixed fields or of the last __data_loc payload),
    as the BPF tracepoint program computes it: the ring buffer pads entries to 4 bytes."""
    end = fmt.fixed_size
    for off in fmt.data_loc_offsets:
        if off + 4 <= len(raw):
            (loc,) = struct.unpack_from("<I", raw, off)
            end = max(end, (loc & 0xFFFF) + (loc >> 16))
    return min(end, len(raw))


def dedup_payload(fmt: EventFormat, raw: bytes, cap: int = 4096) -> bytes:
    """The bytes both paths agree on: the entry minus its common header (pid and
    preempt count may differ nowhere, but the header is not event content), cut at
    the logical end and at the BPF blob cap so a truncated BPF copy still matches."""
    return raw[common_size(fmt):min(entry_length(fmt, raw), cap)]


# ------------------------------------------------------------------------- dedup

class Deduper:
    """Match events delivered by two paths (e.g. "bpf" and "tracefs") one to one.

    Key: event name + payload (``dedup_payload``; hashed when long). An offer is a
    duplicate when the *other* path offered the same key with an event timestamp
    within ``window_ns`` and that copy is not matched yet. Each copy matches at most
    once, so two genuinely identical events (same corrected error twice) both get
    through, and the second copy of each is dropped.

    An unmatched copy waits ``retain_ns`` of *arrival* time for its twin: the
    tracefs copy of an event arrives when the instance is next drained, which may
    be long after the BPF copy (event time alone would expire it too early in a
    busy period). Memory is bounded by ``max_entries`` (oldest copies forgotten,
    counted in ``evicted``).
    """

    def __init__(self, window_ns: int = 2_000_000_000, retain_ns: int = 120_000_000_000,
                 max_entries: int = 65536) -> None:
        self.window_ns = window_ns
        self.retain_ns = retain_ns
        self.max_entries = max_entries
        # key -> source -> event timestamps of that source's unmatched copies (oldest first)
        self._pending: dict[tuple[str, bytes], dict[str, deque[int]]] = {}
        # (arrival, event ts, key, source), in arrival order: for expiry and eviction
        self._order: deque[tuple[int, int, tuple[str, bytes], str]] = deque()
        self.duplicates = 0
        self.evicted = 0

    def offer(self, source: str, event: str, payload: bytes, ts_ns: int,
              now_ns: int | None = None) -> bool:
        """True: deliver (first copy). False: the other path already delivered it."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        # Short payloads are their own key; long ones (arm_event buffers) are hashed.
        key = (event, payload if len(payload) <= 32 else hashlib.blake2b(payload, digest_size=16).digest())
        self._expire(now)
        if self._match(key, source, ts_ns):
            self.duplicates += 1
            return False
        self._pending.setdefault(key, {}).setdefault(source, deque()).append(ts_ns)
        self._order.append((now, ts_ns, key, source))
        if len(self._order) > self.max_entries:
            self._forget(*self._order.popleft()[1:])
            self.evicted += 1
        return True

    def __len__(self) -> int:
        return sum(len(q) for by_src in self._pending.values() for q in by_src.values())

    def _match(self, key: tuple[str, bytes], source: str, ts_ns: int) -> bool:
        # Usually the oldest unmatched copy of the other path is the one: O(1) even
        # in a storm of identical corrected errors.
        for src, copies in self._pending.get(key, {}).items():
            if src == source:
                continue
            for i, ts in enumerate(copies):
                if abs(ts - ts_ns) <= self.window_ns:
                    del copies[i]
                    self._drop_empty(key, src)
                    return True
        return False

    def _expire(self, now: int) -> None:
        while self._order and self._order[0][0] < now - self.retain_ns:
            self._forget(*self._order.popleft()[1:])

    def _forget(self, ts_ns: int, key: tuple[str, bytes], source: str) -> None:
        copies = self._pending.get(key, {}).get(source)
        if not copies:
            return  # already matched
        if copies[0] == ts_ns:
            copies.popleft()
        else:
            try:
                copies.remove(ts_ns)
            except ValueError:
                return  # already matched
        self._drop_empty(key, source)

    def _drop_empty(self, key: tuple[str, bytes], source: str) -> None:
        by_src = self._pending[key]
        if not by_src[source]:
            del by_src[source]
            if not by_src:
                del self._pending[key]


# ---------------------------------------------------------------------- instance

@dataclass
class Counters:
    entries: int = 0
    pages: int = 0
    # Exact: growth of the per-CPU "overrun" + "dropped events" + "commit overrun"
    # statistics since the last drain (or since the saved loss_state of the last run).
    lost: int = 0
    missed_pages: int = 0  # pages the kernel flagged "events were lost before this one"
    missed_in_pages: int = 0  # counts stored in those pages, when there was room
    corrupt_pages: int = 0
    unknown_type: int = 0  # common_type not in the formats read at setup (format change)
    decode_errors: int = 0
    bad_timestamp: int = 0  # not in this boot's mono range: wrong clock or corruption
    clock_resets: int = 0  # setup had to change trace_clock, which empties the buffer
    read_errors: int = 0


@dataclass
class TraceInstance:
    """A tracefs instance buffering ``events`` with its own ring buffer."""
    name: str = DEFAULT_INSTANCE
    events: Iterable[str] = DEFAULT_EVENTS
    # "system:event" -> tracefs filter expression. An event whose filter the kernel refuses
    # is not enabled (unfiltered, a busy event would flood the buffer): it is listed missing.
    filters: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FILTERS))
    buffer_size_kb: int | None = None  # per CPU; None keeps the kernel's/previous size
    clock: str = DEFAULT_CLOCK
    overwrite: bool | None = None  # None keeps the kernel default (overwrite oldest)
    tracefs: Path | None = None  # None: discover from /proc/mounts (mount if absent)
    counters: Counters = field(default_factory=Counters)
    enabled: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    created: bool = False  # True when setup made the instance (nothing buffered before)
    # current_loss_state() saved by the previous run: losses while rasd was down are then
    # counted exactly, and losses the previous run already reported are not again.
    loss_state: dict[str, object] | None = None

    def __post_init__(self) -> None:
        self.events = tuple(self.events)
        self._fds: dict[int, int] = {}
        self._formats: dict[int, EventFormat] = {}
        self._layout = PageLayout()
        self._loss_base = 0
        self._cpus: list[int] = []

    # ---- setup
    @property
    def path(self) -> Path:
        assert self.tracefs is not None, "setup() first"
        return self.tracefs / "instances" / self.name

    def setup(self) -> "TraceInstance":
        """Create or reuse the instance, configure it, enable events, open the readers.
        Reusing never resets the buffer unless the clock has to change."""
        try:
            self._setup()
        except OSError as e:
            self.close()
            if isinstance(e, PermissionError):
                _refuse_if_locked_down(str(e))
            raise TracefsUnavailable(f"tracefs instance {self.name}: {e}") from e
        return self

    def _setup(self) -> None:
        if self.tracefs is None:
            self.tracefs = ensure_tracefs()
        else:
            _refuse_if_locked_down()
        try:
            self.path.mkdir()
            self.created = True
        except FileExistsError:
            pass
        self._configure()
        self._enable_events()
        self._layout = parse_layout(self._read("events/header_page"),
                                    self._read("events/header_event"))
        self._write("tracing_on", "1")
        self._loss_base = self._initial_loss_base()
        self._open_readers()

    def _initial_loss_base(self) -> int:
        st = self.loss_state or {}
        now = self.overruns()
        saved = st.get("overruns")
        if self.created or st.get("boot_id") != _boot_id() or st.get("instance") != self.name:
            return 0
        # A smaller total than saved means the buffer was reset since: count from zero.
        return saved if isinstance(saved, int) and saved <= now else 0

    def _configure(self) -> None:
        if self._current_clock() != self.clock:
            # Changing the clock resets the buffer: whatever was buffered is lost.
            buffered = 0 if self.created else self._buffered_entries()
            if buffered:
                self.counters.clock_resets += 1
                self.counters.lost += buffered
            self._write("trace_clock", self.clock)
        if self.buffer_size_kb is not None and self._read("buffer_size_kb").split()[0] != str(self.buffer_size_kb):
            self._write("buffer_size_kb", str(self.buffer_size_kb))
        if self.overwrite is not None:
            self._write("options/overwrite", "1" if self.overwrite else "0")
        if (self.path / "buffer_percent").exists():
            self._write("buffer_percent", "0")  # poll() wakes on the first event, not at 50%

    def _current_clock(self) -> str:
        m = re.search(r"\[(\S+)\]", self._read("trace_clock"))
        return m.group(1) if m else ""

    def _buffered_entries(self) -> int:
        return sum(s.get("entries", 0) for s in self.cpu_stats().values())

    def _enable_events(self) -> None:
        self.enabled, self.missing = [], []
        for spec in self.events:
            key = self._resolve(spec)
            if key is None:
                self.missing.append(spec)
                continue
            system, event = key.split(":")
            evdir = self.path / "events" / system / event
            if not self._set_filter(evdir, self.filters.get(key)):
                self.missing.append(spec)
                continue
            if self._read(f"events/{system}/{event}/enable").strip() != "1":
                (evdir / "enable").write_text("1")
            fmt = parse_format((evdir / "format").read_text(), system, event)
            if fmt.id is not None:
                self._formats[fmt.id] = fmt
            self.enabled.append(key)

    @staticmethod
    def _set_filter(evdir: Path, expression: str | None) -> bool:
        if expression is None:
            return True
        try:
            (evdir / "filter").write_text(expression)
        except OSError as e:  # EINVAL: a field this kernel's event does not have
            log.warning("tracefs refused filter %r on %s (%s): event not buffered",
                        expression, evdir.name, e)
            (evdir / "enable").write_text("0")
            return False
        return True

    def _resolve(self, spec: str) -> str | None:
        for alt in spec.split("|"):
            system, _, event = alt.partition(":")
            if (self.path / "events" / system / event / "format").exists():
                return alt
        return None

    def _open_readers(self) -> None:
        for cpu in self.cpus():
            if cpu in self._fds:
                continue
            p = self.path / "per_cpu" / f"cpu{cpu}" / "trace_pipe_raw"
            try:
                self._fds[cpu] = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno != errno.ENODEV:  # offline CPU: nothing to read
                    raise

    def cpus(self) -> list[int]:
        if not self._cpus:  # fixed for the instance's life: per_cpu lists possible CPUs
            self._cpus = sorted(int(d.name[3:]) for d in (self.path / "per_cpu").iterdir()
                                if d.name.startswith("cpu") and d.name[3:].isdigit())
        return self._cpus

    def _read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def _write(self, rel: str, value: str) -> None:
        (self.path / rel).write_text(value)

    # ---- reading
    def fds(self) -> list[int]:
        """Per-CPU trace_pipe_raw descriptors, to poll for POLLIN."""
        return list(self._fds.values())

    def drain(self) -> list[TraceEntry]:
        """Everything buffered now, consumed, sorted by timestamp across CPUs.
        ``counters.lost`` grows by what the ring buffer lost since the last drain."""
        out: list[TraceEntry] = []
        for cpu, fd in self._fds.items():
            for page in self._read_pages(fd):
                out.extend(self._page_entries(cpu, page))
        self._account_loss()
        out.sort(key=lambda e: e.ts_ns)
        return out

    def _account_loss(self) -> None:
        # The page flag says *that* events were lost but usually not how many
        # (no room for the count on a full page); the statistics are exact.
        now = self.overruns()
        if now < self._loss_base:  # buffer reset under us (clock change, resize)
            self._loss_base = 0
        self._cpus: list[int] = []
        self.counters.lost += now - self._loss_base
        self._loss_base = now

    def _read_pages(self, fd: int) -> Iterable[bytes]:
        while True:
            try:
                page = os.read(fd, self._layout.page_size)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                self.counters.read_errors += 1
                return
            if not page:
                return
            yield page

    def _page_entries(self, cpu: int, page: bytes) -> list[TraceEntry]:
        res = parse_page(page, self._layout)
        c = self.counters
        c.pages += 1
        c.corrupt_pages += res.corrupt
        if res.missed:
            c.missed_pages += 1
            c.missed_in_pages += max(res.missed, 0)
        now = time.monotonic_ns()
        out = []
        for ts, raw in res.entries:
            e = self._entry(cpu, ts, raw, now)
            if e is not None:
                out.append(e)
        return out

    def _entry(self, cpu: int, ts: int, raw: bytes, now: int) -> TraceEntry | None:
        c = self.counters
        if len(raw) < 2:
            c.decode_errors += 1
            return None
        fmt = self._formats.get(struct.unpack_from("<H", raw)[0])
        if fmt is None:
            c.unknown_type += 1
            return None
        if self.clock == "mono" and ts > now + 1_000_000_000:
            c.bad_timestamp += 1  # a mono stamp from the future: not this boot's clock
        try:
            fields = decode_common(fmt, raw)
            fields.update(fmt.decode(raw))
        except Exception:  # a format that no longer matches the bytes must not kill the daemon
            c.decode_errors += 1
            return None
        c.entries += 1
        return TraceEntry(fmt.system, fmt.name, ts, cpu, raw, fields)

    def format(self, key: str) -> EventFormat | None:
        return next((f for f in self._formats.values() if f.key == key), None)

    # ---- loss accounting from the ring buffer's own statistics
    def cpu_stats(self) -> dict[int, dict[str, int]]:
        """per_cpu/cpuN/stats as integers (entries, overrun, commit overrun, dropped events, ...)."""
        out: dict[int, dict[str, int]] = {}
        for cpu in self.cpus():
            stats: dict[str, int] = {}
            with open(f"{self.path}/per_cpu/cpu{cpu}/stats") as f:
                text = f.read()
            for line in text.splitlines():
                k, _, v = line.partition(":")
                if v.strip().isdigit():
                    stats[k.strip()] = int(v)
            out[cpu] = stats
        return out

    def overruns(self) -> int:
        """Events lost in this instance since its buffer was created or reset
        (overwritten in overwrite mode, dropped otherwise). Cumulative."""
        keys = ("overrun", "dropped events", "commit overrun")
        return sum(s.get(k, 0) for s in self.cpu_stats().values() for k in keys)

    def current_loss_state(self) -> dict[str, object]:
        """Persist this (after a drain) and pass it back as ``loss_state`` at the next start."""
        return {"boot_id": _boot_id(), "instance": self.name, "overruns": self._loss_base}

    # ---- teardown
    def close(self) -> None:
        """Close the readers; the instance keeps buffering (that is the point)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def remove(self) -> None:
        """Close and delete the instance (tests, uninstall): its buffer is freed."""
        self.close()
        if self.tracefs is not None and self.path.exists():
            for key in self.enabled:  # rmdir refuses while events are enabled (EBUSY) on some kernels
                system, event = key.split(":")
                try:
                    self._write(f"events/{system}/{event}/enable", "0")
                except OSError:
                    pass
            os.rmdir(self.path)

    def __enter__(self) -> "TraceInstance":
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.close()
