"""CPER decoding, both framings, auto-detected.

- ``decode(data)``: one record from the start of ``data``; raises ``DecodeError``
  (with ``.partial`` and ``.raw``) when it is bad.
- ``try_decode(data)``: the same, but the fault is in ``record.error`` instead.
- ``decode_all(data)``: every record in ``data``, back to back (a BERT region, a file
  holding several records); stops at an empty block or at bytes that frame nothing.
"""

from __future__ import annotations

from ..errors import DecodeError
from .block import decode_status_block, status_block_length
from .model import (GHES_SEVERITIES, SEVERITIES, Record, RecordHeader, Section,
                    StatusBlockHeader, ghes_severity, section_payload)
from .record import SIGNATURE, decode_cper_record
from .sections import SECTION_NAMES, RawSection, section_name


def framing_of(data: bytes, offset: int = 0) -> str:
    return "cper_record" if data[offset:offset + 4] == SIGNATURE else "status_block"


def try_decode(data: bytes, offset: int = 0) -> Record:
    if data[offset:offset + 4] == SIGNATURE:  # framing_of(), inline: once per record
        return decode_cper_record(data, offset)
    return decode_status_block(data, offset)


def decode(data: bytes, offset: int = 0) -> Record:
    return try_decode(data, offset).raise_for_error()


def decode_all(data: bytes) -> list[Record]:
    records: list[Record] = []
    pos = 0
    while len(data) - pos >= 20:
        rec = try_decode(data, pos)
        if rec.empty and not rec.sections and not rec.raw_data and rec.error is None:
            break  # zero padding after the last block (GHES buffers, BERT regions)
        records.append(rec)
        if not rec.complete:
            break  # the framing itself is broken: what follows cannot be trusted
        pos += len(rec.raw)
    if not records and data:
        records.append(try_decode(data, 0))
    return records


__all__ = ["DecodeError", "Record", "RecordHeader", "Section", "StatusBlockHeader",
           "RawSection", "SEVERITIES", "GHES_SEVERITIES", "SECTION_NAMES", "decode",
           "try_decode", "decode_all", "framing_of", "ghes_severity", "section_name",
           "section_payload", "status_block_length", "decode_status_block",
           "decode_cper_record"]
