"""Colima VMs on a Mac (dev): Apple's Virtualization.framework, Lima's networks."""

from __future__ import annotations

from components import catalog
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


def vm_problems(
    *, arch: str, vm_type: str, rosetta: bool, memory_gib: int
) -> list[tuple[str, str]]:
    """Why a Colima VM cannot host a NixOS k3s node, as (field, reason) pairs; the field is
    the colima section's (ColimaConfig's) name. The stack check and the machine layer both ask.
    """
    problems = []
    if vm_type == "vz" and arch != "aarch64":
        problems.append(
            (
                "arch",
                f"{arch} with vmType vz cannot work: vz boots only aarch64 guests and Colima "
                "silently falls back to slow QEMU emulation; use arch aarch64 with rosetta: true",
            )
        )
    if vm_type != "vz":
        problems.append(
            (
                "vm_type",
                f"{vm_type} is not supported (only 'vz'): the dev NixOS profile "
                "(nixos/hardware/colima-vz.nix) is built for Apple's Virtualization.framework; "
                "use vmType vz",
            )
        )
    if rosetta and vm_type != "vz":
        problems.append(("rosetta", "Rosetta needs vmType vz; set rosetta: false for qemu"))
    if memory_gib < catalog.MIN_COLIMA_MEMORY_GIB:
        problems.append(
            (
                "memory_gib",
                f"{memory_gib} GiB is below the {catalog.MIN_COLIMA_MEMORY_GIB} GiB a k3s node "
                "with Cilium needs (nixos-anywhere's installer alone needs 1.5 GB)",
            )
        )
    return problems
