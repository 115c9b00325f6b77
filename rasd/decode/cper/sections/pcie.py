"""PCI Express Error section (UEFI 2.10 N.2.7; kernel struct cper_sec_pcie, 208 bytes)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...common import JsonMemo, enum, enum_json, flag_names, hex64
from ...errors import DecodeError

# validation_bits u64, port_type u32, version minor u8, major u8, reserved 2, command u16,
# status u16, reserved u32, device id (16), serial lower/upper u32, bridge secondary
# status u16, bridge control u16, PCIe capability (60), AER info (96)
LAYOUT = struct.Struct("<QIBB2sHHI16sIIHH60s96s")
FIELDS = ("validation_bits", "port_type", "version_minor", "version_major", "reserved1",
          "command", "status", "reserved2", "device_id_raw", "serial_lower", "serial_upper",
          "bridge_secondary_status", "bridge_control", "capability", "aer_info")
DEVICE_ID = struct.Struct("<HH3sBBHBBH1s")  # vendor, device, class, function, device, segment, bus, secondary bus, slot, reserved

VALID = {0x1: "port_type", 0x2: "version", 0x4: "command_status", 0x8: "device_id",
         0x10: "serial_number", 0x20: "bridge_control_status", 0x40: "capability",
         0x80: "aer_info"}
PORT_TYPES = {0: "pcie_endpoint", 1: "legacy_pci_endpoint", 4: "root_port",
              5: "upstream_switch_port", 6: "downstream_switch_port", 7: "pcie_to_pci_bridge",
              8: "pci_to_pcie_bridge", 9: "root_complex_integrated_endpoint",
              10: "root_complex_event_collector"}
# AER capability registers [PCIe spec 7.8.4]
AER = struct.Struct("<IIIIIII16sIIHH")
AER_FIELDS = ("header", "uncor_status", "uncor_mask", "uncor_severity", "cor_status",
              "cor_mask", "cap_control", "header_log", "root_command", "root_status",
              "cor_source_id", "uncor_source_id")
UNCORRECTABLE_BITS = {
    1 << 4: "data_link_protocol", 1 << 5: "surprise_down", 1 << 12: "poisoned_tlp",
    1 << 13: "flow_control_protocol", 1 << 14: "completion_timeout",
    1 << 15: "completer_abort", 1 << 16: "unexpected_completion", 1 << 17: "receiver_overflow",
    1 << 18: "malformed_tlp", 1 << 19: "ecrc", 1 << 20: "unsupported_request",
    1 << 21: "acs_violation", 1 << 22: "uncorrectable_internal", 1 << 23: "mc_blocked_tlp",
    1 << 24: "atomicop_egress_blocked", 1 << 25: "tlp_prefix_blocked",
    1 << 26: "poisoned_tlp_egress_blocked",
}
CORRECTABLE_BITS = {
    1 << 0: "receiver_error", 1 << 6: "bad_tlp", 1 << 7: "bad_dllp",
    1 << 8: "replay_num_rollover", 1 << 12: "replay_timer_timeout",
    1 << 13: "advisory_non_fatal", 1 << 14: "corrected_internal", 1 << 15: "header_log_overflow",
}

HEADER_LOG = struct.Struct("<4I")

PORT_TYPE_JSON = enum_json(PORT_TYPES)
UNCORRECTABLE_JSON = JsonMemo(lambda status: flag_names(status, UNCORRECTABLE_BITS))
CORRECTABLE_JSON = JsonMemo(lambda status: flag_names(status, CORRECTABLE_BITS))


@dataclass(slots=True)
class PcieSection:
    validation_bits: int = 0
    port_type: int = 0
    version_minor: int = 0
    version_major: int = 0
    reserved1: bytes = b"\0\0"
    command: int = 0
    status: int = 0
    reserved2: int = 0
    device_id_raw: bytes = bytes(16)
    serial_lower: int = 0
    serial_upper: int = 0
    bridge_secondary_status: int = 0
    bridge_control: int = 0
    capability: bytes = bytes(60)
    aer_info: bytes = bytes(96)
    extra: bytes = b""

    KIND = "pcie"

    def device_id(self) -> dict:
        vendor, device, class_code, function, dev, segment, bus, sec_bus, slot, _ = \
            DEVICE_ID.unpack(self.device_id_raw)
        return {"vendor_id": vendor, "device_id": device,
                "class_code": int.from_bytes(class_code, "little"), "segment": segment,
                "bus": bus, "device": dev, "function": function, "secondary_bus": sec_bus,
                "slot": slot >> 3, "bdf": f"{segment:04x}:{bus:02x}:{dev:02x}.{function:x}"}

    def aer(self) -> dict:
        regs = dict(zip(AER_FIELDS, AER.unpack_from(self.aer_info)))
        log = regs.pop("header_log")
        regs["header_log"] = [f"0x{w:08x}" for w in HEADER_LOG.unpack(log)]
        regs["uncorrectable"] = flag_names(regs["uncor_status"], UNCORRECTABLE_BITS)
        regs["correctable"] = flag_names(regs["cor_status"], CORRECTABLE_BITS)
        return regs

    def to_dict(self) -> dict:
        v = self.validation_bits
        d: dict = {"validation_bits": v}
        if v & 0x1:
            d["port_type"] = enum(self.port_type, PORT_TYPES)
        if v & 0x2:
            d["version"] = f"{self.version_major}.{self.version_minor}"
        if v & 0x4:
            d["command"] = self.command
            d["status"] = self.status
        if v & 0x8:
            d["device"] = self.device_id()
        if v & 0x10:
            d["serial_number"] = hex64(self.serial_upper << 32 | self.serial_lower)
        if v & 0x20:
            d["bridge"] = {"secondary_status": self.bridge_secondary_status,
                           "control": self.bridge_control}
        if v & 0x40:
            d["capability"] = self.capability.hex()
        if v & 0x80:
            d["aer"] = self.aer()
        return d

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        v = self.validation_bits
        text = f'{{"validation_bits":{v}'
        if v & 0x1:
            text += f',"port_type":{PORT_TYPE_JSON[self.port_type]}'
        if v & 0x2:
            text += f',"version":"{self.version_major}.{self.version_minor}"'
        if v & 0x4:
            text += f',"command":{self.command},"status":{self.status}'
        if v & 0x8:
            text += f',"device":{self._device_json()}'
        if v & 0x10:
            text += f',"serial_number":"{hex64(self.serial_upper << 32 | self.serial_lower)}"'
        if v & 0x20:
            text += (f',"bridge":{{"secondary_status":{self.bridge_secondary_status},'
                     f'"control":{self.bridge_control}}}')
        if v & 0x40:
            text += f',"capability":"{self.capability.hex()}"'
        if v & 0x80:
            text += f',"aer":{self._aer_json()}'
        return text + "}"

    def _device_json(self) -> str:
        """json_text(self.device_id())."""
        vendor, device, class_code, function, dev, segment, bus, sec_bus, slot, _ = \
            DEVICE_ID.unpack(self.device_id_raw)
        return (f'{{"vendor_id":{vendor},"device_id":{device},'
                f'"class_code":{int.from_bytes(class_code, "little")},"segment":{segment},'
                f'"bus":{bus},"device":{dev},"function":{function},"secondary_bus":{sec_bus},'
                f'"slot":{slot >> 3},"bdf":"{segment:04x}:{bus:02x}:{dev:02x}.{function:x}"}}')

    def _aer_json(self) -> str:
        """json_text(self.aer()): header_log moves behind the registers, as aer() has it."""
        (header, uncor_status, uncor_mask, uncor_severity, cor_status, cor_mask, cap_control,
         log, root_command, root_status, cor_source_id, uncor_source_id) = \
            AER.unpack_from(self.aer_info)
        w0, w1, w2, w3 = HEADER_LOG.unpack(log)
        return (f'{{"header":{header},"uncor_status":{uncor_status},"uncor_mask":{uncor_mask},'
                f'"uncor_severity":{uncor_severity},"cor_status":{cor_status},'
                f'"cor_mask":{cor_mask},"cap_control":{cap_control},'
                f'"root_command":{root_command},"root_status":{root_status},'
                f'"cor_source_id":{cor_source_id},"uncor_source_id":{uncor_source_id},'
                f'"header_log":["0x{w0:08x}","0x{w1:08x}","0x{w2:08x}","0x{w3:08x}"],'
                f'"uncorrectable":{UNCORRECTABLE_JSON[uncor_status]},'
                f'"correctable":{CORRECTABLE_JSON[cor_status]}}}')

    def describe(self) -> list[str]:
        out = []
        if self.validation_bits & 0x8:
            dev = self.device_id()
            out.append(f"device {dev['bdf']} vendor {dev['vendor_id']:#06x} "
                       f"device {dev['device_id']:#06x}")
        if self.validation_bits & 0x80:
            aer = self.aer()
            out.append("AER uncorrectable: " + (", ".join(aer["uncorrectable"]) or "none"))
            out.append("AER correctable: " + (", ".join(aer["correctable"]) or "none"))
        return out


def decode_pcie(buf: bytes, off: int, end: int) -> PcieSection:
    if end - off < LAYOUT.size:
        raise DecodeError(f"PCIe section needs {LAYOUT.size} bytes, has {end - off}", off)
    sec = PcieSection(*LAYOUT.unpack_from(buf, off))
    sec.extra = bytes(buf[off + LAYOUT.size:end])
    return sec


def encode_pcie(sec: PcieSection) -> bytes:
    return LAYOUT.pack(*(getattr(sec, f) for f in FIELDS)) + sec.extra


def pcie_device_id(segment: int = 0, bus: int = 0, device: int = 0, function: int = 0,
                   vendor_id: int = 0, device_id: int = 0, class_code: int = 0,
                   secondary_bus: int = 0, slot: int = 0) -> bytes:
    return DEVICE_ID.pack(vendor_id, device_id, class_code.to_bytes(3, "little"), function,
                          device, segment, bus, secondary_bus, slot << 3, b"\0")


def aer_info(uncor_status: int = 0, uncor_severity: int = 0, cor_status: int = 0,
             header_log: tuple[int, int, int, int] = (0, 0, 0, 0), **regs: int) -> bytes:
    values = {f: 0 for f in AER_FIELDS}
    values["header"] = 0x00010001  # AER extended capability id 1, version 1
    values.update(regs, uncor_status=uncor_status, uncor_severity=uncor_severity,
                  cor_status=cor_status, header_log=struct.pack("<4I", *header_log))
    return AER.pack(*(values[f] for f in AER_FIELDS)).ljust(96, b"\0")
