"""CPER decoder against vectors built by hand from reference/arm64-ras.md §4.

The bytes come from tests/unit/vectors/handbuilt.py (struct.pack per the §4 tables and
the kernel structs named there; no rasd code). Expected values are written out here from
the same tables, for the typed objects (dataclass equality: every field) and for the JSON
form (``to_dict()``, compared whole).
"""

from __future__ import annotations

import json
import struct

import pytest

from rasd.decode.common import Timestamp
from rasd.decode.cper import decode, try_decode
from rasd.decode.cper.model import RecordHeader, StatusBlockHeader
from rasd.decode.cper.sections import RawSection
from rasd.decode.cper.sections.arm import ArmContext, ArmErrorInfo, read_type
from rasd.decode.cper.sections.firmware import FirmwareErrorRecordRef
from rasd.decode.cper.sections.generic import GenericProcessorSection
from rasd.decode.cper.sections.memory import MemorySection
from rasd.decode.cper.sections.pcie import PcieSection
from vectors import handbuilt as H

MEM_GUID = "A5BC1114-6F64-4EDE-B863-3E83ED7C83B1"
MEM2_GUID = "61EC04FC-48E6-D813-25C9-8DAA44750B12"
ARM_GUID = "E19E3D16-BC11-11E4-9CAA-C2051D5D46B0"
PCIE_GUID = "D995E954-BBC1-430F-AD91-B44DCB3C6F35"
GENERIC_GUID = "9876CCAD-47B4-4BDB-B65E-16F193C4F3DB"
FW_GUID = "81212A96-09ED-4996-9471-8D729C8E69ED"
PCI_BUS_GUID = "C5753963-3B84-4095-BF78-EDDAD3F9C9DD"
VENDOR_GUID = "DEADBEEF-DEAD-BEEF-0011-223344556677"
SEQ_GUID = "03020100-0504-0706-0809-0A0B0C0D0E0F"
FRU_GUID = "12345678-9ABC-DEF0-0123-456789ABCDEF"
NULL = "00000000-0000-0000-0000-000000000000"
TS_PRECISE_JSON = {"iso": "2026-11-25T04:16:39", "precise": True, "raw": "0x2026112501041639"}


def roundtrip_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


# --- §4.1 status block header, §4.2 entry headers ----------------------------------------

def test_status_block_header_and_entries():
    # §4.1 acpi_hest_generic_status + §4.2 acpi_hest_generic_data(_v300);
    # bytes from handbuilt.status_block_memory
    data = H.status_block_memory()
    rec = decode(data)
    assert rec.framing == "status_block" and rec.error is None and rec.complete
    assert rec.raw == data and len(data) == 20 + 72 + 80 + 64 + 73 + 8
    assert rec.header == StatusBlockHeader(block_status=0x2B, raw_data_offset=20 + 289,
                                           raw_data_length=8, data_length=289, error_severity=0)
    assert rec.header.entry_count == 2
    assert rec.severity == 0
    assert rec.raw_data == b"RAWDATA!"
    e0, e1 = rec.sections
    # entry 0: revision 0x300 -> 72-byte header, payload at 20 + 72
    assert (e0.section_type, e0.severity, e0.revision, e0.validation_bits, e0.flags) == \
        (MEM_GUID, 2, 0x0300, 0x7, 0x09)
    assert (e0.fru_id, e0.fru_text) == (FRU_GUID, "DIMM_A1")
    assert e0.timestamp == Timestamp(int.from_bytes(H.TS_PRECISE, "little"))
    assert e0.timestamp.iso() == "2026-11-25T04:16:39" and e0.timestamp.precise
    assert (e0.offset, e0.payload_offset, e0.payload_length) == (20, 92, 80)
    assert e0.name == "platform_memory"
    # entry 1: revision 0x201 -> 64-byte header, no timestamp
    assert (e1.section_type, e1.severity, e1.revision, e1.validation_bits, e1.flags) == \
        (MEM_GUID, 0, 0x0201, 0, 0)
    assert (e1.fru_id, e1.fru_text, e1.timestamp) == (NULL, "", None)
    assert (e1.offset, e1.payload_offset, e1.payload_length) == (172, 236, 73)

    d = rec.to_dict()
    assert roundtrip_json(d) == d
    assert d["framing"] == "status_block" and d["offset"] == 0 and d["length"] == len(data)
    assert d["severity"] == {"value": 0, "name": "recoverable"}
    assert d["error"] is None and "raw" not in d
    assert d["raw_data"] == "UkFXREFUQSE="  # base64("RAWDATA!")
    assert d["header"] == {
        "block_status": {"value": 0x2B, "uncorrectable": True, "correctable": True,
                         "multiple_uncorrectable": False, "multiple_correctable": True,
                         "entry_count": 2},
        "raw_data_offset": 309, "raw_data_length": 8, "data_length": 289}
    s0, s1 = d["sections"]
    assert {k: v for k, v in s0.items() if k != "body"} == {
        "type": {"guid": MEM_GUID, "name": "platform_memory"},
        "severity": {"value": 2, "name": "corrected"}, "revision": 0x300, "validation_bits": 7,
        "flags": {"value": 9, "names": ["primary", "error_threshold_exceeded"]},
        "offset": 20, "payload_length": 80, "fru_id": FRU_GUID, "fru_text": "DIMM_A1",
        "timestamp": TS_PRECISE_JSON, "kind": "memory", "error": None}
    assert {k: v for k, v in s1.items() if k != "body"} == {
        "type": {"guid": MEM_GUID, "name": "platform_memory"},
        "severity": {"value": 0, "name": "recoverable"}, "revision": 0x201, "validation_bits": 0,
        "flags": {"value": 0, "names": []}, "offset": 172, "payload_length": 73,
        "kind": "memory", "error": None}


def test_include_raw_is_base64_of_the_record():
    import base64
    data = H.status_block_memory()
    assert base64.b64decode(decode(data).to_dict(include_raw=True)["raw"]) == data


@pytest.mark.parametrize("block_status,count", [(0x0, 0), (0x10, 1), (0xFF0, 0xFF),
                                                (0x1000, 0x100), (0x3FF0, 0x3FF), (0xC000, 0)])
def test_block_status_entry_count_is_bits_13_to_4(block_status, count):
    # ACPI 6.5 18.3.2.7.1: error data entry count = block_status[13:4] (reference §4.1)
    assert StatusBlockHeader(block_status=block_status).entry_count == count


def test_timestamp_not_valid_is_not_reported_and_bad_bcd_gives_no_iso():
    data = bytearray(H.status_block_memory())
    data[20 + 22] = 0x3  # entry 0 validation bits: FRU id + text, no timestamp
    d = decode(bytes(data)).to_dict()["sections"][0]
    assert "timestamp" not in d and d["fru_text"] == "DIMM_A1"
    data[20 + 22] = 0x4
    data[20 + 64 + 5] = 0x13  # month 13
    d = decode(bytes(data)).to_dict()["sections"][0]
    assert "fru_id" not in d and "fru_text" not in d
    assert d["timestamp"]["iso"] is None and d["timestamp"]["raw"] == "0x2026132501041639"
    data[20 + 64 + 5] = 0x1A  # not BCD
    assert decode(bytes(data)).sections[0].timestamp.iso() is None
    # not precise, year 1999 (century byte 0x19)
    assert Timestamp(int.from_bytes(H.TS_Y2K, "little")).to_dict() == \
        {"iso": "1999-12-31T23:59:58", "precise": False, "raw": "0x1999123100235958"}


# --- §4.3 memory sections ---------------------------------------------------------------

def test_memory80_all_fields():
    # §4.3 struct cper_sec_mem_err (80 bytes), every validation bit set
    body = decode(H.status_block_memory()).sections[0].body
    v = H.MEM_VALUES
    assert body == MemorySection(variant="mem1", validation_bits=0x3FFFFF, extra=b"", **v)
    assert body.location() == {"node": 1, "card": 2, "module": 3, "rank": 1, "bank_group": 3,
                               "bank_address": 5, "device": 7, "row": 0x2ABCD, "column": 0x123,
                               "bit_pos": 9, "chip_id": 5}
    assert body.physical_addr_valid
    assert body.to_dict() == {
        "variant": "mem1", "validation_bits": "0x3fffff", "physical_addr_valid": True,
        "error_status": {"value": "0x400", "code": {"value": 4, "name": "dram_storage"}},
        "physical_addr": "0x8012345000", "physical_addr_mask": "0xfffffffffffff000",
        "location": {"node": 1, "card": 2, "module": 3, "rank": 1, "bank_group": 3,
                     "bank_address": 5, "device": 7, "row": 0x2ABCD, "column": 0x123,
                     "bit_pos": 9, "chip_id": 5},
        "requestor_id": "0x1111", "responder_id": "0x2222", "target_id": "0x3333",
        "error_type": {"value": 3, "name": "multi_bit_ecc"},
        "mem_array_handle": 0x10, "mem_dev_handle": 0x22}
    text = "\n".join(body.describe())
    assert "multi_bit_ecc" in text and "0x8012345000" in text and "0x0022" in text


def test_memory_location_without_bank_split_row_ext_or_chip():
    # bank valid (0x40) alone: the whole u16 is the bank; row without ROW_EXT (0x40000) is
    # 16 bits; CHIP_ID (0x200000) clear: no chip id even though `extended` carries one.
    valid = 0x2 | 0x40 | 0x100 | 0x8000
    block = H.status_header(0x12, 0, 0, 64 + 80, 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, 80) + H.memory80(validation=valid)
    body = decode(block).sections[0].body
    assert body.location() == {"rank": 1, "bank": 0x0305, "row": 0xABCD}
    # only group valid: group listed, bank dropped
    body.validation_bits = 0x40 | 0x80000
    assert body.location() == {"bank_group": 3}
    # PA not valid: unlocatable
    body.validation_bits = 0
    assert body.to_dict() == {"variant": "mem1", "validation_bits": "0x0",
                              "physical_addr_valid": False, "location": {}}
    assert any("NOT VALID" in line for line in body.describe())


def test_memory73_legacy_layout():
    # §4.3 "old UEFI 2.1/2.2 layout (cper_sec_mem_err_old) is 73 bytes and ends at error_type"
    body = decode(H.status_block_memory()).sections[1].body
    v = H.MEM_LEGACY_VALUES
    expected = MemorySection(variant="mem1_legacy", validation_bits=H.MEM_LEGACY_VALID,
                             **{k: v[k] for k in ("error_status", "physical_addr",
                                                  "physical_addr_mask", "node", "card", "module",
                                                  "bank", "device", "row", "column", "bit_pos",
                                                  "requestor_id", "responder_id", "target_id",
                                                  "error_type")})
    assert body == expected  # extended, rank and the handles are beyond byte 73: zero
    assert body.to_dict() == {
        "variant": "mem1_legacy", "validation_bits": "0x410b", "physical_addr_valid": True,
        "error_status": {"value": "0x1a00", "code": {"value": 26, "name": "read_of_poisoned_data"}},
        "physical_addr": "0x40000000", "location": {"node": 4, "row": 0x77},
        "error_type": {"value": 2, "name": "single_bit_ecc"}}


def test_memory2_section_96_bytes():
    # UEFI 2.10 Table N-35, GUID 61EC04FC-48E6-D813-25C9-8DAA44750B12 (inside the CPER record)
    rec = decode(H.cper_record())
    sec = rec.sections[0]
    assert sec.section_type == MEM2_GUID and sec.name == "platform_memory2"
    assert sec.payload_length == 96
    assert sec.body == MemorySection(variant="mem2", validation_bits=H.MEM2_ALL_VALID,
                                     **H.MEM2_VALUES)
    assert sec.body.to_dict() == {
        "variant": "mem2", "validation_bits": "0x3fffff", "physical_addr_valid": True,
        "error_status": {"value": "0x500", "code": {"value": 5, "name": "tlb_storage"}},
        "physical_addr": "0x123456000", "physical_addr_mask": "0xfffff000",
        "location": {"node": 9, "card": 8, "module": 7, "rank": 3, "bank_group": 0x0A,
                     "bank_address": 0x0B, "device": 0x10002, "row": 0x30004,
                     "column": 0x50006, "bit_pos": 0x40, "chip_id": 6},
        "requestor_id": "0xaaaa", "responder_id": "0xbbbb", "target_id": "0xcccc",
        "error_type": {"value": 14, "name": "scrub_uncorrected_error"}, "status": 0x5A,
        "mem_array_handle": 0x10010, "mem_dev_handle": 0x20020}
    # mem2 numbers its validation bits differently: bit 12 is chip id, bit 10 rank
    sec.body.validation_bits = 1 << 12 | 1 << 10
    assert sec.body.location() == {"rank": 3, "chip_id": 6}
    assert not sec.body.physical_addr_valid


def test_memory_extra_bytes_past_layout_are_kept():
    data = H.memory80() + b"\xEE\xFF"
    block = H.status_header(0x12, 0, 0, 64 + len(data), 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, len(data)) + data
    body = decode(block).sections[0].body
    assert body.variant == "mem1" and body.extra == b"\xEE\xFF"
    assert body.to_dict()["extra_bytes"] == 2


# --- §4.4 ARM processor section ---------------------------------------------------------

EXPECTED_INFOS = [
    ArmErrorInfo(0, 32, 0x1F, 0x02, 3, 0x3, H.EI_CACHE, 0xFFFF_8000_1234_5678, 0x80_1234_5678),
    ArmErrorInfo(0, 32, 0x14, 0x04, 0, 0, H.EI_TLB, 0, 0x4000),
    ArmErrorInfo(0, 32, 0x0C, 0x08, 0, 0x4, H.EI_BUS, 0x1000, 0),
    ArmErrorInfo(0, 32, 0x06, 0x10, 0, 0x8, H.EI_VENDOR, 0, 0),
]
EXPECTED_INFO_JSON = [
    {"version": 0, "length": 32, "validation_bits": 0x1F,
     "type": {"value": 2, "names": ["cache"], "reading": "bitmask", "ambiguous": True,
              "enum_reading": "bus", "bitmask_reading": ["cache"]},
     "multiple_error": 3, "flags": {"value": 3, "names": ["first", "last"]},
     "error_info": {"value": hex(H.EI_CACHE),
                    "transaction_type": {"value": 1, "name": "data_access"},
                    "operation": {"value": 3, "name": "data_read"}, "level": 2,
                    "processor_context_corrupt": True, "corrected": False, "precise_pc": True,
                    "restartable_pc": False},
     "virt_fault_addr": "0xffff800012345678", "physical_fault_addr": "0x8012345678"},
    {"version": 0, "length": 32, "validation_bits": 0x14,
     "type": {"value": 4, "names": ["tlb"], "reading": "bitmask", "ambiguous": False,
              "enum_reading": "reserved_4", "bitmask_reading": ["tlb"]},
     "error_info": {"value": hex(H.EI_TLB),
                    "operation": {"value": 7, "name": "local_management"}, "level": 1},
     "physical_fault_addr": "0x4000"},
    {"version": 0, "length": 32, "validation_bits": 0x0C,
     "type": {"value": 8, "names": ["bus"], "reading": "bitmask", "ambiguous": False,
              "enum_reading": "reserved_8", "bitmask_reading": ["bus"]},
     "error_info": {"value": hex(H.EI_BUS),
                    "transaction_type": {"value": 2, "name": "generic"},
                    "operation": {"value": 4, "name": "data_write"}, "level": 0,
                    "processor_context_corrupt": False, "corrected": True,
                    "precise_pc": False, "restartable_pc": True,
                    "participation_type": {"value": 2, "name": "local_processor_observed"},
                    "timeout": True, "address_space": {"value": 3, "name": "device_memory"},
                    "memory_attributes": 0x1A5, "access_mode": True},
     "virt_fault_addr": "0x1000"},
    # micro-architectural/vendor: error_info is vendor defined, no sub-fields (cper-arm.c)
    {"version": 0, "length": 32, "validation_bits": 0x06,
     "type": {"value": 16, "names": ["micro_architectural"], "reading": "bitmask",
              "ambiguous": False, "enum_reading": "reserved_16",
              "bitmask_reading": ["micro_architectural"]},
     "flags": {"value": 8, "names": ["overflow"]},
     "error_info": {"value": "0xdead00000007ffff"}},
]
GPR_JSON = {**{f"x{i}": hex(0x1000 + i) for i in range(31)}, "sp": "0xffff0000deadbeef"}
EL1_NAMES = ["elr_el1", "esr_el1", "far_el1", "isr_el1", "mair_el1", "midr_el1", "mpidr_el1",
             "sctlr_el1", "sp_el0", "sp_el1", "spsr_el1", "tcr_el1", "tpidr_el0", "tpidr_el1",
             "tpidrro_el0", "ttbr0_el1", "ttbr1_el1"]  # UEFI Table N-25, in order
EXPECTED_CONTEXTS_JSON = [
    {"version": 0, "type": {"value": 4, "name": "aarch64_gpr"}, "size": 256,
     "registers": GPR_JSON},
    {"version": 0, "type": {"value": 5, "name": "aarch64_el1"}, "size": 136,
     "registers": {n: hex(0xE100 + i) for i, n in enumerate(EL1_NAMES)}},
    {"version": 0, "type": {"value": 0, "name": "aarch32_gpr"}, "size": 64,
     "registers": {f"r{i}": hex(0x3200 + i) for i in range(16)}},
    {"version": 0, "type": {"value": 8, "name": "misc"}, "size": 20,
     "registers": {"s3_0_c5_c2_0": "0x96000010", "s3_0_c0_c0_0": "0x410fd0c1"}},
]


@pytest.mark.parametrize("aligned", [False, True], ids=["packed", "aligned16"])
def test_arm_processor_section(aligned):
    # §4.4 cper_sec_proc_arm + cper_arm_err_info x4 + cper_arm_ctx_info x4 + vendor bytes
    data = H.status_block_arm(aligned)
    rec = decode(data)
    sec = rec.sections[0]
    assert (sec.section_type, sec.name, sec.revision, sec.severity) == (ARM_GUID, "processor_arm",
                                                                        0x300, 0)
    assert sec.timestamp.iso() == "1999-12-31T23:59:58" and not sec.timestamp.precise
    body = sec.body
    payload_len = len(H.arm_section(aligned))
    assert (body.validation_bits, body.err_info_num, body.context_info_num, body.section_length,
            body.affinity_level, body.reserved, body.mpidr, body.midr, body.running_state,
            body.psci_state) == (0xF, 4, 4, payload_len, 2, b"\0\0\0", H.ARM_MPIDR, H.ARM_MIDR,
                                 1, 0x12)
    assert body.error_info == EXPECTED_INFOS
    assert body.contexts == [
        ArmContext(0, 4, struct.pack("<32Q", *H.GPR_VALUES)),
        ArmContext(0, 5, struct.pack("<17Q", *H.EL1_VALUES)),
        ArmContext(0, 0, struct.pack("<16I", *H.A32_GPR_VALUES)),
        ArmContext(0, 8, b"".join(struct.pack("<HQ", e, v) for e, v in H.MISC_REGS)),
    ]
    assert body.context_stride == ("aligned16" if aligned else "packed")
    assert body.vendor == H.ARM_VENDOR
    regs, rest = body.contexts[0].named_registers()
    assert list(regs) == [f"x{i}" for i in range(31)] + ["sp"] and rest == b""
    assert regs["x30"] == 0x1000 + 30 and regs["sp"] == 0xFFFF_0000_DEAD_BEEF
    assert body.to_dict() == {
        "validation_bits": 0xF, "err_info_num": 4, "context_info_num": 4,
        "section_length": payload_len, "mpidr": "0x81000100", "affinity_level": 2,
        "midr": "0x410fd0c1", "running_state": 1, "psci_state": 0x12,
        "error_info": EXPECTED_INFO_JSON, "contexts": EXPECTED_CONTEXTS_JSON,
        "context_stride": "aligned16" if aligned else "packed",
        "vendor": H.ARM_VENDOR.hex()}
    d = rec.to_dict()
    assert roundtrip_json(d) == d and d["sections"][0]["kind"] == "arm_processor"
    text = "\n".join(body.describe())
    assert "MPIDR 0x81000100" in text and "type byte 0x2, bitmask reading, ambiguous" in text
    assert "PA 0x8012345678" in text and "context 0: aarch64_gpr (256 bytes)" in text


def test_arm_validation_bits_hide_fields():
    data = bytearray(H.arm_section())
    struct.pack_into("<I", data, 0, 0)  # no MPIDR, affinity, running state
    for i in range(4):
        struct.pack_into("<H", data, 40 + 32 * i + 2, 0)  # error info: nothing valid
    block = H.status_header(0x11, 0, 0, 64 + len(data), 0) + \
        H.entry_header(H.G_PROC_ARM, 0, 0x201, 0, 0, len(data)) + bytes(data)
    d = decode(block).sections[0].body.to_dict()
    assert "mpidr" not in d and "affinity_level" not in d and "running_state" not in d
    assert d["midr"] == "0x410fd0c1"
    for info in d["error_info"]:
        assert set(info) == {"version", "length", "validation_bits", "type"}


@pytest.mark.parametrize("raw,auto,enum_,bitmask,ambiguous", [
    (0, ["cache"], ["cache"], [], False),
    (1, ["tlb"], ["tlb"], ["reserved_bit0"], False),
    (2, ["cache"], ["bus"], ["cache"], True),  # bus (UEFI <= 2.9) vs cache (2.9A+)
    (3, ["micro_architectural"], ["micro_architectural"], ["reserved_bit0", "cache"], False),
    (4, ["tlb"], ["reserved_4"], ["tlb"], False),
    (8, ["bus"], ["reserved_8"], ["bus"], False),
    (0x10, ["micro_architectural"], ["reserved_16"], ["micro_architectural"], False),
    (0x06, ["cache", "tlb"], ["reserved_6"], ["cache", "tlb"], False),
    (0x20, ["reserved_bit5"], ["reserved_32"], ["reserved_bit5"], False),
])
def test_arm_type_byte_enum_and_bitmask(raw, auto, enum_, bitmask, ambiguous):
    # reference §4.4 "type encoding, a version hazard"
    assert read_type(raw, "auto")[0] == auto and read_type(raw, "auto")[2] == ambiguous
    assert read_type(raw, "enum") == (enum_, "enum", ambiguous)
    assert read_type(raw, "bitmask") == (bitmask, "bitmask", ambiguous)


def test_arm_enum_reading_changes_error_info_interpretation():
    # Type byte 2 with the enum reading is a bus error: bus-only sub-fields appear and the
    # operation table is the bus one; with the bitmask reading it is a cache error.
    info = ArmErrorInfo(0, 32, 0x4, 0x02, 0, 0, H.EI_BUS)
    as_bus = info.to_dict("enum")
    assert as_bus["type"]["names"] == ["bus"] and as_bus["type"]["reading"] == "enum"
    assert as_bus["error_info"]["participation_type"] == {"value": 2,
                                                          "name": "local_processor_observed"}
    as_cache = info.to_dict("bitmask")
    assert as_cache["type"]["names"] == ["cache"]
    assert "participation_type" not in as_cache["error_info"]
    assert "timeout" not in as_cache["error_info"]
    # cache operation 8 "snooping" vs TLB 8 "external_management" vs bus: none
    for type_byte, reading, name in ((0, "enum", "snooping"), (1, "enum", "external_management"),
                                     (2, "enum", "unknown")):
        e = ArmErrorInfo(0, 32, 0x4, type_byte, 0, 0, 0x2 | 8 << 18)
        assert e.to_dict(reading)["error_info"]["operation"] == {"value": 8, "name": name}
    # the section applies its type_reading to every entry
    body = decode(H.status_block_arm()).sections[0].body
    body.type_reading = "enum"
    types = [e["type"] for e in body.to_dict()["error_info"]]
    assert [t["names"] for t in types] == [["bus"], ["reserved_4"], ["reserved_8"],
                                           ["reserved_16"]]


def test_arm_other_context_types_and_err_info_length_step():
    # EL2 (type 6, 15 regs, Table N-26) and EL3 (type 7, 10 regs, Table N-27); an
    # error-info entry whose length says 40 keeps 8 extra bytes and steps by 40.
    el2 = H.arm_context(6, struct.pack("<15Q", *range(0x200, 0x20F)))
    el3 = H.arm_context(7, struct.pack("<10Q", *range(0x300, 0x30A)) + b"\x99")
    info = H.arm_err_info(0x02, 0x10, phys=0x1234, length=40) + b"EXTRA!!!"
    body_bytes = info + el2 + el3
    sec = H.arm_header(0x1, 1, 2, 40 + len(body_bytes), 0, 0x1, 0x2, 0, 0) + body_bytes
    block = H.status_header(0x11, 0, 0, 64 + len(sec), 0) + \
        H.entry_header(H.G_PROC_ARM, 0, 0x201, 0, 0, len(sec)) + sec
    body = decode(block).sections[0].body
    assert body.error_info[0].length == 40 and body.error_info[0].extra == b"EXTRA!!!"
    assert body.error_info[0].physical_fault_addr == 0x1234
    c2, c3 = body.contexts
    regs2, rest2 = c2.named_registers()
    assert list(regs2) == ["elr_el2", "esr_el2", "far_el2", "hacr_el2", "hcr_el2", "hpfar_el2",
                           "mair_el2", "sctlr_el2", "sp_el2", "spsr_el2", "tcr_el2",
                           "tpidr_el2", "ttbr0_el2", "vtcr_el2", "vttbr_el2"]
    assert regs2["vttbr_el2"] == 0x20E and rest2 == b""
    regs3, rest3 = c3.named_registers()
    assert regs3["elr_el3"] == 0x300 and regs3["ttbr0_el3"] == 0x309 and rest3 == b"\x99"
    assert c3.to_dict()["unnamed_bytes"] == "99"
    assert body.vendor == b""


# --- §4.5 PCIe, processor generic, firmware reference, raw ---------------------------------

def test_pcie_section():
    # §4.5 struct cper_sec_pcie (208 bytes), AER per struct aer_capability_regs
    sec = decode(H.status_block_misc()).sections[0]
    assert (sec.section_type, sec.name, sec.severity, sec.flags, sec.fru_id) == \
        (PCIE_GUID, "pcie", 1, 0x05, SEQ_GUID)
    body = sec.body
    aer = H.pcie_section()[112:]
    assert body == PcieSection(0xFF, 4, 1, 4, b"\0\0", 0x0547, 0x4010, 0,
                               H.pcie_section()[24:40], 0x89ABCDEF, 0x01234567, 0x2000, 0x0003,
                               H.PCIE_CAPABILITY, aer, b"")
    a = H.AER_REGS
    assert body.to_dict() == {
        "validation_bits": 0xFF, "port_type": {"value": 4, "name": "root_port"},
        "version": "4.1", "command": 0x0547, "status": 0x4010,
        "device": {"vendor_id": 0x19E5, "device_id": 0xA120, "class_code": 0x060400,
                   "segment": 1, "bus": 0x80, "device": 0x1F, "function": 2,
                   "secondary_bus": 0x81, "slot": 5, "bdf": "0001:80:1f.2"},
        "serial_number": "0x123456789abcdef",
        "bridge": {"secondary_status": 0x2000, "control": 0x0003},
        "capability": H.PCIE_CAPABILITY.hex(),
        "aer": {"header": a["header"], "uncor_status": a["uncor_status"],
                "uncor_mask": a["uncor_mask"], "uncor_severity": a["uncor_severity"],
                "cor_status": a["cor_status"], "cor_mask": a["cor_mask"],
                "cap_control": a["cap_control"], "root_command": 7, "root_status": 0x7C000001,
                "cor_source_id": 0x8000, "uncor_source_id": 0x8008,
                "header_log": ["0x4a000001", "0x0100000f", "0xfee00000", "0x00000000"],
                "uncorrectable": ["data_link_protocol", "poisoned_tlp", "completion_timeout",
                                  "bit27"],
                "correctable": ["receiver_error", "bad_tlp"]}}
    text = "\n".join(body.describe())
    assert "0001:80:1f.2" in text and "poisoned_tlp" in text


def test_pcie_validation_bits_select_fields():
    data = bytearray(H.pcie_section())
    struct.pack_into("<Q", data, 0, 0x8 | 0x80)  # the two bits the kernel needs for AER
    block = H.status_header(0x11, 0, 0, 64 + 208, 1) + \
        H.entry_header(H.G_PCIE, 1, 0x201, 0, 0, 208) + bytes(data)
    d = decode(block).sections[0].body.to_dict()
    assert set(d) == {"validation_bits", "device", "aer"}


def test_processor_generic_section():
    # UEFI N.2.4.1 struct cper_sec_proc_generic (192 bytes)
    sec = decode(H.status_block_misc()).sections[1]
    assert (sec.section_type, sec.name, sec.fru_text, sec.validation_bits) == \
        (GENERIC_GUID, "processor_generic", "CPU0", 2)
    assert sec.body == GenericProcessorSection(
        0x1FFF, 2, 4, 0x05, 2, 0x09, 1, b"\0\0", 0x410FD4F0, H.GENERIC_BRAND.ljust(128, b"\0"),
        0x81010000, 0x80_0000_1000, 0xA, 0xB, 0xFFFF_8000_0810_0000, b"")
    assert sec.body.to_dict() == {
        "validation_bits": 0x1FFF, "proc_type": {"value": 2, "name": "arm"},
        "proc_isa": {"value": 4, "name": "arm_a64"},
        "proc_error_type": {"value": 5, "names": ["cache", "bus"]},
        "operation": {"value": 2, "name": "data_write"},
        "flags": {"value": 9, "names": ["restartable", "corrected"]}, "level": 1,
        "cpu_version": "0x410fd4f0", "cpu_brand": "Neoverse-V2 rasd test CPU",
        "proc_id": "0x81010000", "target_addr": "0x8000001000", "requestor_id": "0xa",
        "responder_id": "0xb", "ip": "0xffff800008100000"}
    sec.body.validation_bits = 0x1 | 0x1000
    assert sec.body.to_dict() == {"validation_bits": 0x1001,
                                  "proc_type": {"value": 2, "name": "arm"},
                                  "ip": "0xffff800008100000"}


def test_firmware_error_record_reference_with_and_without_guid():
    # UEFI N.2.10 struct cper_sec_fw_err_rec_ref: 16 bytes (revision 0/1) or 32 (GUID)
    secs = decode(H.status_block_misc()).sections
    with_guid, without = secs[2].body, secs[3].body
    assert secs[2].section_type == FW_GUID and secs[2].severity == 3
    assert with_guid == FirmwareErrorRecordRef(2, 2, bytes(6), 0x1122334455667788, FRU_GUID, b"")
    assert with_guid.to_dict() == {
        "record_type": {"value": 2, "name": "soc_firmware_error_record_type2"}, "revision": 2,
        "record_identifier": "0x1122334455667788", "record_identifier_guid": FRU_GUID}
    assert without == FirmwareErrorRecordRef(1, 1, bytes(6), 0xABCD, None, b"")
    assert without.to_dict() == {
        "record_type": {"value": 1, "name": "soc_firmware_error_record_type1"}, "revision": 1,
        "record_identifier": "0xabcd"}


def test_unknown_and_undecoded_guids_kept_raw():
    secs = decode(H.status_block_misc()).sections
    vendor, pci_bus = secs[4], secs[5]
    assert vendor.section_type == VENDOR_GUID and vendor.name == "non_standard"
    assert vendor.body == RawSection(b"\x01\x02\x03\x04\x05")
    assert vendor.flags == 0x20
    assert vendor.to_dict()["body"] == {"length": 5, "payload": "0102030405"}
    assert vendor.to_dict()["flags"] == {"value": 0x20, "names": ["latent_error"]}
    assert pci_bus.section_type == PCI_BUS_GUID and pci_bus.name == "pci_pcix_bus"
    assert pci_bus.body == RawSection(b"abc") and pci_bus.to_dict()["kind"] == "non_standard"


def test_misc_block_header_and_offsets():
    data = H.status_block_misc()
    rec = decode(data)
    assert rec.header == StatusBlockHeader(0x65, 0, 0, len(data) - 20, 1)
    assert rec.header.entry_count == 6 == len(rec.sections)
    assert [s.offset for s in rec.sections] == [20, 292, 548, 644, 724, 793]
    assert [s.payload_offset for s in rec.sections] == [84, 356, 612, 708, 788, 857]
    assert rec.to_dict()["header"]["block_status"] == {
        "value": 0x65, "uncorrectable": True, "correctable": False,
        "multiple_uncorrectable": True, "multiple_correctable": False, "entry_count": 6}


# --- UEFI CPER record --------------------------------------------------------------------

def test_cper_record_header_and_descriptors():
    # §4.2 "Full CPER record header" (cper_record_header, 128 bytes) + 72-byte descriptors
    data = H.cper_record()
    rec = decode(data)
    assert rec.framing == "cper_record" and rec.complete and rec.raw == data
    assert rec.header == RecordHeader(
        revision=0x0101, signature_end=0xFFFFFFFF, section_count=3, error_severity=0,
        validation_bits=0x7, record_length=len(data),
        timestamp=Timestamp(int.from_bytes(H.TS_PRECISE, "little")), platform_id=SEQ_GUID,
        partition_id=FRU_GUID, creator_id=VENDOR_GUID,
        notification_type="3D61A466-AB40-409A-A698-F362D464B38F",
        record_id=0x0102030405060708, flags=0x5, persistence_information=0x55AA)
    mem2, arm, vendor = rec.sections
    arm_len = len(H.arm_section())
    assert [(s.section_type, s.severity, s.revision, s.validation_bits, s.flags, s.fru_id,
             s.fru_text, s.timestamp) for s in rec.sections] == [
        (MEM2_GUID, 2, 0x300, 0x3, 0x01, FRU_GUID, "DIMM_B2", None),
        (ARM_GUID, 0, 0x300, 0x0, 0x00, NULL, "", None),
        (VENDOR_GUID, 3, 0x200, 0x2, 0x08, NULL, "vendor fru", None)]
    assert [s.offset for s in rec.sections] == [128, 200, 272]  # descriptor offsets
    assert [s.payload_offset for s in rec.sections] == [344, 440, 440 + arm_len]
    assert [s.payload_length for s in rec.sections] == [96, arm_len, 7]
    assert arm.body.error_info == EXPECTED_INFOS and len(arm.body.contexts) == 4
    assert vendor.body == RawSection(b"\xAA" * 7)
    d = rec.to_dict()
    assert roundtrip_json(d) == d
    assert d["framing"] == "cper_record" and d["length"] == len(data)
    assert d["severity"] == {"value": 0, "name": "recoverable"}
    assert d["header"] == {
        "revision": 0x101, "section_count": 3, "validation_bits": 7, "record_length": len(data),
        "creator_id": VENDOR_GUID,
        "notification_type": {"guid": "3D61A466-AB40-409A-A698-F362D464B38F", "name": "boot"},
        "record_id": "0x102030405060708",
        "flags": {"value": 5, "names": ["recovered", "simulated"]},
        "persistence_information": "0x55aa", "platform_id": SEQ_GUID,
        "timestamp": TS_PRECISE_JSON, "partition_id": FRU_GUID}
    assert [s["type"] for s in d["sections"]] == [
        {"guid": MEM2_GUID, "name": "platform_memory2"},
        {"guid": ARM_GUID, "name": "processor_arm"},
        {"guid": VENDOR_GUID, "name": "non_standard"}]
    assert d["sections"][0]["fru_id"] == FRU_GUID and d["sections"][0]["fru_text"] == "DIMM_B2"
    assert "fru_id" not in d["sections"][2] and d["sections"][2]["fru_text"] == "vendor fru"
    assert d["sections"][1]["body"]["error_info"] == EXPECTED_INFO_JSON


def test_cper_record_validation_bits_hide_header_fields():
    data = bytearray(H.cper_record())
    struct.pack_into("<I", data, 16, 0)
    d = decode(bytes(data)).to_dict()["header"]
    assert "platform_id" not in d and "timestamp" not in d and "partition_id" not in d


def test_cper_record_bad_signature_end_is_an_error():
    data = bytearray(H.cper_record())
    struct.pack_into("<I", data, 6, 0)
    rec = try_decode(bytes(data))
    assert rec.error is not None and rec.error.offset == 6
    assert len(rec.sections) == 3  # the sections still decode


@pytest.mark.parametrize("bit", [0x8000, 0x10000, 0x20000, 0x40000, 0x200000, 1 << 40])
def test_memory73_with_validation_bits_beyond_the_structure_is_rejected(bit):
    # cper.c cper_print_mem: a 73-byte section with validation bits at or above
    # CPER_MEM_VALID_RANK_NUMBER (0x8000) is "valid bits set for fields beyond structure"
    payload = H.memory80(H.MEM_LEGACY_VALUES, H.MEM_LEGACY_VALID | bit)[:73]
    block = H.status_header(0x12, 0, 0, 64 + 73, 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, 73) + payload
    rec = try_decode(block)
    assert rec.error is not None and rec.error.offset == 20 + 64
    assert "beyond" in rec.error.reason
    sec = rec.sections[0]
    assert sec.error is not None
    assert sec.body.variant == "mem1_legacy" and sec.body.physical_addr == 0x4000_0000
    # just below the limit is fine
    ok = H.memory80(H.MEM_LEGACY_VALUES, 0x7FFF)[:73]
    block = H.status_header(0x12, 0, 0, 64 + 73, 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, 73) + ok
    assert decode(block).sections[0].body.validation_bits == 0x7FFF


def test_memory_between_73_and_80_bytes_keeps_the_tail():
    from rasd.encode.cper import encode
    payload = memory = H.memory73() + b"\xAB\xCD"
    block = H.status_header(0x12, 0, 0, 64 + len(payload), 2) + \
        H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 0, len(payload)) + memory
    rec = decode(block)
    assert rec.sections[0].body.variant == "mem1_legacy"
    assert rec.sections[0].body.extra == b"\xAB\xCD"
    assert encode(rec) == block


@pytest.mark.parametrize("declared_delta", [+64, -100])
def test_arm_section_length_disagreeing_with_the_descriptor_is_reported(declared_delta):
    """section_length is firmware's second opinion on the section size: when it disagrees
    with the descriptor, the arrays stay inside the smaller bound and the decode says so."""
    payload = bytearray(H.arm_section(False))
    declared = len(payload) + declared_delta
    struct.pack_into("<I", payload, 8, declared)  # section_length, after bits + 2 counts
    e0 = H.entry_header(H.G_PROC_ARM, 0, 0x0300, 0x4, 0x01, len(payload),
                        timestamp=H.TS_Y2K) + bytes(payload)
    rec = try_decode(H.status_header(0x1 | 1 << 4, 0, 0, len(e0), 0) + e0)
    body = rec.sections[0].body
    assert body.length_mismatch
    assert body.to_dict()["section_length_mismatch"] == {"declared": declared,
                                                        "available": len(payload)}
    assert f"section_length {declared} but the descriptor gives {len(payload)}" in \
        "\n".join(body.describe())
    if declared_delta > 0:  # longer than what we have: everything still decoded
        assert len(body.error_info) == 4 and len(body.contexts) == 4
    else:  # shorter: the declared bound cuts the contexts, and the decode error says where
        assert rec.error is not None and "context record" in str(rec.error)
