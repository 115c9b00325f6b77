"""Section bodies by section-type GUID: one module per section kind, a table to dispatch.

A GUID with a decoder gets a typed body; any other GUID (vendor sections, and the
standard ones rasd does not decode field by field) becomes a ``RawSection`` that keeps
the GUID, its name when known, and the payload bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from .arm import ArmProcessorSection, decode_arm, encode_arm
from .firmware import FirmwareErrorRecordRef, decode_firmware, encode_firmware
from .generic import GenericProcessorSection, decode_generic, encode_generic
from .memory import MemorySection, decode_memory, decode_memory2, encode_memory
from .pcie import PcieSection, decode_pcie, encode_pcie

# cper.h section type GUIDs (canonical text form)
PROC_GENERIC = "9876CCAD-47B4-4BDB-B65E-16F193C4F3DB"
PROC_IA = "DC3EA0B0-A144-4797-B95B-53FA242B6E1D"
PROC_ARM = "E19E3D16-BC11-11E4-9CAA-C2051D5D46B0"
PLATFORM_MEM = "A5BC1114-6F64-4EDE-B863-3E83ED7C83B1"
PLATFORM_MEM2 = "61EC04FC-48E6-D813-25C9-8DAA44750B12"
PCIE = "D995E954-BBC1-430F-AD91-B44DCB3C6F35"
FW_ERR_REC_REF = "81212A96-09ED-4996-9471-8D729C8E69ED"

SECTION_NAMES = {
    PROC_GENERIC: "processor_generic",
    PROC_IA: "processor_ia32_x64",
    PROC_ARM: "processor_arm",
    PLATFORM_MEM: "platform_memory",
    PLATFORM_MEM2: "platform_memory2",
    PCIE: "pcie",
    FW_ERR_REC_REF: "firmware_error_record_reference",
    "C5753963-3B84-4095-BF78-EDDAD3F9C9DD": "pci_pcix_bus",
    "EB5E4685-CA66-4769-B6A2-26068B001326": "pci_component",
    "5B51FEF7-C79D-4434-8F1B-AA62DE3E2C64": "dmar_generic",
    "71761D37-32B2-45CD-A7D0-B0FEDD93E8CF": "dmar_vtd",
    "036F84E1-7F37-428C-A79E-575FDFAA84EC": "dmar_iommu",
    "80B9EFB4-52B5-4DE3-A777-68784B771048": "cxl_protocol_error",
    "FBCD0A77-C260-417F-85A9-088B1621EBA6": "cxl_general_media_event",
    "601DCBB3-9C06-4EAB-B8AF-4E9BFB5C9624": "cxl_dram_event",
    "FE927475-DD59-4339-A586-79BAB113B774": "cxl_memory_module_event",
}


@dataclass(slots=True)
class RawSection:
    """A section rasd keeps as bytes: a non-standard (vendor) GUID or an undecoded one."""

    payload: bytes = b""

    KIND = "non_standard"

    def to_dict(self) -> dict:
        return {"length": len(self.payload), "payload": self.payload.hex()}

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        return f'{{"length":{len(self.payload)},"payload":"{self.payload.hex()}"}}'

    def describe(self) -> list[str]:
        head = self.payload[:32].hex()
        return [f"{len(self.payload)} payload bytes: {head}{'...' if len(self.payload) > 32 else ''}"]


SectionBody = Union[MemorySection, ArmProcessorSection, PcieSection, GenericProcessorSection,
                    FirmwareErrorRecordRef, RawSection]
Decoder = Callable[[bytes, int, int], SectionBody]

DECODERS: dict[str, Decoder] = {
    PLATFORM_MEM: decode_memory,
    PLATFORM_MEM2: decode_memory2,
    PROC_ARM: decode_arm,
    PCIE: decode_pcie,
    PROC_GENERIC: decode_generic,
    FW_ERR_REC_REF: decode_firmware,
}


def section_name(guid: str) -> str:
    return SECTION_NAMES.get(guid, "non_standard")


def decode_body(guid: str, buf: bytes, off: int, end: int) -> SectionBody:
    decoder = DECODERS.get(guid)
    if decoder is None:
        return RawSection(bytes(buf[off:end]))
    return decoder(buf, off, end)


def encode_body(body: SectionBody) -> bytes:
    if isinstance(body, MemorySection):
        return encode_memory(body)
    if isinstance(body, ArmProcessorSection):
        return encode_arm(body)
    if isinstance(body, PcieSection):
        return encode_pcie(body)
    if isinstance(body, GenericProcessorSection):
        return encode_generic(body)
    if isinstance(body, FirmwareErrorRecordRef):
        return encode_firmware(body)
    return body.payload


def guid_for(body: SectionBody) -> str:
    """The section-type GUID a body is encoded under (raw sections carry their own)."""
    if isinstance(body, MemorySection):
        return PLATFORM_MEM2 if body.variant == "mem2" else PLATFORM_MEM
    return {ArmProcessorSection: PROC_ARM, PcieSection: PCIE,
            GenericProcessorSection: PROC_GENERIC,
            FirmwareErrorRecordRef: FW_ERR_REC_REF}[type(body)]
