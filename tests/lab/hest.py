"""HEST parsing and the POLLED-source table upgrade.

QEMU's HEST has only hardware-driven sources (SEA, and GPIO on QEMU >= 10.2).
A polled GHES source makes the kernel read an error status block we write
ourselves, every poll_interval ms: ghes_poll_func -> ghes_proc, no signals.
Linux accepts a replacement HEST from the initrd (CONFIG_ACPI_TABLE_UPGRADE,
file kernel/firmware/acpi/hest.aml in an uncompressed cpio in front of the
initrd) when OEM ID and OEM table ID match and the OEM revision is higher.

The added sources' registers and blocks live in the firmware's ACPI NVS
allocation that holds QEMU's own hardware-error blob: it is reserved (not
System RAM), so /dev/mem may write it under STRICT_DEVMEM, and on arm64 the
allocation is 64 KiB-aligned while QEMU uses about 2 KiB of it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<4sIBB6s8sI4sI")   # 36-byte ACPI table header
GHES = struct.Struct("<HHHBBIII12s28sI")   # type 9, 64 bytes
GAS = struct.Struct("<BBBBQ")               # generic address structure
NOTIFY = struct.Struct("<BBHIIIIII")         # 28 bytes
SUBTABLE_SIZES = {6: 48, 7: 44, 8: 56, 9: 64, 10: 92}
NOTIFY_POLLED, NOTIFY_SEA, NOTIFY_GPIO = 0, 8, 7
AREA_OFFSET = 0x1000    # past QEMU's blob (registers + 2 x 1 KiB blocks)
BLOCK_LEN = 0x400


@dataclass
class Source:
    type: int
    id: int
    notify: int
    status_reg: int
    block_len: int


def sources(table: bytes) -> list[Source]:
    """GHES/GHESv2 sources of a HEST (other subtable types are skipped)."""
    count, = struct.unpack_from("<I", table, 36)
    off, out = 40, []
    for _ in range(count):
        typ, = struct.unpack_from("<H", table, off)
        if typ not in SUBTABLE_SIZES:
            raise ValueError(f"HEST subtable type {typ} not handled")
        if typ in (9, 10):
            f = GHES.unpack_from(table, off)
            out.append(Source(typ, f[1], f[9][0], GAS.unpack(f[8])[4], f[10]))
        off += SUBTABLE_SIZES[typ]
    return out


def checksum(table: bytearray) -> None:
    table[9] = 0
    table[9] = (-sum(table)) & 0xFF


def reserved_range(iomem: str, addr: int) -> tuple[int, int]:
    """The top-level /proc/iomem 'reserved' range containing addr."""
    for line in iomem.splitlines():
        if line.startswith(" "):
            continue
        span, _, name = line.partition(" : ")
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= addr <= hi and name.strip() == "reserved":
            return lo, hi + 1
    raise ValueError(f"{addr:#x} is not in a reserved /proc/iomem range")


@dataclass
class PolledLayout:
    sources: list[tuple[int, int, int]]   # (source id, status register PA, block PA)
    poll_ms: int


def upgrade(table: bytes, iomem: str, count: int, poll_ms: int) -> tuple[bytes, PolledLayout]:
    """QEMU's HEST plus `count` polled GHES (type 9) sources."""
    existing = sources(table)
    blob = min(s.status_reg for s in existing)
    lo, hi = reserved_range(iomem, blob)
    regs = blob + AREA_OFFSET
    blocks = regs + 0x100
    if count > 0x100 // 8 or blocks + count * BLOCK_LEN > hi:
        raise ValueError(f"{count} sources do not fit in {lo:#x}-{hi:#x}")
    first_id = max(s.id for s in existing) + 1
    layout, subtables = [], b""
    for i in range(count):
        reg, block = regs + 8 * i, blocks + BLOCK_LEN * i
        gas = GAS.pack(0, 64, 0, 4, reg)           # system memory, qword access
        notify = NOTIFY.pack(NOTIFY_POLLED, 28, 0, poll_ms, 0, 0, 0, 0, 0)
        subtables += GHES.pack(9, first_id + i, 0xFFFF, 0, 1, 1, 1, BLOCK_LEN, gas, notify,
                               BLOCK_LEN)
        layout.append((first_id + i, reg, block))
    out = bytearray(table) + subtables
    struct.pack_into("<I", out, 4, len(out))
    struct.pack_into("<I", out, 36, len(existing) + count)
    oem_rev, = struct.unpack_from("<I", out, 24)
    struct.pack_into("<I", out, 24, oem_rev + 1)   # the override needs a newer revision
    checksum(out)
    return bytes(out), PolledLayout(layout, poll_ms)


def boot_script(layout: PolledLayout) -> str:
    """Run by the guest's /init: point each new register at its block."""
    lines = ["#!/bin/sh", "# written by tests/lab/hest.py: polled GHES sources"]
    lines += [f"labinj setptr {reg:#x} {block:#x}" for _, reg, block in layout.sources]
    return "\n".join(lines) + "\n"
