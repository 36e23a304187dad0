"""Sample HostSpecs for the NixOS tests: `python tests/nixos/make_fixtures.py` writes fixtures/."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from typing import Any

from components.config import K3sConfig
from components.hosts.hostspec import (
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
    host_json,
)

FIXTURES = Path(__file__).parent / "fixtures"
DEPLOY_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd5Q0yJ1VgBq0yNbm0Zl1qS8d6s2aQ0oHn3pQmB8kP1 deploy"
)
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC3ZQk2yW0sQ8q6jv2b2mYt8w1V3bX6hH7p0R9kLm2nT alice"
SECRETS = "/var/lib/nixos-k3s/secrets"

# HostSpec has no defaults (render fills every field): these samples start from typical values
# and each fixture states what differs.
SNAPSHOTS: dict[str, Any] = {
    "enable": True,
    "schedule_cron": "0 */12 * * *",
    "retention": 5,
    "s3": None,
}
# A k3s field of the same name in the stack model and the host document takes the stack's
# default here, so a new k3s setting needs no sample value of its own.
STACK_K3S_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in K3sConfig.model_fields.items()
    if name in K3s.model_fields
}
K3S: dict[str, Any] = {
    **STACK_K3S_DEFAULTS,
    "enable": True,
    "cluster_init": False,
    "server_addr": "",
    "node_external_ip": None,
    "node_labels": {},
    "node_taints": [],
    "graceful_node_shutdown": GracefulNodeShutdown(
        enable=True, shutdown_grace_period="30s", shutdown_grace_period_critical_pods="10s"
    ),
    "kubelet_config": {},
    "etcd_snapshots": EtcdSnapshots(**SNAPSHOTS),
    "vpn_auth_file": None,
    "external_cloud_provider": False,
    "pre_pull_images": [],
    "fetch_images": [],
}
FIREWALL: dict[str, Any] = {
    "public_tcp_ports": [22],
    "public_udp_ports": [],
    "private_tcp_ports": [6443, 10250, 4240, 4244],
    "private_tcp_port_ranges": [PortRange(start=2379, end=2380)],
    "private_udp_ports": [8472],
    "trusted_interfaces": ["cilium_host", "cilium_net", "cilium_vxlan", "lxc+"],
    "check_reverse_path": "loose",
}
NETWORK: dict[str, Any] = {
    "public_ipv4": None,
    "public_ipv6": None,
    "public_ipv6_prefix_length": 64,
    "private_gateway": None,
    "routed_cidrs": [],
    "private_mac_address": None,
    "mtu": 1450,
}
# What components.k8s.cilium.node_images gives Cilium 1.19.6's nodes (the servers also pull the
# operator's image).
CILIUM_AGENT_IMAGES = [
    "quay.io/cilium/cilium:v1.19.6"
    "@sha256:0df5b2750b64c49843aba1d649e9eaf61467cb0645ad3171db6f6962c095ac92",
    "quay.io/cilium/cilium-envoy:v1.36.9-1782267392-edeb3f2af56c37c407efa1f63f0b32f595399bbc"
    "@sha256:767101fb8a5e38f055778cb43b7aa8eed80450b37f8121effac3d9de9e06dc99",
]
CILIUM_SERVER_IMAGES = [
    *CILIUM_AGENT_IMAGES,
    "quay.io/cilium/operator-generic:v1.19.6"
    "@sha256:0db4ca4e06969d8904ee036617795d0e9c3228cf7b8d902ba74fc2bb98d2d665",
]
NO_TAILSCALE = Tailscale(enable=False, auth_key_file=None, wrap_k3s=False)


def k3s(**fields: Any) -> K3s:
    return K3s(**{**K3S, **fields})


def firewall(**fields: Any) -> Firewall:
    return Firewall(**{**FIREWALL, **fields})


def network(**fields: Any) -> Network:
    return Network(**{**NETWORK, **fields})


def host(**fields: Any) -> HostSpec:
    sample: dict[str, Any] = {
        "schema_version": 1,
        "state_version": "25.11",
        "firewall": firewall(),
        "cilium": Cilium(host_prerequisites=True),
        "tailscale": NO_TAILSCALE,
        "persistence": Persistence(paths=["/etc/rancher", "/var/lib/kubelet", "/var/lib/rancher"]),
        "containers": [],
    }
    return HostSpec(**{**sample, **fields})


def hetzner_network(
    private_ip: str, mac: str, ipv4: str, ipv6: str, routed: tuple[str, ...] = ()
) -> Network:
    return network(
        public_ipv4=ipv4,
        public_ipv6=ipv6,
        private_ipv4=private_ip,
        private_cidr="10.0.0.0/16",
        private_gateway="10.0.0.1",
        private_interface="priv0",
        private_mac_address=mac,
        routed_cidrs=list(routed),
    )


def first_server() -> HostSpec:
    return host(
        name="prod-server-1",
        cluster_name="prod",
        system="x86_64-linux",
        hardware=Hardware(profile="hetzner-cloud", disk_device="/dev/sda", rosetta=False),
        network=hetzner_network("10.0.1.2", "86:00:00:aa:bb:01", "203.0.113.10", "2001:db8:10::1"),
        ssh=Ssh(
            authorized_keys=[DEPLOY_KEY],
            admin_users=[AdminUser(name="alice", authorized_keys=[ADMIN_KEY])],
        ),
        k3s=k3s(
            role="server",
            cluster_init=True,
            token_file=f"{SECRETS}/k3s-token",
            node_ip="10.0.1.2",
            node_external_ip="203.0.113.10",
            tls_sans=["203.0.113.10", "api.prod.example.com"],
            node_taints=["node-role.kubernetes.io/control-plane=true:NoSchedule"],
            pre_pull_images=CILIUM_SERVER_IMAGES,
            fetch_images=sorted(CILIUM_SERVER_IMAGES),
            etcd_snapshots=EtcdSnapshots(
                enable=True,
                schedule_cron="0 */6 * * *",
                retention=10,
                s3=EtcdS3(
                    endpoint="fsn1.your-objectstorage.com",
                    bucket="prod-etcd-snapshots",
                    folder="prod",
                    region="fsn1",
                    environment_file=f"{SECRETS}/etcd-s3.env",
                ),
            ),
        ),
        firewall=firewall(public_tcp_ports=[22, 6443]),
    )


def agent() -> HostSpec:
    return host(
        name="prod-agent-1",
        cluster_name="prod",
        system="aarch64-linux",
        hardware=Hardware(profile="hetzner-cloud", disk_device="/dev/sda", rosetta=False),
        network=hetzner_network("10.0.1.5", "86:00:00:aa:bb:05", "203.0.113.15", "2001:db8:15::1"),
        ssh=Ssh(authorized_keys=[DEPLOY_KEY], admin_users=[]),
        k3s=k3s(
            role="agent",
            server_addr="https://10.0.1.2:6443",
            token_file=f"{SECRETS}/k3s-token",
            node_ip="10.0.1.5",
            node_labels={"node.kubernetes.io/pool": "workers"},
            kubelet_config={"systemReserved": {"cpu": "100m", "memory": "200Mi"}},
            pre_pull_images=CILIUM_AGENT_IMAGES,
            fetch_images=sorted(CILIUM_AGENT_IMAGES),
        ),
    )


def container(name: str, index: int, tailscale: bool) -> Container:
    return Container(
        name=name,
        host_address=f"10.250.{index}.1",
        local_address=f"10.250.{index}.2",
        ephemeral=index % 2 == 0,
        tailscale=tailscale,
        nameservers=["185.12.64.1", "185.12.64.2"],
        k3s=ContainerK3s(
            role="agent",
            node_name=f"prod-agent-1-{name}",
            server_addr="https://10.0.1.2:6443",
            node_labels={},
            node_taints=["public-ingress=true:NoSchedule"] if tailscale else [],
            node_external_ip=None,
            kubelet_config={},
            extra_flags=["--node-label=nixos-k3s/container=true"],
            pre_pull_images=CILIUM_AGENT_IMAGES,
        ),
        credentials=ContainerCredentials(
            k3s_token=f"{SECRETS}/k3s-token",
            tailscale_auth_key=f"{SECRETS}/{name}-vpn-auth" if tailscale else None,
        ),
        state_dir=f"/var/lib/nixos-k3s/containers/{name}",
        mode="host-users",
    )


def container_host() -> HostSpec:
    return host(
        name="prod-host-1",
        cluster_name="prod",
        system="x86_64-linux",
        hardware=Hardware(profile="hetzner-cloud", disk_device="/dev/sda", rosetta=False),
        network=hetzner_network(
            "10.0.1.8", "86:00:00:aa:bb:08", "203.0.113.18", "2001:db8:18::1", ("10.250.0.0/16",)
        ),
        ssh=Ssh(authorized_keys=[DEPLOY_KEY], admin_users=[]),
        k3s=k3s(
            role="agent",
            server_addr="https://10.0.1.2:6443",
            token_file=f"{SECRETS}/k3s-token",
            node_ip="10.0.1.8",
            vpn_auth_file=f"{SECRETS}/vpn-auth",
            pre_pull_images=CILIUM_AGENT_IMAGES,
            # Its own and its containers' (the same images): render.fetch_images.
            fetch_images=sorted(CILIUM_AGENT_IMAGES),
        ),
        tailscale=Tailscale(enable=True, auth_key_file=None, wrap_k3s=True),
        containers=[container("k3s-agent-1", 1, True), container("k3s-agent-2", 2, False)],
    )


def flannel_container_host() -> HostSpec:
    """container_host in a flannel cluster, with the seed's unprivileged (user-namespaced) boxes."""
    base = container_host()
    return base.model_copy(
        update={
            "name": "prod-host-2",
            "k3s": base.k3s.model_copy(
                update={"cni": "flannel", "pre_pull_images": [], "fetch_images": []}
            ),
            "firewall": firewall(
                private_tcp_ports=[6443, 10250],
                private_udp_ports=[8472],
                trusted_interfaces=["cni0", "flannel.1"],
            ),
            "cilium": Cilium(host_prerequisites=False),
            "containers": [
                c.model_copy(
                    update={
                        "mode": "user-namespace",
                        "k3s": c.k3s.model_copy(update={"pre_pull_images": []}),
                    }
                )
                for c in base.containers
            ],
        }
    )


def colima_server() -> HostSpec:
    return host(
        name="dev-server-1",
        cluster_name="dev",
        system="aarch64-linux",
        hardware=Hardware(profile="colima-vz", disk_device="/dev/vda", rosetta=True),
        network=network(
            private_ipv4="192.168.106.2",
            private_cidr="192.168.106.0/24",
            private_interface="col0",
        ),
        ssh=Ssh(authorized_keys=[DEPLOY_KEY], admin_users=[]),
        k3s=k3s(
            role="server",
            cluster_init=True,
            token_file=f"{SECRETS}/k3s-token",
            node_ip="192.168.106.2",
        ),
    )


SAMPLES = {
    "hetzner-server": first_server,
    "hetzner-agent": agent,
    "hetzner-containers": container_host,
    "hetzner-flannel-containers": flannel_container_host,
    "colima-server": colima_server,
}


def main() -> None:
    for name, build in SAMPLES.items():
        (FIXTURES / f"{name}.json").write_text(host_json(build()), encoding="utf-8")


if __name__ == "__main__":
    main()
