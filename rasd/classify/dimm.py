"""DIMM labels from SMBIOS type 17 (Memory Device), picked by a CPER module handle.

A CPER memory section (reference §4.3) may carry ``mem_dev_handle`` (validation bit
0x20000): the SMBIOS handle of the type-17 structure for the failing module. That
structure's strings are what is printed on the board ("DIMM_A1", "CPU0_CH2_D0"), so
that is what an operator needs to pull the right module.

Type 17 layout (DMTF DSP0134 §7.18; offsets as dmidecode and the kernel's
dmi_scan.c read them; all little-endian):

  0x00 type u8 (17)            0x01 length u8 (formatted area)   0x02 handle u16
  0x04 array handle u16        0x06 error info handle u16
  0x08 total width u16         0x0A data width u16
  0x0C size u16: 0 = empty slot, 0xFFFF = unknown, bit 15 set = KiB units else MiB,
       0x7FFF = see extended size
  0x0E form factor u8          0x0F device set u8
  0x10 device locator (string index)   0x11 bank locator (string index)
  0x12 memory type u8          0x13 type detail u16      0x15 speed u16 (2.3+)
  0x17 manufacturer, 0x18 serial number, 0x19 asset tag, 0x1A part number (strings, 2.3+)
  0x1B attributes u8 (2.6+)    0x1C extended size u32, MiB in bits 30:0 (2.7+)

Strings follow the formatted area, each NUL-terminated, the set ended by a second
NUL; index 0 means "no string". Sources: ``/sys/firmware/dmi/entries/17-*/raw``
(CONFIG_DMI_SYSFS; each raw file is one structure with its strings) or, without it,
the whole table in ``/sys/firmware/dmi/tables/DMI``.
"""

from __future__ import annotations

import glob
import os
import struct
from typing import Any, Iterator

ENTRIES = "/sys/firmware/dmi/entries"
TABLE = "/sys/firmware/dmi/tables/DMI"
TYPE_MEMORY_DEVICE = 17
END_OF_TABLE = 127


def split_structure(buf: bytes, offset: int = 0) -> tuple[bytes, list[bytes], int] | None:
    """One SMBIOS structure at ``offset`` → (formatted area, strings, next offset)."""
    if offset + 4 > len(buf):
        return None
    length = buf[offset + 1]
    if length < 4 or offset + length > len(buf):
        return None
    formatted = buf[offset:offset + length]
    end = buf.find(b"\0\0", offset + length)
    if end < 0:
        return None
    string_area = buf[offset + length:end]
    strings = string_area.split(b"\0") if string_area else []
    return formatted, strings, end + 2


def _string(strings: list[bytes], index: int) -> str | None:
    if index == 0 or index > len(strings):
        return None  # 0: not specified; past the end: a firmware bug, not a name
    text = strings[index - 1].decode("ascii", errors="replace").strip()
    return text or None


def _u16(data: bytes, off: int) -> int | None:
    return struct.unpack_from("<H", data, off)[0] if off + 2 <= len(data) else None


def _size_mb(data: bytes) -> int | float | None:
    """Module size in MiB: 0 for an empty slot, None when unknown."""
    size = _u16(data, 0x0C)
    if size is None or size == 0xFFFF:
        return None
    if size == 0x7FFF and len(data) >= 0x20:
        return struct.unpack_from("<I", data, 0x1C)[0] & 0x7FFFFFFF
    if size & 0x8000:
        return (size & 0x7FFF) / 1024  # KiB granularity (small modules)
    return size


def parse_type17(raw: bytes) -> dict[str, Any] | None:
    """A type-17 structure (formatted area + strings) → its label fields, or None."""
    parts = split_structure(raw)
    if parts is None:
        return None
    data, strings, _ = parts
    if data[0] != TYPE_MEMORY_DEVICE or len(data) < 0x15:  # 0x15: the SMBIOS 2.1 length
        return None

    def s(off: int) -> str | None:
        return _string(strings, data[off]) if off < len(data) else None

    locator, bank = s(0x10), s(0x11)
    return {
        "handle": _u16(data, 0x02),
        "array_handle": _u16(data, 0x04),
        "locator": locator,
        "bank_locator": bank,
        "label": " ".join(x for x in (bank, locator) if x) or None,  # as cper.c prints it
        "size_mb": _size_mb(data),
        "manufacturer": s(0x17),
        "serial": s(0x18),
        "part_number": s(0x1A),
    }


def _iter_entries(root: str) -> Iterator[bytes]:
    for path in sorted(glob.glob(os.path.join(root, f"{TYPE_MEMORY_DEVICE}-*", "raw"))):
        try:
            with open(path, "rb") as f:
                yield f.read()
        except OSError:
            continue


def _iter_table(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError:
        return
    offset = 0
    while True:
        parts = split_structure(buf, offset)
        if parts is None:
            return
        data, _, nxt = parts
        if data[0] == TYPE_MEMORY_DEVICE:
            yield buf[offset:nxt]
        if data[0] == END_OF_TABLE:
            return
        offset = nxt


def read_dimms(entries: str = ENTRIES, table: str = TABLE) -> dict[int, dict[str, Any]]:
    """handle → DIMM fields for every type-17 structure (empty dict when no SMBIOS)."""
    raws = list(_iter_entries(entries)) if os.path.isdir(entries) else []
    if not raws:
        raws = list(_iter_table(table))
    out: dict[int, dict[str, Any]] = {}
    for raw in raws:
        dimm = parse_type17(raw)
        if dimm is not None and dimm["handle"] is not None:
            out[dimm["handle"]] = dimm
    return out


class DimmTable:
    """SMBIOS does not change while the system runs: read once, look up by handle."""

    def __init__(self, root: str = "/sys/firmware/dmi") -> None:
        self.root = root
        self._dimms: dict[int, dict[str, Any]] | None = None

    @property
    def dimms(self) -> dict[int, dict[str, Any]]:
        if self._dimms is None:
            self._dimms = read_dimms(os.path.join(self.root, "entries"),
                                     os.path.join(self.root, "tables", "DMI"))
        return self._dimms

    def lookup(self, mem_dev_handle: int | None) -> dict[str, Any] | None:
        """The DIMM a CPER ``mem_dev_handle`` names, or None (no handle, no SMBIOS,
        or a handle SMBIOS does not have)."""
        if mem_dev_handle is None:
            return None
        return self.dimms.get(mem_dev_handle)


_default: DimmTable | None = None


def dimm_for_handle(mem_dev_handle: int | None) -> dict[str, Any] | None:
    global _default
    if _default is None:
        _default = DimmTable()
    return _default.lookup(mem_dev_handle)
