"""CPER byte vectors built by hand with struct.pack from reference/arm64-ras.md §4.

Nothing here imports rasd: every offset and size comes from the reference tables
(and the kernel structs they cite), so a layout mistake in rasd's decoder and encoder
cannot cancel out. GUIDs are written as their on-disk bytes, copied from the §4.2
table ("Raw bytes" column), not converted by code.
"""

from __future__ import annotations

import struct

# --- GUIDs as stored (reference §4.2 table; cper.h) -----------------------------------
G_PROC_GENERIC = bytes.fromhex("adcc7698b447db4bb65e16f193c4f3db")  # 9876CCAD-47B4-4BDB-B65E-16F193C4F3DB
G_PROC_ARM = bytes.fromhex("163d9ee111bce4119caac2051d5d46b0")  # E19E3D16-BC11-11E4-9CAA-C2051D5D46B0
G_PLATFORM_MEM = bytes.fromhex("1411bca5646fde4eb8633e83ed7c83b1")  # A5BC1114-6F64-4EDE-B863-3E83ED7C83B1
G_PCIE = bytes.fromhex("54e995d9c1bb0f43ad91b44dcb3c6f35")  # D995E954-BBC1-430F-AD91-B44DCB3C6F35
G_FW_REF = bytes.fromhex("962a2181ed0996499471 8d729c8e69ed".replace(" ", ""))  # 81212A96-09ED-4996-9471-8D729C8E69ED
G_PCI_BUS = bytes.fromhex("63397 5c5843b9540bf78eddad3f9c9dd".replace(" ", ""))  # C5753963-3B84-4095-BF78-EDDAD3F9C9DD
# Memory Error Section 2 (UEFI 2.10 N.2.5, not in cper.h): 61EC04FC-48E6-D813-25C9-8DAA44750B12
G_PLATFORM_MEM2 = bytes.fromhex("fc04ec61e64813d825c98daa44750b12")
# Notification type BOOT (reference §4.2): 3D61A466-AB40-409A-A698-F362D464B38F
G_NOTIFY_BOOT = bytes.fromhex("66a4613d40ab9a40a698f362d464b38f")
# Arbitrary GUIDs whose text form is worked out by hand in the comment.
G_SEQ = bytes(range(16))  # 03020100-0504-0706-0809-0A0B0C0D0E0F
G_FRU = bytes.fromhex("78563412bc9af0de0123456789abcdef")  # 12345678-9ABC-DEF0-0123-456789ABCDEF
G_VENDOR = bytes.fromhex("efbeaddeadde efbe0011223344556677".replace(" ", ""))  # DEADBEEF-DEAD-BEEF-0011-223344556677

# --- BCD timestamps (reference §4.2: sec, min, hour, flags(bit0 precise), day, month, year, century)
# 2026-11-25T04:16:39, precise
TS_PRECISE = bytes([0x39, 0x16, 0x04, 0x01, 0x25, 0x11, 0x26, 0x20])
# 1999-12-31T23:59:58, not precise
TS_Y2K = bytes([0x58, 0x59, 0x23, 0x00, 0x31, 0x12, 0x99, 0x19])


def status_header(block_status: int, raw_data_offset: int, raw_data_length: int,
                  data_length: int, error_severity: int) -> bytes:
    """§4.1 struct acpi_hest_generic_status: 5 x u32 at 0, 4, 8, 12, 16 (20 bytes)."""
    return struct.pack("<IIIII", block_status, raw_data_offset, raw_data_length, data_length,
                       error_severity)


def entry_header(section_type: bytes, severity: int, revision: int, validation: int,
                 flags: int, length: int, fru_id: bytes = bytes(16), fru_text: bytes = b"",
                 timestamp: bytes | None = None) -> bytes:
    """§4.2 struct acpi_hest_generic_data (64 bytes): GUID@0, severity u32@16, revision
    u16@20, validation u8@22, flags u8@23, error_data_length u32@24, fru_id@28,
    fru_text[20]@44; acpi_hest_generic_data_v300 (72 bytes) adds time_stamp u64@64."""
    head = (section_type + struct.pack("<I", severity) + struct.pack("<H", revision)
            + bytes([validation, flags]) + struct.pack("<I", length) + fru_id
            + fru_text.ljust(20, b"\0"))
    assert len(head) == 64
    if timestamp is not None:
        head += timestamp
        assert len(head) == 72
    return head


# --- §4.3 Platform Memory Error (struct cper_sec_mem_err, 80 bytes) -------------------
MEM_ALL_VALID = (1 << 22) - 1  # CPER_MEM_VALID_ERROR_STATUS (0x1) .. CHIP_ID (0x200000)
MEM_VALUES = dict(
    error_status=0x0000_0000_0000_0400,  # error code (status >> 8) & 0xFF = 4: DRAM storage
    physical_addr=0x0000_0080_1234_5000, physical_addr_mask=0xFFFF_FFFF_FFFF_F000,
    node=1, card=2, module=3, bank=0x0305,  # bank group 3 (high byte), bank address 5 (low)
    device=7, row=0xABCD, column=0x0123, bit_pos=9, requestor_id=0x1111, responder_id=0x2222,
    target_id=0x3333, error_type=3,  # multi-bit ECC
    extended=(5 << 5) | 0x2,  # chip id 5 in [7:5], row bits 17:16 = 0b10 in [1:0]
    rank=1, mem_array_handle=0x0010, mem_dev_handle=0x0022)


def memory80(v: dict | None = None, validation: int = MEM_ALL_VALID) -> bytes:
    """cper_sec_mem_err: validation u64@0, error_status u64@8, physical_addr u64@16,
    physical_addr_mask u64@24, node/card/module/bank/device/row/column/bit_pos u16@32..46,
    requestor u64@48, responder u64@56, target u64@64, error_type u8@72, extended u8@73,
    rank u16@74, mem_array_handle u16@76, mem_dev_handle u16@78."""
    v = MEM_VALUES if v is None else v
    b = bytearray(80)
    struct.pack_into("<Q", b, 0, validation)
    struct.pack_into("<Q", b, 8, v["error_status"])
    struct.pack_into("<Q", b, 16, v["physical_addr"])
    struct.pack_into("<Q", b, 24, v["physical_addr_mask"])
    for off, name in zip(range(32, 48, 2), ("node", "card", "module", "bank", "device", "row",
                                            "column", "bit_pos")):
        struct.pack_into("<H", b, off, v[name])
    struct.pack_into("<Q", b, 48, v["requestor_id"])
    struct.pack_into("<Q", b, 56, v["responder_id"])
    struct.pack_into("<Q", b, 64, v["target_id"])
    b[72] = v["error_type"]
    b[73] = v["extended"]
    struct.pack_into("<H", b, 74, v["rank"])
    struct.pack_into("<H", b, 76, v["mem_array_handle"])
    struct.pack_into("<H", b, 78, v["mem_dev_handle"])
    return bytes(b)


# UEFI 2.1/2.2 layout (cper_sec_mem_err_old): the same fields, stopping after error_type (73 bytes)
MEM_LEGACY_VALID = 0x1 | 0x2 | 0x8 | 0x100 | 0x4000  # status, PA, node, row, error type
MEM_LEGACY_VALUES = dict(MEM_VALUES, error_status=0x1A00, physical_addr=0x4000_0000, node=4,
                         row=0x77, error_type=2)


def memory73() -> bytes:
    return memory80(MEM_LEGACY_VALUES, MEM_LEGACY_VALID)[:73]


# Memory Error Section 2 (UEFI 2.10 Table N-35, 96 bytes): validation u64@0, error_status
# u64@8, PA u64@16, PA mask u64@24, node/card/module/bank u16@32..38, device u32@40, row u32@44,
# column u32@48, rank u32@52, bit_pos u32@56, chip_id u8@60, error_type u8@61, status u8@62,
# reserved u8@63, requestor u64@64, responder u64@72, target u64@80, card handle u32@88,
# module handle u32@92.
MEM2_ALL_VALID = (1 << 22) - 1  # bits 0 .. 21 (bank group 20, bank address 21)
MEM2_VALUES = dict(error_status=0x0500, physical_addr=0x1_2345_6000, physical_addr_mask=0xFFFF_F000,
                   node=9, card=8, module=7, bank=0x0A0B, device=0x0001_0002, row=0x0003_0004,
                   column=0x0005_0006, rank=0x0000_0003, bit_pos=0x0000_0040, chip_id=6,
                   error_type=14, status=0x5A, reserved=0, requestor_id=0xAAAA,
                   responder_id=0xBBBB, target_id=0xCCCC, mem_array_handle=0x0001_0010,
                   mem_dev_handle=0x0002_0020)


def memory96(v: dict | None = None, validation: int = MEM2_ALL_VALID) -> bytes:
    v = MEM2_VALUES if v is None else v
    b = bytearray(96)
    struct.pack_into("<QQQQ", b, 0, validation, v["error_status"], v["physical_addr"],
                     v["physical_addr_mask"])
    struct.pack_into("<HHHH", b, 32, v["node"], v["card"], v["module"], v["bank"])
    struct.pack_into("<IIIII", b, 40, v["device"], v["row"], v["column"], v["rank"], v["bit_pos"])
    b[60], b[61], b[62], b[63] = v["chip_id"], v["error_type"], v["status"], v["reserved"]
    struct.pack_into("<QQQ", b, 64, v["requestor_id"], v["responder_id"], v["target_id"])
    struct.pack_into("<II", b, 88, v["mem_array_handle"], v["mem_dev_handle"])
    return bytes(b)


# --- §4.4 ARM Processor Error (struct cper_sec_proc_arm, cper_arm_err_info, cper_arm_ctx_info)

def arm_err_info(etype: int, validation: int, multiple_error: int = 0, flags: int = 0,
                 error_info: int = 0, virt: int = 0, phys: int = 0, version: int = 0,
                 length: int = 32) -> bytes:
    """cper_arm_err_info (32 bytes): version u8@0, length u8@1, validation u16@2, type u8@4,
    multiple_error u16@5, flags u8@7, error_info u64@8, virt u64@16, phys u64@24."""
    b = bytes([version, length]) + struct.pack("<H", validation) + bytes([etype]) \
        + struct.pack("<H", multiple_error) + bytes([flags]) \
        + struct.pack("<QQQ", error_info, virt, phys)
    assert len(b) == 32
    return b


def arm_context(ctype: int, registers: bytes, version: int = 0) -> bytes:
    """cper_arm_ctx_info: version u16@0, type u16@2, size u32@4, then `size` register bytes."""
    return struct.pack("<HHI", version, ctype, len(registers)) + registers


def arm_header(validation: int, err_info_num: int, context_info_num: int, section_length: int,
               affinity_level: int, mpidr: int, midr: int, running_state: int,
               psci_state: int) -> bytes:
    """cper_sec_proc_arm (40 bytes): validation u32@0, err_info_num u16@4, context_info_num
    u16@6, section_length u32@8, affinity_level u8@12, reserved[3]@13, mpidr u64@16,
    midr u64@24, running_state u32@32, psci_state u32@36."""
    b = struct.pack("<IHHI", validation, err_info_num, context_info_num, section_length) \
        + bytes([affinity_level]) + bytes(3) + struct.pack("<QQII", mpidr, midr, running_state,
                                                           psci_state)
    assert len(b) == 40
    return b


# error_info values, bit positions from cper.h CPER_ARM_ERR_* (reference §4.4)
EI_CACHE = (0x7F  # bits 0-6: transaction, operation, level, corrupt, corrected, precise, restartable valid
            | 1 << 16  # transaction type [17:16] = 1 data access
            | 3 << 18  # operation [21:18] = 3 data read
            | 2 << 22  # level [24:22] = 2
            | 1 << 25  # processor context corrupt
            | 0 << 26  # corrected = 0
            | 1 << 27  # precise PC
            | 0 << 28)  # restartable PC = 0
EI_TLB = (0x2 | 0x4  # operation and level valid
          | 2 << 16  # transaction (not valid, must not appear)
          | 7 << 18  # operation 7: TLB local management
          | 1 << 22)  # level 1
EI_BUS = (0xFFF  # all twelve validity bits
          | 2 << 16  # transaction generic
          | 4 << 18  # operation 4 data write
          | 0 << 22  # level 0
          | 1 << 26  # corrected
          | 1 << 28  # restartable PC
          | 2 << 29  # participation [30:29] = 2 observed
          | 1 << 31  # timeout
          | 3 << 32  # address space [33:32] = 3 device memory
          | 0x1A5 << 34  # memory attributes [42:34]
          | 1 << 43)  # access mode 1 (normal)
EI_VENDOR = 0xDEAD_0000_0007_FFFF  # vendor defined: low bits happen to look like validity flags

GPR_VALUES = [0x1000 + i for i in range(31)] + [0xFFFF_0000_DEAD_BEEF]  # x0..x30, sp
EL1_VALUES = [0xE100 + i for i in range(17)]  # elr_el1 .. ttbr1_el1 (UEFI Table N-25)
A32_GPR_VALUES = [0x3200 + i for i in range(16)]  # r0..r15 (UEFI Table N-21, u32 each)
# Misc. register (UEFI Table N-30): MRS encoding u16 (op2[2:0] CRm[6:3] CRn[10:7] op1[13:11]
# o0[14]) + value u64. ESR_EL1 = S3_0_C5_C2_0: o0=1, op1=0, CRn=5, CRm=2, op2=0 -> 0x4290.
# MIDR_EL1 = S3_0_C0_C0_0 -> 0x4000.
MISC_REGS = [(0x4290, 0x9600_0010), (0x4000, 0x410F_D0C1)]

ARM_VENDOR = b"VENDOR\x01\x02\x03"
ARM_MPIDR, ARM_MIDR = 0x8100_0100, 0x410F_D0C1


def arm_section(aligned: bool = False) -> bytes:
    """Four error-info entries (cache, TLB, bus, vendor), contexts AArch64 GPR (8+256,
    not 16-aligned), AArch64 EL1 (8+136=144, aligned), AArch32 GPR (8+64=72), misc (8+20),
    then vendor bytes. ``aligned`` pads each context to ALIGN(8 + size, 16) with zeros."""
    infos = (arm_err_info(0x02, 0x1F, multiple_error=3, flags=0x3, error_info=EI_CACHE,
                          virt=0xFFFF_8000_1234_5678, phys=0x80_1234_5678)
             + arm_err_info(0x04, 0x14, error_info=EI_TLB, phys=0x4000)
             + arm_err_info(0x08, 0x0C, error_info=EI_BUS, virt=0x1000, flags=0x4)
             + arm_err_info(0x10, 0x06, flags=0x8, error_info=EI_VENDOR))
    ctxs = [arm_context(4, struct.pack("<32Q", *GPR_VALUES)),
            arm_context(5, struct.pack("<17Q", *EL1_VALUES)),
            arm_context(0, struct.pack("<16I", *A32_GPR_VALUES)),
            arm_context(8, b"".join(struct.pack("<HQ", e, v) for e, v in MISC_REGS))]
    if aligned:
        ctxs = [c + bytes(-len(c) % 16) for c in ctxs]
    body = infos + b"".join(ctxs) + ARM_VENDOR
    return arm_header(0xF, 4, 4, 40 + len(body), 2, ARM_MPIDR, ARM_MIDR, 1, 0x12) + body


# --- §4.5 PCIe Error section (struct cper_sec_pcie, 208 bytes) -------------------------
AER_REGS = dict(header=0x1482_0001, uncor_status=1 << 4 | 1 << 12 | 1 << 14 | 1 << 27,
                uncor_mask=0x0040_0000, uncor_severity=0x0046_2030, cor_status=1 << 0 | 1 << 6,
                cor_mask=0x2000, cap_control=0x1F,
                header_log=(0x4A00_0001, 0x0100_000F, 0xFEE0_0000, 0x0000_0000),
                root_command=0x7, root_status=0x7C00_0001, cor_source_id=0x8000,
                uncor_source_id=0x8008)
PCIE_CAPABILITY = bytes(range(0x40, 0x40 + 60))


def pcie_section() -> bytes:
    b = bytearray(208)
    struct.pack_into("<Q", b, 0, 0xFF)  # all eight validation bits
    struct.pack_into("<I", b, 8, 4)  # port type 4: root port
    b[12], b[13] = 1, 4  # version minor @12, major @13 -> "4.1"
    struct.pack_into("<HH", b, 16, 0x0547, 0x4010)  # command @16, status @18
    # device id block @24: vendor u16, device u16, class_code[3], function, device, segment
    # u16 @33, bus @35, secondary bus @36, slot u16 @37 (number = slot >> 3), reserved @39
    struct.pack_into("<HH", b, 24, 0x19E5, 0xA120)
    b[28:31] = bytes([0x00, 0x04, 0x06])  # class code 0x060400 (PCI bridge), little-endian
    b[31], b[32] = 2, 0x1F  # function 2, device 0x1f
    struct.pack_into("<H", b, 33, 0x0001)
    b[35], b[36] = 0x80, 0x81
    struct.pack_into("<H", b, 37, 5 << 3)
    struct.pack_into("<II", b, 40, 0x89AB_CDEF, 0x0123_4567)  # serial lower, upper
    struct.pack_into("<HH", b, 48, 0x2000, 0x0003)  # bridge secondary status, control
    b[52:112] = PCIE_CAPABILITY
    a = AER_REGS
    aer = struct.pack("<7I", a["header"], a["uncor_status"], a["uncor_mask"], a["uncor_severity"],
                      a["cor_status"], a["cor_mask"], a["cap_control"]) \
        + struct.pack("<4I", *a["header_log"]) \
        + struct.pack("<IIHH", a["root_command"], a["root_status"], a["cor_source_id"],
                      a["uncor_source_id"])
    assert len(aer) == 0x38
    b[112:112 + len(aer)] = aer
    return bytes(b)


# --- Processor Generic (struct cper_sec_proc_generic, 192 bytes; UEFI N.2.4.1) ---------
GENERIC_BRAND = b"Neoverse-V2 rasd test CPU"


def generic_section() -> bytes:
    """validation u64@0, proc_type u8@8, proc_isa @9, proc_error_type @10, operation @11,
    flags @12, level @13, reserved u16@14, cpu_version u64@16, cpu_brand[128]@24,
    proc_id u64@152, target_addr @160, requestor_id @168, responder_id @176, ip @184."""
    b = struct.pack("<Q", 0x1FFF) + bytes([2, 4, 0x01 | 0x04, 2, 0x01 | 0x08, 1]) + bytes(2) \
        + struct.pack("<Q", 0x410F_D4F0) + GENERIC_BRAND.ljust(128, b"\0") \
        + struct.pack("<QQQQQ", 0x8101_0000, 0x80_0000_1000, 0xA, 0xB, 0xFFFF_8000_0810_0000)
    assert len(b) == 192
    return b


# --- Firmware Error Record Reference (struct cper_sec_fw_err_rec_ref; UEFI N.2.10) ------
def firmware_ref(with_guid: bool) -> bytes:
    """record_type u8@0, revision u8@1, reserved[6]@2, record_identifier u64@8, and from
    revision 2 record_identifier_guid@16 (32 bytes in all)."""
    if with_guid:
        return bytes([2, 2]) + bytes(6) + struct.pack("<Q", 0x1122_3344_5566_7788) + G_FRU
    return bytes([1, 1]) + bytes(6) + struct.pack("<Q", 0xABCD)


# --- Whole inputs ----------------------------------------------------------------------
RAW_DATA = b"RAWDATA!"


def status_block_memory() -> bytes:
    """A status block (§4.1) with: entry 0 revision 0x0300 (72-byte header, timestamp) holding
    the 80-byte memory section; entry 1 revision 0x0201 (64-byte header) holding the 73-byte
    legacy layout; then 8 bytes of raw data."""
    e0 = entry_header(G_PLATFORM_MEM, 2, 0x0300, 0x7, 0x09, 80, G_FRU, b"DIMM_A1",
                      TS_PRECISE) + memory80()
    e1 = entry_header(G_PLATFORM_MEM, 0, 0x0201, 0x0, 0x00, 73) + memory73()
    data = e0 + e1
    # block_status: uncorrectable | correctable | multiple correctable, entry count 2 in [13:4]
    head = status_header(0x1 | 0x2 | 0x8 | 2 << 4, 20 + len(data), len(RAW_DATA), len(data), 0)
    return head + data + RAW_DATA


def status_block_arm(aligned: bool = False) -> bytes:
    payload = arm_section(aligned)
    e0 = entry_header(G_PROC_ARM, 0, 0x0300, 0x4, 0x01, len(payload), timestamp=TS_Y2K) + payload
    return status_header(0x1 | 1 << 4, 0, 0, len(e0), 0) + e0


def status_block_misc() -> bytes:
    """Four sections in one block, 0x0201 headers: PCIe, processor generic, FW record
    reference with and without GUID, plus a vendor GUID and an undecoded standard GUID."""
    entries = [
        entry_header(G_PCIE, 1, 0x0201, 0x1, 0x05, 208, G_SEQ) + pcie_section(),
        entry_header(G_PROC_GENERIC, 2, 0x0201, 0x2, 0x01, 192, fru_text=b"CPU0") + generic_section(),
        entry_header(G_FW_REF, 3, 0x0201, 0x0, 0x00, 32) + firmware_ref(True),
        entry_header(G_FW_REF, 3, 0x0201, 0x0, 0x00, 16) + firmware_ref(False),
        entry_header(G_VENDOR, 2, 0x0201, 0x0, 0x20, 5) + b"\x01\x02\x03\x04\x05",
        entry_header(G_PCI_BUS, 2, 0x0201, 0x0, 0x00, 3) + b"abc",
    ]
    data = b"".join(entries)
    return status_header(0x1 | 0x4 | 6 << 4, 0, 0, len(data), 1) + data


def cper_record() -> bytes:
    """A UEFI CPER record (§4.2 "Full CPER record header", 128 bytes + 72-byte descriptors):
    sections Memory Error 2 (96 bytes), ARM processor (packed), a vendor GUID (7 bytes)."""
    payloads = [(G_PLATFORM_MEM2, memory96(), 2, 0x01, 0x0300, 0x3, G_FRU, b"DIMM_B2"),
                (G_PROC_ARM, arm_section(), 0, 0x00, 0x0300, 0x0, bytes(16), b""),
                (G_VENDOR, b"\xAA" * 7, 3, 0x08, 0x0200, 0x2, bytes(16), b"vendor fru")]
    offset = 128 + 72 * len(payloads)
    descs = b""
    for guid, body, sev, flags, rev, valid, fru, text in payloads:
        # descriptor: section_offset u32@0, section_length u32@4, revision u16@8,
        # validation u8@10, reserved u8@11, flags u32@12, section_type@16, fru_id@32,
        # section_severity u32@48, fru_text[20]@52
        descs += struct.pack("<IIHBBI", offset, len(body), rev, valid, 0, flags) + guid + fru \
            + struct.pack("<I", sev) + text.ljust(20, b"\0")
        offset += len(body)
    total = offset
    head = (b"CPER" + struct.pack("<H", 0x0101) + struct.pack("<I", 0xFFFFFFFF)
            + struct.pack("<H", len(payloads)) + struct.pack("<I", 0)  # severity recoverable
            + struct.pack("<I", 0x7)  # platform id, timestamp, partition id valid
            + struct.pack("<I", total) + TS_PRECISE
            + G_SEQ  # platform_id @32
            + G_FRU  # partition_id @48
            + G_VENDOR  # creator_id @64
            + G_NOTIFY_BOOT  # notification_type @80
            + struct.pack("<Q", 0x0102_0304_0506_0708)  # record_id @96
            + struct.pack("<I", 0x1 | 0x4)  # flags @104: recovered | simulated
            + struct.pack("<Q", 0x55AA)  # persistence_information @108
            + bytes(12))  # reserved @116
    assert len(head) == 128 and len(descs) == 72 * len(payloads)
    return head + descs + b"".join(p[1] for p in payloads)
