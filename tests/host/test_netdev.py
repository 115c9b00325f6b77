"""PCIe device -> netdev name and live link state, over real netlink (pyroute2), on real
interfaces in a network namespace the test creates."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from rasd.classify.netdev import link_state, netdevs_for_pci, pci_address

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 to create a netns")


@pytest.fixture
def netns():
    name = f"rasdt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def test_link_state_of_a_real_veth_pair(netns):
    ip(netns, "link", "add", "rasd0", "type", "veth", "peer", "name", "rasd1")
    ip(netns, "link", "set", "rasd0", "mtu", "1400", "address", "02:00:00:00:00:42")
    down = link_state("rasd0", netns)
    assert down.error is None and down.operstate == "DOWN" and down.mtu == 1400
    assert down.address == "02:00:00:00:00:42" and down.carrier is False
    ip(netns, "link", "set", "rasd0", "up")
    ip(netns, "link", "set", "rasd1", "up")
    up = link_state("rasd0", netns)
    assert up.operstate == "UP" and up.carrier is True


def test_missing_interface_is_reported_not_raised(netns):
    info = link_state("nosuch0", netns)
    assert info.error == "no such interface" and info.operstate is None


def test_pci_function_to_netdev(netns, tmp_path):
    """sysfs maps the PCI function to its interface names; a recorded sysfs layout
    (a NIC at 0000:03:00.1) points at a real interface whose state comes from netlink."""
    ip(netns, "link", "add", "rasd2", "type", "veth", "peer", "name", "rasd3")
    bdf = pci_address(0, 3, 0, 1)
    assert bdf == "0000:03:00.1"
    (tmp_path / "bus/pci/devices" / bdf / "net" / "rasd2").mkdir(parents=True)
    (info,) = netdevs_for_pci(bdf, sysfs=tmp_path, netns=netns)
    assert info.name == "rasd2" and info.error is None and info.ifindex > 0
    assert netdevs_for_pci("0000:04:00.0", sysfs=tmp_path, netns=netns) == []
