"""SMBIOS type 17 parsing with hand-built structures (offsets: DSP0134 §7.18, as
listed in rasd/classify/dimm.py), and the host's own tables when it has them."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from rasd.classify.dimm import DimmTable, parse_type17, read_dimms, split_structure


def type17(handle: int, locator: str | None, bank: str | None, size: int,
           ext_size: int = 0, length: int = 0x28, manufacturer: str | None = None,
           serial: str | None = None, part: str | None = None) -> bytes:
    """A type-17 structure: formatted area of ``length`` bytes, then its strings."""
    strings: list[str] = []

    def idx(s: str | None) -> int:
        if s is None:
            return 0
        strings.append(s)
        return len(strings)

    body = bytearray(max(length, 0x28))
    struct.pack_into("<BBH", body, 0x00, 17, length, handle)   # type, length, handle
    struct.pack_into("<HH", body, 0x04, 0x1000, 0xFFFE)        # array handle, no error info
    struct.pack_into("<HH", body, 0x08, 72, 64)                # total/data width (ECC)
    struct.pack_into("<H", body, 0x0C, size)                   # size
    body[0x0E] = 0x09                                          # form factor: DIMM
    body[0x10] = idx(locator)                                  # device locator
    body[0x11] = idx(bank)                                     # bank locator
    body[0x12] = 0x1A                                          # memory type: DDR4
    struct.pack_into("<H", body, 0x15, 3200)                   # speed
    body[0x17] = idx(manufacturer)
    body[0x18] = idx(serial)
    body[0x1A] = idx(part)
    struct.pack_into("<I", body, 0x1C, ext_size)               # extended size (2.7+)
    tail = b"".join(s.encode() + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return bytes(body[:length]) + tail


def test_basic_labels():
    raw = type17(0x1100, "DIMM_A1", "NODE 0 CHANNEL 0", 16384, manufacturer="Samsung",
                 serial="0x1234", part="M393A2K43DB3-CWE")
    d = parse_type17(raw)
    assert d == {"handle": 0x1100, "array_handle": 0x1000, "locator": "DIMM_A1",
                 "bank_locator": "NODE 0 CHANNEL 0", "label": "NODE 0 CHANNEL 0 DIMM_A1",
                 "size_mb": 16384, "manufacturer": "Samsung", "serial": "0x1234",
                 "part_number": "M393A2K43DB3-CWE"}


def test_size_encodings():
    assert parse_type17(type17(1, "A", None, 0))["size_mb"] == 0            # empty slot
    assert parse_type17(type17(1, "A", None, 0xFFFF))["size_mb"] is None    # unknown
    assert parse_type17(type17(1, "A", None, 0x8000 | 512))["size_mb"] == 0.5  # KiB units
    # 0x7FFF: the real size is in the extended-size field (128 GiB here)
    assert parse_type17(type17(1, "A", None, 0x7FFF, ext_size=131072))["size_mb"] == 131072


def test_no_strings_and_missing_index():
    d = parse_type17(type17(7, None, None, 8192))
    assert d["locator"] is None and d["bank_locator"] is None and d["label"] is None
    raw = bytearray(type17(7, "A", None, 8192))
    raw[0x11] = 5  # bank locator points past the strings: firmware bug, not a name
    assert parse_type17(bytes(raw))["bank_locator"] is None


def test_short_smbios_2_1_structure():
    # SMBIOS 2.1 type 17 is 0x15 bytes: locators exist, manufacturer/serial do not.
    raw = type17(3, "DIMM0", "BANK 0", 4096, length=0x15)
    d = parse_type17(raw)
    assert d["locator"] == "DIMM0" and d["bank_locator"] == "BANK 0"
    assert d["size_mb"] == 4096 and d["manufacturer"] is None


def test_rejects_other_types_and_truncation():
    raw = bytearray(type17(3, "DIMM0", None, 4096))
    raw[0] = 16
    assert parse_type17(bytes(raw)) is None
    assert parse_type17(type17(3, "DIMM0", None, 4096)[:0x20]) is None  # no string terminator
    assert split_structure(b"\x11") is None


def test_entries_dir(tmp_path: Path):
    for i, (h, loc) in enumerate(((0x1100, "DIMM_A1"), (0x1101, "DIMM_B1"))):
        d = tmp_path / "entries" / f"17-{i}"
        d.mkdir(parents=True)
        (d / "raw").write_bytes(type17(h, loc, "P0", 32768))
    (tmp_path / "entries" / "16-0").mkdir()  # other types are ignored
    table = DimmTable(str(tmp_path))
    assert table.lookup(0x1101)["locator"] == "DIMM_B1"
    assert table.lookup(0x1100)["label"] == "P0 DIMM_A1"
    assert table.lookup(0x2000) is None and table.lookup(None) is None


def test_whole_table_fallback(tmp_path: Path):
    # No entries/ (CONFIG_DMI_SYSFS off): walk tables/DMI, skipping other types.
    type16 = struct.pack("<BBHBBBIHH", 16, 15, 0x1000, 3, 3, 6, 0x8000000, 0xFFFE, 2) + b"\0\0"
    end = struct.pack("<BBH", 127, 4, 0xFFFF) + b"\0\0"
    blob = type16 + type17(0x1100, "DIMM_A1", None, 8192) + type17(0x1101, "DIMM_A2", None, 0) \
        + end + type17(0x1102, "AFTER_END", None, 1)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "DMI").write_bytes(blob)
    dimms = read_dimms(str(tmp_path / "entries"), str(tmp_path / "tables" / "DMI"))
    assert sorted(dimms) == [0x1100, 0x1101]
    assert dimms[0x1101]["size_mb"] == 0


@pytest.mark.skipif(not os.path.isdir("/sys/firmware/dmi/entries")
                    and not os.path.exists("/sys/firmware/dmi/tables/DMI"),
                    reason="this host exposes no SMBIOS (/sys/firmware/dmi absent)")
def test_real_host_smbios():
    dimms = read_dimms()
    # Every parsed handle is the one sysfs lists for that entry.
    for path in Path("/sys/firmware/dmi/entries").glob("17-*"):
        handle_file = path / "handle"
        if handle_file.exists():
            assert int(handle_file.read_text().strip(), 0) in dimms
    for d in dimms.values():
        assert isinstance(d["handle"], int)
