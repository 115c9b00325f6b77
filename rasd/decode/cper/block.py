"""ACPI Generic Error Status Block + Generic Error Data Entries (ACPI 6.5 18.3.2.7).

What GHES error sources and BERT deliver. Every length in the input is untrusted:
lengths only bound slices of bytes already in hand, never allocations, and every
loop advances by at least a header per step.
"""

from __future__ import annotations

import struct

from ..common import GUID_TEXT, Timestamp, fixed_text
from ..errors import DecodeError
from .model import Record, Section, StatusBlockHeader
from .sections import decode_body

HEADER = struct.Struct("<IIIII")  # acpi_hest_generic_status, 20 bytes
ENTRY = struct.Struct("<16sIHBBI16s20s")  # acpi_hest_generic_data, 64 bytes
ENTRY_V3_EXTRA = struct.Struct("<Q")  # acpi_hest_generic_data_v300 adds time_stamp: 72 bytes
MIN_DATA_LENGTH = 64  # cper_estatus_check_header: data_length, when set, is at least 64


def entry_header_size(revision: int) -> int:
    """64 bytes before revision 0x300, 72 from it (the kernel tests revision >> 8 >= 3)."""
    return ENTRY.size + ENTRY_V3_EXTRA.size if revision >> 8 >= 3 else ENTRY.size


def status_block_length(header: StatusBlockHeader) -> int:
    """cper_estatus_len(): raw data ends the block when present, else the data entries do."""
    if header.raw_data_length:
        return header.raw_data_offset + header.raw_data_length
    return HEADER.size + header.data_length


def decode_status_block(buf: bytes, base: int = 0) -> Record:
    """Decode one status block starting at ``base``; faults land in ``record.error``."""
    rec = Record("status_block", offset=base)
    avail = len(buf) - base
    if avail < HEADER.size:
        rec.raw = bytes(buf[base:])
        rec.fail(DecodeError(f"status block header needs {HEADER.size} bytes, has {avail}", base))
        return rec
    header = StatusBlockHeader(*HEADER.unpack_from(buf, base))
    rec.header = header
    total = status_block_length(header)
    # the common case, one whole block in hand: keep it without copying
    whole = base == 0 and total == len(buf) and type(buf) is bytes
    rec.raw = buf if whole else bytes(buf[base:base + total])
    end = base + len(rec.raw)
    rec.complete = HEADER.size <= total <= avail
    _check_lengths(rec, header, total, avail)
    _decode_entries(rec, buf, base + HEADER.size, base + HEADER.size + header.data_length, end)
    if header.raw_data_length and header.raw_data_offset >= HEADER.size + header.data_length:
        rec.raw_data = bytes(buf[base + header.raw_data_offset:end])
    return rec


def _check_lengths(rec: Record, header: StatusBlockHeader, total: int, avail: int) -> None:
    base = rec.offset
    if header.data_length and header.data_length < MIN_DATA_LENGTH:
        rec.fail(DecodeError(f"data_length {header.data_length} is below the "
                             f"{MIN_DATA_LENGTH}-byte minimum", base + 12))
    if header.raw_data_length and header.raw_data_offset < HEADER.size + header.data_length:
        rec.fail(DecodeError(f"raw_data_offset {header.raw_data_offset} overlaps the data "
                             f"entries (ends at {HEADER.size + header.data_length})", base + 4))
    if total > avail:
        rec.fail(DecodeError(f"block claims {total} bytes, only {avail} present (truncated)",
                             base + len(rec.raw)))


def _decode_entries(rec: Record, buf: bytes, pos: int, data_end: int, avail_end: int) -> None:
    index = 0
    while pos < data_end:
        if min(data_end, avail_end) - pos < ENTRY.size:
            rec.fail(DecodeError(f"generic data entry {index} header truncated", pos))
            return
        sec, payload_end = _decode_entry_header(buf, pos)
        if sec is None:
            rec.fail(DecodeError(f"generic data entry {index} header truncated", pos))
            return
        if payload_end > data_end:
            rec.fail(DecodeError(f"generic data entry {index} of {sec.payload_length} bytes "
                                 f"runs past data_length", pos + 24))
        if payload_end > avail_end:
            rec.fail(DecodeError(f"generic data entry {index} truncated", avail_end))
        _decode_payload(rec, sec, buf, min(payload_end, data_end, avail_end))
        rec.sections.append(sec)
        pos = payload_end
        index += 1
    if pos != data_end:
        rec.fail(DecodeError("data entries do not add up to data_length", data_end))


def _decode_entry_header(buf: bytes, pos: int) -> tuple[Section | None, int]:
    (stype, severity, revision, valid, flags, length, fru_id,
     fru_text) = ENTRY.unpack_from(buf, pos)
    timestamp = None
    if revision >> 8 >= 3:  # entry_header_size(), inline: this runs for every entry
        hsize = ENTRY.size + ENTRY_V3_EXTRA.size
        if len(buf) - pos < hsize:
            return None, pos
        timestamp = Timestamp(ENTRY_V3_EXTRA.unpack_from(buf, pos + ENTRY.size)[0])
    else:
        hsize = ENTRY.size
    sec = Section(GUID_TEXT[stype], None, severity, revision, valid, flags, GUID_TEXT[fru_id],
                  fixed_text(fru_text) if fru_text[0] else "", timestamp, None, pos,
                  pos + hsize, length)  # error, offset, payload_offset, payload_length
    return sec, pos + hsize + length


def _decode_payload(rec: Record, sec: Section, buf: bytes, end: int) -> None:
    try:
        sec.body = decode_body(sec.section_type, buf, sec.payload_offset, end)
    except DecodeError as exc:
        sec.body = exc.partial
        sec.error = exc
        rec.fail(DecodeError(exc.reason, exc.offset))
