"""MPIDR -> logical CPU, from the ACPI MADT (GICC entries), as arm64 Linux numbers CPUs.

CPER ARM processor sections name the CPU by MPIDR; operators and
/sys/devices/system/cpu speak logical CPU numbers. arm64 Linux gives the boot CPU
number 0 and then numbers the enabled GICC entries in MADT order (acpi_parse_gic_cpu_interface),
so MADT order with the boot CPU first gives the mapping. Best effort: None when unknown.
"""

from __future__ import annotations

import struct
from pathlib import Path

MADT_PATH = Path("/sys/firmware/acpi/tables/APIC")
GICC = 0x0B  # MADT subtable type: GIC CPU interface
GICC_ENABLED = 1
HEADER_SIZE = 44  # ACPI header (36) + local interrupt controller address (4) + flags (4)


def parse_madt_mpidrs(data: bytes) -> list[int]:
    """MPIDRs of the enabled GICC entries, in table order (ACPI 6.5 5.2.12.14)."""
    out = []
    pos = HEADER_SIZE
    while pos + 2 <= len(data):
        sub_type, length = data[pos], data[pos + 1]
        if length < 2 or pos + length > len(data):
            break  # malformed: stop rather than misread
        if sub_type == GICC and length >= 76:
            flags = struct.unpack_from("<I", data, pos + 12)[0]
            mpidr = struct.unpack_from("<Q", data, pos + 68)[0]
            if flags & GICC_ENABLED:
                out.append(mpidr & 0xFF00FFFFFF)  # MPIDR affinity bits (Aff3, Aff2..Aff0)
        pos += length
    return out


class CpuMap:
    def __init__(self, mpidrs: list[int], boot_mpidr: int | None = None) -> None:
        order = list(mpidrs)
        if boot_mpidr is not None and boot_mpidr in order:
            order.remove(boot_mpidr)
            order.insert(0, boot_mpidr)
        self.by_mpidr = {m: i for i, m in enumerate(order)}

    def __call__(self, mpidr: int) -> int | None:
        return self.by_mpidr.get(mpidr & 0xFF00FFFFFF)

    @classmethod
    def from_host(cls, madt: Path = MADT_PATH) -> "CpuMap":
        try:
            return cls(parse_madt_mpidrs(madt.read_bytes()))
        except OSError:
            return cls([])
