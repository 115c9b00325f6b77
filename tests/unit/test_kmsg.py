"""/dev/kmsg records and the RAS line parser.

Line sequences are written the way the kernel prints them: ghes.c prefixes every
line of a status block with "{N}[Hardware Error]: ", cper.c indents sections by
one space and their fields by two, BERT prints unnumbered blocks. The reader is
tested on the real /dev/kmsg (root) and on a SOCK_SEQPACKET socket, which keeps
/dev/kmsg's one-record-per-read framing, for sequence gaps.
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from rasd.sources.kmsg import (KmsgCursor, KmsgReader, RasLineParser, current_boot_id,
                               parse_record)

HW = "[Hardware Error]: "


def recs(lines: list[str], seq0: int = 100, ts0: int = 5_000_000, prio: int = 3, step_us: int = 20):
    """kmsg records as the kernel formats them, one per line, ts a few µs apart."""
    out = []
    for i, line in enumerate(lines):
        raw = f"{prio},{seq0 + i},{ts0 + i * step_us},-;{line}\n".encode()
        out.append(parse_record(raw))
    return out


GHES_MEM = [
    "{1}" + HW + "Hardware error from APEI Generic Hardware Error Source: 2",
    "{1}" + HW + "event severity: recoverable",
    "{1}" + HW + " Error 0, type: recoverable",
    "{1}" + HW + "  section_type: memory error",
    "{1}" + HW + "  error_status: Storage error in DRAM memory (0x0000000000000400)",
    "{1}" + HW + "  physical_address: 0x0000008a5bd6c000",
    "{1}" + HW + "  node:0 card:0 module:0 rank:1 bank:3 bank_group:1 bank_address:1 device:0 "
                 "row:13466 column:928 bit_position:17 requestor_id:0x0000000000000000 "
                 "responder_id:0x0000000000000000 target_id:0x0000000000000000 chip_id:0 ",
    "{1}" + HW + "  error_type: 3, multi-symbol chipkill ECC",
    "{1}" + HW + "  DIMM location: not present. DMI handle: 0x0025 ",
]
MF_LINE = "Memory failure: 0x8a5bd6c: recovery action for dirty LRU page: Recovered"


# ---------------------------------------------------------------- record format

def test_parse_record_with_properties_and_escapes() -> None:
    raw = b"6,339,5140900,-,caller=T1;ghes GHES.0: a\\x09b\n SUBSYSTEM=platform\n DEVICE=+platform:GHES.0\n"
    r = parse_record(raw)
    assert (r.seq, r.level, r.facility, r.ts_us, r.flags) == (339, 6, 0, 5140900, "-")
    assert r.message == "ghes GHES.0: a\tb"
    assert r.props == {"SUBSYSTEM": "platform", "DEVICE": "+platform:GHES.0"}
    assert r.is_kernel


def test_parse_record_user_facility_and_garbage() -> None:
    assert parse_record(b"12,5,1,-;hello\n").facility == 1
    assert parse_record(b"no header here\n") is None
    assert parse_record(b"x,y,z,-;msg\n") is None


# ----------------------------------------------------------------------- parser

def test_ghes_memory_error_block_then_memory_failure() -> None:
    events = RasLineParser().feed_all(recs(GHES_MEM + [MF_LINE]))
    kinds = sorted(e.kind for e in events)
    assert kinds == ["hw_error", "memory_failure"]
    hw = next(e for e in events if e.kind == "hw_error")
    mf = next(e for e in events if e.kind == "memory_failure")
    f = hw.fields
    assert f["origin"] == "ghes" and f["ghes_seqno"] == 1 and f["source_id"] == 2
    assert f["severity"] == "recoverable" and f["partial"] is False
    (sec,) = f["sections"]
    assert sec["section_type"] == "memory error"
    assert sec["physical_address"] == 0x8A5BD6C000
    assert sec["error_status"] == 0x400
    assert sec["error_type"] == 3 and sec["error_type_name"] == "multi-symbol chipkill ECC"
    assert sec["location"]["row"] == 13466 and sec["location"]["bit_position"] == 17
    assert sec["location"]["requestor_id"] == 0 and sec["location"]["chip_id"] == 0
    assert sec["dimm_location"].startswith("not present")
    assert len(hw.lines) == len(GHES_MEM) and hw.seq == 100
    assert mf.fields == {"pfn": 0x8A5BD6C, "page_type": "dirty LRU page", "result": "Recovered"}


def test_corrected_arm_block_with_two_sections_and_old_error_status() -> None:
    lines = [
        "{7}" + HW + "Hardware error from APEI Generic Hardware Error Source: 0",
        "{7}" + HW + "It has been corrected by h/w and requires no further action",
        "{7}" + HW + "event severity: corrected",
        "{7}" + HW + " Error 0, type: corrected",
        "{7}" + HW + "  section_type: ARM processor error",
        "{7}" + HW + "  MIDR: 0x00000000413fd0c1",
        "{7}" + HW + "  Multiprocessor Affinity Register (MPIDR): 0x0000000081080000",
        "{7}" + HW + " Error 1, type: corrected",
        "{7}" + HW + "  fru_text: DIMM A1",
        "{7}" + HW + "  section_type: memory error",
        "{7}" + HW + "  error_status: 0x0000000000000400",  # pre-5.13 format
        "{7}" + HW + "  physical_address: 0x0000000012345000",
        "{7}" + HW + "  physical_address_mask: 0xfffffffffffff000",
    ]
    (ev,) = RasLineParser().feed_all(recs(lines))
    f = ev.fields
    assert f["severity"] == "corrected" and f["corrected_by_hw"] is True and not f["partial"]
    arm, mem = f["sections"]
    assert arm["section_type"] == "ARM processor error" and arm["fields"]["MIDR"] == "0x00000000413fd0c1"
    assert mem["fru_text"] == "DIMM A1" and mem["error_status"] == 0x400
    assert mem["physical_address_mask"] == 0xFFFFFFFFFFFFF000


def test_interleaved_records_from_two_cpus_stay_apart() -> None:
    a = [l.replace("{1}", "{3}") for l in GHES_MEM[:6]]
    b = [
        "{4}" + HW + "Hardware error from APEI Generic Hardware Error Source: 5",
        "{4}" + HW + "event severity: corrected",
        "{4}" + HW + " Error 0, type: corrected",
        "{4}" + HW + "  section_type: PCIe error",
        "{4}" + HW + "  device_id: 0000:01:00.0",
    ]
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3], a[4], b[4], a[5]]
    events = RasLineParser().feed_all(recs(mixed))
    by_n = {e.fields["ghes_seqno"]: e.fields for e in events}
    assert set(by_n) == {3, 4}
    assert by_n[3]["source_id"] == 2 and by_n[3]["sections"][0]["physical_address"] == 0x8A5BD6C000
    assert by_n[4]["source_id"] == 5 and by_n[4]["sections"][0]["section_type"] == "PCIe error"
    assert by_n[4]["sections"][0]["fields"]["device_id"] == "0000:01:00.0"


def test_record_split_by_rate_limiter_and_unrelated_lines() -> None:
    """The ratelimit message and other drivers' lines land in the middle of a block;
    the block still comes out whole and the suppressed count is reported."""
    lines = [l.replace("{1}", "{12}") for l in GHES_MEM]
    split = lines[:4] + ["ghes_print_estatus: 4 callbacks suppressed",
                         "eth0: Link is Up - 25Gbps/Full",
                         "audit: type=1400 audit(1700000000.000:42): apparmor=\"DENIED\""] + lines[4:]
    events = RasLineParser().feed_all(recs(split))
    assert [e.kind for e in events] == ["ghes_suppressed", "hw_error"]
    assert events[0].fields == {"function": "ghes_print_estatus", "count": 4}
    sec = events[1].fields["sections"][0]
    assert sec["physical_address"] == 0x8A5BD6C000 and sec["error_type"] == 3
    assert len(events[1].lines) == len(GHES_MEM)


def test_block_missing_its_head_is_partial() -> None:
    """Reader started (or kmsg overran) mid-block: keep what is there, say it is partial."""
    (ev,) = RasLineParser().feed_all(recs(GHES_MEM[3:]))
    assert ev.fields["partial"] is True and ev.fields["source_id"] is None
    assert ev.fields["sections"] == [] and "section_type: memory error" in ev.fields["unparsed"]


def test_block_closed_by_time_gap_without_flush() -> None:
    p = RasLineParser(gap_us=1_000_000)
    out = [e for r in recs(GHES_MEM) for e in p.feed(r)]
    assert out == []  # still open: more lines could follow
    (late,) = recs(["random: crng reseeded"], seq0=200, ts0=5_000_000 + 3_000_000)
    (ev,) = p.feed(late)
    assert ev.kind == "hw_error" and ev.fields["source_id"] == 2
    assert p.flush() == []


def test_same_number_restarting_closes_previous_block() -> None:
    """A lost header line: a second "event severity" under the same {N} is a new block."""
    lines = GHES_MEM[:4] + ["{1}" + HW + "event severity: fatal", "{1}" + HW + " Error 0, type: fatal"]
    a, b = RasLineParser().feed_all(recs(lines))
    assert a.fields["severity"] == "recoverable" and not a.fields["partial"]
    assert b.fields["severity"] == "fatal" and b.fields["partial"]


def test_bert_records_from_previous_boot() -> None:
    lines = [
        "BERT: Error records from previous boot:",
        HW + "event severity: fatal",
        HW + " Error 0, type: fatal",
        HW + "  section_type: memory error",
        HW + "  physical_address: 0x00000040deadb000",
        HW + "It has been corrected by h/w and requires no further action",
        HW + "event severity: corrected",
        HW + " Error 0, type: corrected",
        HW + "  section_type: ARM processor error",
        HW + "Skipped 3 error records",
        "BERT: Total records found: 5",
    ]
    events = RasLineParser().feed_all(recs(lines, prio=6))
    kinds = [e.kind for e in events]
    assert kinds.count("hw_error") == 2 and kinds.count("bert") == 1
    hw = [e.fields for e in events if e.kind == "hw_error"]
    assert [h["origin"] for h in hw] == ["bert", "bert"]
    assert hw[0]["severity"] == "fatal" and hw[0]["sections"][0]["physical_address"] == 0x40DEADB000
    assert hw[1]["severity"] == "corrected" and hw[1]["corrected_by_hw"] and not hw[1]["partial"]
    summaries = [e.fields for e in events if e.kind == "bert_summary"]
    assert {"skipped": 3} in summaries and {"total": 5} in summaries


def test_one_line_events() -> None:
    lines = [
        "Memory failure: 0x8a5bd6c: Sending SIGBUS to qemu-system-aar:4242 due to hardware memory corruption",
        "0x8a5bd6d: Sending SIGBUS to stress:77 due to hardware memory corruption",
        "[Hardware Error]: GHES: bash:1234: synchronous unrecoverable error (SIGBUS)",
        "Memory failure: 0x1000: already hardware poisoned",
        "SError Interrupt on CPU3, code 0x00000000bf000002 -- SError",
        "SError Interrupt on CPU0, code 0xbe000011 -- SError",  # 5.x prints a 32-bit ESR
        "APEI work queued but not completed",
    ]
    evs = RasLineParser().feed_all(recs(lines, prio=0))
    assert [e.kind for e in evs] == ["sigbus", "sigbus", "ghes_sigbus", "memory_failure_msg",
                                     "serror", "serror", "apei_incomplete"]
    assert evs[0].fields == {"pfn": 0x8A5BD6C, "comm": "qemu-system-aar", "pid": 4242, "origin": "memory_failure"}
    assert evs[1].fields["origin"] == "ghes" and evs[1].fields["pid"] == 77
    assert evs[2].fields == {"comm": "bash", "pid": 1234}
    assert evs[3].fields == {"pfn": 0x1000, "message": "already hardware poisoned"}
    assert evs[4].fields == {"cpu": 3, "esr": 0xBF000002, "description": "SError"}
    assert evs[5].fields["esr"] == 0xBE000011 and evs[0].level == 0


def test_userspace_records_cannot_forge_errors() -> None:
    (forged,) = [parse_record(f"11,9,1,-;{GHES_MEM[0]}\n".encode())]  # facility 1 (user), level 3
    assert RasLineParser().feed_all([forged]) == []
    assert RasLineParser(kernel_only=False).feed_all([forged])[0].kind == "hw_error"


# ----------------------------------------------------------------------- reader

def _seqpacket_reader(cursor: KmsgCursor | None, records: list[str]) -> tuple[KmsgReader, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    for r in records:
        b.send(r.encode())
    return KmsgReader(cursor=cursor, boot_id="boot-A").attach(a.fileno()), a


def test_reader_resumes_from_cursor_and_counts_gaps() -> None:
    lines = [f"6,{s},{s * 10},-;line {s}\n" for s in (5, 6, 7, 8, 12, 13)]
    reader, sock = _seqpacket_reader(KmsgCursor("boot-A", 6), lines)
    got = reader.read()
    assert [r.seq for r in got] == [7, 8, 12, 13]
    assert reader.counters.lost == 3  # 9, 10, 11 overwritten before we read them
    assert reader.cursor == KmsgCursor("boot-A", 13)
    assert reader.read() == []  # EAGAIN: nothing more, no blocking
    sock.close()


def test_reader_other_boot_reads_everything() -> None:
    lines = [f"6,{s},{s},-;x\n" for s in (40, 41)]
    reader, sock = _seqpacket_reader(KmsgCursor("boot-OLD", 999), lines)
    assert [r.seq for r in reader.read()] == [40, 41]
    assert reader.counters.unavailable_at_start == 40 and reader.counters.lost == 0
    sock.close()


def test_cursor_round_trip() -> None:
    c = KmsgCursor("b", 17)
    assert KmsgCursor.from_dict(c.as_dict()) == c


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: writes to and reads /dev/kmsg")


def _write_kmsg(text: str) -> None:
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@needs_root
def test_real_dev_kmsg_round_trip_and_restart() -> None:
    tag = uuid.uuid4().hex
    _write_kmsg(f"<6>rasd-test {tag} one\n")
    with KmsgReader() as r1:
        first = r1.read()
        mine = [r for r in first if tag in r.message]
        assert len(mine) == 1 and mine[0].facility == 1 and mine[0].level == 6
        cursor = r1.cursor
    assert cursor is not None and cursor.boot_id == current_boot_id() and cursor.seq >= mine[0].seq
    # "rasd restarts": only what came after the cursor, nothing re-reported.
    _write_kmsg(f"<3>rasd-test {tag} two\n")
    _write_kmsg(f"<3>{GHES_MEM[0]} {tag}\n")  # a userspace forgery of a GHES line
    with KmsgReader(cursor=cursor) as r2:
        again = r2.read()
    assert [r.message for r in again if tag in r.message] == [
        f"rasd-test {tag} two", f"{GHES_MEM[0]} {tag}"]
    assert all(r.seq > cursor.seq for r in again)
    assert r2.counters.lost == 0
    assert not [e for e in RasLineParser().feed_all(again) if tag in " ".join(e.lines)]


def test_many_open_blocks_are_bounded_and_complete() -> None:
    """A burst of numbered blocks (each printed whole) with a small bound: every block
    comes out complete, and no more than max_open are held at once."""
    lines = [l.replace("{1}", "{%d}" % n) for n in range(10) for l in GHES_MEM]
    p = RasLineParser(max_open=4)
    out = []
    for r in recs(lines):
        out += p.feed(r)
        assert len(p._open) <= 4
    out += p.flush()
    assert sorted(e.fields["ghes_seqno"] for e in out) == list(range(10))
    assert all(not e.fields["partial"] and len(e.fields["sections"]) == 1 for e in out)
