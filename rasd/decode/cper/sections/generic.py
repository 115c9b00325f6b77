"""Processor Generic Error section (UEFI 2.10 N.2.4.1; kernel struct cper_sec_proc_generic)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...common import enum, fixed_text, flag_names, hex64, json_text
from ...errors import DecodeError

LAYOUT = struct.Struct("<QBBBBBB2sQ128sQQQQQ")  # 192 bytes
FIELDS = ("validation_bits", "proc_type", "proc_isa", "proc_error_type", "operation", "flags",
          "level", "reserved", "cpu_version", "cpu_brand", "proc_id", "target_addr",
          "requestor_id", "responder_id", "ip")
# validation bit per field (CPER_PROC_VALID_*)
VALID = {"proc_type": 0, "proc_isa": 1, "proc_error_type": 2, "operation": 3, "flags": 4,
         "level": 5, "cpu_version": 6, "cpu_brand": 7, "proc_id": 8, "target_addr": 9,
         "requestor_id": 10, "responder_id": 11, "ip": 12}
PROC_TYPES = {0: "ia32_x64", 1: "ia64", 2: "arm"}
PROC_ISAS = {0: "ia32", 1: "ia64", 2: "x64", 3: "arm_a32_t32", 4: "arm_a64"}
ERROR_TYPES = {0x01: "cache", 0x02: "tlb", 0x04: "bus", 0x08: "micro_architectural"}
OPERATIONS = {0: "unknown_or_generic", 1: "data_read", 2: "data_write",
              3: "instruction_execution"}
FLAGS = {0x01: "restartable", 0x02: "precise_ip", 0x04: "overflow", 0x08: "corrected"}


@dataclass(slots=True)
class GenericProcessorSection:
    validation_bits: int = 0
    proc_type: int = 0
    proc_isa: int = 0
    proc_error_type: int = 0
    operation: int = 0
    flags: int = 0
    level: int = 0
    reserved: bytes = b"\0\0"
    cpu_version: int = 0
    cpu_brand: bytes = bytes(128)
    proc_id: int = 0
    target_addr: int = 0
    requestor_id: int = 0
    responder_id: int = 0
    ip: int = 0
    extra: bytes = b""

    KIND = "generic_processor"

    def valid(self, name: str) -> bool:
        return bool(self.validation_bits >> VALID[name] & 1)

    def to_dict(self) -> dict:
        d: dict = {"validation_bits": self.validation_bits}
        if self.valid("proc_type"):
            d["proc_type"] = enum(self.proc_type, PROC_TYPES)
        if self.valid("proc_isa"):
            d["proc_isa"] = enum(self.proc_isa, PROC_ISAS)
        if self.valid("proc_error_type"):
            d["proc_error_type"] = {"value": self.proc_error_type,
                                    "names": flag_names(self.proc_error_type, ERROR_TYPES)}
        if self.valid("operation"):
            d["operation"] = enum(self.operation, OPERATIONS)
        if self.valid("flags"):
            d["flags"] = {"value": self.flags, "names": flag_names(self.flags, FLAGS)}
        if self.valid("level"):
            d["level"] = self.level
        if self.valid("cpu_version"):
            d["cpu_version"] = hex64(self.cpu_version)
        if self.valid("cpu_brand"):
            d["cpu_brand"] = fixed_text(self.cpu_brand)
        for name in ("proc_id", "target_addr", "requestor_id", "responder_id", "ip"):
            if self.valid(name):
                d[name] = hex64(getattr(self, name))
        return d

    def to_json(self) -> str:
        # rare in the field: the dict form is fast enough, and identical by construction
        return json_text(self.to_dict())

    def describe(self) -> list[str]:
        d = self.to_dict()
        return [f"{k}: {v}" for k, v in d.items() if k != "validation_bits"]


def decode_generic(buf: bytes, off: int, end: int) -> GenericProcessorSection:
    if end - off < LAYOUT.size:
        raise DecodeError(f"generic processor section needs {LAYOUT.size} bytes, "
                          f"has {end - off}", off)
    sec = GenericProcessorSection(*LAYOUT.unpack_from(buf, off))
    sec.extra = bytes(buf[off + LAYOUT.size:end])
    return sec


def encode_generic(sec: GenericProcessorSection) -> bytes:
    return LAYOUT.pack(*(getattr(sec, f) for f in FIELDS)) + sec.extra
