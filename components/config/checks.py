"""Semantic checks: what only the whole stack can show (overlapping CIDRs, quorum, server types
per location, impossible combinations). Pure: tests call `semantic_problems` directly. The
Cilium chart values are checked by components/k8s/cilium.py, the number of Hetzner firewall rules
by components/machines/hetzner.py (each `stack_problems`, handed in by components/stack.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from components import catalog, containermodes, profiles, rules
from components.config.derived import (
    container_mode,
    load_balancer_private_ip,
    pool_offsets,
    uses_load_balancer,
)
from components.config.errors import Problem, Warning_
from components.config.schema import ClusterConfig, NodePool


def _networks(cfg: ClusterConfig) -> list[tuple[str, str]]:
    nets = [
        ("k3s.clusterCidr", cfg.k3s.cluster_cidr),
        ("k3s.serviceCidr", cfg.k3s.service_cidr),
        ("network.containerCidr", cfg.network.container_cidr),
    ]
    if profiles.profile(cfg.provider).managed_network:
        nets.append(("network.ipRange", cfg.network.ip_range))
    return nets


def _overlap_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    nets = _networks(cfg)
    for i, (path_a, a) in enumerate(nets):
        for path_b, b in nets[i + 1 :]:
            if {path_a, path_b} == {"network.ipRange", "network.containerCidr"}:
                continue  # containers are routed inside the network on purpose
            if ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b)):
                yield Problem(path_b, f"{b} overlaps {path_a} {a}")
    subnet = ipaddress.ip_network(cfg.network.subnet)
    ip_range = ipaddress.ip_network(cfg.network.ip_range)
    managed = profiles.profile(cfg.provider).managed_network
    if managed and not subnet.subnet_of(ip_range):  # type: ignore[arg-type]
        yield Problem("network.subnet", f"{subnet} is not inside network.ipRange {ip_range}")
    if ipaddress.ip_address(cfg.k3s.cluster_dns) not in ipaddress.ip_network(cfg.k3s.service_cidr):
        yield Problem(
            "k3s.clusterDns",
            f"{cfg.k3s.cluster_dns} is not inside k3s.serviceCidr {cfg.k3s.service_cidr}",
        )
    if ipaddress.ip_network(cfg.network.container_cidr).prefixlen > 16:
        yield Problem(
            "network.containerCidr",
            f"{cfg.network.container_cidr} is too small: a /16 or larger is needed "
            "(one /24 per host)",
        )


def _pool_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    seen: dict[str, int] = {}
    for i, pool in enumerate(cfg.node_pools):
        path = f"nodePools[{i}]"
        if pool.name in seen:
            yield Problem(
                f"{path}.name", f"{pool.name!r} is already used by nodePools[{seen[pool.name]}]"
            )
        seen.setdefault(pool.name, i)
        longest = f"{cfg.name}-{pool.name}-{max(pool.count, 1)}"
        if len(longest) > 63:
            yield Problem(f"{path}.name", f"host name {longest!r} would exceed 63 characters")
        names = [c.name for c in pool.containers]
        for j, name in enumerate(names):
            if name in names[:j]:
                yield Problem(f"{path}.containers[{j}].name", f"{name!r} is used twice in the pool")
            elif len(f"{longest}-{name}") > 63:
                yield Problem(
                    f"{path}.containers[{j}].name",
                    f"node name {longest + '-' + name!r} would exceed 63 characters",
                )
        if len(pool.containers) > 63:
            yield Problem(
                f"{path}.containers", "at most 63 containers per host (/30 each in a /24)"
            )
        if pool.count > cfg.network.pool_block_size:
            yield Problem(
                f"{path}.count",
                f"{pool.count} hosts do not fit the pool's address block of "
                f"{cfg.network.pool_block_size} (network.poolBlockSize)",
            )
        if cfg.provider == "hetzner":
            yield from _hetzner_pool_problems(cfg, pool, path)
        else:
            if pool.server_type is not None or pool.locations:
                yield Problem(
                    path,
                    "serverType and locations apply to provider hetzner only; "
                    "Colima VMs are sized by the colima section",
                )
    servers = [p for p in cfg.node_pools if p.role == "server"]
    server_count = sum(p.count for p in servers)
    if server_count == 0:
        yield Problem(
            "nodePools",
            "no server: at least one pool with role 'server' and count >= 1 is needed "
            "(agents join a server)",
        )
    elif server_count % 2 == 0 and server_count > 2:
        yield Problem(
            "nodePools",
            f"{server_count} servers: embedded etcd needs an odd number of servers for quorum "
            f"(use {server_count - 1} or {server_count + 1})",
        )
    total = sum(p.count for p in cfg.node_pools)
    if cfg.provider == "hetzner" and total > catalog.MAX_SERVERS_PER_NETWORK:
        yield Problem(
            "nodePools",
            f"{total} hosts: a Hetzner network holds at most {catalog.MAX_SERVERS_PER_NETWORK}",
        )


def _hetzner_pool_problems(cfg: ClusterConfig, pool: NodePool, path: str) -> Iterable[Problem]:
    if pool.server_type is None:
        yield Problem(f"{path}.serverType", "required for provider hetzner, e.g. 'cx33'")
    if not pool.locations:
        yield Problem(f"{path}.locations", "required for provider hetzner, e.g. ['fsn1']")
    zone_locations = catalog.NETWORK_ZONES[cfg.network.zone]
    for j, location in enumerate(pool.locations):
        if location not in zone_locations:
            yield Problem(
                f"{path}.locations[{j}]",
                f"{location!r} is not in network zone {cfg.network.zone!r} "
                f"(its locations: {', '.join(zone_locations)})",
            )
        server_type = catalog.SERVER_TYPES.get(pool.server_type or "")
        if server_type and location not in server_type.locations:
            yield Problem(
                f"{path}.locations[{j}]",
                f"server type {server_type.name!r} is not offered in {location!r} "
                f"(offered in: {', '.join(server_type.locations)})",
            )


def _colima_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    colima = cfg.colima
    for field, reason in profiles.colima.vm_problems(
        arch=colima.arch,
        vm_type=colima.vm_type,
        rosetta=colima.rosetta,
        memory_gib=colima.memory_gib,
    ):
        yield Problem(f"colima.{rules.camel(field)}", reason)
    yield from _colima_profile_problems(cfg)


def _colima_profile_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    """Every host is the Colima profile of its name: Colima's and Lima's rules apply."""
    if f"{cfg.name}-".startswith(rules.COLIMA_INSTANCE_PREFIX):
        yield Problem(
            "name",
            f"{cfg.name!r}: host names would start with {rules.COLIMA_INSTANCE_PREFIX!r}, which "
            "Colima strips from profile names (clashing with the user's own Colima VMs)",
        )
        return
    lima_dir = rules.lima_home()
    for i, pool in enumerate(cfg.node_pools):
        longest = f"{cfg.name}-{pool.name}-{max(pool.count, 1)}"
        try:
            rules.colima_profile(longest, lima_dir)
        except ValueError as exc:
            yield Problem(f"nodePools[{i}].name", f"{exc}; use a shorter cluster or pool name")


def _firewall_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    # The number of rules against Hetzner's limit is checked where the rules are made
    # (components/machines/hetzner.py, stack_problems), so that it counts the real list.
    if cfg.firewall is None and cfg.provider == "hetzner":
        yield Problem(
            "firewall", "required for provider hetzner: sshSources and apiSources (CIDRs)"
        )


def _host_names(cfg: ClusterConfig) -> list[tuple[str, str]]:
    return [
        (f"{cfg.name}-{pool.name}-{n}", pool.role)
        for pool in cfg.node_pools
        for n in range(1, pool.count + 1)
    ]


def _k3s_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    boot = cfg.k3s.bootstrap_host
    first_server_pool = next((p for p in cfg.node_pools if p.role == "server"), None)
    if boot is None and first_server_pool is not None and first_server_pool.count == 0:
        # The default bootstrap host would silently move to another pool's first server.
        yield Problem(
            "k3s.bootstrapHost",
            f"required while the first server pool ({first_server_pool.name!r}) has count 0: "
            "name the server that initialises (or already holds) etcd",
        )
    if boot is not None:
        roles = dict(_host_names(cfg))
        if roles.get(boot) != "server":
            servers = [name for name, role in roles.items() if role == "server"]
            yield Problem(
                "k3s.bootstrapHost",
                f"{boot!r} is not a server host of this stack; servers: {', '.join(servers)}",
            )
    gs = cfg.k3s.graceful_shutdown
    if gs.enabled and _seconds(gs.critical_pods_grace_period) >= _seconds(gs.grace_period):
        yield Problem(
            "k3s.gracefulShutdown.criticalPodsGracePeriod",
            f"{gs.critical_pods_grace_period} must be shorter than gracePeriod {gs.grace_period}",
        )
    if cfg.cilium.routing_mode == "native" and cfg.cilium.native_routing_cidr is None:
        yield Problem(
            "cilium.nativeRoutingCidr", "required with routingMode native (e.g. the pod CIDR)"
        )
    snapshots = cfg.k3s.etcd_snapshots
    if snapshots.s3 is not None and not snapshots.enabled:
        yield Problem(
            "k3s.etcdSnapshots.s3",
            "needs k3s.etcdSnapshots.enabled: true (k3s uploads the scheduled snapshots)",
        )


def _address_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    managed = profiles.profile(cfg.provider).managed_network
    subnet = ipaddress.ip_network(cfg.network.subnet)
    taken: dict[int, str] = {}
    for i, (pool, start) in enumerate(zip(cfg.node_pools, pool_offsets(cfg), strict=True)):
        last = start + max(pool.count, 1) - 1
        if managed and last >= subnet.num_addresses - 1:
            yield Problem(
                f"nodePools[{i}]",
                f"addresses {start}..{last} of the pool do not fit network.subnet {subnet}",
            )
        if pool.containers and last > 255:
            yield Problem(
                f"nodePools[{i}].containers",
                f"host address offsets up to {last} leave no /24 in network.containerCidr "
                "(offsets must stay below 256)",
            )
        for offset in range(start, start + pool.count):
            if offset in taken:
                yield Problem(
                    f"nodePools[{i}].ipOffset",
                    f"address offset {offset} is also used by pool {taken[offset]!r}",
                )
                break
            taken[offset] = pool.name


# containerd >= 2.1 (k3s >= 1.34) runs under nspawn without the seed's containerd template.
MIN_CONTAINER_K3S_MINOR = 34


def _container_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    for i, pool in enumerate(cfg.node_pools):
        for j, container in enumerate(pool.containers):
            mode = container_mode(cfg, container)
            reason = containermodes.refusal(cfg.k3s.cni, mode)
            if reason is not None:
                allowed = [
                    m for m, data in containermodes.modes().items() if cfg.k3s.cni in data.cnis
                ]
                yield Problem(
                    f"nodePools[{i}].containers[{j}].mode",
                    f"{mode!r} cannot run k3s.cni {cfg.k3s.cni!r}: {reason}; allowed with "
                    f"{cfg.k3s.cni}: {', '.join(repr(m) for m in allowed)}",
                )
    pinned = re.fullmatch(r"k3s_1_([0-9]+)", cfg.k3s.package)
    has_containers = any(pool.containers for pool in cfg.node_pools)
    if has_containers and pinned and int(pinned.group(1)) < MIN_CONTAINER_K3S_MINOR:
        yield Problem(
            "k3s.package",
            f"{cfg.k3s.package} is older than k3s 1.{MIN_CONTAINER_K3S_MINOR}: nspawn containers "
            "need containerd >= 2.1 (use 'k3s' or k3s_1_34 and newer)",
        )


def _deploy_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    deploy = cfg.deploy
    if deploy.join_timeout_seconds < deploy.rollback_timeout_seconds:
        yield Problem(
            "deploy.joinTimeoutSeconds",
            f"{deploy.join_timeout_seconds} is shorter than deploy.rollbackTimeoutSeconds "
            f"({deploy.rollback_timeout_seconds}): a first start of k3s gets at least the time "
            "any push gets; raise it or lower rollbackTimeoutSeconds",
        )


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(h|m|s)", duration))


def semantic_problems(cfg: ClusterConfig) -> list[Problem]:
    """Problems only the whole stack can show. Pure: tests call it directly."""
    problems = [
        *_overlap_problems(cfg),
        *_pool_problems(cfg),
        *(_colima_problems(cfg) if cfg.provider == "colima" else ()),
        *_firewall_problems(cfg),
        *_k3s_problems(cfg),
        *_address_problems(cfg),
        *_container_problems(cfg),
        *_hetzner_addon_problems(cfg),
        *_deploy_problems(cfg),
    ]
    if cfg.k3s.cni == "flannel" and cfg.cilium.model_fields_set:
        problems.append(
            Problem(
                "cilium",
                "applies to k3s.cni 'cilium' only; with 'flannel' no Cilium is installed "
                "(remove the cilium section or set k3s.cni: cilium)",
            )
        )
    return problems


def _hetzner_addon_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    if cfg.provider != "hetzner":
        return
    if cfg.hetzner.csi and not cfg.hetzner.cloud_controller_manager:
        yield Problem(
            "hetzner.csi",
            "needs hetzner.cloudControllerManager: true (the CSI node plugin is placed on the "
            "nodes the cloud controller initialised); set csi: false too, or keep the CCM",
        )
    if cfg.hetzner.load_balancer:
        subnet = ipaddress.ip_network(cfg.network.subnet)
        lb_offset = subnet.num_addresses - 2
        for i, (pool, start) in enumerate(zip(cfg.node_pools, pool_offsets(cfg), strict=True)):
            if start <= lb_offset < start + pool.count:
                yield Problem(
                    f"nodePools[{i}].ipOffset",
                    f"address offset {lb_offset} ({load_balancer_private_ip(cfg)}) is the API "
                    "load balancer's; move the pool or set hetzner.loadBalancer: false",
                )


def semantic_warnings(cfg: ClusterConfig) -> list[Warning_]:
    servers = sum(p.count for p in cfg.node_pools if p.role == "server")
    warnings = []
    if servers == 2:
        warnings.append(
            Warning_(
                "nodePools",
                "2 servers give no more fault tolerance than 1 (etcd quorum needs both): "
                "use 1 or 3",
            )
        )
    fw = cfg.firewall
    public_lb = uses_load_balancer(cfg) and cfg.hetzner.load_balancer_public
    if public_lb and fw is not None and not {"0.0.0.0/0", "::/0"} & set(fw.api_sources):
        warnings.append(
            Warning_(
                "hetzner.loadBalancerPublic",
                "the API load balancer's public address accepts 6443 from anywhere "
                "(Hetzner firewalls do not apply to load balancers); firewall.apiSources "
                "limit only the servers' own addresses. Set loadBalancerPublic: false to "
                "keep the API private.",
            )
        )
    return warnings
