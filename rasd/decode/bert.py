"""Boot Error Record Table (ACPI 6.5 18.3.1) and its Boot Error Region.

The kernel exposes the table at /sys/firmware/acpi/tables/BERT (48 bytes: ACPI
header, region_length u32 at 36, region address u64 at 40) and the region itself
at /sys/firmware/acpi/tables/data/BERT: Generic Error Status Blocks back to back.

At boot the kernel prints each block and then writes block_status = 0 into it
(bert.c treats BERT as a one-time polled source), so by the time rasd reads the
region, blocks it already printed usually have block_status 0. The walk therefore
follows the blocks' lengths, not block_status: a zeroed block with sane lengths is
decoded and reported as consumed by the kernel.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .cper import Record, decode_all
from .errors import DecodeError

DEFAULT_TABLES = Path("/sys/firmware/acpi/tables")
TABLE = struct.Struct("<4sIBB6s8sI4sIIQ")  # 48 bytes
MAX_REGION = 16 << 20  # a region larger than this is not read whole: bound the allocation


@dataclass(slots=True)
class BertTable:
    signature: bytes
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int
    region_length: int
    address: int
    checksum_ok: bool

    def to_dict(self) -> dict:
        return {"signature": self.signature.decode("ascii", "replace"), "length": self.length,
                "revision": self.revision, "checksum_ok": self.checksum_ok,
                "oem_id": self.oem_id, "oem_table_id": self.oem_table_id,
                "region_length": self.region_length, "address": hex(self.address)}


@dataclass(slots=True)
class BertReport:
    table: BertTable | None
    records: list[Record] = field(default_factory=list)
    region_length: int = 0
    error: DecodeError | None = None

    def record_digest(self, record: Record) -> str:
        """Content hash of a record, block_status excluded, so a record the kernel zeroed
        after printing hashes the same as before: dedup across restarts and reboots."""
        return hashlib.sha256(record.raw[4:]).hexdigest()


def parse_table(data: bytes) -> BertTable:
    if len(data) < TABLE.size:
        raise DecodeError(f"BERT table needs {TABLE.size} bytes, has {len(data)}", len(data))
    (sig, length, rev, csum, oem, oem_table, oem_rev, creator, creator_rev, region_len,
     addr) = TABLE.unpack_from(data)
    if sig != b"BERT":
        raise DecodeError(f"signature {sig!r} is not BERT", 0)
    text = lambda b: b.rstrip(b"\0 ").decode("ascii", "replace")  # noqa: E731
    return BertTable(sig, length, rev, csum, text(oem), text(oem_table), oem_rev, text(creator),
                     creator_rev, region_len, addr, sum(data[:length]) & 0xFF == 0)


def decode_region(data: bytes) -> list[Record]:
    """Every status block in a Boot Error Region (zeroed block_status included)."""
    return decode_all(data)


def read_bert(path: str | Path | None = None) -> BertReport:
    """Read BERT from ``path``: the tables directory (holding ``BERT`` and ``data/BERT``),
    a region file, or None for /sys/firmware/acpi/tables. Missing BERT gives an empty
    report (no table); unreadable or malformed input raises DecodeError or OSError."""
    table_path, region_path = _paths(Path(path) if path is not None else DEFAULT_TABLES)
    table = parse_table(table_path.read_bytes()) if table_path and table_path.exists() else None
    if region_path is None or not region_path.exists():
        return BertReport(table)
    with open(region_path, "rb") as f:
        region = f.read(MAX_REGION)
    report = BertReport(table, decode_region(region), len(region))
    if table is not None and table.region_length > MAX_REGION:
        report.error = DecodeError(f"region_length {table.region_length} exceeds the "
                                   f"{MAX_REGION}-byte read limit; read the first part", MAX_REGION)
    return report


def _paths(path: Path) -> tuple[Path | None, Path | None]:
    if path.is_dir():
        return path / "BERT", path / "data" / "BERT"
    return None, path
