"""What a provider profile holds: the facts about a provider's machines that the config checks,
the inventory, the host data and the Cilium values read. Pure data below the config package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.catalog import Arch


@dataclass(frozen=True)
class ProviderProfile:
    name: str
    # nixos/hardware/<profile>.nix, chosen by configuration.nix from the host data.
    hardware_profile: str
    # The disk disko partitions on install.
    disk_device: str
    # The NIC nodes talk to each other over, in the NixOS guest, and its MTU.
    private_interface: str
    private_mtu: int
    # The MTU Cilium is told (None: Cilium detects it from the node's link).
    cilium_mtu: int | None
    # Resolvers of the nspawn containers on a host.
    nameservers: tuple[str, ...]
    # Cilium's devices on hosts that carry container nodes ('+' is Cilium's wildcard): the hosts'
    # NICs and each container's eth0. Not the hosts' ve-* veths to their containers: those
    # belong to the container nodes, whose own agents manage them from the inside.
    nested_node_devices: tuple[str, ...]
    # The private network is one this program makes from network.ipRange/subnet: addresses are
    # fixed at plan time by pool offset, its gateway is ipRange's first address and container
    # /24s are routed in it. Otherwise the machines take their address from the provider's
    # DHCP at deploy time.
    managed_network: bool
    # Why Cilium's native routing cannot work there (None: it can).
    native_routing_refusal: str | None
    # Whether colima.rosetta (x86_64 binaries on aarch64 guests) applies.
    rosetta: bool
    # A host's architecture from its pool's server type and the VM architecture setting.
    arch: Callable[[str | None, str], Arch]
