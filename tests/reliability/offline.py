"""Everything the program derives from a validated stack, without Pulumi: the property test's
fast path. It calls the functions the Cluster component calls (inventory, render, hostspec,
k3s markings, the kubeconfig invocation, Cilium values, Colima machine checks) with the same
arguments; test_accepted_stacks checks it gives byte-identical host data to a real plan.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from components import config
from components.cluster import colima_machine_args
from components.config import ClusterConfig
from components.hosts import hostspec, inventory, render
from components.hosts.inventory import Host
from components.k8s import cilium, k3s
from components.machines.colima import validate_machine_args
from components.machines.hetzner import firewall_rules
from components.scripts import remote_invocation
from tooling import mocks

# One line, as nixos_host.DeployKey hands it on (tls ends the OpenSSH form with a newline).
DEPLOY_KEY = mocks.fake_ssh_public_key("offline-deploy-key").strip()


def synthetic_facts(cfg: ClusterConfig, hosts: list[Host]) -> dict[str, render.MachineFacts]:
    """Machine facts shaped like the providers' (documentation addresses)."""
    facts = {}
    for i, host in enumerate(hosts):
        if cfg.provider == "hetzner":
            facts[host.name] = render.MachineFacts(
                private_ipv4=host.private_ip or "",
                private_cidr=cfg.network.ip_range,
                public_ipv4=str(ipaddress.ip_address("203.0.113.0") + 1 + i % 250),
                public_ipv6=f"2001:db8:{i:x}::1" if cfg.hetzner.ipv6 else None,
                private_mac_address=f"86:00:00:00:{i // 256:02x}:{i % 256:02x}",
            )
        else:
            facts[host.name] = render.MachineFacts(
                private_ipv4=f"192.168.64.{2 + i % 250}", private_cidr=render.COLIMA_NETWORK
            )
    return facts


@dataclass(frozen=True)
class Rendered:
    hosts: dict[str, str]  # host name -> host JSON as pushed
    api_endpoint: str
    kubeconfig_create: str


def render_stack(
    cfg: ClusterConfig,
    facts: Mapping[str, render.MachineFacts] | None = None,
    deploy_key: str = DEPLOY_KEY,
    lb_public_ipv4: str = "203.0.113.250",
) -> Rendered:
    """`lb_public_ipv4`: the API load balancer's public address, as the machine layer gives it."""
    hosts = inventory.hosts(cfg)
    facts = facts if facts is not None else synthetic_facts(cfg, hosts)
    bootstrap = next(h for h in hosts if h.is_bootstrap)
    bootstrap_ip = facts[bootstrap.name].private_ipv4
    lb_private = config.load_balancer_private_ip(cfg) if config.uses_load_balancer(cfg) else None
    lb_public = lb_public_ipv4 if lb_private and cfg.hetzner.load_balancer_public else None
    lb_sans = [a for a in (lb_private, lb_public) if a]
    pushed = {}
    images = cilium.node_images(cfg)
    for host in hosts:
        spec = render.host_spec(
            cfg,
            host,
            facts[host.name],
            bootstrap_ip=bootstrap_ip,
            authorized_keys=[deploy_key, *cfg.ssh_keys],
            api_sans=lb_sans if host.role == "server" else [],
            node_images=images,
        )
        pushed[host.name] = hostspec.host_json(spec)
        render.secret_files(cfg, host)
        k3s.node_markings(host.pool.labels, host.pool.taints)
        for slot in host.containers:
            k3s.node_markings(slot.config.labels, slot.config.taints)
        if cfg.provider == "colima":
            validate_machine_args(colima_machine_args(cfg, host, deploy_key))
    if cfg.provider == "hetzner":
        firewall_rules(cfg)
    # The first server's address as the machine layer gives it (cluster.py: ssh_host).
    first = facts[bootstrap.name]
    url = render.api_endpoint(cfg, lb_public or first.public_ipv4 or first.private_ipv4).url
    nodes = config.node_count(cfg)
    if cfg.k3s.cni == "cilium":
        cilium.render_values(cilium.cilium_settings(cfg, lb_private or bootstrap_ip, nodes))
    return Rendered(
        hosts=dict(sorted(pushed.items())),
        api_endpoint=url,
        kubeconfig_create=remote_invocation("kubeconfig.sh", url, cfg.name),
    )
