"""/dev/kmsg: the last-resort RAS source (kernel lockdown=confidentiality).

When kprobes, BPF kernel reads and tracefs are refused, the kernel's own printk
lines are all that is left: GHES prints every error status block it handles
("{N}[Hardware Error]: ..."), BERT prints the previous boot's records,
memory_failure() prints its verdict, arm64 prints fatal SErrors.

Two layers:

* ``KmsgReader`` reads records non-blocking from a saved cursor (boot id + last
  sequence number), so a restart neither re-reports nor skips; sequence gaps
  (records overwritten in the kernel's ring before we read them, EPIPE) are
  counted, not hidden.
* ``RasLineParser`` turns records into ``KmsgEvent``s. The lines of one GHES
  record share the "{N}" number ``__ghes_print_estatus`` puts in front of them,
  which keeps interleaved records (two CPUs printing at once) apart; BERT lines
  carry no number and are grouped from "event severity:" on.

Only kernel-facility records are parsed: userspace may write to /dev/kmsg but
cannot use facility 0, so it cannot forge a hardware error.
"""
from __future__ import annotations

import errno
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

KMSG_PATH = "/dev/kmsg"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
READ_SIZE = 1 << 16  # larger than any record (the kernel refuses short reads with EINVAL)


# -------------------------------------------------------------------- records

@dataclass(frozen=True)
class KmsgRecord:
    seq: int
    level: int  # 0 emerg .. 7 debug
    facility: int  # 0 = kernel; userspace writes get 1 (user) or their own
    ts_us: int  # printk clock (local_clock), microseconds since boot
    flags: str  # "-" or "c" (continuation)
    message: str
    props: dict[str, str] = field(default_factory=dict)  # " KEY=value" continuation lines

    @property
    def is_kernel(self) -> bool:
        return self.facility == 0


def parse_record(data: bytes) -> KmsgRecord | None:
    """``prio,seq,ts_us,flags[,...];message\\n[ KEY=value\\n]...`` → KmsgRecord."""
    text = data.decode("utf-8", "replace")
    head, sep, rest = text.partition(";")
    parts = head.split(",")
    if not sep or len(parts) < 4:
        return None
    try:
        prio, seq, ts_us = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    lines = rest.split("\n")
    props = {}
    for line in lines[1:]:
        if line.startswith(" ") and "=" in line:
            k, _, v = line[1:].partition("=")
            props[k] = _unescape(v)
    return KmsgRecord(seq, prio & 7, prio >> 3, ts_us, parts[3], _unescape(lines[0]), props)


def _unescape(s: str) -> str:
    # The kernel escapes non-printable bytes (and backslash) as \xNN.
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), s) if "\\x" in s else s


# --------------------------------------------------------------------- reader

@dataclass(frozen=True)
class KmsgCursor:
    """Where the last run stopped. Sequence numbers restart at each boot, hence
    the boot id: a cursor from another boot means "read everything"."""
    boot_id: str
    seq: int  # last record delivered

    def as_dict(self) -> dict[str, object]:
        return {"boot_id": self.boot_id, "seq": self.seq}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "KmsgCursor":
        return cls(str(d["boot_id"]), int(d["seq"]))  # type: ignore[arg-type]


def current_boot_id(path: str = BOOT_ID_PATH) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@dataclass
class KmsgCounters:
    records: int = 0
    lost: int = 0  # records overwritten in the kernel ring before we read them
    unavailable_at_start: int = 0  # first run of a boot: records already gone from the ring
    epipe: int = 0
    unparsable: int = 0


class KmsgReader:
    """Non-blocking /dev/kmsg reader resuming from a ``KmsgCursor``."""

    def __init__(self, path: str = KMSG_PATH, cursor: KmsgCursor | None = None,
                 boot_id: str | None = None) -> None:
        self.path = path
        self.boot_id = current_boot_id() if boot_id is None else boot_id
        same_boot = cursor is not None and cursor.boot_id == self.boot_id
        self._last: int | None = cursor.seq if same_boot and cursor else None
        self._fresh = self._last is None
        self.counters = KmsgCounters()
        self._fd = -1

    def open(self) -> "KmsgReader":
        # A new open starts at the oldest record still in the ring.
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return self

    def attach(self, fd: int) -> "KmsgReader":
        """Read from an already open non-blocking descriptor that yields one record
        per read (a passed-in /dev/kmsg fd, or a SOCK_SEQPACKET socket in tests)."""
        self._fd = fd
        return self

    def fileno(self) -> int:
        return self._fd

    @property
    def cursor(self) -> KmsgCursor | None:
        """Save this after handling what ``read`` returned."""
        return None if self._last is None else KmsgCursor(self.boot_id, self._last)

    def read(self, limit: int | None = None) -> list[KmsgRecord]:
        """All records available now (newer than the cursor), oldest first."""
        out: list[KmsgRecord] = []
        while limit is None or len(out) < limit:
            data = self._read_one()
            if data is None:
                break
            rec = parse_record(data)
            if rec is None:
                self.counters.unparsable += 1
                continue
            if self._accept(rec):
                out.append(rec)
        return out

    def _read_one(self) -> bytes | None:
        while True:
            try:
                return os.read(self._fd, READ_SIZE) or None
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != errno.EPIPE:
                    raise
                # Our position was overwritten; the next read resumes at the oldest
                # record and _accept() counts the jump in sequence numbers.
                self.counters.epipe += 1

    def _accept(self, rec: KmsgRecord) -> bool:
        if self._last is not None and rec.seq <= self._last:
            return False  # delivered by an earlier run
        if self._last is None:
            if self._fresh:
                self.counters.unavailable_at_start += rec.seq
        elif rec.seq > self._last + 1:
            self.counters.lost += rec.seq - self._last - 1
        self._fresh = False
        self._last = rec.seq
        self.counters.records += 1
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "KmsgReader":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------- parser

@dataclass
class KmsgEvent:
    """One RAS fact from the kernel log.

    kind: "hw_error" (a GHES or BERT status block as printed by cper_estatus_print),
    "memory_failure" (pfn, page_type, result), "memory_failure_msg" (other
    memory_failure() verdicts), "sigbus" (pfn, comm, pid, origin), "ghes_sigbus"
    (comm, pid), "serror" (cpu, esr, description), "bert" (the banner), "bert_summary"
    (total / skipped), "ghes_suppressed" (records the rate limiter dropped),
    "apei_incomplete".
    """
    kind: str
    seq: int
    ts_us: int
    level: int
    fields: dict[str, object] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


HW_RE = re.compile(r"^(?:\{(?P<n>\d+)\})?\[Hardware Error\]: (?P<body>.*)$")
GHES_HDR_RE = re.compile(r"^Hardware error from APEI Generic Hardware Error Source: (\d+)")
MF_ACTION_RE = re.compile(r"^Memory failure: (0x[0-9a-fA-F]+): recovery action for (.+): (\w+)\s*$")
MF_OTHER_RE = re.compile(r"^Memory failure: (0x[0-9a-fA-F]+): (.*)$")
SIGBUS_RE = re.compile(r"(0x[0-9a-fA-F]+): Sending SIGBUS to (.+):(\d+) due to hardware memory corruption")
GHES_SIGBUS_RE = re.compile(r"GHES: (.+):(\d+): synchronous unrecoverable error \(SIGBUS\)")
SERROR_RE = re.compile(r"SError Interrupt on CPU(\d+), code (0x[0-9a-fA-F]+) -- (.*)$")
SUPPRESSED_RE = re.compile(r"^(\w*ghes\w*): (\d+) callbacks suppressed")
BERT_TOTAL_RE = re.compile(r"^BERT: Total records found: (\d+)")
SKIPPED_RE = re.compile(r"^Skipped (\d+) error records")
CORRECTED_NOTE = "It has been corrected by h/w"
SECTION_RE = re.compile(r"^Error (\d+), type: (.+)$")
HEX_RE = re.compile(r"0x[0-9a-fA-F]+")
LOC_RE = re.compile(r"(\w+):(0x[0-9a-fA-F]+|-?\d+)")
LOC_KEYS = {"node", "card", "module", "rank", "bank", "bank_group", "bank_address", "device",
            "row", "column", "bit_position", "requestor_id", "responder_id", "target_id", "chip_id"}


@dataclass
class _Group:
    """An open [Hardware Error] status block being collected."""
    event: KmsgEvent
    last_ts: int


class RasLineParser:
    """Feed records in order; get complete events back.

    A [Hardware Error] block has no end marker, so it is closed when its "{N}"
    starts again, when a new block of the same kind begins, when ``gap_us`` of
    printk time passes with no line for it (printing a block takes microseconds),
    or by ``flush()`` (call it when kmsg has been idle, and at shutdown).
    """

    def __init__(self, gap_us: int = 1_000_000, kernel_only: bool = True, max_open: int = 64) -> None:
        self.gap_us = gap_us
        self.kernel_only = kernel_only
        self.max_open = max_open  # bound on blocks collected at once (memory, and O(1) closing)
        self._open: OrderedDict[str, _Group] = OrderedDict()  # least recently extended first
        self._bert = False  # between the BERT banner and its summary: unnumbered blocks are BERT's

    def feed(self, rec: KmsgRecord) -> list[KmsgEvent]:
        if self.kernel_only and not rec.is_kernel:
            return []
        out = self._close_idle(rec.ts_us)
        m = HW_RE.match(rec.message)
        single = self._single(rec) if m is None or "SIGBUS" in rec.message else None
        if single is not None:
            out.append(single)
        elif m is not None:
            out.extend(self._hw_line(rec, m.group("n"), m.group("body")))
        return out

    def feed_all(self, recs: list[KmsgRecord]) -> list[KmsgEvent]:
        out = [ev for rec in recs for ev in self.feed(rec)]
        return out + self.flush()

    def flush(self, now_us: int | None = None) -> list[KmsgEvent]:
        """Close open blocks (all of them, or those idle for gap_us at ``now_us``)."""
        if now_us is not None:
            return self._close_idle(now_us)
        out = [g.event for g in self._open.values()]
        self._open.clear()
        return out

    # ---- one-line events
    def _single(self, rec: KmsgRecord) -> KmsgEvent | None:
        msg = rec.message

        def ev(kind: str, **fields: object) -> KmsgEvent:
            return _one_line(rec, kind, **fields)

        if m := SIGBUS_RE.search(msg):
            origin = "memory_failure" if msg.startswith("Memory failure:") else "ghes"
            return ev("sigbus", pfn=int(m.group(1), 16), comm=m.group(2), pid=int(m.group(3)), origin=origin)
        if m := GHES_SIGBUS_RE.search(msg):
            return ev("ghes_sigbus", comm=m.group(1), pid=int(m.group(2)))
        if m := MF_ACTION_RE.match(msg):
            return ev("memory_failure", pfn=int(m.group(1), 16), page_type=m.group(2), result=m.group(3))
        if m := MF_OTHER_RE.match(msg):
            return ev("memory_failure_msg", pfn=int(m.group(1), 16), message=m.group(2))
        if m := SERROR_RE.search(msg):
            return ev("serror", cpu=int(m.group(1)), esr=int(m.group(2), 16), description=m.group(3))
        if m := SUPPRESSED_RE.match(msg):
            return ev("ghes_suppressed", function=m.group(1), count=int(m.group(2)))
        return self._bert_or_apei(rec)

    def _bert_or_apei(self, rec: KmsgRecord) -> KmsgEvent | None:
        msg = rec.message
        if msg.startswith("BERT: Error records from previous boot"):
            self._bert = True  # the unnumbered blocks that follow are BERT's
            return _one_line(rec, "bert")
        if m := BERT_TOTAL_RE.match(msg):
            self._bert = False
            return _one_line(rec, "bert_summary", total=int(m.group(1)))
        if "APEI work queued but not completed" in msg:
            return _one_line(rec, "apei_incomplete")
        return None

    # ---- [Hardware Error] blocks
    def _hw_line(self, rec: KmsgRecord, n: str | None, body: str) -> list[KmsgEvent]:
        out: list[KmsgEvent] = []
        text = body.strip()
        if (m := SKIPPED_RE.match(text)) and n is None:
            return [_one_line(rec, "bert_summary", skipped=int(m.group(1)))]
        key = n if n is not None else "-"
        if self._starts_block(key, n, text) and key in self._open:
            out.append(self._open.pop(key).event)
        group = self._open.get(key) or self._new_group(rec, n, key, text)
        self._open.move_to_end(key)
        group.last_ts = rec.ts_us
        group.event.lines.append(rec.message)
        _apply_line(group.event.fields, text)
        return out + self._evict_overflow()

    def _starts_block(self, key: str, n: str | None, text: str) -> bool:
        """Does this line open a new status block (closing the open one)?"""
        if GHES_HDR_RE.match(text):
            return True
        g = self._open.get(key)
        seen = g.event.fields if g is not None else {}
        if text.startswith(CORRECTED_NOTE):  # printed just before "event severity:"
            return n is None or "severity" in seen or "corrected_by_hw" in seen
        if text.startswith("event severity:"):
            # Unnumbered (BERT): every block starts here unless the note just preceded it.
            # Numbered: only when the open block already has one (its header was lost).
            if n is None:
                return "severity" in seen or "corrected_by_hw" not in seen
            return "severity" in seen
        return False

    def _new_group(self, rec: KmsgRecord, n: str | None, key: str, text: str) -> _Group:
        # A block starts with the GHES header (numbered) or "event severity:" (BERT);
        # starting anywhere else means lines were lost (kmsg overrun, reader started mid-block).
        first = GHES_HDR_RE.match(text) if n is not None else text.startswith(("event severity:", CORRECTED_NOTE))
        fields: dict[str, object] = {
            "origin": "ghes" if n is not None else ("bert" if self._bert else "unknown"),
            "ghes_seqno": int(n) if n is not None else None,
            "source_id": None,
            "sections": [],
            "partial": not first,
        }
        g = _Group(KmsgEvent("hw_error", rec.seq, rec.ts_us, rec.level, fields, []), rec.ts_us)
        self._open[key] = g
        return g

    def _evict_overflow(self) -> list[KmsgEvent]:
        out = []
        while len(self._open) > self.max_open:
            out.append(self._open.popitem(last=False)[1].event)
        return out

    def _close_idle(self, now_us: int) -> list[KmsgEvent]:
        out = []
        while self._open:  # ordered by last line: stop at the first one still active
            key, g = next(iter(self._open.items()))
            if now_us - g.last_ts <= self.gap_us:
                break
            out.append(self._open.pop(key).event)
        return out


def _one_line(rec: KmsgRecord, kind: str, **fields: object) -> KmsgEvent:
    return KmsgEvent(kind, rec.seq, rec.ts_us, rec.level, fields, [rec.message])


def _apply_line(f: dict[str, object], text: str) -> None:
    """Fold one [Hardware Error] body line (indentation stripped) into the block."""
    sections: list[dict[str, object]] = f["sections"]  # type: ignore[assignment]
    sec = sections[-1] if sections else None
    if m := GHES_HDR_RE.match(text):
        f["source_id"] = int(m.group(1))
    elif text.startswith("event severity:"):
        f["severity"] = text.split(":", 1)[1].strip()
    elif text.startswith(CORRECTED_NOTE):
        f["corrected_by_hw"] = True
    elif m := SECTION_RE.match(text):
        sections.append({"index": int(m.group(1)), "severity": m.group(2).strip()})
    elif sec is None:
        f.setdefault("unparsed", []).append(text)  # type: ignore[union-attr]
    else:
        _apply_section_line(sec, text)


def _apply_section_line(sec: dict[str, object], text: str) -> None:
    key, _, value = text.partition(":")
    value = value.strip()
    first = LOC_RE.match(text)
    if text.startswith("section type: unknown,"):
        sec["section_type"] = "unknown"
        sec["section_guid"] = text.split(",", 1)[1].strip()
    elif key in ("section_type", "fru_id", "fru_text"):
        sec[key] = value
    elif key in ("physical_address", "physical_address_mask"):
        sec[key] = int(value, 16)
    elif key == "error_status":  # "0x..." (old) or "<text> (0x...)" (≥5.13)
        hexes = HEX_RE.findall(value)
        sec["error_status"] = int(hexes[-1], 16) if hexes else value
    elif key == "error_type":
        num, _, name = value.partition(",")
        sec["error_type"] = int(num) if num.strip().isdigit() else num
        sec["error_type_name"] = name.strip()
    elif key == "DIMM location":
        sec["dimm_location"] = value
    elif first is not None and first.group(1) in LOC_KEYS:
        sec["location"] = {k: _int(v) for k, v in LOC_RE.findall(text) if k in LOC_KEYS}
    else:
        other: dict[str, str] = sec.setdefault("fields", {})  # type: ignore[assignment]
        other[key.strip()] = value


def _int(v: str) -> int:
    return int(v, 16) if v.lower().startswith("0x") else int(v)
