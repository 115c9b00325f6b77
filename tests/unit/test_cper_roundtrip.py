"""Round trips: rasd.encode.cper -> decoder gives the same typed objects back, and
decode -> encode reproduces the bytes, for both framings and every section kind; the
hand-built vectors (tests/unit/vectors/handbuilt.py) re-encode to the same bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rasd.decode.common import Timestamp
from rasd.decode.cper import decode, decode_all
from rasd.decode.cper.model import RecordHeader, StatusBlockHeader
from rasd.encode import cper as enc
from vectors import handbuilt as H

VENDOR_GUID = "DEADBEEF-DEAD-BEEF-0011-223344556677"
FRU = "12345678-9ABC-DEF0-0123-456789ABCDEF"


def arm_body(stride: str = "packed") -> enc.ArmProcessorSection:
    return enc.arm_processor(
        [enc.arm_error_info(0x02, error_info=H.EI_CACHE, physical_fault_addr=0x8000_1000,
                            virt_fault_addr=0xFFFF_0000_0000_1000, flags=0x3, multiple_error=1),
         enc.arm_error_info(0x04, error_info=H.EI_TLB),
         enc.arm_error_info(0x08, error_info=H.EI_BUS, physical_fault_addr=0x2000),
         enc.arm_error_info(0x10, error_info=H.EI_VENDOR)],
        [enc.arm_context(4, list(H.GPR_VALUES)),
         enc.arm_context(5, {"esr_el1": 0x96000010, "far_el1": 0x1234}),
         enc.arm_context(0, list(H.A32_GPR_VALUES)),
         enc.arm_context(7, {"elr_el3": 0xF00}),
         enc.arm_context(8, struct.pack("<HQ", 0x4290, 0x9600_0010))],
        mpidr=0x8100_0300, midr=0x410F_D0C1, affinity_level=3, running_state=1, psci_state=2,
        vendor=b"vendor-bytes", context_stride=stride)


def all_bodies() -> list[tuple[str, object, str | None]]:
    """(id, body, guid for raw sections) for every section kind the decoder knows."""
    return [
        ("mem1", enc.memory_error(physical_addr=0x8000_1000,
                                  physical_addr_mask=0xFFFF_FFFF_FFFF_F000, node=1, card=2,
                                  module=3, bank_group=2, bank_address=7,
                                  device=4, row=0x2_0001, column=5, bit_pos=6, rank=1,
                                  chip_id=3, error_type=2, error_status=0x400,
                                  requestor_id=1, responder_id=2, target_id=3,
                                  mem_array_handle=0x10, mem_dev_handle=0x11), None),
        ("mem1_legacy", enc.memory_error("mem1_legacy", physical_addr=0x4000, node=2,
                                         error_type=3), None),
        ("mem2", enc.memory_error("mem2", physical_addr=0x1_0000_0000, row=0x3_0000,
                                  column=0x1_0000, chip_id=9, status=3, bank=0x0102, rank=7,
                                  mem_dev_handle=0x1_0000), None),
        ("arm_packed", arm_body("packed"), None),
        ("arm_aligned16", arm_body("aligned16"), None),
        ("pcie", enc.pcie(port_type=4, version=(4, 1), command=0x547, status=0x10,
                          device={"segment": 2, "bus": 0x81, "device": 3, "function": 1,
                                  "vendor_id": 0x19E5, "device_id": 0xA120,
                                  "class_code": 0x010802, "slot": 7},
                          serial_number=0x0123_4567_89AB_CDEF,
                          aer={"uncor_status": 1 << 12, "uncor_severity": 1 << 12,
                               "cor_status": 1, "header_log": (1, 2, 3, 4),
                               "root_status": 0x7C000001}), None),
        ("generic", enc.GenericProcessorSection(
            0x1FFF, 2, 4, 1, 1, 0x9, 2, b"\0\0", 0x410FD4F0, b"Brand".ljust(128, b"\0"),
            1, 2, 3, 4, 5), None),
        ("fw_ref_guid", enc.FirmwareErrorRecordRef(2, 2, bytes(6), 0x99, FRU), None),
        ("fw_ref_v1", enc.FirmwareErrorRecordRef(1, 1, bytes(6), 0x98, None), None),
        ("vendor_raw", enc.RawSection(b"\x00\x01\x02vendor"), VENDOR_GUID),
    ]


BODIES = all_bodies()


def make_section(body, guid, framing, i=0):
    if framing == "status_block" and i % 2:
        # revision 0x201: 64-byte entry header, no timestamp
        return enc.section(body, enc.RECOVERABLE, guid=guid, revision=0x0201, fru_text="slot 1",
                           flags=enc.PRIMARY | enc.THRESHOLD_EXCEEDED)
    stamp = Timestamp.from_fields(2026, 1, 2, 3, 4, 5, precise=True) \
        if framing == "status_block" else None
    return enc.section(body, enc.CORRECTED, guid=guid, fru_id=FRU, fru_text="DIMM_C3",
                       timestamp=stamp)


@pytest.mark.parametrize("framing", ["status_block", "cper_record"])
@pytest.mark.parametrize("case", BODIES, ids=[b[0] for b in BODIES])
def test_single_section_roundtrip(framing, case):
    _, body, guid = case
    sec = make_section(body, guid, framing)
    data = enc.encode_status_block([sec]) if framing == "status_block" \
        else enc.encode_cper_record([sec])
    rec = decode(data)
    assert rec.framing == framing and rec.error is None and rec.complete
    assert rec.sections == [sec]  # every compared field: header fields and typed body
    assert rec.sections[0].body == body
    assert enc.encode(rec) == data
    if framing == "status_block":
        assert rec.sections[0].timestamp.iso() == "2026-01-02T03:04:05"


@pytest.mark.parametrize("framing", ["status_block", "cper_record"])
def test_all_kinds_in_one_record(framing):
    sections = [make_section(body, guid, framing, i) for i, (_, body, guid) in enumerate(BODIES)]
    if framing == "status_block":
        data = enc.encode_status_block(sections, raw_data=b"raw\x00data")
    else:
        data = enc.encode_cper_record(sections, notification="sea", record_id=77,
                                      timestamp=Timestamp.from_fields(2025, 12, 31, 23, 59, 59))
    rec = decode(data)
    assert rec.error is None and rec.sections == sections
    assert enc.encode(rec) == data
    if framing == "status_block":
        # worst severity present is RECOVERABLE -> uncorrectable bit, count in [13:4]
        assert rec.header == StatusBlockHeader(0x1 | len(sections) << 4, len(data) - 8, 8,
                                               len(data) - 28, enc.RECOVERABLE)
        assert rec.raw_data == b"raw\x00data"
    else:
        assert rec.header == RecordHeader(
            section_count=len(sections), error_severity=enc.CORRECTED, validation_bits=2,
            record_length=len(data), timestamp=Timestamp.from_fields(2025, 12, 31, 23, 59, 59),
            notification_type="9A78788A-BBE8-11E4-809E-67611E5D46B0", record_id=77)
        assert rec.to_dict()["header"]["notification_type"]["name"] == "sea"


def test_encoder_block_status_defaults():
    mem = enc.section(enc.memory_error(physical_addr=0x1000), enc.CORRECTED)
    rec = decode(enc.encode_status_block([mem, mem, mem]))
    assert rec.header.block_status == 0x2 | 3 << 4 and rec.header.error_severity == 2
    rec = decode(enc.encode_status_block([mem], severity=enc.FATAL))
    assert rec.header.block_status == 0x1 | 1 << 4 and rec.header.error_severity == 1


@pytest.mark.parametrize("vector", [
    H.status_block_memory, H.status_block_misc, H.cper_record,
    lambda: H.status_block_arm(False), lambda: H.status_block_arm(True),
], ids=["memory", "misc", "cper_record", "arm_packed", "arm_aligned16"])
def test_handbuilt_vectors_reencode_to_the_same_bytes(vector):
    data = vector()
    rec = decode(data)
    assert enc.encode(rec) == data
    again = decode(enc.encode(rec))
    assert again.header == rec.header and again.sections == rec.sections


def test_concatenated_records_roundtrip_through_decode_all():
    parts = [H.status_block_memory(), H.cper_record(), H.status_block_arm(True),
             H.status_block_misc()]
    recs = decode_all(b"".join(parts))
    assert [r.framing for r in recs] == ["status_block", "cper_record", "status_block",
                                          "status_block"]
    assert [enc.encode(r) for r in recs] == parts
    assert [r.offset for r in recs] == [0, len(parts[0]), len(parts[0]) + len(parts[1]),
                                        len(parts[0]) + len(parts[1]) + len(parts[2])]


def test_encoder_rejects_inconsistent_requests():
    with pytest.raises(ValueError):
        enc.section(enc.RawSection(b"x"))  # a raw section needs its GUID
    with pytest.raises(ValueError):
        enc.section(enc.memory_error(node=1), revision=0x201, timestamp=Timestamp(0))
    with pytest.raises(TypeError):
        enc.memory_error(not_a_field=1)


# --- property round trips -----------------------------------------------------------------
u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (16, 32, 64))
MEM1_FIELDS = {"error_status": u64, "physical_addr": u64, "physical_addr_mask": u64,
               "node": u16, "card": u16, "module": u16, "bank": u16, "device": u16, "row": u16,
               "column": u16, "bit_pos": u16, "requestor_id": u64, "responder_id": u64,
               "target_id": u64, "error_type": st.integers(0, 255), "rank": u16,
               "mem_array_handle": u16, "mem_dev_handle": u16}
MEM2_FIELDS = {**MEM1_FIELDS, "device": u32, "row": u32, "column": u32, "rank": u32,
               "bit_pos": u32, "chip_id": st.integers(0, 255), "status": st.integers(0, 255),
               "mem_array_handle": u32, "mem_dev_handle": u32}
SETTINGS = settings(max_examples=60, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(variant=st.sampled_from(["mem1", "mem2"]), data=st.data(),
       framing=st.sampled_from(["status_block", "cper_record"]))
def test_memory_fields_roundtrip(variant, data, framing):
    fields = MEM2_FIELDS if variant == "mem2" else MEM1_FIELDS
    values = data.draw(st.fixed_dictionaries({}, optional=fields))
    body = enc.memory_error(variant, **values)
    body.validation_bits = data.draw(u64)
    sec = enc.section(body, data.draw(st.integers(0, 3)))
    raw = enc.encode_status_block([sec]) if framing == "status_block" \
        else enc.encode_cper_record([sec])
    rec = decode(raw)
    assert rec.sections[0].body == body
    assert enc.encode(rec) == raw


@SETTINGS
@given(infos=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 31), u64, u64, u64,
                                st.integers(0, 255), u16), max_size=5),
       ctxs=st.lists(st.tuples(st.integers(0, 8), st.binary(min_size=1, max_size=80)),
                     max_size=4),
       vendor=st.binary(max_size=24), stride=st.sampled_from(["packed", "aligned16"]))
def test_arm_roundtrip_bytes(infos, ctxs, vendor, stride):
    body = enc.ArmProcessorSection(
        validation_bits=0xF, mpidr=1, midr=2,
        error_info=[enc.ArmErrorInfo(0, 32, v, t, m, f, ei, va, pa)
                    for t, v, ei, va, pa, f, m in infos],
        contexts=[enc.ArmContext(0, t, r) for t, r in ctxs], vendor=vendor,
        context_stride=stride)
    raw = enc.encode_status_block([enc.section(body)])
    rec = decode(raw)
    assert rec.error is None
    got = rec.sections[0].body
    # bytes always round-trip; the error-info entries always decode back the same
    assert enc.encode(rec) == raw
    assert got.error_info == body.error_info
    assert (got.err_info_num, got.context_info_num, got.section_length) == \
        (len(infos), len(ctxs), body.section_length)
    assert got.contexts == body.contexts
    padded = any((8 + len(r)) % 16 for _, r in ctxs[:-1])
    if stride == "packed" or padded:
        # the stride is recognisable once a context before the last one needs padding
        assert got == body


def test_raw_data_after_a_gap_reencodes_to_the_same_bytes():
    # §4.1: raw data sits at raw_data_offset, which only has to be >= 20 + data_length
    entry = H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 1, 80) + H.memory80()
    block = H.status_header(0x12, 20 + len(entry) + 8, 4, len(entry), 2) + entry + bytes(8) \
        + b"RAWD"
    rec = decode(block)
    assert rec.error is None and rec.raw_data == b"RAWD"
    assert enc.encode(rec) == block
