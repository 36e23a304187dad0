"""What the rest of the program reads off a valid stack: pool addresses, node counts, container
modes, which Hetzner add-ons are on. Pure functions of the schema's models."""

from __future__ import annotations

import ipaddress
from typing import cast, get_args

from components import containermodes
from components.config.schema import ClusterConfig, ContainerConfig, ContainerModeName


def pool_offsets(cfg: ClusterConfig) -> list[int]:
    """First address offset (inside network.subnet) of each pool's block, in pool order.

    Pools get consecutive blocks of network.poolBlockSize addresses starting at offset 10, so
    adding hosts to a pool (or a pool at the end) never renumbers an existing host. A pool may
    pin its block with ipOffset (e.g. before reordering pools).
    """
    offsets = []
    for position, pool in enumerate(cfg.node_pools):
        default = 10 + position * cfg.network.pool_block_size
        offsets.append(pool.ip_offset if pool.ip_offset is not None else default)
    return offsets


def container_mode(cfg: ClusterConfig, container: ContainerConfig) -> ContainerModeName:
    """The container's mode: its own choice, else the CNI's default."""
    if container.mode is not None:
        return container.mode
    default = containermodes.default_mode(cfg.k3s.cni)
    if default not in get_args(ContainerModeName):
        raise ValueError(f"{containermodes.DATA_PATH}: unknown container mode {default!r}")
    return cast(ContainerModeName, default)


def node_count(cfg: ClusterConfig) -> int:
    """Kubernetes nodes of the stack: every host plus every nspawn container on it."""
    return sum(p.count * (1 + len(p.containers)) for p in cfg.node_pools)


def has_nested_nodes(cfg: ClusterConfig) -> bool:
    """Some host carries a container node outside a user namespace (it runs its own agent)."""
    return any(
        not containermodes.modes()[container_mode(cfg, c)].user_namespaced
        for pool in cfg.node_pools
        if pool.count
        for c in pool.containers
    )


def uses_load_balancer(cfg: ClusterConfig) -> bool:
    """Whether the stack puts a Hetzner Load Balancer in front of the API."""
    return cfg.provider == "hetzner" and cfg.hetzner.load_balancer


def uses_cloud_controller(cfg: ClusterConfig) -> bool:
    return cfg.provider == "hetzner" and cfg.hetzner.cloud_controller_manager


def uses_csi(cfg: ClusterConfig) -> bool:
    return cfg.provider == "hetzner" and cfg.hetzner.csi


def load_balancer_private_ip(cfg: ClusterConfig) -> str:
    """The API load balancer's fixed address: the subnet's last usable one (broadcast - 1).

    Fixed, so Cilium's k8sServiceHost and the TLS SANs are known at plan time; hosts count up
    from offset 10, so the top of the subnet stays free (a host there is refused).
    """
    subnet = ipaddress.ip_network(cfg.network.subnet)
    return str(subnet.broadcast_address - 1)


def needs_tailscale_key(cfg: ClusterConfig) -> bool:
    return cfg.tailscale.enabled or any(
        c.tailscale for pool in cfg.node_pools for c in pool.containers
    )
