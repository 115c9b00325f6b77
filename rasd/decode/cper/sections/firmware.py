"""Firmware Error Record Reference section (UEFI 2.10 N.2.10; cper_sec_fw_err_rec_ref)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...common import NULL_GUID, enum, guid_bytes, guid_str, hex64, json_text
from ...errors import DecodeError

LAYOUT_V1 = struct.Struct("<BB6sQ")  # 16 bytes: revision 0/1
GUID_SIZE = 16  # revision >= 2 appends the record identifier GUID
RECORD_TYPES = {0: "ipf_sal_error_record", 1: "soc_firmware_error_record_type1",
                2: "soc_firmware_error_record_type2"}


@dataclass(slots=True)
class FirmwareErrorRecordRef:
    record_type: int = 0
    revision: int = 2
    reserved: bytes = bytes(6)
    record_identifier: int = 0
    record_identifier_guid: str | None = NULL_GUID  # None when the section stops at 16 bytes
    extra: bytes = b""

    KIND = "firmware_error_record_reference"

    def to_dict(self) -> dict:
        d = {"record_type": enum(self.record_type, RECORD_TYPES), "revision": self.revision,
             "record_identifier": hex64(self.record_identifier)}
        if self.record_identifier_guid is not None:
            d["record_identifier_guid"] = self.record_identifier_guid
        return d

    def to_json(self) -> str:
        # rare in the field: the dict form is fast enough, and identical by construction
        return json_text(self.to_dict())

    def describe(self) -> list[str]:
        return [f"{RECORD_TYPES.get(self.record_type, 'unknown')} id {self.record_identifier:#x}"]


def decode_firmware(buf: bytes, off: int, end: int) -> FirmwareErrorRecordRef:
    if end - off < LAYOUT_V1.size:
        raise DecodeError(f"firmware error record reference needs {LAYOUT_V1.size} bytes, "
                          f"has {end - off}", off)
    sec = FirmwareErrorRecordRef(*LAYOUT_V1.unpack_from(buf, off), record_identifier_guid=None)
    pos = off + LAYOUT_V1.size
    if end - pos >= GUID_SIZE:
        sec.record_identifier_guid = guid_str(buf[pos:pos + GUID_SIZE])
        pos += GUID_SIZE
    sec.extra = bytes(buf[pos:end])
    return sec


def encode_firmware(sec: FirmwareErrorRecordRef) -> bytes:
    data = LAYOUT_V1.pack(sec.record_type, sec.revision, sec.reserved, sec.record_identifier)
    if sec.record_identifier_guid is not None:
        data += guid_bytes(sec.record_identifier_guid)
    return data + sec.extra
