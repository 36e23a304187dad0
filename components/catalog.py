"""Upstream facts the stack config is checked against (Hetzner Cloud, Colima, k3s).

Kept as data so the validator, the docs and the tests read the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

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

# The smallest Colima VM that hosts a node; the stack check and the machine layer both read
# these. Colima itself has no minimum (v0.10.3, cmd/start.go: --memory defaults to 2 GiB, and
# environment/vm/lima/yaml.go passes any memory > 0 to Lima), so ours holds: nixos-anywhere's
# kexec image needs about 1.5 GB, and a k3s server with embedded etcd and Cilium wants 4 GiB.
MIN_COLIMA_MEMORY_GIB = 4
# The NixOS closure with k3s, two system generations and the Cilium and k3s images.
MIN_COLIMA_DISK_GIB = 20

# Components k3s can really --disable. Flannel is not one: --flannel-backend=none replaces it.
# The one list: the stack model, the host document (and its JSON schema) take it from here.
K3sComponent = Literal["coredns", "local-storage", "metrics-server", "servicelb", "traefik"]
K3S_DISABLABLE: tuple[str, ...] = get_args(K3sComponent)
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

# ---------------------------------------------------------------------------------------------
# Monthly list prices, for the cost line of the plan and the PR diff.
#
# EUR per month, excluding VAT, Hetzner's monthly price cap (hourly billing never exceeds it).
# Source: the rate card in force from 2026-04-01, as published by Hetzner
# (https://www.hetzner.com/cloud, and the "old price" column of
# https://docs.hetzner.com/general/infrastructure-and-availability/price-adjustment), read
# offline on 2026-12-03 through third-party transcriptions:
#   - server types: one transcription of that price-adjustment page; cx23 3.99 and cx33 6.49
#     are confirmed by a second, independent one (a bill of 2026-04-15, and the Hetzner pricing
#     API queried on 2026-05-27 for fsn1). The others rest on that single transcription.
#   - volumes: 0.0572 per GB, the Hetzner pricing API on 2026-05-27 (fsn1).
#   - primary IPv4 0.50 and load balancers lb11 5.39, lb21 11.60, lb31 18.66: older figures
#     (before 2026-04-01; the load balancers derived from prices incl. 19 % VAT) that could not
#     be confirmed for 2026. They are marked unconfirmed and the PR comment says so.
# Hetzner's 2026-06-15 adjustment changed the price of new orders and rescales only (existing
# servers keep theirs); its figures could not be verified offline, so a server created after it
# may cost more than shown. Types with no price for a region below are reported as "no price",
# never guessed. Update PRICES_AS_OF with the table.
PRICES_AS_OF = "2026-05-27"
PRICE_BASIS = f"EUR per month, excl. VAT, Hetzner list prices as of {PRICES_AS_OF}"

# Price regions: Hetzner prices differ between the EU, the US and Singapore locations.
PRICE_REGIONS: dict[str, str] = {
    "fsn1": "eu",
    "nbg1": "eu",
    "hel1": "eu",
    "ash": "us",
    "hil": "us",
    "sin": "sin",
}
NETWORK_ZONE_PRICE_REGIONS: dict[str, str] = {
    "eu-central": "eu",
    "us-east": "us",
    "us-west": "us",
    "ap-southeast": "sin",
}

# Server type -> monthly price per price region; a type missing from a region has no price.
SERVER_PRICES: dict[str, dict[str, str]] = {
    "eu": {
        "cx23": "3.99",
        "cx33": "6.49",
        "cx43": "11.99",
        "cx53": "22.49",
        "cax11": "4.49",
        "cax21": "7.99",
        "cax31": "15.99",
        "cax41": "31.49",
        "cpx22": "7.99",
        "cpx32": "13.99",
        "cpx42": "25.49",
        "cpx52": "36.49",
        "cpx62": "50.49",
        "ccx13": "15.99",
        "ccx23": "31.49",
        "ccx33": "62.49",
        "ccx43": "124.99",
        "ccx53": "249.99",
        "ccx63": "374.49",
    },
    "us": {
        "ccx13": "16.99",
        "ccx23": "33.99",
        "ccx33": "64.99",
        "ccx43": "129.99",
        "ccx53": "259.99",
        "ccx63": "389.99",
    },
    "sin": {
        "cpx12": "7.99",
        "cpx22": "15.99",
        "cpx32": "32.49",
        "cpx42": "55.99",
        "cpx52": "77.99",
        "cpx62": "100.49",
        "ccx13": "27.49",
        "ccx23": "51.49",
        "ccx33": "96.99",
        "ccx43": "178.49",
        "ccx53": "382.49",
        "ccx63": "626.99",
    },
}
LOAD_BALANCER_PRICES: dict[str, str] = {"lb11": "5.39", "lb21": "11.60", "lb31": "18.66"}
LOAD_BALANCER_PRICES_CONFIRMED = False
VOLUME_PRICE_PER_GB = "0.0572"
VOLUME_PRICE_CONFIRMED = True
PRIMARY_IPV4_PRICE = "0.50"
PRIMARY_IPV4_PRICE_CONFIRMED = False
# The server type a NixOS image is built on: the smallest disk (40 GB) of each architecture, so
# its snapshot fits every server type (a snapshot needs a disk at least as large as its source).
IMAGE_BUILDER_TYPES: dict[Arch, str] = {"x86_64": "cpx12", "arm64": "cax11"}

# Cilium chart versions whose values.schema.json we ship (components/data/cilium/), and the one
# a stack gets when it names none.
CILIUM_VERSIONS: tuple[str, ...] = ("1.18.12", "1.19.6", "1.20.0")
CILIUM_DEFAULT_VERSION = "1.19.6"
