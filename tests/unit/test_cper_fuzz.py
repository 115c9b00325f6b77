"""Bad input: every length and offset in a CPER input is untrusted.

Part 1 is deterministic: truncation at every byte, absurd lengths patched into valid
records (bounded time and memory, clear error), garbage, zeros, unknown GUIDs,
decode_all over concatenations and padding. Part 2 is property-based (hypothesis,
derandomized so CI is reproducible): random bytes, mutated valid records of every
kind, absurd lengths patched in at every length field.

The contract checked everywhere (``check_contract``): ``decode`` raises nothing but
DecodeError; ``try_decode``/``decode_all`` raise nothing; each error has an offset
inside the input and a reason; the record keeps its bytes; ``to_dict`` is JSON; the
text report renders.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rasd.cli.report import format_record
from rasd.decode.cper import Record, decode, decode_all, try_decode
from rasd.decode.errors import DecodeError
from rasd.encode import cper as enc
from vectors import handbuilt as H

# CPU seconds (process_time: other load on the machine does not count) for one input of a
# few KB; decoding one takes about a millisecond, so this only catches runaway loops
TIME_BOUND = 0.5
MEMORY_BOUND = 4 << 20  # tracemalloc peak for a ~1 KB input


def check_record(rec: Record, data: bytes, base: int = 0) -> None:
    assert isinstance(rec, Record)
    assert data[base:].startswith(rec.raw)
    if rec.error is not None:
        assert isinstance(rec.error, DecodeError)
        assert base <= rec.error.offset <= len(data), (rec.error.offset, len(data))
        assert isinstance(rec.error.reason, str) and rec.error.reason
        assert rec.error.partial is rec and rec.error.raw == rec.raw
    json.dumps(rec.to_dict())
    json.dumps(rec.to_dict(include_raw=True))
    format_record(rec, "fuzz")


def check_contract(data: bytes) -> Record | None:
    try:
        rec = decode(data)
    except DecodeError as exc:
        assert exc.partial is not None and exc.partial.error is exc
        assert 0 <= exc.offset <= len(data) and exc.reason
        assert data.startswith(exc.raw)
        rec = exc.partial
    check_record(rec, data)
    again = try_decode(data)
    check_record(again, data)
    assert (again.error is None) == (rec.error is None)
    records = decode_all(data)
    assert records or not data
    pos = 0
    for r in records:
        assert r.offset == pos
        check_record(r, data, r.offset)
        pos += len(r.raw)
    return rec


def bounded(data: bytes, time_bound: float = TIME_BOUND, memory_bound: int = MEMORY_BOUND):
    tracemalloc.start()
    try:
        start = time.process_time()
        rec = check_contract(data)
        elapsed = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < time_bound, elapsed
    assert peak < memory_bound, peak
    return rec


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def multi_section_block() -> bytes:
    """Memory (0x300 header), ARM with four contexts (aligned), PCIe (0x201 header)."""
    arm = H.arm_section(aligned=True)
    entries = (H.entry_header(H.G_PLATFORM_MEM, 2, 0x300, 0, 1, 80, timestamp=H.TS_PRECISE)
               + H.memory80()
               + H.entry_header(H.G_PROC_ARM, 0, 0x300, 0, 0, len(arm), timestamp=H.TS_Y2K) + arm
               + H.entry_header(H.G_PCIE, 1, 0x201, 0, 0, 208) + H.pcie_section())
    return H.status_header(0x31, 0, 0, len(entries), 0) + entries


# --- truncation at every byte ----------------------------------------------------------------

@pytest.mark.parametrize("make", [multi_section_block, H.cper_record],
                         ids=["status_block", "cper_record"])
def test_truncated_at_every_byte(make):
    data = make()
    full = decode(data)
    ends = [s.payload_offset + s.payload_length for s in full.sections]
    for n in range(len(data)):
        cut = data[:n]
        with pytest.raises(DecodeError) as info:
            decode(cut)
        exc = info.value
        assert 0 <= exc.offset <= n and exc.reason
        rec = exc.partial
        assert rec.raw == cut == exc.raw  # nothing lost
        if n >= 4:  # fewer bytes than "CPER" cannot be told apart from a status block
            assert rec.framing == full.framing
        # every section whose bytes all arrived decodes exactly as in the full record
        for sec, end in zip(full.sections, ends):
            if end <= n:
                got = rec.sections[full.sections.index(sec)]
                assert got == sec and got.error is None
        if n >= (20 if full.framing == "status_block" else 128):
            assert rec.header is not None
        got = try_decode(cut)
        assert got.error is not None and got.raw == cut
        records = decode_all(cut)
        if n:
            assert records and records[0].error is not None
        for r in records:
            json.dumps(r.to_dict())
    assert decode(data).error is None


def test_truncated_arm_section_keeps_partial_body():
    data = multi_section_block()
    arm_payload = 20 + 72 + 80 + 72
    # cut inside the third context record of the ARM section
    n = arm_payload + 40 + 4 * 32 + 272 + 144 + 20
    rec = try_decode(data[:n])
    sec = rec.sections[1]
    assert sec.error is not None and rec.error is not None
    assert len(sec.body.error_info) == 4 and len(sec.body.contexts) == 2
    assert sec.body.contexts[1].type == 5
    assert rec.sections[0].body.physical_addr == H.MEM_VALUES["physical_addr"]
    d = rec.to_dict()
    assert d["error"]["offset"] == rec.error.offset and "raw" in d
    assert d["sections"][1]["error"] is not None and d["sections"][1]["body"]["contexts"]


# --- absurd lengths ------------------------------------------------------------------------

ARM_BLOCK = H.status_block_arm()
ARM_P = 20 + 72  # ARM payload offset in ARM_BLOCK
RECORD = H.cper_record()
REC_ARM = 128 + 72 * 3 + 96  # ARM payload offset in RECORD
ABSURD = {
    "data_length_ffffffff": patch(ARM_BLOCK, 12, "<I", 0xFFFFFFFF),
    "data_length_below_64": patch(ARM_BLOCK, 12, "<I", 63),
    "raw_data_length_ffffffff": patch(ARM_BLOCK, 8, "<I", 0xFFFFFFFF),
    "raw_data_offset_huge": patch(patch(ARM_BLOCK, 8, "<I", 16), 4, "<I", 0xFFFFFFF0),
    "raw_data_overlaps_entries": patch(patch(ARM_BLOCK, 8, "<I", 4), 4, "<I", 24),
    "error_data_length_ffffffff": patch(ARM_BLOCK, 20 + 24, "<I", 0xFFFFFFFF),
    "error_data_length_short": patch(ARM_BLOCK, 20 + 24, "<I", 8),
    "err_info_num_65535": patch(ARM_BLOCK, ARM_P + 4, "<H", 0xFFFF),
    "context_info_num_65535": patch(ARM_BLOCK, ARM_P + 6, "<H", 0xFFFF),
    "section_length_41": patch(ARM_BLOCK, ARM_P + 8, "<I", 41),
    "context_size_ffffffff": patch(ARM_BLOCK, ARM_P + 40 + 128 + 4, "<I", 0xFFFFFFFF),
    "err_info_length_0": patch(ARM_BLOCK, ARM_P + 40 + 1, "<B", 0),
    "section_count_65535": patch(RECORD, 10, "<H", 0xFFFF),
    "record_length_1": patch(RECORD, 20, "<I", 1),
    "record_length_ffffffff": patch(RECORD, 20, "<I", 0xFFFFFFFF),
    "descriptor_offset_ffffffff": patch(RECORD, 128, "<I", 0xFFFFFFFF),
    "descriptor_length_ffffffff": patch(RECORD, 132, "<I", 0xFFFFFFFF),
    "descriptor_offset_into_header": patch(RECORD, 128, "<I", 4),
    "record_arm_context_info_num_65535": patch(RECORD, REC_ARM + 6, "<H", 0xFFFF),
    "record_arm_err_info_num_65535": patch(RECORD, REC_ARM + 4, "<H", 0xFFFF),
}
# where the error must point (the offending field, or the end of the bytes present)
ABSURD_OFFSETS = {
    "data_length_ffffffff": len(ARM_BLOCK), "data_length_below_64": 12,
    "error_data_length_ffffffff": 20 + 24, "context_size_ffffffff": ARM_P + 40 + 128 + 4,
    "err_info_length_0": ARM_P + 40 + 1, "record_length_1": 20,
    "record_length_ffffffff": len(RECORD), "descriptor_offset_ffffffff": 128,
    "descriptor_length_ffffffff": 128, "descriptor_offset_into_header": 128,
}


@pytest.mark.parametrize("name", sorted(ABSURD))
def test_absurd_lengths_give_clear_bounded_errors(name):
    data = ABSURD[name]
    rec = bounded(data)
    assert rec.error is not None, name
    if name in ABSURD_OFFSETS:
        assert rec.error.offset == ABSURD_OFFSETS[name], rec.error
    with pytest.raises(DecodeError):
        decode(data)


def test_absurd_lengths_in_a_large_input_stay_bounded():
    # 65535 error-info entries really present (2 MB): decoded, but in bounded time
    infos = H.arm_err_info(0x02, 0) * 0xFFFF
    sec = H.arm_header(0, 0xFFFF, 0, 40 + len(infos), 0, 0, 0, 0, 0) + infos
    block = H.status_header(0x11, 0, 0, 64 + len(sec), 0) + \
        H.entry_header(H.G_PROC_ARM, 0, 0x201, 0, 0, len(sec)) + sec
    start = time.process_time()
    rec = decode(block)
    assert time.process_time() - start < 5
    assert len(rec.sections[0].body.error_info) == 0xFFFF
    # 65535 zero-size contexts (8 bytes each) behind a zero-length error-info list
    ctxs = struct.pack("<HHI", 0, 4, 0) * 0xFFFF
    sec = H.arm_header(0, 0, 0xFFFF, 40 + len(ctxs), 0, 0, 0, 0, 0) + ctxs
    block = H.status_header(0x11, 0, 0, 64 + len(sec), 0) + \
        H.entry_header(H.G_PROC_ARM, 0, 0x201, 0, 0, len(sec)) + sec
    start = time.process_time()
    assert len(decode(block).sections[0].body.contexts) == 0xFFFF
    assert time.process_time() - start < 5


# --- garbage, zeros, unknown GUIDs, concatenation ----------------------------------------

def test_zero_filled_buffers_are_empty_not_errors():
    for size in (20, 64, 1024, 4096):
        rec = bounded(bytes(size))
        assert rec.empty and rec.sections == [] and rec.error is None
        records = decode_all(bytes(size))
        assert all(r.empty and not r.sections for r in records)
    for size in range(1, 20):
        with pytest.raises(DecodeError):
            decode(bytes(size))


@pytest.mark.parametrize("seed", range(4))
def test_garbage_bytes(seed):
    import random
    rnd = random.Random(seed)
    for size in (1, 19, 20, 21, 64, 127, 128, 129, 1000, 4096):
        data = bytes(rnd.getrandbits(8) for _ in range(size))
        bounded(data)
        bounded(b"CPER" + data)
        bounded(b"CPER\x01\x01\xff\xff\xff\xff" + data)


def test_unknown_guid_with_any_length_is_kept_raw():
    for length in (0, 1, 63, 64, 1000):
        payload = bytes(range(256)) * 4
        payload = payload[:length]
        block = H.status_header(0x12, 0, 0, 64 + length, 2) + \
            H.entry_header(H.G_VENDOR, 2, 0x201, 0, 0, length) + payload
        rec = decode(block)
        assert rec.sections[0].body.payload == payload
        assert rec.sections[0].name == "non_standard"


def test_known_guid_with_short_payload_is_a_section_error():
    # a memory section of 40 bytes: below both the 73- and 80-byte layouts
    block = H.status_header(0x12, 0, 0, 64 + 40, 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, 40) + H.memory80()[:40]
    rec = try_decode(block)
    assert rec.error is not None and rec.error.offset == 20 + 64
    assert rec.sections[0].error is not None and rec.sections[0].body is None
    assert rec.complete  # the framing is fine: only the section is bad


def test_decode_all_concatenated_and_zero_padding():
    parts = [H.status_block_memory(), H.cper_record(), H.status_block_arm(True),
             multi_section_block()]
    data = b"".join(parts)
    for tail in (b"", bytes(19), bytes(20), bytes(4096)):
        records = decode_all(data + tail)
        assert [r.raw for r in records] == parts
        assert all(r.error is None for r in records)
    # a truncated record at the end is reported, the ones before are intact
    records = decode_all(data + parts[0][:100])
    assert [r.raw for r in records[:4]] == parts and records[4].error is not None
    # a block the kernel zeroed (block_status 0) and that is cut short is not padding
    zeroed = bytes(4) + parts[0][4:]
    records = decode_all(parts[2] + zeroed[:60])
    assert len(records) == 2 and records[1].empty and records[1].error is not None
    # a broken record in the middle stops the walk (what follows cannot be framed)
    broken = patch(parts[1], 20, "<I", 0xFFFFFFF0)
    records = decode_all(parts[0] + broken + parts[2])
    assert len(records) == 2 and records[1].error is not None
    assert records[0].raw == parts[0]


# --- property-based ----------------------------------------------------------------------

# No deadline: a per-example time limit is a timed assertion, and it fails on a loaded CI
# machine, not on a slow decoder (bench/decode.py measures speed).
FUZZ = settings(derandomize=True, deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def encoded_corpus() -> list[bytes]:
    """Encoded records of every section kind, both framings (the encoder is the
    generator here; its output is checked against the decoder in test_cper_roundtrip)."""
    arm = enc.arm_processor(
        [enc.arm_error_info(0x02, error_info=H.EI_CACHE, physical_fault_addr=0x1000),
         enc.arm_error_info(0x08, error_info=H.EI_BUS)],
        [enc.arm_context(4, list(range(32))), enc.arm_context(5, {"esr_el1": 1}),
         enc.arm_context(8, b"\x90\x42" + bytes(8))],
        mpidr=1, vendor=b"vv", context_stride="aligned16")
    bodies = [
        (enc.memory_error(physical_addr=0x1000, node=1, row=0x1FFFF, chip_id=1), None),
        (enc.memory_error("mem1_legacy", physical_addr=0x2000), None),
        (enc.memory_error("mem2", physical_addr=0x3000, chip_id=2), None),
        (arm, None),
        (enc.pcie(port_type=0, device={"bus": 1}, aer={"uncor_status": 1 << 12}), None),
        (enc.GenericProcessorSection(0x1FFF), None),
        (enc.FirmwareErrorRecordRef(), None),
        (enc.RawSection(b"xyz"), "DEADBEEF-DEAD-BEEF-0011-223344556677"),
    ]
    out = []
    for body, guid in bodies:
        sec = enc.section(body, guid=guid)
        out.append(enc.encode_status_block([sec]))
        out.append(enc.encode_cper_record([sec]))
    every = [enc.section(b, guid=g) for b, g in bodies]
    out += [enc.encode_status_block(every, raw_data=b"raw"), enc.encode_cper_record(every)]
    return out + [H.status_block_memory(), H.status_block_misc(), H.cper_record(),
                  H.status_block_arm(True), multi_section_block()]


CORPUS = encoded_corpus()
corpus_items = st.sampled_from(CORPUS)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    check_contract(data)


@FUZZ
@given(st.binary(max_size=1024), st.sampled_from([b"CPER", b"CPER\x01\x01\xff\xff\xff\xff"]))
def test_fuzz_random_bytes_cper_framing(data, prefix):
    check_contract(prefix + data)


@FUZZ
@given(corpus_items, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                              min_size=1, max_size=8))
def test_fuzz_overwrite_bytes(data, edits):
    b = bytearray(data)
    for pos, value in edits:
        b[pos % len(b)] = value
    check_contract(bytes(b))


@FUZZ
@given(corpus_items, st.lists(st.integers(0, 1 << 20), min_size=1, max_size=16))
def test_fuzz_flip_bits(data, bits):
    b = bytearray(data)
    for bit in bits:
        bit %= len(b) * 8
        b[bit // 8] ^= 1 << bit % 8
    check_contract(bytes(b))


@FUZZ
@given(corpus_items, st.integers(0, 1 << 16), st.integers(0, 1 << 16))
def test_fuzz_splice_and_truncate(data, cut, insert_at):
    cut %= len(data) + 1
    check_contract(data[:cut])
    at = insert_at % (len(data) + 1)
    check_contract(data[:at] + data + data[at:])  # a record inside a record


ABSURD_VALUES = st.one_of(
    st.sampled_from([0, 1, 7, 8, 15, 16, 19, 20, 31, 32, 63, 64, 71, 72, 127, 128, 0x7F, 0xFF,
                     0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0,
                     0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF))


def length_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every length/count/offset field in a record of the corpus,
    found by decoding it (the corpus is valid)."""
    rec = decode(data)
    fields: list[tuple[int, str]] = []
    if rec.framing == "status_block":
        fields += [(4, "<I"), (8, "<I"), (12, "<I"), (0, "<I")]
        for s in rec.sections:
            fields += [(s.offset + 20, "<H"), (s.offset + 24, "<I")]
    else:
        fields += [(10, "<H"), (20, "<I")]
        for s in rec.sections:
            fields += [(s.offset, "<I"), (s.offset + 4, "<I")]
    for s in rec.sections:
        p = s.payload_offset
        if s.name == "processor_arm":
            fields += [(p + 4, "<H"), (p + 6, "<H"), (p + 8, "<I")]
            q = p + 40
            for e in s.body.error_info:
                fields += [(q + 1, "<B")]
                q += e.length
            for c in s.body.contexts:
                fields += [(q + 2, "<H"), (q + 4, "<I")]
                q += 8 + len(c.registers)
                if s.body.context_stride == "aligned16":
                    q += -(8 + len(c.registers)) % 16
    return fields


FIELDS = [(data, length_fields(data)) for data in CORPUS]


@FUZZ
@given(st.sampled_from(FIELDS), st.data())
def test_fuzz_absurd_lengths(item, draw):
    data, fields = item
    b = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        offset, fmt = draw.draw(st.sampled_from(fields))
        value = draw.draw(ABSURD_VALUES) & ((1 << 8 * struct.calcsize(fmt)) - 1)
        struct.pack_into(fmt, b, offset, value)
    check_contract(bytes(b))
