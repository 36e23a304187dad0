"""Hetzner Cloud machines: private network, firewall, SSH key, placement groups and servers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_hcloud as hcloud

from components import catalog
from components.config import (
    ClusterConfig,
    Problem,
    load_balancer_private_ip,
    uses_load_balancer,
)
from components.hosts import render
from components.hosts.inventory import Host, container_block
from components.hosts.machineview import MachineView
from components.hosts.render import API_PORT
from components.machines.hetzner_image import NixosImage, NixosImageArgs, image_key


@dataclass(frozen=True)
class HetznerMachinesArgs:
    config: ClusterConfig
    hosts: list[Host]
    deploy_public_key: pulumi.Input[str]
    # host name -> cloud-init user data with the host key the first SSH contact pins
    # (userdata.host_key_user_data: the stock image's throwaway key, or the NixOS key with the
    # image).
    user_data: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    # hetzner.nixosImage: the image's base configuration per architecture (host JSON text), the
    # deploy key the builder is installed with and the token (None: the operator's HCLOUD_TOKEN).
    image_host_json: Mapping[catalog.Arch, pulumi.Output[str]] = field(default_factory=dict)
    deploy_private_key: pulumi.Output[str] | None = None
    hcloud_token: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class Machine:
    """One server as the rest of the program sees it."""

    server: hcloud.Server
    attachment: hcloud.ServerNetwork
    ssh_host: pulumi.Output[str]
    public_ipv4: pulumi.Output[str]
    public_ipv6: pulumi.Output[str] | None  # None without IPv6; "" from the API means none
    private_mac_address: pulumi.Output[str]


@dataclass(frozen=True)
class ApiLoadBalancer:
    """The Hetzner Load Balancer in front of the servers' API (TCP 6443)."""

    load_balancer: hcloud.LoadBalancer
    private_ip: str  # fixed at plan time: config.load_balancer_private_ip
    public_ipv4: pulumi.Output[str] | None  # None when the public interface is off
    # What must exist before anything uses the address: network attachment, service, targets.
    ready: list[pulumi.Resource]


def firewall_rules(cfg: ClusterConfig) -> list[hcloud.FirewallRuleArgs]:
    """Inbound rules: every port a host opens publicly (render.public_tcp_port_names, numbers
    from firewall-ports.json), SSH and the API from the admin CIDRs only; ICMP; extras."""
    fw = cfg.firewall
    assert fw is not None  # validated: hetzner stacks always have a firewall section
    everyone = ["0.0.0.0/0", "::/0"]
    # The public ports of servers and agents alike (one firewall covers them all), in order.
    names = dict.fromkeys(
        render.public_tcp_port_names(cfg, is_server=True)
        + render.public_tcp_port_names(cfg, is_server=False)
    )
    # Ports narrowed to the admins' CIDRs; the hosts open every other public port to everyone.
    from_admins = {
        "ssh": (fw.ssh_sources, "ssh from admins"),
        "api": (fw.api_sources, "kubernetes api from admins"),
    }

    def tcp_rule(name: str) -> hcloud.FirewallRuleArgs:
        port = str(render.tcp_port(name))
        sources, description = from_admins.get(name, (everyone, f"ingress {port}"))
        return hcloud.FirewallRuleArgs(
            direction="in",
            protocol="tcp",
            port=port,
            source_ips=list(sources),
            description=description,
        )

    rules = [
        *(tcp_rule(name) for name in names if name in from_admins),
        hcloud.FirewallRuleArgs(
            direction="in", protocol="icmp", source_ips=everyone, description="icmp"
        ),
        *(tcp_rule(name) for name in names if name not in from_admins),
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


def stack_problems(cfg: ClusterConfig, earlier: Sequence[Problem]) -> Iterable[Problem]:
    """The cloud firewall's rules against Hetzner's limit, counted off the list firewall_rules
    makes, so a port the hosts open publicly counts as soon as it is opened. Checked for every
    stack with a firewall section (on Colima too). A `config.load.parse_cluster` extra check."""
    if cfg.firewall is None:
        return  # a Hetzner stack without one is refused by the config's own checks
    rules = firewall_rules(cfg)
    if len(rules) > catalog.MAX_FIREWALL_RULES:
        own = rules[: len(rules) - len(cfg.firewall.extra_rules)]
        yield Problem(
            "firewall.extraRules",
            f"{len(rules)} rules: a Hetzner firewall holds at most {catalog.MAX_FIREWALL_RULES} "
            f"(the cluster's own take {len(own)}: {', '.join(str(r.description) for r in own)})",
        )


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
    api_load_balancer: ApiLoadBalancer | None

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

        self._private_ips = {h.name: h.private_ip or "" for h in args.hosts}
        self._arch = {h.name: h.arch for h in args.hosts}
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
        self.api_load_balancer = (
            self._api_load_balancer(name, cfg, args.hosts, network_id, subnet, labels)
            if uses_load_balancer(cfg)
            else None
        )
        self.register_outputs({"networkId": network.id})

    def _api_load_balancer(
        self,
        name: str,
        cfg: ClusterConfig,
        hosts: list[Host],
        network_id: pulumi.Output[int],
        subnet: hcloud.NetworkSubnet,
        labels: dict[str, str],
    ) -> ApiLoadBalancer:
        """A TCP load balancer for 6443 with every server as a private-IP target.

        Traffic and health checks reach the servers over the private network (use_private_ip),
        where the hosts' firewall opens 6443; the Hetzner firewall covers public interfaces
        only, and does not apply to the load balancer itself.
        """
        child = pulumi.ResourceOptions(parent=self)
        lb = hcloud.LoadBalancer(
            f"{name}-api-lb",
            name=f"{cfg.name}-api",
            load_balancer_type=cfg.hetzner.load_balancer_type,
            # The zone, not a server's location: moving servers (or the bootstrap duty) must
            # not replace the API's address.
            network_zone=cfg.network.zone,
            labels={**labels, "role": "api"},
            delete_protection=cfg.hetzner.protection,
            # Load balancer names are unique in a project, like server names.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        lb_id = lb.id.apply(int)
        private_ip = load_balancer_private_ip(cfg)
        attachment = hcloud.LoadBalancerNetwork(
            f"{name}-api-lb-private",
            load_balancer_id=lb_id,
            network_id=network_id,
            ip=private_ip,
            enable_public_interface=cfg.hetzner.load_balancer_public,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[subnet]),
        )
        service = hcloud.LoadBalancerService(
            f"{name}-api-lb-6443",
            load_balancer_id=lb.id,
            protocol="tcp",
            listen_port=API_PORT,
            destination_port=API_PORT,
            health_check=hcloud.LoadBalancerServiceHealthCheckArgs(
                protocol="tcp", port=API_PORT, interval=5, timeout=3, retries=3
            ),
            opts=child,
        )
        targets = [
            hcloud.LoadBalancerTarget(
                f"{host.name}-api-lb-target",
                type="server",
                load_balancer_id=lb_id,
                server_id=self.machines[host.name].server.id.apply(int),
                use_private_ip=True,
                # A private-IP target needs both ends in the network.
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[attachment, self.machines[host.name].attachment]
                ),
            )
            for host in hosts
            if host.role == "server"
        ]
        return ApiLoadBalancer(
            load_balancer=lb,
            private_ip=private_ip,
            public_ipv4=lb.ipv4 if cfg.hetzner.load_balancer_public else None,
            ready=[attachment, service, *targets],
        )

    def views(
        self, cfg: ClusterConfig, stock_host_keys: Mapping[str, pulumi.Output[str]]
    ) -> dict[str, MachineView]:
        """Each server as the NixOS layer sees it: reached as root at its public IPv4, its
        facts from the server and its network attachment. stock_host_keys: host name -> the
        public key the stock image answers with before NixOS (none when it boots the image)."""
        views = {}
        for name, m in self.machines.items():
            private_ip = self._private_ips[name]
            views[name] = MachineView(
                ssh_host=m.ssh_host,
                ssh_user="root",
                install_user="root",
                machine_id=m.server.id,
                fact_inputs=(
                    m.public_ipv4,
                    m.private_mac_address,
                    *([] if m.public_ipv6 is None else [m.public_ipv6]),
                ),
                facts_of=lambda v, ip=private_ip: render.MachineFacts(
                    private_ipv4=ip,
                    private_cidr=cfg.network.ip_range,
                    public_ipv4=v[0],
                    private_mac_address=v[1],
                    public_ipv6=(v[2] or None) if len(v) > 2 else None,
                ),
                private_ipv4=private_ip,
                stock_host_key=stock_host_keys.get(name),
                from_image=self._arch[name] in self.images,
            )
        return views
