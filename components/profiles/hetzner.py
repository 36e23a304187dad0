"""Hetzner Cloud servers on a Hetzner private network (prod)."""

from __future__ import annotations

from components import catalog
from components.catalog import Arch
from components.profiles.base import ProviderProfile


def _arch(server_type: str | None, vm_arch: str) -> Arch:
    return catalog.SERVER_TYPES[server_type or ""].arch


PROFILE = ProviderProfile(
    name="hetzner",
    hardware_profile="hetzner-cloud",
    disk_device="/dev/sda",
    # The private network's NIC on current server types (the public one is en*/eth*).
    private_interface="enp7s0",
    private_mtu=catalog.HETZNER_PRIVATE_MTU,
    cilium_mtu=catalog.HETZNER_PRIVATE_MTU,
    nameservers=("185.12.64.1", "185.12.64.2"),
    nested_node_devices=("en+", "eth+"),
    managed_network=True,
    native_routing_refusal="native routing cannot work on Hetzner private networks: they are "
    "routed through a gateway, not one L2 segment, so autoDirectNodeRoutes has no path; use "
    "'tunnel'",
    rosetta=False,
    arch=_arch,
)
