"""The decoded forms shared by both framings: sections and records."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ..common import JsonMemo, Timestamp, enum, enum_json, flags, flags_json, guid_str, json_str
from ..errors import DecodeError
from .sections import SectionBody, section_name

# CPER severities (UEFI; also acpi_hest_generic_status.error_severity and section severities).
# The kernel's GHES scale (ghes.h: 0 none, 1 corrected, 2 recoverable, 3 panic) is different;
# see rasd.decode.cper.ghes_severity.
SEVERITIES = {0: "recoverable", 1: "fatal", 2: "corrected", 3: "informational"}
GHES_SEVERITIES = {0: "none", 1: "corrected", 2: "recoverable", 3: "panic"}
SECTION_FLAGS = {0x01: "primary", 0x02: "containment_warning", 0x04: "reset",
                 0x08: "error_threshold_exceeded", 0x10: "resource_not_accessible",
                 0x20: "latent_error", 0x40: "propagated", 0x80: "overflow"}


RECORD_FLAGS = {0x1: "recovered", 0x2: "previous_error", 0x4: "simulated"}


# The dict forms of sub-objects, shared by to_dict() and the JSON memos below
def section_type_form(guid: str) -> dict:
    return {"guid": guid, "name": section_name(guid)}


def block_status_form(bs: int) -> dict:
    return {"value": bs, "uncorrectable": bool(bs & 1), "correctable": bool(bs & 2),
            "multiple_uncorrectable": bool(bs & 4), "multiple_correctable": bool(bs & 8),
            "entry_count": bs >> 4 & 0x3FF}


def notification_type_form(guid: str) -> dict:
    from .guids import NOTIFICATION_TYPES
    return {"guid": guid, "name": NOTIFICATION_TYPES.get(guid, "unknown")}


# JSON text of the constant sub-objects, made once per value (see rasd.decode.common)
SEVERITY_JSON = enum_json(SEVERITIES)
SECTION_FLAGS_JSON = flags_json(SECTION_FLAGS)
RECORD_FLAGS_JSON = flags_json(RECORD_FLAGS)
SECTION_TYPE_JSON = JsonMemo(section_type_form)
BLOCK_STATUS_JSON = JsonMemo(block_status_form)
NOTIFICATION_TYPE_JSON = JsonMemo(notification_type_form)


def ghes_severity(cper_severity: int) -> int:
    """Map a CPER severity to the kernel's GHES scale the way ghes_severity() does.

    Any value outside 0..3 is treated as fatal (GHES_SEV_PANIC), as the kernel does.
    """
    return {3: 0, 2: 1, 0: 2}.get(cper_severity, 3)


@dataclass(slots=True)
class Section:
    """One section: a Generic Error Data Entry (status block) or a section descriptor (record)."""

    section_type: str
    body: SectionBody | None
    severity: int = 2
    revision: int = 0x0300
    validation_bits: int = 0
    flags: int = 0x01
    fru_id: str = "00000000-0000-0000-0000-000000000000"
    fru_text: str = ""
    timestamp: Timestamp | None = None  # status-block entries with revision >= 0x300 only
    error: DecodeError | None = field(default=None, compare=False)
    offset: int = field(default=0, compare=False)  # of the entry header / descriptor
    payload_offset: int = field(default=0, compare=False)
    payload_length: int = field(default=0, compare=False)

    @property
    def name(self) -> str:
        return section_name(self.section_type)

    def to_dict(self) -> dict:
        d: dict = {
            "type": section_type_form(self.section_type),
            "severity": enum(self.severity, SEVERITIES),
            "revision": self.revision,
            "validation_bits": self.validation_bits,
            "flags": flags(self.flags, SECTION_FLAGS),
            "offset": self.offset,
            "payload_length": self.payload_length,
        }
        if self.validation_bits & 1:
            d["fru_id"] = self.fru_id
        if self.validation_bits & 2:
            d["fru_text"] = self.fru_text
        if self.timestamp is not None and self.validation_bits & 4:
            d["timestamp"] = self.timestamp.to_dict()
        d["kind"] = self.body.KIND if self.body is not None else None
        d["body"] = self.body.to_dict() if self.body is not None else None
        d["error"] = self.error.to_dict() if self.error else None
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        v = self.validation_bits
        text = (f'{{"type":{SECTION_TYPE_JSON[self.section_type]},'
                f'"severity":{SEVERITY_JSON[self.severity]},"revision":{self.revision},'
                f'"validation_bits":{v},"flags":{SECTION_FLAGS_JSON[self.flags]},'
                f'"offset":{self.offset},"payload_length":{self.payload_length}')
        if v & 1:
            text += f',"fru_id":{json_str(self.fru_id)}'
        if v & 2:
            text += f',"fru_text":{json_str(self.fru_text)}'
        if self.timestamp is not None and v & 4:
            text += f',"timestamp":{self.timestamp.to_json()}'
        if self.body is None:
            text += ',"kind":null,"body":null'
        else:
            text += f',"kind":"{self.body.KIND}","body":{self.body.to_json()}'
        error = "null" if self.error is None else self.error.to_json()
        text += f',"error":{error}}}'
        return text


@dataclass(slots=True)
class StatusBlockHeader:
    """ACPI Generic Error Status Block header (acpi_hest_generic_status, 20 bytes)."""

    block_status: int = 0
    raw_data_offset: int = 0
    raw_data_length: int = 0
    data_length: int = 0
    error_severity: int = 2

    @property
    def entry_count(self) -> int:
        # ACPI spec: bits [13:4]; ACPICA masks only [11:4]. Take the spec's width.
        return self.block_status >> 4 & 0x3FF

    def to_dict(self) -> dict:
        return {"block_status": block_status_form(self.block_status),
                "raw_data_offset": self.raw_data_offset, "raw_data_length": self.raw_data_length,
                "data_length": self.data_length}

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        return (f'{{"block_status":{BLOCK_STATUS_JSON[self.block_status]},'
                f'"raw_data_offset":{self.raw_data_offset},'
                f'"raw_data_length":{self.raw_data_length},"data_length":{self.data_length}}}')


@dataclass(slots=True)
class RecordHeader:
    """UEFI CPER record header (cper_record_header, 128 bytes)."""

    revision: int = 0x0101
    signature_end: int = 0xFFFFFFFF
    section_count: int = 0
    error_severity: int = 2
    validation_bits: int = 0
    record_length: int = 0
    timestamp: Timestamp = field(default_factory=lambda: Timestamp(0))
    platform_id: str = "00000000-0000-0000-0000-000000000000"
    partition_id: str = "00000000-0000-0000-0000-000000000000"
    creator_id: str = "00000000-0000-0000-0000-000000000000"
    notification_type: str = "00000000-0000-0000-0000-000000000000"
    record_id: int = 0
    flags: int = 0
    persistence_information: int = 0

    def to_dict(self) -> dict:
        d: dict = {"revision": self.revision, "section_count": self.section_count,
                   "validation_bits": self.validation_bits, "record_length": self.record_length,
                   "creator_id": self.creator_id,
                   "notification_type": notification_type_form(self.notification_type),
                   "record_id": f"0x{self.record_id:x}",
                   "flags": flags(self.flags, RECORD_FLAGS),
                   "persistence_information": f"0x{self.persistence_information:x}"}
        if self.validation_bits & 1:
            d["platform_id"] = self.platform_id
        if self.validation_bits & 2:
            d["timestamp"] = self.timestamp.to_dict()
        if self.validation_bits & 4:
            d["partition_id"] = self.partition_id
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        v = self.validation_bits
        text = (f'{{"revision":{self.revision},"section_count":{self.section_count},'
                f'"validation_bits":{v},"record_length":{self.record_length},'
                f'"creator_id":{json_str(self.creator_id)},'
                f'"notification_type":{NOTIFICATION_TYPE_JSON[self.notification_type]},'
                f'"record_id":"0x{self.record_id:x}","flags":{RECORD_FLAGS_JSON[self.flags]},'
                f'"persistence_information":"0x{self.persistence_information:x}"')
        if v & 1:
            text += f',"platform_id":{json_str(self.platform_id)}'
        if v & 2:
            text += f',"timestamp":{self.timestamp.to_json()}'
        if v & 4:
            text += f',"partition_id":{json_str(self.partition_id)}'
        return text + "}"


@dataclass(slots=True)
class Record:
    """One decoded record, whichever framing carried it.

    ``raw`` is exactly the bytes of this record (from ``offset`` in the input, as many
    as its lengths claimed and the input had), so a record that fails to decode still
    keeps everything it came with. ``error`` is the first fault found; sections that
    decoded before (or despite) it are kept.
    """

    framing: str  # "status_block" or "cper_record"
    header: StatusBlockHeader | RecordHeader | None = None
    sections: list[Section] = field(default_factory=list)
    raw_data: bytes = b""  # the status block's raw-data area (raw_data_offset/length)
    raw: bytes = field(default=b"", compare=False)
    offset: int = field(default=0, compare=False)
    error: DecodeError | None = field(default=None, compare=False)
    complete: bool = field(default=False, compare=False)  # all bytes its lengths claim were there
    # Values later stages derive from this record alone (classification verdict, memory
    # location...), computed once: the decode stage hands one Record to every event whose
    # bytes are identical (rasd.decode.event.CperCache), so a storm derives them once.
    derived: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def severity(self) -> int | None:
        return None if self.header is None else self.header.error_severity

    @property
    def empty(self) -> bool:
        """A status block with block_status 0: no record, or one the kernel consumed (BERT)."""
        return isinstance(self.header, StatusBlockHeader) and self.header.block_status == 0

    def fail(self, exc: DecodeError) -> None:
        """Keep the first fault; later ones are usually its consequences."""
        if self.error is None:
            exc.raw = self.raw
            exc.partial = self
            self.error = exc

    def raise_for_error(self) -> "Record":
        if self.error is not None:
            raise self.error
        return self

    def to_dict(self, include_raw: bool = False) -> dict:
        d: dict = {
            "framing": self.framing,
            "offset": self.offset,
            "length": len(self.raw),
            "severity": None if self.severity is None else enum(self.severity, SEVERITIES),
            "header": None if self.header is None else self.header.to_dict(),
            "sections": [s.to_dict() for s in self.sections],
            "error": self.error.to_dict() if self.error else None,
        }
        if self.raw_data:
            d["raw_data"] = base64.b64encode(self.raw_data).decode()
        if include_raw or self.error is not None:
            d["raw"] = base64.b64encode(self.raw).decode()
        return d

    def to_json(self, include_raw: bool = False) -> str:
        """json_text(self.to_dict(include_raw)), written directly: what ``rasdctl decode
        --json`` prints, at a fraction of the cost (see rasd.decode.common)."""
        severity = self.severity
        header = "null" if self.header is None else self.header.to_json()
        error = "null" if self.error is None else self.error.to_json()
        text = (f'{{"framing":{json_str(self.framing)},"offset":{self.offset},'
                f'"length":{len(self.raw)},'
                f'"severity":{"null" if severity is None else SEVERITY_JSON[severity]},'
                f'"header":{header},"sections":[{",".join([s.to_json() for s in self.sections])}],'
                f'"error":{error}')
        if self.raw_data:
            text += f',"raw_data":"{base64.b64encode(self.raw_data).decode()}"'
        if include_raw or self.error is not None:
            text += f',"raw":"{base64.b64encode(self.raw).decode()}"'
        return text + "}"


def section_payload(record: Record, section: Section) -> bytes:
    start = section.payload_offset - record.offset
    return record.raw[start:start + section.payload_length]


__all__ = ["Section", "Record", "StatusBlockHeader", "RecordHeader", "SEVERITIES",
           "GHES_SEVERITIES", "SECTION_FLAGS", "ghes_severity", "guid_str", "section_payload"]
