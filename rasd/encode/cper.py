"""Build CPER bytes, both framings, from the decoder's own typed objects.

The inverse of ``rasd.decode.cper``: ``decode(encode_*(...))`` gives back the same
fields. Tests make vectors with it; the arm64 lab writes its output into a real
kernel's GHES error-status block.

    from rasd.encode import cper as enc
    mem = enc.memory_error(physical_addr=0x8000_1000, node=0, module=3, error_type=2)
    block = enc.encode_status_block([enc.section(mem, severity=enc.CORRECTED)])
"""

from __future__ import annotations

import struct

from ..decode.common import NULL_GUID, Timestamp, guid_bytes
from ..decode.cper import block as _block
from ..decode.cper import record as _record
from ..decode.cper.guids import NOTIFICATION_GUIDS
from ..decode.cper.model import Record, RecordHeader, Section, StatusBlockHeader
from ..decode.cper.sections import RawSection, SectionBody, encode_body, guid_for
from ..decode.cper.sections.arm import ArmContext, ArmErrorInfo, ArmProcessorSection
from ..decode.cper.sections.firmware import FirmwareErrorRecordRef
from ..decode.cper.sections.generic import GenericProcessorSection
from ..decode.cper.sections.memory import MemorySection, memory_error
from ..decode.cper.sections.pcie import PcieSection, aer_info, pcie_device_id

# CPER severities
RECOVERABLE, FATAL, CORRECTED, INFORMATIONAL = 0, 1, 2, 3
PRIMARY = 0x01
THRESHOLD_EXCEEDED = 0x08
# block_status bits (ACPI 18.3.2.7.1)
UNCORRECTABLE, CORRECTABLE, MULTIPLE_UNCORRECTABLE, MULTIPLE_CORRECTABLE = 1, 2, 4, 8

_WORST_FIRST = (FATAL, RECOVERABLE, CORRECTED, INFORMATIONAL)

__all__ = ["section", "raw_section", "memory_error", "arm_processor", "arm_error_info",
           "arm_context", "pcie", "encode_section_entry", "encode_status_block",
           "encode_cper_record", "encode", "ArmContext", "ArmErrorInfo", "ArmProcessorSection",
           "FirmwareErrorRecordRef", "GenericProcessorSection", "MemorySection", "PcieSection",
           "RawSection", "Timestamp", "RECOVERABLE", "FATAL", "CORRECTED", "INFORMATIONAL",
           "PRIMARY", "THRESHOLD_EXCEEDED"]


def section(body: SectionBody, severity: int = CORRECTED, *, guid: str | None = None,
            flags: int = PRIMARY, revision: int = 0x0300, fru_id: str | None = None,
            fru_text: str | None = None, timestamp: Timestamp | None = None) -> Section:
    """A section around ``body``; validation bits follow the optional fields given."""
    if guid is None:
        if isinstance(body, RawSection):
            raise ValueError("a raw section needs its GUID")
        guid = guid_for(body)
    valid = (fru_id is not None) | (fru_text is not None) << 1 | (timestamp is not None) << 2
    if timestamp is not None and revision >> 8 < 3:
        raise ValueError("a timestamp needs a revision >= 0x300 entry header")
    return Section(guid.upper(), body, severity, revision, valid, flags, fru_id or NULL_GUID,
                   fru_text or "", timestamp)


def raw_section(guid: str, payload: bytes, severity: int = CORRECTED, **kw) -> Section:
    return section(RawSection(bytes(payload)), severity, guid=guid, **kw)


def arm_error_info(type: int = 0x02, *, error_info: int | None = None,
                   virt_fault_addr: int | None = None, physical_fault_addr: int | None = None,
                   multiple_error: int | None = None, flags: int | None = None,
                   version: int = 0) -> ArmErrorInfo:
    """One 32-byte error-information entry; ``type`` is written as given (bitmask or enum)."""
    valid = 0
    for bit, value in ((1, multiple_error), (2, flags), (4, error_info), (8, virt_fault_addr),
                       (16, physical_fault_addr)):
        if value is not None:
            valid |= bit
    return ArmErrorInfo(version, 32, valid, type, multiple_error or 0, flags or 0,
                        error_info or 0, virt_fault_addr or 0, physical_fault_addr or 0)


def arm_context(type: int, registers: bytes | dict[str, int] | list[int], version: int = 0) -> ArmContext:
    """A context record; registers as raw bytes, a list of values or by name (see arm.py)."""
    from ..decode.cper.sections.arm import CONTEXT_REGISTERS
    if isinstance(registers, (bytes, bytearray)):
        return ArmContext(version, type, bytes(registers))
    width, names = CONTEXT_REGISTERS[type]
    values = [registers.get(n, 0) for n in names] if isinstance(registers, dict) else list(registers)
    return ArmContext(version, type, struct.pack("<%d%s" % (len(values), "I" if width == 4 else "Q"),
                                                 *values))


def arm_processor(error_info: list[ArmErrorInfo], contexts: list[ArmContext] = (), *,
                  mpidr: int | None = None, midr: int = 0, affinity_level: int | None = None,
                  running_state: int | None = None, psci_state: int = 0,
                  vendor: bytes = b"", context_stride: str = "packed") -> ArmProcessorSection:
    valid = (mpidr is not None) | (affinity_level is not None) << 1 \
        | (running_state is not None) << 2 | bool(vendor) << 3
    return ArmProcessorSection(valid, len(error_info), len(contexts), 0, affinity_level or 0,
                               b"\0\0\0", mpidr or 0, midr, running_state or 0, psci_state,
                               list(error_info), list(contexts), bytes(vendor), context_stride)


def pcie(*, port_type: int | None = None, version: tuple[int, int] | None = None,
         command: int | None = None, status: int = 0, device: dict | None = None,
         serial_number: int | None = None, aer: dict | None = None) -> PcieSection:
    """A PCIe section; ``device`` takes pcie_device_id() keywords, ``aer`` aer_info() ones."""
    sec = PcieSection()
    if port_type is not None:
        sec.validation_bits |= 0x1
        sec.port_type = port_type
    if version is not None:
        sec.validation_bits |= 0x2
        sec.version_major, sec.version_minor = version
    if command is not None:
        sec.validation_bits |= 0x4
        sec.command, sec.status = command, status
    if device is not None:
        sec.validation_bits |= 0x8
        sec.device_id_raw = pcie_device_id(**device)
    if serial_number is not None:
        sec.validation_bits |= 0x10
        sec.serial_lower, sec.serial_upper = serial_number & 0xFFFFFFFF, serial_number >> 32
    if aer is not None:
        sec.validation_bits |= 0x80
        sec.aer_info = aer_info(**aer)
    return sec


def encode_section_entry(sec: Section) -> bytes:
    """A Generic Error Data Entry: 64-byte header (72 from revision 0x300) + payload."""
    payload = encode_body(sec.body)
    head = _block.ENTRY.pack(guid_bytes(sec.section_type), sec.severity, sec.revision,
                             sec.validation_bits, sec.flags, len(payload), guid_bytes(sec.fru_id),
                             sec.fru_text.encode("ascii", "replace")[:20])
    if _block.entry_header_size(sec.revision) > _block.ENTRY.size:
        stamp = sec.timestamp.raw if sec.timestamp is not None else 0
        head += _block.ENTRY_V3_EXTRA.pack(stamp)
    return head + payload


def worst_severity(sections: list[Section]) -> int:
    present = {s.severity for s in sections}
    return next((sev for sev in _WORST_FIRST if sev in present), CORRECTED)


def encode_status_block(sections: list[Section], severity: int | None = None, *,
                        block_status: int | None = None, raw_data: bytes = b"",
                        header: StatusBlockHeader | None = None) -> bytes:
    """A Generic Error Status Block. block_status defaults to the (un)correctable bit for
    the severity plus the entry count; pass ``header`` to write every field as given."""
    entries = b"".join(encode_section_entry(s) for s in sections)
    if header is None:
        sev = worst_severity(sections) if severity is None else severity
        if block_status is None:
            block_status = (CORRECTABLE if sev == CORRECTED else UNCORRECTABLE) \
                | min(len(sections), 0x3FF) << 4
        raw_off = _block.HEADER.size + len(entries) if raw_data else 0
        header = StatusBlockHeader(block_status, raw_off, len(raw_data), len(entries), sev)
    # raw data sits at raw_data_offset, which may leave a gap after the entries
    gap = header.raw_data_offset - _block.HEADER.size - len(entries) if raw_data else 0
    return _block.HEADER.pack(header.block_status, header.raw_data_offset,
                              header.raw_data_length, header.data_length,
                              header.error_severity) + entries + bytes(max(gap, 0)) + raw_data


def encode_cper_record(sections: list[Section], severity: int | None = None, *,
                       header: RecordHeader | None = None, notification: str = "cmc",
                       record_id: int = 0, timestamp: Timestamp | None = None) -> bytes:
    """A UEFI CPER record; section_count and record_length always follow the sections."""
    if header is None:
        header = RecordHeader(error_severity=worst_severity(sections) if severity is None
                              else severity,
                              notification_type=NOTIFICATION_GUIDS.get(notification, notification),
                              record_id=record_id)
        if timestamp is not None:
            header.timestamp, header.validation_bits = timestamp, header.validation_bits | 2
    payloads = [encode_body(s.body) for s in sections]
    offset = _record.HEADER.size + _record.DESCRIPTOR.size * len(sections)
    descriptors = b""
    for sec, payload in zip(sections, payloads):
        descriptors += _record.DESCRIPTOR.pack(
            offset, len(payload), sec.revision, sec.validation_bits, 0, sec.flags,
            guid_bytes(sec.section_type), guid_bytes(sec.fru_id), sec.severity,
            sec.fru_text.encode("ascii", "replace")[:20])
        offset += len(payload)
    header.section_count, header.record_length = len(sections), offset
    head = _record.HEADER.pack(
        _record.SIGNATURE, header.revision, header.signature_end, header.section_count,
        header.error_severity, header.validation_bits, header.record_length,
        header.timestamp.raw, guid_bytes(header.platform_id), guid_bytes(header.partition_id),
        guid_bytes(header.creator_id), guid_bytes(header.notification_type), header.record_id,
        header.flags, header.persistence_information, bytes(12))
    return head + descriptors + b"".join(payloads)


def encode(record: Record) -> bytes:
    """Re-encode a decoded record in its own framing."""
    if record.framing == "cper_record":
        return encode_cper_record(record.sections, header=record.header)
    return encode_status_block(record.sections, header=record.header, raw_data=record.raw_data)
