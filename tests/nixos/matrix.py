"""Generated stacks that together cover every axis a rendered host varies on.

Not a full cross product: a covering set in which each value of each axis (provider, CNI, Cilium
version, tunnel protocol, tailscale, containers, server architecture, server count) appears at
least once, and the risky pairs (containers with tailscale, arm with containers, 5 servers with
each tunnel) appear together.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from components import catalog
from components.k8s import cilium

SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3mQ2bJ0pM1wq6Zr7s8S3bA2VfM0g5qTj9Gkq1mLrX "
    "ops@example.com"
)


@dataclass(frozen=True)
class Shape:
    provider: str
    cilium_version: str
    tunnel: str
    tailscale: bool
    containers: bool
    arch: str  # "x86" or "arm" (Hetzner server type family; Colima is aarch64 on vz)
    servers: int
    cni: str = "cilium"

    @property
    def name(self) -> str:
        return "-".join(
            [
                self.provider[0],
                self.cilium_version.replace(".", "")[:3],
                self.tunnel[:3],
                "ts" if self.tailscale else "nots",
                "ct" if self.containers else "noct",
                self.arch,
                f"{self.servers}s",
                *([] if self.cni == "cilium" else [self.cni]),
            ]
        )


_V18, _V19, _V20 = cilium.SUPPORTED_VERSIONS

SHAPES: tuple[Shape, ...] = (
    Shape("hetzner", _V18, "vxlan", False, False, "x86", 1),
    Shape("hetzner", _V19, "geneve", True, True, "arm", 3),
    Shape("hetzner", _V20, "vxlan", True, True, "x86", 5),
    Shape("hetzner", _V20, "geneve", False, True, "arm", 1),
    Shape("hetzner", _V19, "vxlan", False, False, "arm", 5),
    Shape("hetzner", _V18, "geneve", True, False, "x86", 3),
    Shape("hetzner", _V19, "geneve", False, False, "x86", 5),
    Shape("colima", _V19, "vxlan", False, False, "arm", 1),
    Shape("colima", _V20, "geneve", True, True, "arm", 3),
    Shape("colima", _V18, "vxlan", True, False, "arm", 1),
    # k3s's own flannel: no Cilium settings (the version and tunnel fields are unused).
    Shape("hetzner", _V19, "vxlan", True, True, "x86", 3, cni="flannel"),
    Shape("colima", _V19, "vxlan", False, True, "arm", 1, cni="flannel"),
)


def _server_type(arch: str) -> str:
    wanted = "arm64" if arch == "arm" else "x86_64"
    return next(
        name
        for name, spec in sorted(catalog.SERVER_TYPES.items())
        if spec.arch == wanted and spec.memory_gib >= 4 and "fsn1" in spec.locations
    )


def cluster_of(shape: Shape) -> dict[str, Any]:
    """The `nixos-k3s:cluster` mapping of one shape."""
    containers = (
        [
            {"name": "edge", "labels": {"node.example.com/kind": "container"}},
            {"name": "batch", "ephemeral": True, "tailscale": shape.tailscale},
        ]
        if shape.containers
        else []
    )
    pools: list[dict[str, Any]] = [
        {"name": "control", "role": "server", "count": shape.servers},
        {"name": "work", "role": "agent", "count": 2, "containers": containers},
    ]
    cluster: dict[str, Any] = {
        "name": shape.name.replace("-", "")[:20],
        "provider": shape.provider,
        "sshKeys": [SSH_KEY],
        "adminUsers": ["ops"],
        "tailscale": {"enabled": shape.tailscale},
        "nodePools": pools,
    }
    if shape.cni == "cilium":
        cluster["cilium"] = {"version": shape.cilium_version, "tunnelProtocol": shape.tunnel}
    else:
        cluster["k3s"] = {"cni": shape.cni}
    if shape.provider == "hetzner":
        server_type = _server_type(shape.arch)
        for pool in pools:
            pool["serverType"] = server_type
            pool["locations"] = ["fsn1"]
        cluster["firewall"] = {
            "sshSources": ["198.51.100.0/24"],
            "apiSources": ["198.51.100.0/24"],
        }
    else:
        cluster["colima"] = {"arch": "aarch64", "vmType": "vz", "memoryGib": 4}
    return copy.deepcopy(cluster)


def extra_config(shape: Shape) -> dict[str, Any]:
    return {"nixos-k3s:tailscaleAuthKey": "tskey-auth-matrix"} if shape.tailscale else {}
