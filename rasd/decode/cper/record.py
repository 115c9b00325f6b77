"""UEFI CPER record: record header + section descriptors + sections (UEFI 2.10 N.2).

What ERST, BMC/OpenBMC logs and firmware logs carry. Offsets and lengths in the
descriptors are relative to the record start and untrusted.
"""

from __future__ import annotations

import struct

from ..common import GUID_TEXT, Timestamp, fixed_text
from ..errors import DecodeError
from .model import Record, RecordHeader, Section
from .sections import decode_body

SIGNATURE = b"CPER"
SIGNATURE_END = 0xFFFFFFFF
HEADER = struct.Struct("<4sHIHIIIQ16s16s16s16sQIQ12s")  # 128 bytes
DESCRIPTOR = struct.Struct("<IIHBBI16s16sI20s")  # 72 bytes


def decode_cper_record(buf: bytes, base: int = 0) -> Record:
    rec = Record("cper_record", offset=base)
    avail = len(buf) - base
    if avail < HEADER.size:
        rec.raw = bytes(buf[base:])
        rec.fail(DecodeError(f"CPER record header needs {HEADER.size} bytes, has {avail}", base))
        return rec
    header = _decode_header(buf, base)
    rec.header = header
    length = header.record_length if header.record_length >= HEADER.size else avail
    rec.raw = bytes(buf[base:base + length])
    rec.complete = HEADER.size <= header.record_length <= avail
    if header.signature_end != SIGNATURE_END:
        rec.fail(DecodeError(f"signature_end is {header.signature_end:#x}, "
                             f"not 0xffffffff", base + 6))
    if header.record_length < HEADER.size:
        rec.fail(DecodeError(f"record_length {header.record_length} is shorter than "
                             f"the header", base + 20))
    elif header.record_length > avail:
        rec.fail(DecodeError(f"record claims {header.record_length} bytes, only {avail} "
                             f"present (truncated)", base + avail))
    _decode_sections(rec, buf, base, base + len(rec.raw))
    return rec


def _decode_header(buf: bytes, base: int) -> RecordHeader:
    (_, revision, sig_end, count, severity, valid, length, stamp, platform, partition, creator,
     notify, record_id, flags, persistence, _) = HEADER.unpack_from(buf, base)
    return RecordHeader(revision, sig_end, count, severity, valid, length, Timestamp(stamp),
                        GUID_TEXT[platform], GUID_TEXT[partition], GUID_TEXT[creator],
                        GUID_TEXT[notify], record_id, flags, persistence)


def _decode_sections(rec: Record, buf: bytes, base: int, end: int) -> None:
    pos = base + HEADER.size
    for index in range(rec.header.section_count):
        if end - pos < DESCRIPTOR.size:
            rec.fail(DecodeError(f"section descriptor {index} of "
                                 f"{rec.header.section_count} truncated", pos))
            return
        sec, section_offset = _decode_descriptor(buf, pos)
        start = base + section_offset
        if start < base + HEADER.size or start + sec.payload_length > end:
            rec.fail(DecodeError(f"section {index} (offset {start - base}, length "
                                 f"{sec.payload_length}) lies outside the record", pos))
        else:
            try:
                sec.body = decode_body(sec.section_type, buf, start, start + sec.payload_length)
            except DecodeError as exc:
                sec.body, sec.error = exc.partial, exc
                rec.fail(DecodeError(exc.reason, exc.offset))
        sec.payload_offset = start
        rec.sections.append(sec)
        pos += DESCRIPTOR.size


def _decode_descriptor(buf: bytes, pos: int) -> tuple[Section, int]:
    """The section a descriptor describes (its body still to decode), and the descriptor's
    section offset (relative to the record start)."""
    (offset, length, revision, valid, _, flags, stype, fru_id, severity,
     fru_text) = DESCRIPTOR.unpack_from(buf, pos)
    sec = Section(GUID_TEXT[stype], None, severity, revision, valid, flags, GUID_TEXT[fru_id],
                  fixed_text(fru_text) if fru_text[0] else "", None, None, pos, 0,
                  length)  # error, offset, payload_offset (set by the caller), payload_length
    return sec, offset
