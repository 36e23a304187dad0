"""The hosts a stack config describes: names, roles, places and private addresses.

Pure data derived from the validated config; the machine layers create what it lists and the
renderer turns each host plus its machine facts into host JSON.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from components import catalog, profiles
from components.config import ClusterConfig, ContainerConfig, NodePool, pool_offsets


@dataclass(frozen=True)
class ContainerSlot:
    config: ContainerConfig
    host_address: str
    local_address: str
    prefix_length: int


@dataclass(frozen=True)
class Host:
    name: str
    pool: NodePool
    index: int
    offset: int
    location: str | None
    arch: catalog.Arch
    private_ip: str | None
    is_bootstrap: bool
    containers: tuple[ContainerSlot, ...]

    @property
    def role(self) -> str:
        return self.pool.role

    @property
    def system(self) -> str:
        return catalog.NIX_SYSTEMS[self.arch]


def _arch(cfg: ClusterConfig, pool: NodePool) -> catalog.Arch:
    return profiles.profile(cfg.provider).arch(pool.server_type, cfg.colima.arch)


def container_block(cfg: ClusterConfig, offset: int) -> ipaddress.IPv4Network:
    """The /24 of network.containerCidr for the host at `offset` (its third octet)."""
    base = ipaddress.ip_network(cfg.network.container_cidr).network_address + offset * 256
    return ipaddress.IPv4Network(f"{base}/24")


def container_slots(cfg: ClusterConfig, pool: NodePool, offset: int) -> tuple[ContainerSlot, ...]:
    """A /30 per container inside the host's /24: host end .4j+1, container end .4j+2."""
    base = container_block(cfg, offset).network_address
    return tuple(
        ContainerSlot(
            config=container,
            host_address=str(base + 4 * j + 1),
            local_address=str(base + 4 * j + 2),
            prefix_length=30,
        )
        for j, container in enumerate(pool.containers)
    )


def bootstrap_host_name(cfg: ClusterConfig) -> str:
    if cfg.k3s.bootstrap_host:
        return cfg.k3s.bootstrap_host
    first = next(p for p in cfg.node_pools if p.role == "server" and p.count > 0)
    return f"{cfg.name}-{first.name}-1"


def hosts(cfg: ClusterConfig) -> list[Host]:
    """Every host, in pool order then index order."""
    subnet = ipaddress.ip_network(cfg.network.subnet)
    bootstrap = bootstrap_host_name(cfg)
    managed = profiles.profile(cfg.provider).managed_network
    out = []
    for pool, start in zip(cfg.node_pools, pool_offsets(cfg), strict=True):
        for index in range(1, pool.count + 1):
            name = f"{cfg.name}-{pool.name}-{index}"
            offset = start + index - 1
            location = pool.locations[(index - 1) % len(pool.locations)] if pool.locations else None
            out.append(
                Host(
                    name=name,
                    pool=pool,
                    index=index,
                    offset=offset,
                    location=location,
                    arch=_arch(cfg, pool),
                    # Otherwise (Colima's vmnet) DHCP gives the address; known only at deploy.
                    private_ip=str(subnet.network_address + offset) if managed else None,
                    is_bootstrap=name == bootstrap,
                    containers=container_slots(cfg, pool, offset),
                )
            )
    return out
