"""Wire format parsing (bpf/common.h <-> rasd/sources/records.py), from bytes
laid out exactly as the BPF programs write them."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from rasd.sources.records import CALL, GHES, HDR, TP, RecordError, parse_record

ROOT = Path(__file__).resolve().parents[2]


def _hdr(kind: int, probe: int, flags: int, plen: int) -> bytes:
    return HDR.pack(kind, probe, flags, 1, 3, 100, 101, plen, 123456789, b"qemu-kvm\0")


def test_flag_values_match_common_h():
    from rasd.sources.records import FLAG_NAMES
    text = (ROOT / "bpf" / "common.h").read_text()
    c = {m.group(1).lower(): int(m.group(2), 16)
         for m in re.finditer(r"#define RASD_F_(\w+)\s+0x([0-9a-f]+)", text)}
    assert {v: k for k, v in FLAG_NAMES.items()} == c


def test_ghes_record():
    block = struct.pack("<5I", 1, 0, 0, 72, 2) + bytes(72)
    payload = GHES.pack(7, 10, 8, 4096, len(block), len(block), 0xffff0000, 0xffff1000) + block
    rec = parse_record(_hdr(1, 1, 0, len(payload)) + payload)
    assert (rec.kind, rec.probe, rec.cpu, rec.tgid, rec.tid, rec.comm) == \
        ("ghes", "ghes_do_proc", 3, 100, 101, "qemu-kvm")
    assert rec.fields["source_id"] == 7 and rec.fields["hest_type"] == 10
    assert rec.fields["notify_type"] == 8 and rec.fields["estatus_len"] == 92
    assert rec.blob == block and not rec.truncated


def test_truncated_ghes_record():
    payload = GHES.pack(1, 9, 0, 65536, 9000, 4096, 0, 0) + bytes(4096)
    rec = parse_record(_hdr(1, 1, 0x1, len(payload)) + payload)
    assert rec.truncated and len(rec.blob) == 4096 and rec.fields["estatus_len"] == 9000


def test_call_record_named_fields():
    payload = CALL.pack(0, 0, 0, 0, -2, 0, 0, 0, 0)
    rec = parse_record(_hdr(2, 4, 0x2 | 0x20, len(payload)) + payload)
    assert rec.probe == "apei_claim_sea"
    assert rec.fields == {"regs": 0, "ret": -2, "pc": 0, "pstate": 0}
    assert {"return", "no_regs"} <= rec.flags
    entry = parse_record(_hdr(2, 6, 0, len(payload)) + CALL.pack(0x1234, 2, 0, 0, 0, 0, 0, 0, 0))
    assert entry.fields == {"pfn": 0x1234, "flags": 2}  # no ret on entry records


def test_tp_record():
    raw = bytes(range(40))
    payload = TP.pack(40, 40) + raw
    rec = parse_record(_hdr(3, 17, 0, len(payload)) + payload)
    assert rec.probe == "arm_event" and rec.blob == raw
    assert rec.to_json()["blob"] == raw.hex()


def test_bad_records():
    with pytest.raises(RecordError):
        parse_record(b"\0" * 8)
    with pytest.raises(RecordError):
        parse_record(HDR.pack(2, 4, 0, 9, 0, 0, 0, 0, 0, b""))
