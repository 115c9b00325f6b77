"""Name the network interface behind a PCIe device, so a PCIe alert says which NIC.

sysfs maps the PCI function (segment:bus:device.function from the CPER PCIe
section or the AER event) to its netdev names; netlink (pyroute2) gives each
interface's live state — operstate, carrier, MTU, address — the way `ip link`
reads it, in the interface's network namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYSFS = Path("/sys")


@dataclass
class NetdevInfo:
    name: str
    ifindex: int | None = None
    operstate: str | None = None
    carrier: bool | None = None
    mtu: int | None = None
    address: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def pci_address(segment: int, bus: int, device: int, function: int) -> str:
    return f"{segment:04x}:{bus:02x}:{device:02x}.{function:x}"


def netdev_names(bdf: str, sysfs: Path = SYSFS) -> list[str]:
    """Interfaces the PCI function registered (/sys/bus/pci/devices/<bdf>/net/*)."""
    net = sysfs / "bus/pci/devices" / bdf / "net"
    try:
        return sorted(p.name for p in net.iterdir())
    except OSError:
        return []


def link_state(name: str, netns: str | None = None) -> NetdevInfo:
    """Live link state over netlink; errors are reported in the result, never raised."""
    info = NetdevInfo(name)
    try:
        from pyroute2 import IPRoute, NetNS
    except ImportError as exc:
        info.error = f"pyroute2 unavailable: {exc}"
        return info
    try:
        with (NetNS(netns) if netns else IPRoute()) as ipr:
            idx = ipr.link_lookup(ifname=name)
            if not idx:
                info.error = "no such interface"
                return info
            link = ipr.get_links(idx[0])[0]
            _fill(info, link)
    except Exception as exc:  # noqa: BLE001 - netlink trouble must not break an alert
        info.error = f"netlink: {exc}"
    return info


def _fill(info: NetdevInfo, link: Any) -> None:
    info.ifindex = link["index"]
    info.operstate = link.get_attr("IFLA_OPERSTATE")
    carrier = link.get_attr("IFLA_CARRIER")
    info.carrier = None if carrier is None else bool(carrier)
    info.mtu = link.get_attr("IFLA_MTU")
    info.address = link.get_attr("IFLA_ADDRESS")


def netdevs_for_pci(bdf: str, sysfs: Path = SYSFS, netns: str | None = None) -> list[NetdevInfo]:
    return [link_state(name, netns) for name in netdev_names(bdf, sysfs)]
