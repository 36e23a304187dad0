"""Prod-like (hetzner) stacks of N Kubernetes nodes for the benchmark.

A node is a host or an nspawn k3s container on a host. Shape of a stack of N nodes:

- servers: 3 (embedded etcd quorum; 1 below 3 nodes) in one pool `control`, never more,
  so the critical path of the deploy graph is comparable across N;
- plain agents: up to 27 hosts in pools `workers-<i>`;
- the remaining nodes as container hosts in pools `dense-<i>`: each host carries k containers,
  k the smallest number that keeps these hosts under DENSE_HOST_BUDGET (a Hetzner network
  holds at most 100 servers); what does not divide evenly goes to the plain agents.

Every pool holds at most POOL_SIZE hosts and gets a block of POOL_SIZE addresses, so every host
offset stays below 256 (container hosts need a /24 of network.containerCidr each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components import catalog

CLUSTER_NAME = "bench"
MAX_SERVERS = 3
PLAIN_AGENT_CAP = 27
DENSE_HOST_BUDGET = 60
POOL_SIZE = 16
LOCATIONS = ["fsn1", "nbg1", "hel1"]
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3mQ2bJ0pM1wq6Zr7s8S3bA2VfM0g5qTj9Gkq1mLrX "
    "bench@example.com"
)


@dataclass(frozen=True)
class Shape:
    """How N nodes are laid out: counts only; `pools` turns it into stack pools."""

    nodes: int
    servers: int
    plain_agents: int
    dense_hosts: int
    containers_per_host: int

    @property
    def hosts(self) -> int:
        return self.servers + self.plain_agents + self.dense_hosts

    def describe(self) -> str:
        parts = [f"{self.servers} servers", f"{self.plain_agents} agents"]
        if self.dense_hosts:
            parts.append(f"{self.dense_hosts} hosts x (1 + {self.containers_per_host} containers)")
        return ", ".join(parts)


def shape(nodes: int, servers: int | None = None, plain_cap: int = PLAIN_AGENT_CAP) -> Shape:
    """The layout of a stack with `nodes` Kubernetes nodes (see the module docstring).

    `servers` and `plain_cap` override the server count and the cap on plain agent hosts (the
    deploy-time model uses 5 servers, and 50 agents as 50 hosts).
    """
    if nodes < 1:
        raise ValueError(f"a cluster needs at least 1 node, not {nodes}")
    if servers is None:
        servers = min(MAX_SERVERS, nodes if nodes % 2 else nodes - 1)
    rest = nodes - servers
    plain = min(rest, plain_cap)
    dense_nodes = rest - plain
    per_host = 0
    dense_hosts = 0
    if dense_nodes:
        per_host = math.ceil(dense_nodes / DENSE_HOST_BUDGET) - 1
        per_host = max(per_host, 1)
        while dense_nodes // (per_host + 1) > DENSE_HOST_BUDGET:
            per_host += 1
        dense_hosts = dense_nodes // (per_host + 1)
        plain += dense_nodes - dense_hosts * (per_host + 1)
    result = Shape(nodes, servers, plain, dense_hosts, per_host)
    if result.hosts > catalog.MAX_SERVERS_PER_NETWORK:
        raise ValueError(
            f"{nodes} nodes need {result.hosts} hosts: more than a Hetzner network holds "
            f"({catalog.MAX_SERVERS_PER_NETWORK})"
        )
    return result


def _split(count: int) -> list[int]:
    """Pool sizes of at most POOL_SIZE hosts, as even as possible."""
    if count == 0:
        return []
    pools = math.ceil(count / POOL_SIZE)
    base, extra = divmod(count, pools)
    return [base + (1 if i < extra else 0) for i in range(pools)]


def _pool(name: str, role: str, count: int, server_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "count": count,
        "serverType": server_type,
        "locations": LOCATIONS,
        "labels": {"bench.example.com/pool": name},
        **extra,
    }


def pools(layout: Shape) -> list[dict[str, Any]]:
    """nodePools of the stack, servers first, then container hosts, then plain agents."""
    result = [
        _pool(
            "control",
            "server",
            layout.servers,
            "cx33",
            taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        )
    ]
    containers = [
        {"name": f"c{j}", "labels": {"bench.example.com/container": f"c{j}"}}
        for j in range(1, layout.containers_per_host + 1)
    ]
    for i, count in enumerate(_split(layout.dense_hosts), start=1):
        result.append(_pool(f"dense-{i}", "agent", count, "ccx33", containers=containers))
    for i, count in enumerate(_split(layout.plain_agents), start=1):
        result.append(_pool(f"workers-{i}", "agent", count, "cx43"))
    return result


def cluster_config(
    nodes: int, servers: int | None = None, plain_cap: int = PLAIN_AGENT_CAP
) -> dict[str, Any]:
    """The `nixos-k3s:cluster` value of a prod-like stack with `nodes` Kubernetes nodes."""
    return {
        "name": CLUSTER_NAME,
        "provider": "hetzner",
        "sshKeys": [SSH_KEY],
        "adminUsers": ["ops"],
        "apiEndpoint": "k8s.bench.example.com",
        "network": {
            "ipRange": "10.0.0.0/16",
            "subnet": "10.0.1.0/24",
            "zone": "eu-central",
            "poolBlockSize": POOL_SIZE,
        },
        "firewall": {"sshSources": ["198.51.100.0/24"], "apiSources": ["198.51.100.0/24"]},
        "k3s": {"tlsSans": ["k8s.bench.example.com"]},
        "cilium": {"hubble": {"enabled": True}},
        "nodePools": pools(shape(nodes, servers, plain_cap)),
    }


def stack_document(cluster: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, Any]:
    """A Pulumi.<stack>.yaml document holding `cluster` (and `extra` config keys)."""
    return {"config": {"nixos-k3s:cluster": cluster, **(extra or {})}}


def relabelled(cluster: dict[str, Any]) -> tuple[dict[str, Any], str, int]:
    """`cluster` with the labels of its last agent pool changed (the server pool if none).

    Returns the changed config, the pool's name and its host count.
    """
    pools_ = [dict(p) for p in cluster["nodePools"]]
    index = max(
        (i for i, p in enumerate(pools_) if p["role"] == "agent"),
        default=0,
    )
    pool = pools_[index]
    pool["labels"] = {**pool.get("labels", {}), "bench.example.com/relabelled": "true"}
    return {**cluster, "nodePools": pools_}, pool["name"], pool["count"]
