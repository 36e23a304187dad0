"""Hetzner Cloud machines: private network, firewall, SSH key, placement groups and servers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_hcloud as hcloud

from components import catalog
from components.config import ClusterConfig
from components.hetzner_image import NixosImage, NixosImageArgs, image_key
from components.inventory import Host, container_block


@dataclass(frozen=True)
class HetznerMachinesArgs:
    config: ClusterConfig
    hosts: list[Host]
    deploy_public_key: pulumi.Input[str]
    # hetzner.nixosImage: the image's base configuration per architecture (host JSON text), the
    # deploy key the builder is installed with, the token (None: the operator's HCLOUD_TOKEN)
    # and each host's user data (its SSH host key, installed at first boot).
    image_host_json: Mapping[catalog.Arch, pulumi.Output[str]] = field(default_factory=dict)
    deploy_private_key: pulumi.Output[str] | None = None
    hcloud_token: pulumi.Output[str] | None = None
    user_data: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Machine:
    """One server as the rest of the program sees it."""

    server: hcloud.Server
    attachment: hcloud.ServerNetwork
    ssh_host: pulumi.Output[str]
    public_ipv4: pulumi.Output[str]
    public_ipv6: pulumi.Output[str] | None  # None without IPv6; "" from the API means none
    private_mac_address: pulumi.Output[str]


def firewall_rules(cfg: ClusterConfig) -> list[hcloud.FirewallRuleArgs]:
    """Inbound rules: SSH and the API from the admin CIDRs, ICMP, optional ingress, extras."""
    fw = cfg.firewall
    assert fw is not None  # validated: hetzner stacks always have a firewall section
    everyone = ["0.0.0.0/0", "::/0"]
    rules = [
        hcloud.FirewallRuleArgs(
            direction="in",
            protocol="tcp",
            port="22",
            source_ips=list(fw.ssh_sources),
            description="ssh from admins",
        ),
        hcloud.FirewallRuleArgs(
            direction="in",
            protocol="tcp",
            port="6443",
            source_ips=list(fw.api_sources),
            description="kubernetes api from admins",
        ),
        hcloud.FirewallRuleArgs(
            direction="in", protocol="icmp", source_ips=everyone, description="icmp"
        ),
    ]
    if fw.ingress:
        rules += [
            hcloud.FirewallRuleArgs(
                direction="in",
                protocol="tcp",
                port=port,
                source_ips=everyone,
                description=f"ingress {port}",
            )
            for port in ("80", "443")
        ]
    rules += [
        hcloud.FirewallRuleArgs(
            direction="in",
            protocol=rule.protocol,
            port=rule.port,
            source_ips=list(rule.sources),
            description=rule.description or None,
        )
        for rule in fw.extra_rules
    ]
    return rules


def spread_groups(hosts: list[Host]) -> dict[str, list[Host]]:
    """Placement group name suffix -> hosts; a spread group holds at most 10 servers."""
    groups: dict[str, list[Host]] = {}
    size = catalog.MAX_SERVERS_PER_SPREAD_GROUP
    for host in hosts:
        chunk = (host.index - 1) // size + 1
        groups.setdefault(f"{host.pool.name}-{chunk}", []).append(host)
    return groups


class HetznerMachines(pulumi.ComponentResource):
    """Every Hetzner resource of a cluster; servers boot the stock image, NixOS comes later."""

    machines: dict[str, Machine]
    network_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: HetznerMachinesArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("nixos-k3s:hetzner:Machines", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        protect = cfg.hetzner.protection
        labels = {"cluster": cfg.name, "managed-by": "nixos-k3s"}

        network = hcloud.Network(
            f"{name}-network",
            name=cfg.name,
            ip_range=cfg.network.ip_range,
            labels=labels,
            delete_protection=protect,
            opts=child,
        )
        # The provider's IDs are strings; the ID inputs are integers. One conversion each,
        # shared by every server (each apply is one more Output for the SDK to settle).
        network_id = network.id.apply(int)
        subnet = hcloud.NetworkSubnet(
            f"{name}-subnet",
            network_id=network_id,
            type="cloud",
            network_zone=cfg.network.zone,
            ip_range=cfg.network.subnet,
            opts=child,
        )
        firewall = hcloud.Firewall(
            f"{name}-firewall",
            name=cfg.name,
            labels=labels,
            rules=firewall_rules(cfg),
            opts=child,
        )
        # Only the generated deploy key goes on the servers: changing a server's ssh_keys
        # replaces it, and the users' keys reach the hosts through NixOS instead.
        deploy_key = hcloud.SshKey(
            f"{name}-deploy-key",
            name=f"{cfg.name}-deploy",
            public_key=args.deploy_public_key,
            labels=labels,
            opts=child,
        )
        for i, key in enumerate(cfg.ssh_keys if cfg.hetzner.register_admin_keys else []):
            hcloud.SshKey(
                f"{name}-admin-key-{i + 1}",
                name=f"{cfg.name}-admin-{i + 1}",
                public_key=key,
                labels=labels,
                opts=child,
            )
        groups = {
            suffix: hcloud.PlacementGroup(
                f"{name}-spread-{suffix}",
                name=f"{cfg.name}-{suffix}",
                type="spread",
                labels=labels,
                opts=child,
            )
            for suffix in spread_groups(args.hosts)
        }
        group_ids = {suffix: group.id.apply(int) for suffix, group in groups.items()}
        group_of = {
            h.name: suffix for suffix, members in spread_groups(args.hosts).items() for h in members
        }
        firewall_ids = [firewall.id.apply(int)]

        self.images: dict[str, NixosImage] = {}
        if cfg.hetzner.nixos_image:
            assert args.deploy_private_key is not None
            for arch, text in sorted(args.image_host_json.items()):
                first = next(h for h in args.hosts if h.arch == arch)
                assert first.location is not None
                self.images[arch] = NixosImage(
                    f"{name}-image-{arch.replace('_', '-')}",
                    NixosImageArgs(
                        cluster_name=cfg.name,
                        arch=arch,
                        location=first.location,
                        stock_image=cfg.hetzner.image,
                        image_host_name=f"{cfg.name}-image-{arch.replace('_', '-')}",
                        image_host_json=text,
                        image_key=text.apply(lambda t, a=arch: image_key(a, t)),
                        ssh_key_name=deploy_key.name,
                        firewall_id=firewall.id,
                        deploy_private_key=args.deploy_private_key,
                        hcloud_token=args.hcloud_token,
                    ),
                    opts=child,
                )

        self.machines = {}
        for host in args.hosts:
            assert host.private_ip is not None and host.location is not None
            server = hcloud.Server(
                host.name,
                name=host.name,
                server_type=host.pool.server_type,
                image=self.images[host.arch].image_id
                if host.arch in self.images
                else cfg.hetzner.image,
                user_data=args.user_data.get(host.name),
                location=host.location,
                ssh_keys=[deploy_key.id],
                firewall_ids=firewall_ids,
                placement_group_id=group_ids[group_of[host.name]],
                labels={**labels, "pool": host.pool.name, "role": host.role},
                public_nets=[
                    hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=cfg.hetzner.ipv6)
                ],
                delete_protection=protect,
                rebuild_protection=protect,
                # Server names are unique in a Hetzner project: a replacement (e.g. a new
                # location) must delete the old server before creating the new one. The image
                # and user data only matter at creation: a new NixOS image (a new pin), or
                # switching hetzner.nixosImage, must not replace running servers; the push
                # updates them. A replaced server is created again from the image in its state.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[subnet],
                    delete_before_replace=True,
                    ignore_changes=["image", "userData"],
                ),
            )
            attachment = hcloud.ServerNetwork(
                f"{host.name}-private",
                server_id=server.id.apply(int),
                network_id=network_id,
                ip=host.private_ip,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[subnet]),
            )
            self.machines[host.name] = Machine(
                server=server,
                attachment=attachment,
                ssh_host=server.ipv4_address,
                public_ipv4=server.ipv4_address,
                public_ipv6=server.ipv6_address if cfg.hetzner.ipv6 else None,
                private_mac_address=attachment.mac_address,
            )
            if host.containers:
                # nspawn k3s agents have addresses outside the subnet: route the host's /24
                # to it so other nodes reach their kubelets and pods.
                hcloud.NetworkRoute(
                    f"{host.name}-containers",
                    network_id=network_id,
                    destination=str(container_block(cfg, host.offset)),
                    gateway=host.private_ip,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[attachment]),
                )
        self.network_id = network.id
        self.register_outputs({"networkId": network.id})
