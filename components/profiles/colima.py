"""Colima VMs on a Mac (dev): Apple's Virtualization.framework, Lima's networks."""

from __future__ import annotations

from components.catalog import Arch
from components.profiles.base import ProviderProfile

# Colima's --arch names -> ours.
ARCHES: dict[str, Arch] = {"aarch64": "arm64", "x86_64": "x86_64"}
# macOS vzNAT shared network that Colima's --network-address NIC (col0) gets its address on.
NETWORK = "192.168.64.0/24"


def _arch(server_type: str | None, vm_arch: str) -> Arch:
    return ARCHES[vm_arch]


PROFILE = ProviderProfile(
    name="colima",
    hardware_profile="colima-vz",
    disk_device="/dev/vda",
    # Lima's user-mode network (eth0, DHCP) stays the default route; the vmnet NIC that
    # --network-address adds carries node-to-node and Mac-to-VM traffic.
    private_interface="col0",
    private_mtu=1500,
    cilium_mtu=None,
    nameservers=("1.1.1.1", "9.9.9.9"),
    # Lima's eth0 and col0.
    nested_node_devices=("col0", "eth+"),
    managed_network=False,
    native_routing_refusal=None,
    rosetta=True,
    arch=_arch,
)
