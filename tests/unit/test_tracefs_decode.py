"""Decoding raw trace entries (what the tracepoint programs ship) with the
recorded arm64 formats."""
from __future__ import annotations

import struct
from pathlib import Path

from rasd.sources.bpf_loader import tp_instance
from rasd.sources.tracefs import parse_format

K612 = Path(__file__).resolve().parents[1] / "fixtures" / "arm64-kernels" / "6.12.95+deb12-arm64"
K61 = K612.parent / "6.1.0-50-arm64"


def _fmt(kernel: Path, event: str):
    return parse_format((kernel / "events" / "ras" / event / "format").read_text())


def _loc(offset: int, length: int) -> int:
    return (length << 16) | offset


def test_extended_arm_event_buffers():
    fmt = _fmt(K612, "arm_event")
    pei, ctx, oem = bytes(range(32)), b"\xaa" * 24, b"vendor"
    fixed = bytearray(68)
    struct.pack_into("<HBBi", fixed, 0, 1230, 0, 0, 0)
    struct.pack_into("<QQIIB", fixed, 8, 0x80000001, 0x410FD0C0, 0, 0, 0xFF)
    struct.pack_into("<II", fixed, 36, 32, _loc(68, 32))
    struct.pack_into("<II", fixed, 44, 24, _loc(100, 24))
    struct.pack_into("<II", fixed, 52, 6, _loc(124, 6))
    struct.pack_into("<B", fixed, 60, 2)
    struct.pack_into("<i", fixed, 64, 1)
    d = fmt.decode(bytes(fixed) + pei + ctx + oem)
    assert d["mpidr"] == 0x80000001 and d["midr"] == 0x410FD0C0 and d["affinity"] == 0xFF
    assert (d["pei_buf"], d["ctx_buf"], d["oem_buf"]) == (pei, ctx, oem)
    assert d["sev"] == 2 and d["cpu"] == 1 and d["pei_len"] == 32
    # the loader's instantiation: entry ends at the furthest __data_loc payload
    assert tp_instance("f", 17, fmt) == "RASD_TP_PROGRAM(f, 17, 68, 40, 48, 56, -1)"


def test_old_arm_event_has_no_buffers():
    fmt = _fmt(K61, "arm_event")
    assert tp_instance("f", 17, fmt).endswith("-1, -1, -1, -1)")
    assert set(fmt.decode(bytes(fmt.fixed_size))) == {"mpidr", "midr", "running_state",
                                                      "psci_state", "affinity"}


def test_non_standard_event_guid_bytes_and_payload():
    fmt = _fmt(K612, "non_standard_event")
    guid = bytes(range(16, 32))
    fixed = bytearray(56)
    fixed[8:24] = guid
    struct.pack_into("<I", fixed, 40, _loc(56, 4))
    fixed[44] = 1
    struct.pack_into("<II", fixed, 48, 3, _loc(60, 3))
    d = fmt.decode(bytes(fixed) + b"abc\0" + b"\x01\x02\x03")
    assert d["sec_type"] == guid and d["fru_text"] == "abc"
    assert d["sev"] == 1 and d["len"] == 3 and d["buf"] == b"\x01\x02\x03"


def test_aer_event_and_truncation():
    fmt = _fmt(K612, "aer_event")
    fixed = bytearray(fmt.fixed_size)
    struct.pack_into("<IIBB", fixed, 8, _loc(len(fixed), 8), 0x4000, 1, 1)
    struct.pack_into("<4I", fixed, 20, 1, 2, 3, 4)
    d = fmt.decode(bytes(fixed) + b"0000:01\0")
    assert d["dev_name"] == "0000:01" and d["status"] == 0x4000 and d["tlp_header"] == [1, 2, 3, 4]
    assert fmt.decode(bytes(fixed[:12]))["tlp_header"] is None  # cut entry: None, no crash


def test_memory_failure_event():
    fmt = _fmt(K612, "memory_failure_event")
    raw = bytearray(fmt.fixed_size)
    struct.pack_into("<Qii", raw, fmt.field("pfn").offset, 0x494B4, 19, 3)
    d = fmt.decode(bytes(raw))
    assert d == {"pfn": 0x494B4, "type": 19, "result": 3}
