"""Host data: a pure function of the validated stack config and one host's machine facts.

The result is a `HostSpec`, serialised by `hostspec.host_json` into the document the NixOS
modules read. Secrets never enter it: only the paths of the 0600 files that hold them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import catalog, profiles, rules
from components.config import ClusterConfig, container_mode, uses_cloud_controller
from components.hosts.hostspec import (
    SCHEMA_VERSION,
    AdminUser,
    Cilium,
    Container,
    ContainerCredentials,
    ContainerK3s,
    EtcdS3,
    EtcdSnapshots,
    Firewall,
    GracefulNodeShutdown,
    Hardware,
    HostSpec,
    K3s,
    Network,
    Persistence,
    PortRange,
    Ssh,
    Tailscale,
)
from components.hosts.inventory import Host

SECRETS_DIR = "/var/lib/nixos-k3s/secrets"
TOKEN_FILE = f"{SECRETS_DIR}/k3s-token"
VPN_AUTH_FILE = f"{SECRETS_DIR}/k3s-vpn-auth"
# AWS_ACCESS_KEY_ID= / AWS_SECRET_ACCESS_KEY= lines: the k3s servers' EnvironmentFile.
ETCD_S3_ENV_FILE = f"{SECRETS_DIR}/etcd-s3.env"
CONTAINER_STATE_ROOT = "/var/lib/nixos-k3s/containers"
API_PORT = rules.API_PORT
# The providers' facts live in components/profiles/; these names stay for their readers.
COLIMA_PRIVATE_INTERFACE = profiles.colima.PROFILE.private_interface
COLIMA_NETWORK = profiles.colima.NETWORK
HETZNER_PRIVATE_INTERFACE = profiles.hetzner.PROFILE.private_interface
# providerID of nspawn k3s agents (see _container_kubelet).
CONTAINER_PROVIDER_ID_PREFIX = "nspawn://"
# system.stateVersion: the NixOS release the hosts were first installed with.
STATE_VERSION = "25.11"
# Hetzner routes a /64 to each server; its first address is the host's.
PUBLIC_IPV6_PREFIX_LENGTH = 64
# k3s and kubelet state (etcd data, certificates): losing it resets the node.
PERSISTENT_PATHS = ("/etc/rancher", "/var/lib/kubelet", "/var/lib/rancher")


@dataclass(frozen=True)
class MachineFacts:
    """What only the machine layer knows once a host exists."""

    private_ipv4: str
    private_cidr: str
    public_ipv4: str | None = None
    public_ipv6: str | None = None
    private_mac_address: str | None = None


@dataclass(frozen=True)
class NodeImages:
    """Images each kind of node pulls while its k3s starts: the CNI's pods on it
    (components.k8s.cilium.node_images, from the chart as its templates render it)."""

    server: tuple[str, ...] = ()
    agent: tuple[str, ...] = ()

    def of(self, role: str) -> list[str]:
        return list(self.server if role == "server" else self.agent)


def container_node_name(host_name: str, container_name: str) -> str:
    return f"{host_name}-{container_name}"


def api_server_url(private_ip: str) -> str:
    return f"https://{private_ip}:{API_PORT}"


def _kubelet(cfg: ClusterConfig, host: Host) -> dict:
    return {**cfg.k3s.kubelet, **host.pool.kubelet}


def api_endpoint(cfg: ClusterConfig, first_server_address: str | None = None) -> rules.ApiEndpoint:
    """Where users reach the API: apiEndpoint, else the first server's (public) address.

    The one reading of apiEndpoint: its host goes into the TLS SANs, its URL into the stack
    output and, through kubeconfig.sh, into the kubeconfig.
    """
    if cfg.api_endpoint:
        return rules.parse_api_endpoint(cfg.api_endpoint)
    if first_server_address is None:
        raise ValueError("no apiEndpoint and no first server address")
    return rules.endpoint_of_address(first_server_address)


def _tls_sans(cfg: ClusterConfig, facts: MachineFacts, api_sans: Sequence[str]) -> list[str]:
    names = [*cfg.k3s.tls_sans, *api_sans]
    if cfg.api_endpoint:
        names.append(api_endpoint(cfg).tls_san)
    addresses = (facts.public_ipv4, facts.public_ipv6, facts.private_ipv4)
    names += [rules.tls_san(a) for a in addresses if a]
    return sorted(set(names))


def _graceful_shutdown(cfg: ClusterConfig) -> GracefulNodeShutdown:
    shutdown = cfg.k3s.graceful_shutdown
    return GracefulNodeShutdown(
        enable=shutdown.enabled,
        shutdown_grace_period=shutdown.grace_period,
        shutdown_grace_period_critical_pods=shutdown.critical_pods_grace_period,
    )


def _k3s_cluster_wide(cfg: ClusterConfig) -> dict[str, Any]:
    """The k3s settings every node of the cluster shares: one writer for the hosts and the
    Hetzner NixOS image (image_spec), which carries k3s held back with only these."""
    return {
        "enable": True,
        "token_file": TOKEN_FILE,
        "package": cfg.k3s.package,
        "disable": list(cfg.k3s.disable),
        "cluster_cidr": cfg.k3s.cluster_cidr,
        "service_cidr": cfg.k3s.service_cidr,
        "cluster_dns": cfg.k3s.cluster_dns,
        "graceful_node_shutdown": _graceful_shutdown(cfg),
        "cni": cfg.k3s.cni,
        "external_cloud_provider": uses_cloud_controller(cfg),
    }


def _k3s(
    cfg: ClusterConfig,
    host: Host,
    facts: MachineFacts,
    bootstrap_ip: str,
    api_sans: Sequence[str],
    images: NodeImages,
) -> K3s:
    is_server = host.role == "server"
    snapshots = cfg.k3s.etcd_snapshots
    return K3s(
        **_k3s_cluster_wide(cfg),
        role="server" if is_server else "agent",
        cluster_init=host.is_bootstrap,
        server_addr="" if host.is_bootstrap else api_server_url(bootstrap_ip),
        tls_sans=_tls_sans(cfg, facts, api_sans) if is_server else [],
        node_ip=facts.private_ipv4,
        node_external_ip=facts.public_ipv4,
        node_labels=dict(sorted(host.pool.labels.items())),
        node_taints=[t.render() for t in host.pool.taints],
        kubelet_config=_kubelet(cfg, host),
        etcd_snapshots=EtcdSnapshots(
            enable=snapshots.enabled and is_server,
            schedule_cron=snapshots.schedule_cron,
            retention=snapshots.retention,
            s3=_etcd_s3(cfg) if is_server and snapshots.enabled else None,
        ),
        extra_flags=list(cfg.k3s.extra_flags),
        vpn_auth_file=VPN_AUTH_FILE if cfg.tailscale.enabled else None,
        pre_pull_images=images.of(host.role),
        fetch_images=fetch_images(images, host),
    )


def fetch_images(images: NodeImages, host: Host) -> list[str]:
    """What the host downloads before k3s runs (k3s.fetchImages): its own images and its
    containers' (nspawn agents read the host's archives), only the digest-pinned ones, since a
    digest names the archive (nixos/modules/k3s-cni-fetch.sh); sorted, each once."""
    wanted = images.of(host.role) + (images.of("agent") if host.containers else [])
    return sorted({image for image in wanted if "@sha256:" in image})


def _container_kubelet(cfg: ClusterConfig, node: str, kubelet: dict) -> dict:
    """An nspawn agent is no Hetzner server: its providerID says so.

    hcloud-cloud-controller-manager skips nodes whose providerID has a prefix it does not know
    (no load balancer target, an error instead of "instance gone"); without one it would look
    the node up by name, find no server, and delete the Node whenever it is NotReady.
    """
    if not uses_cloud_controller(cfg):
        return dict(kubelet)
    return {"providerID": f"{CONTAINER_PROVIDER_ID_PREFIX}{node}", **kubelet}


def _etcd_s3(cfg: ClusterConfig) -> EtcdS3 | None:
    s3 = cfg.k3s.etcd_snapshots.s3
    if s3 is None:
        return None
    return EtcdS3(
        endpoint=s3.endpoint,
        bucket=s3.bucket,
        folder=s3.folder or cfg.name,
        region=s3.region,
        environment_file=ETCD_S3_ENV_FILE,
    )


FLAKE_LOCK = Path(__file__).resolve().parents[2] / "nixos" / "flake.lock"


def roll_key(cfg: ClusterConfig) -> str:
    """What a rolling upgrade is keyed on: the k3s package and the nixpkgs revision."""
    lock = json.loads(FLAKE_LOCK.read_text(encoding="utf-8"))
    revision = lock["nodes"]["nixpkgs"]["locked"]["rev"]
    return hashlib.sha256(f"{cfg.k3s.package}\0{revision}".encode()).hexdigest()[:16]


def etcd_s3_environment(access_key_id: str, secret_access_key: str) -> str:
    """ETCD_S3_ENV_FILE's content: the variables k3s reads its S3 keys from."""
    return f"AWS_ACCESS_KEY_ID={access_key_id}\nAWS_SECRET_ACCESS_KEY={secret_access_key}\n"


def _containers(
    cfg: ClusterConfig, host: Host, facts: MachineFacts, bootstrap_ip: str, images: NodeImages
) -> list[Container]:
    nameservers = list(profiles.profile(cfg.provider).nameservers)
    return [
        Container(
            name=slot.config.name,
            host_address=slot.host_address,
            local_address=slot.local_address,
            nameservers=nameservers,
            ephemeral=slot.config.ephemeral,
            tailscale=slot.config.tailscale,
            k3s=ContainerK3s(
                role="agent",
                node_name=container_node_name(host.name, slot.config.name),
                server_addr=api_server_url(bootstrap_ip),
                node_labels=dict(sorted(slot.config.labels.items())),
                node_taints=[t.render() for t in slot.config.taints],
                node_external_ip=facts.public_ipv4,
                kubelet_config=_container_kubelet(
                    cfg, container_node_name(host.name, slot.config.name), slot.config.kubelet
                ),
                extra_flags=[],
                pre_pull_images=images.of("agent"),
            ),
            credentials=ContainerCredentials(
                k3s_token=TOKEN_FILE,
                tailscale_auth_key=VPN_AUTH_FILE if slot.config.tailscale else None,
            ),
            state_dir=f"{CONTAINER_STATE_ROOT}/{slot.config.name}",
            mode=container_mode(cfg, slot.config),
        )
        for slot in host.containers
    ]


# The numbers and the reason for each port live in one data file, which nixos/modules/
# firewall.nix reads too and checks every opened port against. Render chooses which ports a host
# opens because the choice depends on the stack (role, CNI, tunnel protocol, ingress, tailscale),
# which the NixOS side never sees; the Nix side only refuses a port it has no reason for.
FIREWALL_PORTS_PATH = Path(__file__).resolve().parents[2] / "nixos/modules/firewall-ports.json"
FIREWALL_PORTS = json.loads(FIREWALL_PORTS_PATH.read_text(encoding="utf-8"))


def tcp_port(name: str) -> int:
    """A TCP port's number by its name in firewall-ports.json."""
    return FIREWALL_PORTS["tcp"][name]["port"]


def _udp(name: str) -> int:
    return FIREWALL_PORTS["udp"][name]["port"]


# Cilium's overlay port between nodes, by tunnel protocol (native routing needs none).
TUNNEL_UDP_PORTS = {protocol: [_udp(protocol)] for protocol in ("vxlan", "geneve")}
# Cilium's health checks and Hubble's per-node server, between nodes.
CILIUM_NODE_TCP_PORTS = [tcp_port("ciliumHealth"), tcp_port("hubble")]
ETCD_PORTS = PortRange(
    start=FIREWALL_PORTS["tcpRanges"]["etcd"]["start"],
    end=FIREWALL_PORTS["tcpRanges"]["etcd"]["end"],
)
# k3s's flannel: VXLAN between nodes; pods hang off cni0, the overlay is flannel.1.
FLANNEL_INTERFACES = ["cni0", "flannel.1"]


def public_tcp_port_names(cfg: ClusterConfig, *, is_server: bool) -> list[str]:
    """The TCP ports a host opens on its public interface, by name in firewall-ports.json: SSH,
    on servers the API, with firewall.ingress HTTP and HTTPS. On Hetzner the cloud firewall
    opens these same ports (components/machines/hetzner.py)."""
    ingress = ["http", "https"] if cfg.firewall and cfg.firewall.ingress else []
    return ["ssh", *(["api"] if is_server else []), *ingress]


def _firewall(cfg: ClusterConfig, is_server: bool) -> Firewall:
    """Servers alone open the API (6443) and etcd (2379-2380); every node its kubelet and the
    CNI's ports between nodes."""
    server_tcp = [tcp_port("api")] if is_server else []
    if cfg.k3s.cni == "flannel":
        node_tcp = [tcp_port("kubelet")]
        udp = [_udp("vxlan")]
        trusted = [*FLANNEL_INTERFACES]
    else:
        node_tcp = [tcp_port("kubelet"), *CILIUM_NODE_TCP_PORTS]
        tunnelled = cfg.cilium.routing_mode == "tunnel"
        udp = TUNNEL_UDP_PORTS[cfg.cilium.tunnel_protocol] if tunnelled else []
        # Cilium's devices: its overlay device is named after the tunnel protocol.
        trusted = ["cilium_host", "cilium_net", "lxc+"]
        if tunnelled:
            trusted.insert(2, f"cilium_{cfg.cilium.tunnel_protocol}")
    if cfg.tailscale.enabled:
        trusted.append("tailscale0")  # k3s then uses the tailnet addresses between nodes
    return Firewall(
        public_tcp_ports=[
            tcp_port(name) for name in public_tcp_port_names(cfg, is_server=is_server)
        ],
        public_udp_ports=[],
        private_tcp_ports=[*server_tcp, *node_tcp],
        private_tcp_port_ranges=[ETCD_PORTS] if is_server else [],
        private_udp_ports=udp,
        trusted_interfaces=trusted,
        # Cilium answers for addresses routed over other devices; strict drops that.
        check_reverse_path="loose",
    )


def _has_containers(cfg: ClusterConfig) -> bool:
    return any(pool.containers and pool.count for pool in cfg.node_pools)


def _cluster_wide(cfg: ClusterConfig, profile: profiles.ProviderProfile) -> dict[str, Any]:
    """The sections every host of the cluster on `profile`'s machines shares: one writer for the
    hosts and the Hetzner NixOS image (image_spec), as _k3s_cluster_wide is for k3s."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cluster_name": cfg.name,
        "state_version": STATE_VERSION,
        "hardware": Hardware(
            profile=profile.hardware_profile,  # type: ignore[arg-type]
            disk_device=profile.disk_device,
            rosetta=profile.rosetta and cfg.colima.rosetta,
        ),
        # Cilium's kernel modules and sysctls; a flannel cluster needs none of them.
        "cilium": Cilium(host_prerequisites=cfg.k3s.cni == "cilium"),
        "persistence": Persistence(paths=list(PERSISTENT_PATHS)),
    }


def host_spec(
    cfg: ClusterConfig,
    host: Host,
    facts: MachineFacts,
    *,
    bootstrap_ip: str,
    authorized_keys: list[str],
    api_sans: Sequence[str] = (),
    node_images: NodeImages = NodeImages(),
) -> HostSpec:
    """The host document for one host. `authorized_keys` = deploy key + the users' keys.

    `api_sans`: addresses of the API load balancer, for the servers' certificates.
    `node_images`: what the nodes pull while k3s starts (none unless given).
    """
    profile = profiles.profile(cfg.provider)
    managed = profile.managed_network
    network = Network(
        public_ipv4=facts.public_ipv4,
        public_ipv6=facts.public_ipv6,
        public_ipv6_prefix_length=PUBLIC_IPV6_PREFIX_LENGTH,
        private_ipv4=facts.private_ipv4,
        private_cidr=facts.private_cidr,
        private_gateway=str(ipaddress.ip_network(cfg.network.ip_range).network_address + 1)
        if managed
        else None,
        private_interface=profile.private_interface,
        private_mac_address=facts.private_mac_address,
        # Other hosts' nspawn agents: their /24s are routed to those hosts in the network.
        routed_cidrs=[cfg.network.container_cidr] if managed and _has_containers(cfg) else [],
        mtu=profile.private_mtu,
    )
    tailscale_on = cfg.tailscale.enabled
    return HostSpec(
        **_cluster_wide(cfg, profile),
        name=host.name,
        system=host.system,  # type: ignore[arg-type]
        network=network,
        ssh=Ssh(
            authorized_keys=authorized_keys,
            admin_users=[
                AdminUser(name=user, authorized_keys=list(cfg.ssh_keys)) for user in cfg.admin_users
            ]
            if cfg.ssh_keys
            else [],
        ),
        k3s=_k3s(cfg, host, facts, bootstrap_ip, api_sans, node_images),
        firewall=_firewall(cfg, host.role == "server"),
        tailscale=Tailscale(enable=tailscale_on, auth_key_file=None, wrap_k3s=tailscale_on),
        containers=_containers(cfg, host, facts, bootstrap_ip, node_images),
    )


def secret_files(cfg: ClusterConfig, host: Host) -> list[str]:
    """Paths of the secret files a host needs (their content comes from Pulumi secrets)."""
    files = [TOKEN_FILE]
    if cfg.tailscale.enabled or any(slot.config.tailscale for slot in host.containers):
        files.append(VPN_AUTH_FILE)
    snapshots = cfg.k3s.etcd_snapshots
    if host.role == "server" and snapshots.enabled and snapshots.s3 is not None:
        files.append(ETCD_S3_ENV_FILE)
    return files


def image_name(cfg: ClusterConfig, arch: catalog.Arch) -> str:
    """Host name of the NixOS image's configuration (and of its builder server)."""
    return f"{cfg.name}-image-{arch.replace('_', '-')}"


def image_spec(cfg: ClusterConfig, arch: catalog.Arch, authorized_keys: list[str]) -> HostSpec:
    """The base system of the Hetzner NixOS image: what every host of `arch` shares.

    The machine layer, the disk layout, SSH access, the host firewall and k3s (held back, with
    only the cluster-wide settings); no private network, no public addresses, no node labels or
    flags (they are per host and come with the first push). The private address is the
    network's gateway address, a placeholder nothing configures.
    """
    placeholder = str(ipaddress.ip_network(cfg.network.ip_range).network_address + 1)
    hetzner = profiles.hetzner.PROFILE
    snapshots = cfg.k3s.etcd_snapshots
    return HostSpec(
        **_cluster_wide(cfg, hetzner),
        name=image_name(cfg, arch),
        system=catalog.NIX_SYSTEMS[arch],  # type: ignore[arg-type]
        network=Network(
            public_ipv4=None,
            public_ipv6=None,
            public_ipv6_prefix_length=PUBLIC_IPV6_PREFIX_LENGTH,
            private_ipv4=placeholder,
            private_cidr=cfg.network.ip_range,
            private_gateway=None,
            private_interface=hetzner.private_interface,
            private_mac_address=None,
            routed_cidrs=[],
            mtu=hetzner.private_mtu,
        ),
        ssh=Ssh(authorized_keys=authorized_keys, admin_users=[]),
        # k3s is in the image (its closure is most of what a host adds to the base system), held
        # back like on every installed host (holdUntil: no released marker, no token); the push
        # brings each host's own role and flags.
        k3s=K3s(
            **_k3s_cluster_wide(cfg),
            role="server",
            cluster_init=True,
            server_addr="",
            tls_sans=[],
            node_ip=placeholder,
            node_external_ip=None,
            node_labels={},
            node_taints=[],
            kubelet_config={},
            etcd_snapshots=EtcdSnapshots(
                enable=False,
                schedule_cron=snapshots.schedule_cron,
                retention=snapshots.retention,
                s3=None,
            ),
            extra_flags=[],
            vpn_auth_file=None,
            # k3s never runs in the image, so nothing would pull them; the push brings the
            # host's list (and the image key stays independent of the Cilium version).
            pre_pull_images=[],
            fetch_images=[],
        ),
        # The image serves no API until its first push makes it a node: only SSH and the
        # ports every node opens.
        firewall=_firewall(cfg, is_server=False),
        tailscale=Tailscale(enable=False, auth_key_file=None, wrap_k3s=False),
        containers=[],
    )
