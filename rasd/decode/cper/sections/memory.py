"""Platform Memory Error sections (UEFI 2.10 Appendix N.2.5).

Two GUIDs: the original "Memory Error" section (80 bytes since UEFI 2.3, 73 bytes
in UEFI 2.1/2.2) and "Memory Error Section 2" (96 bytes, UEFI 2.5+), whose fields
are wider and whose validation bits are numbered differently. Both decode into one
``MemorySection`` so that later stages need not care which one firmware sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields

from ...common import Memo, enum, enum_json, hex64, json_str
from ...errors import DecodeError

# Table N-32 (Memory Error Record, UEFI 2.3+): 80 bytes; the 2.1 layout stops after error_type.
MEM1 = struct.Struct("<QQQQHHHHHHHHQQQBBHHH")
MEM1_FIELDS = ("validation_bits", "error_status", "physical_addr", "physical_addr_mask",
               "node", "card", "module", "bank", "device", "row", "column", "bit_pos",
               "requestor_id", "responder_id", "target_id", "error_type", "extended",
               "rank", "mem_array_handle", "mem_dev_handle")
MEM1_LEGACY_SIZE = 73
# Table N-34 (Memory Error Record 2): 96 bytes.
MEM2 = struct.Struct("<QQQQHHHHIIIIIBBBBQQQII")
MEM2_FIELDS = ("validation_bits", "error_status", "physical_addr", "physical_addr_mask",
               "node", "card", "module", "bank", "device", "row", "column", "rank",
               "bit_pos", "chip_id", "error_type", "status", "reserved",
               "requestor_id", "responder_id", "target_id", "mem_array_handle",
               "mem_dev_handle")

# field -> validation bit, per variant. cper.h CPER_MEM_VALID_* for the original section.
MEM1_VALID = {
    "error_status": 0x1, "physical_addr": 0x2, "physical_addr_mask": 0x4, "node": 0x8,
    "card": 0x10, "module": 0x20, "bank": 0x40, "device": 0x80, "row": 0x100,
    "column": 0x200, "bit_pos": 0x400, "requestor_id": 0x800, "responder_id": 0x1000,
    "target_id": 0x2000, "error_type": 0x4000, "rank": 0x8000,
    "mem_array_handle": 0x10000, "mem_dev_handle": 0x20000, "row_ext": 0x40000,
    "bank_group": 0x80000, "bank_address": 0x100000, "chip_id": 0x200000,
}
MEM2_VALID = {
    "error_status": 1 << 0, "physical_addr": 1 << 1, "physical_addr_mask": 1 << 2,
    "node": 1 << 3, "card": 1 << 4, "module": 1 << 5, "bank": 1 << 6, "device": 1 << 7,
    "row": 1 << 8, "column": 1 << 9, "rank": 1 << 10, "bit_pos": 1 << 11,
    "chip_id": 1 << 12, "error_type": 1 << 13, "status": 1 << 14,
    "requestor_id": 1 << 15, "responder_id": 1 << 16, "target_id": 1 << 17,
    "mem_array_handle": 1 << 18, "mem_dev_handle": 1 << 19, "bank_group": 1 << 20,
    "bank_address": 1 << 21,
}

# cper.c mem_err_type_strs
MEMORY_ERROR_TYPES = {
    0: "unknown", 1: "no_error", 2: "single_bit_ecc", 3: "multi_bit_ecc",
    4: "single_symbol_chipkill_ecc", 5: "multi_symbol_chipkill_ecc", 6: "master_abort",
    7: "target_abort", 8: "parity_error", 9: "watchdog_timeout", 10: "invalid_address",
    11: "mirror_broken", 12: "memory_sparing", 13: "scrub_corrected_error",
    14: "scrub_uncorrected_error", 15: "physical_memory_map_out_event",
}
# UEFI Error Status block, error code = bits [15:8] (cper.c cper_mem_err_status_str)
ERROR_STATUS_CODES = {
    1: "internal", 4: "dram_storage", 5: "tlb_storage", 6: "cache_storage",
    7: "functional_unit", 8: "self_test", 9: "queue_overflow_or_underflow", 16: "bus",
    17: "io_tlb_or_io_pdir_miss", 18: "improper_access", 19: "unmapped_address",
    20: "loss_of_lockstep", 21: "response_without_request", 22: "bus_parity",
    23: "protocol_error", 24: "path_error", 25: "bus_timeout", 26: "read_of_poisoned_data",
}

ERROR_STATUS_CODE_JSON = enum_json(ERROR_STATUS_CODES)
MEMORY_ERROR_TYPE_JSON = enum_json(MEMORY_ERROR_TYPES)

# Location fields in the order the kernel prints them (cper_mem_err_location).
_LOCATION = ("node", "card", "module", "rank", "bank", "bank_group", "bank_address",
             "device", "row", "column", "bit_pos", "chip_id")
_ROW_EXT = MEM1_VALID["row_ext"]


@dataclass(frozen=True)
class _LocationLayout:
    """Which location fields a section shows, worked out once per variant and validation
    bits: their names, where their values sit in the _LOCATION-ordered tuple, and the
    %-template of their JSON object."""

    names: tuple[str, ...]
    indexes: tuple[int, ...]
    json_template: str

    @classmethod
    def of(cls, valid_map: dict[str, int], validation_bits: int) -> "_LocationLayout":
        names = [name for name in _LOCATION if validation_bits & valid_map[name]]
        if "bank" in names and ("bank_group" in names or "bank_address" in names):
            names.remove("bank")  # the bank field then carries group and address, listed apart
        return cls(tuple(names), tuple(map(_LOCATION.index, names)),
                   "{" + ",".join(f'"{name}":%d' for name in names) + "}")


# per variant, keyed by the validation bits of the location fields alone
_LOCATION1_MASK = sum(MEM1_VALID[name] for name in _LOCATION)
_LOCATION2_MASK = sum(MEM2_VALID[name] for name in _LOCATION)
_LOCATION1_LAYOUTS = Memo(lambda bits: _LocationLayout.of(MEM1_VALID, bits))
_LOCATION2_LAYOUTS = Memo(lambda bits: _LocationLayout.of(MEM2_VALID, bits))


@dataclass(slots=True)
class MemorySection:
    variant: str = "mem1"  # "mem1" (80 bytes), "mem1_legacy" (73 bytes), "mem2" (96 bytes)
    validation_bits: int = 0
    error_status: int = 0
    physical_addr: int = 0
    physical_addr_mask: int = 0
    node: int = 0
    card: int = 0
    module: int = 0
    bank: int = 0
    device: int = 0
    row: int = 0
    column: int = 0
    bit_pos: int = 0
    requestor_id: int = 0
    responder_id: int = 0
    target_id: int = 0
    error_type: int = 0
    extended: int = 0  # mem1: row bits 17:16 in [1:0], chip id in [7:5]
    rank: int = 0
    mem_array_handle: int = 0  # SMBIOS type 16 handle ("card handle")
    mem_dev_handle: int = 0  # SMBIOS type 17 handle ("module handle"): the DIMM
    chip_id: int = 0  # mem2 only (mem1 carries it in ``extended``)
    status: int = 0  # mem2 only
    reserved: int = 0  # mem2 only
    extra: bytes = field(default=b"", repr=False)  # bytes past the layout, kept as they came

    KIND = "memory"

    @property
    def valid_map(self) -> dict[str, int]:
        return MEM2_VALID if self.variant == "mem2" else MEM1_VALID

    def is_valid(self, name: str) -> bool:
        bit = self.valid_map.get(name)
        return bit is not None and bool(self.validation_bits & bit)

    @property
    def physical_addr_valid(self) -> bool:
        return self.is_valid("physical_addr")

    def location(self) -> dict[str, int]:
        """The valid location fields (node/card/module/rank/bank/device/row/column/bit)."""
        layout, values = self._location()
        return dict(zip(layout.names, values))

    def _location(self) -> tuple[_LocationLayout, tuple[int, ...]]:
        """The layout of the valid location fields and their values."""
        v = self.validation_bits
        if self.variant == "mem2":
            layout = _LOCATION2_LAYOUTS[v & _LOCATION2_MASK]
            row, chip_id = self.row, self.chip_id
        else:  # mem1 keeps row bits 17:16 and the chip id in ``extended``
            layout = _LOCATION1_LAYOUTS[v & _LOCATION1_MASK]
            row = self.row | (self.extended & 0x3) << 16 if v & _ROW_EXT else self.row
            chip_id = self.extended >> 5
        bank = self.bank
        values = (self.node, self.card, self.module, self.rank, bank, bank >> 8, bank & 0xFF,
                  self.device, row, self.column, self.bit_pos, chip_id)  # in _LOCATION order
        return layout, tuple(map(values.__getitem__, layout.indexes))

    def location_text(self) -> str:
        return " ".join(f"{k} {v}" for k, v in self.location().items())

    def to_dict(self) -> dict:
        bits = self.valid_map
        v = self.validation_bits
        d: dict = {"variant": self.variant, "validation_bits": hex64(v),
                   "physical_addr_valid": bool(v & bits["physical_addr"])}
        if v & bits["error_status"]:
            d["error_status"] = {"value": hex64(self.error_status),
                                 "code": enum(self.error_status >> 8 & 0xFF, ERROR_STATUS_CODES)}
        if v & bits["physical_addr"]:
            d["physical_addr"] = hex64(self.physical_addr)
        if v & bits["physical_addr_mask"]:
            d["physical_addr_mask"] = hex64(self.physical_addr_mask)
        d["location"] = self.location()
        if v & (bits["requestor_id"] | bits["responder_id"] | bits["target_id"]):
            for name in ("requestor_id", "responder_id", "target_id"):
                if v & bits[name]:
                    d[name] = hex64(getattr(self, name))
        if v & bits["error_type"]:
            d["error_type"] = enum(self.error_type, MEMORY_ERROR_TYPES)
        if self.variant == "mem2" and v & bits["status"]:
            d["status"] = self.status
        if v & bits["mem_array_handle"]:
            d["mem_array_handle"] = self.mem_array_handle
        if v & bits["mem_dev_handle"]:
            d["mem_dev_handle"] = self.mem_dev_handle
        if self.extra:
            d["extra_bytes"] = len(self.extra)
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        bits = self.valid_map
        v = self.validation_bits
        pa_valid = "true" if v & bits["physical_addr"] else "false"
        text = (f'{{"variant":{json_str(self.variant)},"validation_bits":"{hex64(v)}",'
                f'"physical_addr_valid":{pa_valid}')
        if v & bits["error_status"]:
            code = ERROR_STATUS_CODE_JSON[self.error_status >> 8 & 0xFF]
            text += f',"error_status":{{"value":"{hex64(self.error_status)}","code":{code}}}'
        if v & bits["physical_addr"]:
            text += f',"physical_addr":"{hex64(self.physical_addr)}"'
        if v & bits["physical_addr_mask"]:
            text += f',"physical_addr_mask":"{hex64(self.physical_addr_mask)}"'
        layout, location = self._location()
        text += f',"location":{layout.json_template % location}'
        if v & (bits["requestor_id"] | bits["responder_id"] | bits["target_id"]):
            for name in ("requestor_id", "responder_id", "target_id"):
                if v & bits[name]:
                    text += f',"{name}":"{hex64(getattr(self, name))}"'
        if v & bits["error_type"]:
            text += f',"error_type":{MEMORY_ERROR_TYPE_JSON[self.error_type]}'
        if self.variant == "mem2" and v & bits["status"]:
            text += f',"status":{self.status}'
        if v & bits["mem_array_handle"]:
            text += f',"mem_array_handle":{self.mem_array_handle}'
        if v & bits["mem_dev_handle"]:
            text += f',"mem_dev_handle":{self.mem_dev_handle}'
        if self.extra:
            text += f',"extra_bytes":{len(self.extra)}'
        return text + "}"

    def describe(self) -> list[str]:
        out = []
        if self.is_valid("error_type"):
            out.append(f"error type: {MEMORY_ERROR_TYPES.get(self.error_type, 'unknown')}")
        out.append("physical address: " + (f"{self.physical_addr:#x}" if self.physical_addr_valid
                                           else "NOT VALID (unlocatable)"))
        if self.location():
            out.append("location: " + self.location_text())
        if self.is_valid("mem_dev_handle"):
            out.append(f"DIMM (SMBIOS type 17) handle: {self.mem_dev_handle:#06x}")
        return out


def decode_memory(buf: bytes, off: int, end: int) -> MemorySection:
    size = end - off
    if size >= MEM1.size:
        values = MEM1.unpack_from(buf, off)
        err = MemorySection("mem1", *values)
        err.extra = bytes(buf[off + MEM1.size:end])
        return err
    if size >= MEM1_LEGACY_SIZE:
        padded = bytes(buf[off:off + MEM1_LEGACY_SIZE]) + bytes(MEM1.size - MEM1_LEGACY_SIZE)
        err = MemorySection("mem1_legacy", *MEM1.unpack(padded))
        err.extra = bytes(buf[off + MEM1_LEGACY_SIZE:end])
        if err.validation_bits & ~(MEM1_VALID["rank"] - 1):
            # cper_print_mem: "valid bits set for fields beyond structure"; the fields
            # those bits vouch for (rank, handles, extended) are not in these 73 bytes
            raise DecodeError(f"73-byte memory error section has validation bits "
                              f"{err.validation_bits:#x} for fields beyond its end", off, err)
        return err
    raise DecodeError(f"memory error section needs {MEM1_LEGACY_SIZE} bytes, has {size}", off)


def decode_memory2(buf: bytes, off: int, end: int) -> MemorySection:
    size = end - off
    if size < MEM2.size:
        raise DecodeError(f"memory error 2 section needs {MEM2.size} bytes, has {size}", off)
    kwargs = dict(zip(MEM2_FIELDS, MEM2.unpack_from(buf, off)))
    return MemorySection("mem2", extra=bytes(buf[off + MEM2.size:end]), **kwargs)


def encode_memory(err: MemorySection) -> bytes:
    if err.variant == "mem2":
        return MEM2.pack(*(getattr(err, f) for f in MEM2_FIELDS)) + err.extra
    data = MEM1.pack(*(getattr(err, f) for f in MEM1_FIELDS))
    if err.variant == "mem1_legacy":
        return data[:MEM1_LEGACY_SIZE] + err.extra
    return data + err.extra


def memory_error(variant: str = "mem1", **values: int) -> MemorySection:
    """Build a MemorySection from field values, setting the validation bit of each field given.

    ``bank_group``/``bank_address`` fill the two halves of ``bank``; ``row`` above 16 bits
    sets the row-extension bits (mem1); ``chip_id`` goes into ``extended`` for mem1.
    """
    valid_map = MEM2_VALID if variant == "mem2" else MEM1_VALID
    err = MemorySection(variant)
    known = {f.name for f in fields(MemorySection)}
    bits = values.pop("validation_bits", 0)
    if "bank_group" in values or "bank_address" in values:
        err.bank = values.pop("bank_group", 0) << 8 | values.pop("bank_address", 0) & 0xFF
        bits |= valid_map["bank_group"] | valid_map["bank_address"]
    if variant != "mem2" and values.get("row", 0) > 0xFFFF:
        row = values.pop("row")
        err.row, err.extended = row & 0xFFFF, err.extended | row >> 16 & 0x3
        bits |= valid_map["row"] | valid_map["row_ext"]
    if variant != "mem2" and "chip_id" in values:
        err.extended |= (values.pop("chip_id") & 0x7) << 5
        bits |= valid_map["chip_id"]
    for name, value in values.items():
        if name not in known:
            raise TypeError(f"unknown memory error field {name!r}")
        setattr(err, name, value)
        bits |= valid_map.get(name, 0)
    err.validation_bits = bits
    return err
