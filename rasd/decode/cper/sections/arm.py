"""ARM Processor Error section (UEFI 2.10 N.2.4.4; kernel cper.h / cper-arm.c).

Layout: a 40-byte header, ``err_info_num`` 32-byte error-information entries,
``context_info_num`` context-information records (8-byte header + register array),
then vendor-specific bytes up to ``section_length``.

Two hazards, both decoded rather than guessed away:
- The error-info ``type`` byte was an enumeration up to UEFI 2.9 (0 cache, 1 TLB,
  2 bus, 3 micro-architectural) and is a bitmask since UEFI 2.9A/2.10 (0x02 cache,
  0x04 TLB, 0x08 bus, 0x10 micro-architectural; kernel 96b010536ee0, v6.19 and
  6.1.y from Jan 2026). Each entry reports both readings and which one was used.
- Context records are stepped by ``8 + size`` (packed, as ``log_arm_hw_error``
  does) or by ``ALIGN(8 + size, 16)`` (the kernel printer). The decoder takes the
  step whose next header is plausible and says which.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cache

from ...common import JsonMemo, enum, enum_json, flag_names, flags_json, hex64, json_str, json_text
from ...errors import DecodeError

HEADER = struct.Struct("<IHHIB3sQQII")  # 40 bytes
HEADER_FIELDS = ("validation_bits", "err_info_num", "context_info_num", "section_length",
                 "affinity_level", "reserved", "mpidr", "midr", "running_state", "psci_state")
ERR_INFO = struct.Struct("<BBHBHBQQQ")  # 32 bytes
ERR_INFO_FIELDS = ("version", "length", "validation_bits", "type", "multiple_error", "flags",
                   "error_info", "virt_fault_addr", "physical_fault_addr")
CTX_HEADER = struct.Struct("<HHI")  # 8 bytes

SECTION_VALID = {1: "mpidr", 2: "affinity_level", 4: "running_state", 8: "vendor_info"}
ERR_INFO_VALID = {1: "multiple_error", 2: "flags", 4: "error_info", 8: "virt_fault_addr",
                  16: "physical_fault_addr"}
ERR_INFO_FLAGS = {1: "first", 2: "last", 4: "propagated", 8: "overflow"}

TYPE_ENUM = {0: "cache", 1: "tlb", 2: "bus", 3: "micro_architectural"}
TYPE_BITMASK = {0x02: "cache", 0x04: "tlb", 0x08: "bus", 0x10: "micro_architectural"}
TYPE_BITMASK_ALL = 0x1E  # CPER_ARM_ERR_TYPE_MASK, GENMASK(4, 1)

TRANSACTION_TYPES = {0: "instruction", 1: "data_access", 2: "generic"}
_OPS_COMMON = {0: "generic", 1: "generic_read", 2: "generic_write", 3: "data_read",
               4: "data_write", 5: "instruction_fetch", 6: "prefetch"}
OPERATIONS = {
    "cache": {**_OPS_COMMON, 7: "eviction", 8: "snooping", 9: "snooped", 10: "management"},
    "tlb": {**_OPS_COMMON, 7: "local_management", 8: "external_management"},
    "bus": dict(_OPS_COMMON),
}
PARTICIPATION = {0: "local_processor_originated", 1: "local_processor_responded",
                 2: "local_processor_observed", 3: "generic"}
ADDRESS_SPACE = {0: "external_memory", 1: "internal_memory", 2: "unknown", 3: "device_memory"}

# error_info field layout, cper.h CPER_ARM_ERR_*: (name, validity bit, shift, width, bus only)
ERROR_INFO_FIELDS = (
    ("transaction_type", 0, 16, 2, False),
    ("operation", 1, 18, 4, False),
    ("level", 2, 22, 3, False),
    ("processor_context_corrupt", 3, 25, 1, False),
    ("corrected", 4, 26, 1, False),
    ("precise_pc", 5, 27, 1, False),
    ("restartable_pc", 6, 28, 1, False),
    ("participation_type", 7, 29, 2, True),
    ("timeout", 8, 31, 1, True),
    ("address_space", 9, 32, 2, True),
    ("memory_attributes", 10, 34, 9, True),
    ("access_mode", 11, 43, 1, True),
)

CONTEXT_TYPES = {
    0: "aarch32_gpr", 1: "aarch32_el1", 2: "aarch32_el2", 3: "aarch32_secure",
    4: "aarch64_gpr", 5: "aarch64_el1", 6: "aarch64_el2", 7: "aarch64_el3", 8: "misc",
}
# Register arrays per context type (UEFI 2.10 tables N-22..N-30): (element size, names).
CONTEXT_REGISTERS: dict[int, tuple[int, tuple[str, ...]]] = {
    0: (4, tuple(f"r{i}" for i in range(16))),
    1: (4, ("dfar", "dfsr", "ifar", "isr", "mair0", "mair1", "midr", "mpidr", "nmrr", "prrr",
            "sctlr_ns", "spsr", "spsr_abt", "spsr_fiq", "spsr_irq", "spsr_svc", "spsr_und",
            "tpidrprw", "tpidruro", "tpidrurw", "ttbcr", "ttbr0", "ttbr1", "dacr")),
    2: (4, ("elr_hyp", "hamair0", "hamair1", "hcr", "hcr2", "hdfar", "hifar", "hpfar", "hsr",
            "htcr", "htpidr", "httbr", "spsr_hyp", "vtcr", "vttbr", "dacr32_el2")),
    3: (4, ("sctlr_s", "spsr_mon")),
    4: (8, tuple(f"x{i}" for i in range(31)) + ("sp",)),
    5: (8, ("elr_el1", "esr_el1", "far_el1", "isr_el1", "mair_el1", "midr_el1", "mpidr_el1",
            "sctlr_el1", "sp_el0", "sp_el1", "spsr_el1", "tcr_el1", "tpidr_el0", "tpidr_el1",
            "tpidrro_el0", "ttbr0_el1", "ttbr1_el1")),
    6: (8, ("elr_el2", "esr_el2", "far_el2", "hacr_el2", "hcr_el2", "hpfar_el2", "mair_el2",
            "sctlr_el2", "sp_el2", "spsr_el2", "tcr_el2", "tpidr_el2", "ttbr0_el2", "vtcr_el2",
            "vttbr_el2")),
    7: (8, ("elr_el3", "esr_el3", "far_el3", "mair_el3", "sctlr_el3", "sp_el3", "spsr_el3",
            "tcr_el3", "tpidr_el3", "ttbr0_el3")),
}
MISC_REGISTER = struct.Struct("<HQ")  # MRS encoding + value, 10 bytes each


_TYPE_CACHE: dict[tuple[int, str], tuple[list[str], str, bool]] = {}
_FIELDS_CACHE: dict[tuple[int, str], dict] = {}


def read_type(raw: int, reading: str = "auto") -> tuple[list[str], str, bool]:
    """Cached ``_read_type``: 256 type values x 3 readings at most. Callers must not
    mutate the returned list."""
    key = (raw, reading)
    hit = _TYPE_CACHE.get(key)
    if hit is None:
        hit = _TYPE_CACHE[key] = _read_type(raw, reading)
    return hit


def _read_type(raw: int, reading: str) -> tuple[list[str], str, bool]:
    """Names for an error-info ``type`` byte, the reading used and whether it was ambiguous.

    ``auto``: values only the enumeration can mean (0, 1, 3) read as the enumeration,
    values only the bitmask can mean (bits 2-4) as the bitmask; 2 (bus in the old
    encoding, cache in the new) follows the current spec, the bitmask.
    """
    ambiguous = raw == 2
    if reading == "auto":
        reading = "enum" if raw in (0, 1, 3) else "bitmask"
    if reading == "enum":
        return [TYPE_ENUM.get(raw, f"reserved_{raw}")], "enum", ambiguous
    names = [TYPE_BITMASK.get(1 << b, f"reserved_bit{b}") for b in range(8) if raw >> b & 1]
    return names, "bitmask", ambiguous


def _error_info_fields(error_info: int, kind: str) -> dict:
    out: dict = {}
    if kind not in OPERATIONS and kind != "":
        return out  # micro-architectural/vendor: error_info is vendor defined (cper-arm.c)
    for name, bit, shift, width, bus_only in ERROR_INFO_FIELDS:
        if bus_only and kind != "bus" or not error_info >> bit & 1:
            continue
        value = error_info >> shift & ((1 << width) - 1)
        if name == "transaction_type":
            out[name] = enum(value, TRANSACTION_TYPES)
        elif name == "operation":
            out[name] = enum(value, OPERATIONS.get(kind, {}))
        elif name == "participation_type":
            out[name] = enum(value, PARTICIPATION)
        elif name == "address_space":
            out[name] = enum(value, ADDRESS_SPACE)
        elif width == 1:
            out[name] = bool(value)
        else:
            out[name] = value
    return out


def type_form(raw: int, reading: str) -> dict:
    """The JSON form of an error-info type byte: both readings, and the one used."""
    names, used, ambiguous = read_type(raw, reading)
    return {"value": raw, "names": names, "reading": used, "ambiguous": ambiguous,
            "enum_reading": TYPE_ENUM.get(raw, f"reserved_{raw}"),
            "bitmask_reading": read_type(raw, "bitmask")[0]}


def error_info_kind(raw_type: int, reading: str) -> str:
    """Which layout error_info has: the entry's one type name, "" when it has several."""
    names = read_type(raw_type, reading)[0]
    return names[0] if len(names) == 1 else ""


def error_info_form(error_info: int, raw_type: int, reading: str) -> dict:
    kind = error_info_kind(raw_type, reading)
    return {"value": hex64(error_info), **_error_info_fields(error_info, kind)}


# JSON text of the constant sub-objects, made once per value (see rasd.decode.common)
TYPE_JSON = JsonMemo(lambda key: type_form(*key))  # key (type byte, reading)
ERR_INFO_FLAGS_JSON = flags_json(ERR_INFO_FLAGS)
# key (error_info, type byte, reading): fleets repeat a few values
ERROR_INFO_JSON = JsonMemo(lambda key: error_info_form(*key), limit=4096)
CONTEXT_TYPE_JSON = enum_json(CONTEXT_TYPES)


@cache
def registers_json_layout(ctype: int, count: int) -> tuple[struct.Struct, str]:
    """How ArmContext.to_json writes the first ``count`` registers of a known context type:
    the struct that reads them and a %-template of the JSON object, so that one C call
    formats the whole register map (hex() of an unsigned value is "0x%x")."""
    width, names = CONTEXT_REGISTERS[ctype]
    layout = struct.Struct("<%d%s" % (count, "I" if width == 4 else "Q"))
    template = "{" + ",".join('"%s":"0x%%x"' % name for name in names[:count]) + "}"
    return layout, template


@dataclass(slots=True)
class ArmErrorInfo:
    version: int = 0
    length: int = ERR_INFO.size
    validation_bits: int = 0
    type: int = 0x02
    multiple_error: int = 0
    flags: int = 0
    error_info: int = 0
    virt_fault_addr: int = 0
    physical_fault_addr: int = 0
    extra: bytes = field(default=b"", repr=False)  # bytes past 32 when ``length`` says more

    @property
    def physical_fault_addr_valid(self) -> bool:
        return bool(self.validation_bits & 16)

    def types(self, reading: str = "auto") -> list[str]:
        return read_type(self.type, reading)[0]

    def error_info_fields(self, kind: str) -> dict:
        """The valid sub-fields of ``error_info`` for an entry of this kind (cached:
        fleets repeat the same few values; the result must not be mutated)."""
        key = (self.error_info, kind)
        hit = _FIELDS_CACHE.get(key)
        if hit is None:
            hit = _error_info_fields(self.error_info, kind)
            if len(_FIELDS_CACHE) < 4096:
                _FIELDS_CACHE[key] = hit
        return hit

    def to_dict(self, reading: str = "auto") -> dict:
        d: dict = {"version": self.version, "length": self.length,
                   "validation_bits": self.validation_bits,
                   "type": type_form(self.type, reading)}
        v = self.validation_bits
        if v & 1:
            d["multiple_error"] = self.multiple_error
        if v & 2:
            d["flags"] = {"value": self.flags, "names": flag_names(self.flags, ERR_INFO_FLAGS)}
        if v & 4:
            kind = error_info_kind(self.type, reading)
            d["error_info"] = {"value": hex64(self.error_info), **self.error_info_fields(kind)}
        if v & 8:
            d["virt_fault_addr"] = hex64(self.virt_fault_addr)
        if v & 16:
            d["physical_fault_addr"] = hex64(self.physical_fault_addr)
        return d

    def to_json(self, reading: str = "auto") -> str:
        """json_text(self.to_dict(reading)), written directly (see rasd.decode.common)."""
        v = self.validation_bits
        text = (f'{{"version":{self.version},"length":{self.length},"validation_bits":{v},'
                f'"type":{TYPE_JSON[self.type, reading]}')
        if v & 1:
            text += f',"multiple_error":{self.multiple_error}'
        if v & 2:
            text += f',"flags":{ERR_INFO_FLAGS_JSON[self.flags]}'
        if v & 4:
            text += f',"error_info":{ERROR_INFO_JSON[self.error_info, self.type, reading]}'
        if v & 8:
            text += f',"virt_fault_addr":"{hex64(self.virt_fault_addr)}"'
        if v & 16:
            text += f',"physical_fault_addr":"{hex64(self.physical_fault_addr)}"'
        return text + "}"


@dataclass(slots=True)
class ArmContext:
    version: int = 0
    type: int = 4
    registers: bytes = b""  # the register array as it came (``size`` bytes)

    def named_registers(self) -> tuple[dict[str, int], bytes]:
        """Registers by name for the known context types, and any bytes left over."""
        if self.type == 8:
            regs = {}
            n = len(self.registers) // MISC_REGISTER.size
            for i in range(n):
                enc, value = MISC_REGISTER.unpack_from(self.registers, i * MISC_REGISTER.size)
                regs[_mrs_name(enc)] = value
            return regs, self.registers[n * MISC_REGISTER.size:]
        width, names = CONTEXT_REGISTERS.get(self.type, (8, ()))
        count = min(len(names), len(self.registers) // width)
        fmt = "<%d%s" % (count, "I" if width == 4 else "Q")
        values = struct.unpack_from(fmt, self.registers)
        return dict(zip(names, values)), self.registers[count * width:]

    def to_dict(self) -> dict:
        regs, rest = self.named_registers()
        d = {"version": self.version, "type": enum(self.type, CONTEXT_TYPES),
             "size": len(self.registers),
             "registers": dict(zip(regs, map(hex64, regs.values())))}
        if rest:
            d["unnamed_bytes"] = rest.hex()
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        if self.type not in CONTEXT_REGISTERS:  # misc (names from each entry) or unknown: rare
            return json_text(self.to_dict())
        regs = self.registers
        width, names = CONTEXT_REGISTERS[self.type]
        count = min(len(names), len(regs) // width)
        layout, template = registers_json_layout(self.type, count)
        text = (f'{{"version":{self.version},"type":{CONTEXT_TYPE_JSON[self.type]},'
                f'"size":{len(regs)},"registers":{template % layout.unpack_from(regs)}')
        if len(regs) > count * width:
            text += f',"unnamed_bytes":"{regs[count * width:].hex()}"'
        return text + "}"


def _mrs_name(enc: int) -> str:
    # MRS encoding in a misc. register entry: op2[2:0] CRm[6:3] CRn[10:7] op1[13:11] o0[14]
    op2, crm, crn, op1, o0 = enc & 7, enc >> 3 & 0xF, enc >> 7 & 0xF, enc >> 11 & 7, enc >> 14 & 1
    return f"s{o0 + 2}_{op1}_c{crn}_c{crm}_{op2}"


@dataclass(slots=True)
class ArmProcessorSection:
    validation_bits: int = 0
    err_info_num: int = 0
    context_info_num: int = 0
    section_length: int = 0
    affinity_level: int = 0
    reserved: bytes = b"\0\0\0"
    mpidr: int = 0
    midr: int = 0
    running_state: int = 0
    psci_state: int = 0
    error_info: list[ArmErrorInfo] = field(default_factory=list)
    contexts: list[ArmContext] = field(default_factory=list)
    vendor: bytes = b""
    context_stride: str = "packed"  # or "aligned16"
    type_reading: str = "auto"  # how to_dict reads each error-info type byte
    # bytes the descriptor gave the section (set when decoding; not part of the content)
    available: int | None = field(default=None, compare=False)

    KIND = "arm_processor"

    def to_dict(self) -> dict:
        v = self.validation_bits
        d: dict = {"validation_bits": v, "err_info_num": self.err_info_num,
                   "context_info_num": self.context_info_num,
                   "section_length": self.section_length}
        if v & 1:
            d["mpidr"] = hex64(self.mpidr)
        if v & 2:
            d["affinity_level"] = self.affinity_level
        d["midr"] = hex64(self.midr)
        if v & 4:
            d["running_state"] = self.running_state
            d["psci_state"] = self.psci_state
        d["error_info"] = [e.to_dict(self.type_reading) for e in self.error_info]
        d["contexts"] = [c.to_dict() for c in self.contexts]
        d["context_stride"] = self.context_stride
        d["vendor"] = self.vendor.hex()
        if self.length_mismatch:
            d["section_length_mismatch"] = {"declared": self.section_length,
                                            "available": self.available}
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        v = self.validation_bits
        text = (f'{{"validation_bits":{v},"err_info_num":{self.err_info_num},'
                f'"context_info_num":{self.context_info_num},'
                f'"section_length":{self.section_length}')
        if v & 1:
            text += f',"mpidr":"{hex64(self.mpidr)}"'
        if v & 2:
            text += f',"affinity_level":{self.affinity_level}'
        text += f',"midr":"{hex64(self.midr)}"'
        if v & 4:
            text += f',"running_state":{self.running_state},"psci_state":{self.psci_state}'
        reading = self.type_reading
        text += f',"error_info":[{",".join([e.to_json(reading) for e in self.error_info])}]'
        text += f',"contexts":[{",".join([c.to_json() for c in self.contexts])}]'
        text += (f',"context_stride":{json_str(self.context_stride)},'
                 f'"vendor":"{self.vendor.hex()}"')
        if self.length_mismatch:
            text += (f',"section_length_mismatch":{{"declared":{self.section_length},'
                     f'"available":{self.available}}}')
        return text + "}"

    @property
    def length_mismatch(self) -> bool:
        """Firmware's own length disagrees with the descriptor's: the arrays were bounded by
        the smaller of the two (never read past the section), and the operator should know."""
        return self.available is not None and self.section_length != self.available

    def describe(self) -> list[str]:
        out = [f"MPIDR {self.mpidr:#x}" if self.validation_bits & 1 else "MPIDR not valid",
               f"MIDR {self.midr:#x}"]
        for i, e in enumerate(self.error_info):
            names, used, amb = read_type(e.type, self.type_reading)
            line = f"error info {i}: {'/'.join(names)} (type byte {e.type:#x}, {used} reading" \
                   f"{', ambiguous' if amb else ''})"
            if e.physical_fault_addr_valid:
                line += f", PA {e.physical_fault_addr:#x}"
            out.append(line)
        for i, c in enumerate(self.contexts):
            out.append(f"context {i}: {CONTEXT_TYPES.get(c.type, 'invalid')} ({len(c.registers)} bytes)")
        if self.vendor:
            out.append(f"vendor bytes: {len(self.vendor)}")
        if self.length_mismatch:
            out.append(f"section_length {self.section_length} but the descriptor gives "
                       f"{self.available} bytes")
        return out


def decode_arm(buf: bytes, off: int, end: int) -> ArmProcessorSection:
    if end - off < HEADER.size:
        raise DecodeError(f"ARM processor section needs {HEADER.size} bytes, has {end - off}", off)
    sec = ArmProcessorSection(*HEADER.unpack_from(buf, off))
    sec.available = end - off
    # section_length bounds the arrays, but never beyond the bytes we actually have
    limit = min(end, off + sec.section_length) if sec.section_length >= HEADER.size else end
    pos = off + HEADER.size
    try:
        pos = _decode_err_infos(buf, pos, limit, sec)
        pos = _decode_contexts(buf, pos, limit, sec)
    except DecodeError as exc:
        exc.partial = sec
        raise
    sec.vendor = bytes(buf[pos:limit])
    return sec


def _decode_err_infos(buf: bytes, pos: int, limit: int, sec: ArmProcessorSection) -> int:
    for i in range(sec.err_info_num):
        if limit - pos < ERR_INFO.size:
            raise DecodeError(f"error-info entry {i} of {sec.err_info_num} truncated", pos)
        info = ArmErrorInfo(*ERR_INFO.unpack_from(buf, pos))
        if info.length < ERR_INFO.size:
            raise DecodeError(f"error-info entry {i} has length {info.length} < 32", pos + 1)
        step = min(info.length, limit - pos)
        if step > ERR_INFO.size:  # (most entries are exactly 32 bytes: skip the empty copy)
            info.extra = bytes(buf[pos + ERR_INFO.size:pos + step])
        sec.error_info.append(info)
        pos += step
    return pos


def _plausible_context(buf: bytes, pos: int, limit: int) -> bool:
    if limit - pos < CTX_HEADER.size:
        return False
    _, ctype, size = CTX_HEADER.unpack_from(buf, pos)
    # size 0 is no context: it is what the zero padding of the aligned layout reads as
    return ctype in CONTEXT_TYPES and 0 < size <= limit - pos - CTX_HEADER.size


def _decode_contexts(buf: bytes, pos: int, limit: int, sec: ArmProcessorSection) -> int:
    for i in range(sec.context_info_num):
        if limit - pos < CTX_HEADER.size:
            raise DecodeError(f"context record {i} of {sec.context_info_num} truncated", pos)
        version, ctype, size = CTX_HEADER.unpack_from(buf, pos)
        if size > limit - pos - CTX_HEADER.size:
            raise DecodeError(f"context record {i} register array of {size} bytes runs past "
                              f"the section", pos + 4)
        sec.contexts.append(ArmContext(version, ctype, bytes(buf[pos + 8:pos + 8 + size])))
        packed = pos + 8 + size
        aligned = pos + (8 + size + 15 & ~15)
        pos = packed
        if i + 1 < sec.context_info_num and aligned != packed and aligned <= limit \
                and not _plausible_context(buf, packed, limit) \
                and _plausible_context(buf, aligned, limit):
            sec.context_stride = "aligned16"
        if sec.context_stride == "aligned16":
            pos = min(aligned, limit)
    return pos


def encode_arm(sec: ArmProcessorSection, fix_counts: bool = True) -> bytes:
    """Encode; with ``fix_counts`` the counts and section_length follow the lists given."""
    body = bytearray()
    for e in sec.error_info:
        body += ERR_INFO.pack(*(getattr(e, f) for f in ERR_INFO_FIELDS)) + e.extra
    for c in sec.contexts:
        rec = CTX_HEADER.pack(c.version, c.type, len(c.registers)) + c.registers
        if sec.context_stride == "aligned16":
            rec += bytes(-len(rec) % 16)
        body += rec
    body += sec.vendor
    if fix_counts:
        sec.err_info_num = len(sec.error_info)
        sec.context_info_num = len(sec.contexts)
        sec.section_length = HEADER.size + len(body)
    return HEADER.pack(*(getattr(sec, f) for f in HEADER_FIELDS)) + bytes(body)
