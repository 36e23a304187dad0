"""Upstream facts the stack config is checked against (Hetzner Cloud, Colima, k3s).

Kept as data so the validator, the docs and the tests read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["x86_64", "arm64"]

EU_LOCATIONS = ("fsn1", "nbg1", "hel1")
ALL_LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")

# A private network's subnet lives in one network zone; servers attach only from its locations.
NETWORK_ZONES: dict[str, tuple[str, ...]] = {
    "eu-central": EU_LOCATIONS,
    "us-east": ("ash",),
    "us-west": ("hil",),
    "ap-southeast": ("sin",),
}


@dataclass(frozen=True)
class ServerType:
    name: str
    arch: Arch
    cores: int
    memory_gib: int
    locations: tuple[str, ...]


def _types(prefix: str, arch: Arch, specs: list[tuple[str, int, int]], locations: tuple[str, ...]):
    return {
        f"{prefix}{suffix}": ServerType(f"{prefix}{suffix}", arch, cores, mem, locations)
        for suffix, cores, mem in specs
    }


# Current Hetzner Cloud types. cx22..cx52 and cpx11..cpx51 were deprecated on 2025-10-16.
# Cost-optimised CX and Arm CAX are offered only in the EU locations.
SERVER_TYPES: dict[str, ServerType] = {
    **_types(
        "cx", "x86_64", [("23", 2, 4), ("33", 4, 8), ("43", 8, 16), ("53", 16, 32)], EU_LOCATIONS
    ),
    **_types(
        "cpx",
        "x86_64",
        [("12", 1, 2), ("22", 2, 4), ("32", 4, 8), ("42", 8, 16), ("52", 12, 24), ("62", 16, 32)],
        ALL_LOCATIONS,
    ),
    **_types(
        "cax", "arm64", [("11", 2, 4), ("21", 4, 8), ("31", 8, 16), ("41", 16, 32)], EU_LOCATIONS
    ),
    **_types(
        "ccx",
        "x86_64",
        [
            ("13", 2, 8),
            ("23", 4, 16),
            ("33", 8, 32),
            ("43", 16, 64),
            ("53", 32, 128),
            ("63", 48, 192),
        ],
        ALL_LOCATIONS,
    ),
}

DEPRECATED_SERVER_TYPES = {
    "cx22": "cx23",
    "cx32": "cx33",
    "cx42": "cx43",
    "cx52": "cx53",
    "cpx11": "cpx12",
    "cpx21": "cpx22",
    "cpx31": "cpx32",
    "cpx41": "cpx42",
    "cpx51": "cpx52",
}

NIX_SYSTEMS: dict[str, str] = {"x86_64": "x86_64-linux", "arm64": "aarch64-linux"}

MAX_SERVERS_PER_NETWORK = 100
MAX_FIREWALL_RULES = 50
MAX_SERVERS_PER_SPREAD_GROUP = 10
HETZNER_PRIVATE_MTU = 1450

# nixos-anywhere's kexec image needs about 1.5 GB; a k3s server with Cilium wants 4 GiB.
MIN_COLIMA_MEMORY_GIB = 4

# Components k3s can really --disable. Flannel is not one: --flannel-backend=none replaces it.
K3S_DISABLABLE = ("coredns", "local-storage", "metrics-server", "servicelb", "traefik")
K3S_DEFAULT_DISABLED = ("local-storage", "metrics-server", "servicelb", "traefik")

# Flags this program manages itself; users setting them in extraFlags would fight the modules.
K3S_MANAGED_FLAGS = (
    "--cluster-cidr",
    "--cluster-dns",
    "--cluster-init",
    "--disable",
    "--disable-cloud-controller",
    "--disable-kube-proxy",
    "--disable-network-policy",
    "--flannel-backend",
    "--node-external-ip",
    "--node-ip",
    "--node-label",
    "--node-taint",
    "--server",
    "--service-cidr",
    "--tls-san",
    "--token",
    "--token-file",
    "--vpn-auth",
    "--vpn-auth-file",
    "--write-kubeconfig-mode",
)

# The server type a NixOS image is built on: the smallest disk (40 GB) of each architecture, so
# its snapshot fits every server type (a snapshot needs a disk at least as large as its source).
IMAGE_BUILDER_TYPES: dict[Arch, str] = {"x86_64": "cpx12", "arm64": "cax11"}
