"""Ring-buffer wire format (bpf/common.h) -> Python.

``parse_record(data)`` turns one ring-buffer record into a ``Record``:

    Record(kind="ghes"|"call"|"tp", probe="ghes_do_proc", probe_id=1, flags={...},
           cpu, tgid, tid, comm, ktime_ns, truncated,
           fields={...},          # kind-specific, see below
           blob=b"...")           # GHES status block / raw trace entry bytes

  ghes: fields = source_id, hest_type, notify_type, error_block_length,
        estatus_len (full cper_estatus_len), captured_len, ghes, estatus (kernel ptrs);
        blob = the status block (first captured_len bytes)
  call: fields named per probe (probes.py call_fields), e.g. apei_claim_sea ->
        {"regs": 0, "ret": 0, "pc": ..., "pstate": ...}; "ret" only when RETURN flag
  tp:   fields = entry_len, captured_len; blob = raw trace entry. Decode the
        tracepoint fields with ``Record.decode_tp(view.events[key])``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .probes import BY_ID, TEST_PROBE_ID
from .tracefs import EventFormat

WIRE_VERSION = 1
KIND_GHES, KIND_CALL, KIND_TP = 1, 2, 3
KIND_NAMES = {KIND_GHES: "ghes", KIND_CALL: "call", KIND_TP: "tp"}

FLAG_NAMES = {
    0x0001: "truncated", 0x0002: "return", 0x0004: "no_entry", 0x0008: "read_fault",
    0x0010: "user", 0x0020: "no_regs", 0x0040: "vcpu_fault", 0x0080: "fentry",
}
F_TRUNCATED, F_RETURN = 0x0001, 0x0002

HDR = struct.Struct("<HHHHIIIIQ16s")  # struct rasd_hdr, 48 bytes
CALL = struct.Struct("<4Qq4Q")  # struct rasd_call, 72 bytes
GHES = struct.Struct("<HBBIIIQQ")  # struct rasd_ghes, 32 bytes
TP = struct.Struct("<II24x")  # struct rasd_tp, 32 bytes
assert HDR.size == 48 and CALL.size == 72 and GHES.size == 32 and TP.size == 32

_CALL_SLOTS = ("arg0", "arg1", "arg2", "arg3", "ret", "x0", "x1", "x2", "x3")


class RecordError(ValueError):
    """A ring-buffer record that does not follow the wire format."""


@dataclass
class Record:
    kind: str
    probe: str
    probe_id: int
    flags: frozenset[str]
    cpu: int
    tgid: int
    tid: int
    comm: str
    ktime_ns: int
    fields: dict[str, object] = field(default_factory=dict)
    blob: bytes = b""

    @property
    def truncated(self) -> bool:
        return "truncated" in self.flags

    def decode_tp(self, fmt: EventFormat) -> dict[str, object]:
        if self.kind != "tp":
            raise RecordError("not a tracepoint record")
        return fmt.decode(self.blob)

    def to_json(self) -> dict[str, object]:
        """JSON-able form (the replay format): blob as hex."""
        d = {k: getattr(self, k) for k in ("kind", "probe", "probe_id", "cpu", "tgid", "tid",
                                             "comm", "ktime_ns")}
        d["flags"] = sorted(self.flags)
        d["fields"] = self.fields
        d["blob"] = self.blob.hex()
        return d


def _flags(bits: int) -> frozenset[str]:
    return frozenset(n for b, n in FLAG_NAMES.items() if bits & b)


def _probe_name(pid: int) -> str:
    if pid == TEST_PROBE_ID:
        return "test"
    p = BY_ID.get(pid)
    return p.name if p else f"unknown_{pid}"


def parse_record(data: bytes | memoryview) -> Record:
    """Parse one record (exactly the bytes the BPF program emitted)."""
    if len(data) < HDR.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than the header")
    kind, pid, flags, version, cpu, tgid, tid, plen, ts, comm = HDR.unpack_from(data)
    if version != WIRE_VERSION:
        raise RecordError(f"wire version {version}, expected {WIRE_VERSION}")
    body = bytes(data[HDR.size:HDR.size + plen])
    rec = Record(KIND_NAMES.get(kind, f"kind_{kind}"), _probe_name(pid), pid, _flags(flags),
                 cpu, tgid, tid, comm.split(b"\0", 1)[0].decode("utf-8", "replace"), ts)
    if kind == KIND_CALL:
        rec.fields = _call_fields(pid, flags, body)
    elif kind == KIND_GHES:
        rec.fields, rec.blob = _ghes_fields(body)
    elif kind == KIND_TP:
        entry_len, cap = TP.unpack_from(body)
        rec.fields = {"entry_len": entry_len, "captured_len": cap}
        rec.blob = body[TP.size:TP.size + cap]
    else:
        raise RecordError(f"unknown record kind {kind}")
    return rec


def _call_fields(pid: int, flags: int, body: bytes) -> dict[str, object]:
    values = CALL.unpack_from(body)
    probe = BY_ID.get(pid)
    names = probe.call_fields if probe and probe.call_fields else _CALL_SLOTS
    out = {n: v for n, v in zip(names, values) if n}
    if not flags & F_RETURN:
        out.pop(names[4], None)  # the ret slot means nothing on entry records
    return out


def _ghes_fields(body: bytes) -> tuple[dict[str, object], bytes]:
    sid, htype, ntype, ebl, elen, cap, ghes, estatus = GHES.unpack_from(body)
    fields = {"source_id": sid, "hest_type": htype, "notify_type": ntype,
              "error_block_length": ebl, "estatus_len": elen, "captured_len": cap,
              "ghes": ghes, "estatus": estatus}
    return fields, body[GHES.size:GHES.size + cap]
