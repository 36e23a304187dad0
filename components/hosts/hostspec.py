"""The host JSON document: the one contract between the Python program and nixos/.

Python renders one `HostSpec` per host; `nixos/configuration.nix` reads it with
`builtins.fromJSON` and hands its sections to the `nixosK3s.*` options. The document is pure data
and holds no secret value: secrets are referred to by the absolute path of a 0600 file on the host.

Every field is required and has no default: render.py fills each one from the stack, and the
NixOS options that take them declare no default either, so a value is chosen in one place. The
checks shared with the stack models come from components/rules.py.

Run `python -m components.hosts.hostspec --write` after changing a model: it regenerates
`nixos/host.schema.json`, and a test fails while that file is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

from components import catalog, rules
from components.hosts import jsontext

SCHEMA_VERSION = 1
NIXOS_DIR = Path(__file__).parents[2] / "nixos"
SCHEMA_PATH = NIXOS_DIR / "host.schema.json"
# Files that never influence a host's system closure (see content_hash).
HASH_EXCLUDED_DIRS = frozenset({"hosts"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_TAINT = re.compile(
    r"^[A-Za-z0-9./_-]+(=[A-Za-z0-9._-]*)?:(NoSchedule|PreferNoSchedule|NoExecute)$"
)


def _absolute_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not an absolute path without '..' or whitespace")
    return value


def _ipv4(value: str) -> str:
    ipaddress.IPv4Address(value)
    return value


def _ipv6(value: str) -> str:
    ipaddress.IPv6Address(value)
    return value


def _ip(value: str) -> str:
    ipaddress.ip_address(value)
    return value


DnsLabel = Annotated[str, Field(pattern=_DNS_LABEL.pattern), AfterValidator(rules.dns_label)]
AbsolutePath = Annotated[str, Field(pattern=r"^/\S*$"), AfterValidator(_absolute_path)]
Ipv4 = Annotated[str, AfterValidator(_ipv4)]
Ipv6 = Annotated[str, AfterValidator(_ipv6)]
IpAddress = Annotated[str, AfterValidator(_ip)]
Cidr = Annotated[str, AfterValidator(rules.cidr)]
# The schema states the pattern; rules.ssh_public_key checks it after dropping the surrounding
# whitespace (a key read from a .pub file ends with a newline).
PublicKey = Annotated[
    str,
    Field(json_schema_extra={"pattern": rules.SSH_PUBLIC_KEY.pattern}),
    AfterValidator(rules.ssh_public_key),
]
Taint = Annotated[str, Field(pattern=_TAINT.pattern), AfterValidator(rules.taint)]
Flag = Annotated[str, Field(pattern=rules.K3S_FLAG.pattern), AfterValidator(rules.k3s_flag)]
Duration = Annotated[str, Field(pattern=rules.DURATION.pattern), AfterValidator(rules.duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
LabelMap = dict[
    Annotated[str, Field(pattern=r"^[A-Za-z0-9./_-]+$"), AfterValidator(rules.label_key)],
    Annotated[str, AfterValidator(rules.label_value)],
]
DisableComponent = catalog.K3sComponent
# An image reference as a pod spec names it (registry/repository[:tag][@sha256:...]).
ImageRef = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*"
        r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?$"
    ),
]


camel = rules.camel


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=camel,
        populate_by_name=True,
        json_schema_serialization_defaults_required=True,
    )


class Hardware(_Model):
    profile: Literal["hetzner-cloud", "colima-vz"] = Field(
        description="Machine layer: nixos/hardware/<profile>.nix is imported."
    )
    disk_device: AbsolutePath = Field(
        description="Whole disk: disko partitions it and grub installs to it (hetzner-cloud); "
        "the root of Lima's own layout (colima-vz)."
    )
    rosetta: bool = Field(description="Register Rosetta for x86_64 binaries (colima-vz only).")


class Network(_Model):
    public_ipv4: Ipv4 | None = Field(
        description="Public IPv4 (informational; the public NIC uses DHCPv4), or null."
    )
    public_ipv6: Ipv6 | None = Field(
        description="Static public IPv6 address of the public NIC (gateway fe80::1); null = none."
    )
    public_ipv6_prefix_length: int = Field(ge=1, le=128, description="Prefix length of publicIpv6.")
    private_ipv4: Ipv4 = Field(description="Address of this host on the cluster network.")
    private_cidr: Cidr = Field(
        description="Range routed over the private interface: the whole Hetzner network "
        "ip_range (contains every subnet), or the Colima VM network."
    )
    private_gateway: Ipv4 | None = Field(
        description="Hetzner private network gateway (first address of the network ip_range). "
        "Set: privateIpv4/32 is configured statically with an on-link route to the gateway "
        "and privateCidr via it. Null: the hardware profile configures the interface."
    )
    routed_cidrs: list[Cidr] = Field(
        description="Further ranges routed through privateGateway (e.g. network.containerCidr, "
        "whose per-host /24s Hetzner network routes deliver to the hosts carrying them)."
    )
    private_interface: str = Field(
        pattern=r"^[a-z][a-z0-9]{0,14}$",
        description="Kernel name of the private NIC; firewall rules for inter-node ports "
        "apply to it only.",
    )
    private_mac_address: str | None = Field(
        pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$",
        description="MAC of the private NIC (Hetzner: hcloud server network mac_address). Set: "
        "a systemd .link file names the NIC privateInterface, so names never depend on "
        "PCI slot order. Null: privateInterface is already the kernel name.",
    )
    mtu: int = Field(ge=1280, le=9000, description="MTU of the private NIC.")


class AdminUser(_Model):
    name: Annotated[DnsLabel, AfterValidator(rules.admin_user_name)] = Field(
        description="Login name of a wheel user (passwordless sudo)."
    )
    authorized_keys: list[PublicKey] = Field(
        min_length=1, description="OpenSSH public keys allowed to log in as this user."
    )


class Ssh(_Model):
    authorized_keys: list[PublicKey] = Field(
        min_length=1, description="Public keys for root: the deploy key plus operators' keys."
    )
    admin_users: list[AdminUser] = Field(description="Additional admin users.")


class GracefulNodeShutdown(_Model):
    enable: bool = Field(description="Kubelet graceful node shutdown.")
    shutdown_grace_period: Duration = Field(description="Total shutdown delay.")
    shutdown_grace_period_critical_pods: Duration = Field(
        description="Part of shutdownGracePeriod reserved for critical pods."
    )


class EtcdS3(_Model):
    endpoint: Annotated[str, AfterValidator(rules.s3_endpoint)] = Field(
        pattern=rules.S3_ENDPOINT.pattern,
        description="S3 host name[:port] (--etcd-s3-endpoint).",
    )
    bucket: Annotated[str, AfterValidator(rules.s3_bucket)] = Field(
        pattern=rules.S3_BUCKET.pattern, description="Bucket (--etcd-s3-bucket)."
    )
    folder: Annotated[str, AfterValidator(rules.s3_folder)] = Field(
        pattern=rules.S3_FOLDER.pattern,
        description="Key prefix in the bucket (--etcd-s3-folder).",
    )
    region: Annotated[str, AfterValidator(rules.s3_region)] = Field(
        pattern=rules.S3_REGION.pattern, description="Bucket region (--etcd-s3-region)."
    )
    environment_file: AbsolutePath = Field(
        description="0600 file with AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines, the "
        "k3s service's EnvironmentFile (k3s reads the S3 keys from these variables)."
    )


class EtcdSnapshots(_Model):
    enable: bool = Field(description="Scheduled etcd snapshots (servers only).")
    schedule_cron: Annotated[str, AfterValidator(rules.cron)] = Field(
        pattern=r"^[0-9*/,-]+( [0-9*/,-]+){4}$",
        description="Five-field cron schedule for etcd snapshots.",
    )
    retention: int = Field(ge=1, description="Number of snapshots kept.")
    s3: EtcdS3 | None = Field(
        description="Also upload the snapshots to S3 (k3s --etcd-s3), or null."
    )


class K3s(_Model):
    enable: bool = Field(description="Run k3s on this host.")
    role: Literal["server", "agent"] = Field(description="k3s role.")
    cluster_init: bool = Field(
        description="First server: initialise embedded etcd (--cluster-init)."
    )
    server_addr: str = Field(
        pattern=r"^(https://[^\s/]+:[0-9]+)?$",
        description="'' on the first server, else https://<first server private ip>:6443.",
    )
    token_file: AbsolutePath = Field(description="0600 file holding the cluster token.")
    package: Annotated[str, AfterValidator(rules.k3s_package)] = Field(
        pattern=rules.K3S_PACKAGE.pattern,
        description="nixpkgs attribute of the k3s package, e.g. k3s or k3s_1_33.",
    )
    disable: list[DisableComponent] = Field(
        description="Packaged components turned off with --disable (servers only)."
    )
    cluster_cidr: Cidr = Field(description="Pod CIDR (servers); equals Cilium's IPAM pool.")
    service_cidr: Cidr = Field(description="Service CIDR (servers).")
    cluster_dns: IpAddress = Field(description="CoreDNS service IP, inside serviceCidr.")
    tls_sans: list[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9.:-]+$"), AfterValidator(rules.tls_san)]
    ] = Field(description="Extra names/addresses in the API server certificate (servers).")
    node_ip: IpAddress = Field(description="Address the node advertises (the private IP).")
    node_external_ip: IpAddress | None = Field(
        description="External address advertised by the node, if any."
    )
    node_labels: LabelMap = Field(description="Labels registered with the node.")
    node_taints: list[Taint] = Field(description="Taints 'key[=value]:Effect'.")
    graceful_node_shutdown: GracefulNodeShutdown = Field(
        description="Kubelet graceful shutdown settings."
    )
    kubelet_config: dict[str, JsonValue] = Field(
        description="Extra KubeletConfiguration fields (services.k3s.extraKubeletConfig)."
    )
    etcd_snapshots: EtcdSnapshots = Field(description="Etcd snapshot schedule (servers with etcd).")
    extra_flags: list[Flag] = Field(description="Further k3s flags, one '--flag[=value]' per item.")
    vpn_auth_file: AbsolutePath | None = Field(
        description="0600 file for k3s --vpn-auth-file, content "
        "'name=tailscale,joinKey=<key>' (k3s runs 'tailscale up' itself), or null."
    )
    cni: Literal["cilium", "flannel"] = Field(
        description="The cluster's CNI: 'cilium' (servers run without flannel, kube-proxy and "
        "network policy) or 'flannel' (k3s's own flannel with VXLAN)."
    )
    external_cloud_provider: bool = Field(
        description="Kubelet with cloud-provider=external: the node waits, tainted "
        "uninitialized, for an external cloud controller (hcloud-cloud-controller-manager)."
    )
    pre_pull_images: list[ImageRef] = Field(
        description="Images pulled while k3s starts (the CNI's pods on this node), so that "
        "they are there when the pods are scheduled; [] = none."
    )
    fetch_images: list[ImageRef] = Field(
        description="Images the host downloads into OCI archives before k3s runs "
        "(k3s-cni-fetch): the digest-pinned prePullImages of the host and of its containers, "
        "sorted, each once. The one list both the NixOS unit and the deploy's early start read."
    )

    # The one owner of these rules: nixos/modules/k3s.nix trusts the document (and nixpkgs'
    # k3s module itself refuses clusterInit on an agent).
    @model_validator(mode="after")
    def _role_consistent(self) -> K3s:
        if self.role == "agent" and (self.cluster_init or not self.server_addr):
            raise ValueError("an agent needs serverAddr and cannot set clusterInit")
        if self.cluster_init and self.server_addr:
            raise ValueError("clusterInit (first server) and serverAddr exclude each other")
        return self


class PortRange(_Model):
    start: Port = Field(description="First port of the range.")
    end: Port = Field(description="Last port of the range (inclusive).")


class Firewall(_Model):
    """Ports chosen by render.py from nixos/modules/firewall-ports.json (number and reason)."""

    public_tcp_ports: list[Port] = Field(description="TCP ports open on every interface.")
    public_udp_ports: list[Port] = Field(description="UDP ports open on every interface.")
    private_tcp_ports: list[Port] = Field(
        description="TCP ports open only on the private interface."
    )
    private_tcp_port_ranges: list[PortRange] = Field(
        description="TCP port ranges open only on the private interface (etcd)."
    )
    private_udp_ports: list[Port] = Field(
        description="UDP ports open only on the private interface (the CNI's overlay)."
    )
    trusted_interfaces: list[str] = Field(
        description="Interfaces whose traffic the firewall accepts (CNI devices)."
    )
    check_reverse_path: Literal["strict", "loose", "off"] = Field(
        description="Reverse-path filter mode; Cilium needs loose or off."
    )


class Cilium(_Model):
    host_prerequisites: bool = Field(
        description="Kernel modules and sysctls Cilium needs on the host."
    )


class Tailscale(_Model):
    enable: bool = Field(description="Run tailscaled on the host.")
    auth_key_file: AbsolutePath | None = Field(
        description="0600 file holding the raw tailscale auth key for tailscaled's autoconnect, "
        "or null (e.g. when k3s joins the tailnet through k3s.vpnAuthFile)."
    )
    wrap_k3s: bool = Field(
        description="Put tailscale on the k3s PATH (needed for --vpn-auth-file)."
    )


class Persistence(_Model):
    paths: list[AbsolutePath] = Field(
        description="State directories that must survive reboots (created if missing)."
    )


class ContainerK3s(_Model):
    role: Literal["agent"] = Field(description="k3s role inside the container.")
    node_name: DnsLabel = Field(
        description="Kubernetes node name: <host>-<container>, unique in the cluster."
    )
    server_addr: str = Field(
        pattern=r"^https://[^\s/]+:[0-9]+$", description="API server the agent joins."
    )
    node_labels: LabelMap = Field(description="Node labels.")
    node_taints: list[Taint] = Field(description="Node taints.")
    node_external_ip: IpAddress | None = Field(
        description="External address advertised by the agent, if any."
    )
    kubelet_config: dict[str, JsonValue] = Field(
        description="Extra KubeletConfiguration fields merged over the nspawn ones."
    )
    extra_flags: list[Flag] = Field(description="Further k3s agent flags.")
    pre_pull_images: list[ImageRef] = Field(
        description="Images the agent pulls while its k3s starts (as k3s.prePullImages)."
    )


class ContainerCredentials(_Model):
    k3s_token: AbsolutePath = Field(
        description="Host file passed as systemd credential 'k3s-token' (0600)."
    )
    tailscale_auth_key: AbsolutePath | None = Field(
        description="Host file passed as credential 'tailscale-key' and used as the agent's "
        "--vpn-auth-file ('name=tailscale,joinKey=<key>'), or null."
    )


class Container(_Model):
    name: Annotated[str, AfterValidator(rules.container_name)] = Field(
        pattern=r"^[a-z][a-z0-9-]{0,10}$",
        description="nixos-container name (<= 11 chars: the host veth is 've-<name>').",
    )
    host_address: Ipv4 = Field(
        description="Host end of the container veth (/32, routed; also the default gateway)."
    )
    local_address: Ipv4 = Field(description="Container end of the veth (/32, routed).")
    nameservers: list[IpAddress] = Field(
        min_length=1,
        description="DNS servers for systemd-resolved inside the container (the host's "
        "127.0.0.53 stub is not reachable from the container's network namespace).",
    )
    ephemeral: bool = Field(description="Fresh root on each start; k3s state lives in stateDir.")
    tailscale: bool = Field(description="Run tailscaled inside the container.")
    k3s: ContainerK3s = Field(description="k3s agent settings inside the container.")
    credentials: ContainerCredentials = Field(description="Secret files handed in by nspawn.")
    state_dir: AbsolutePath = Field(
        description="Host directory bind-mounted for k3s/kubelet state (used when ephemeral)."
    )
    mode: Literal["host-users", "user-namespace"] = Field(
        description="How the container runs (nixos/modules/k3s-container-modes.json): "
        "'host-users' shares the host's user namespace with the capabilities Cilium needs; "
        "'user-namespace' is unprivileged (privateUsers pick) and runs flannel only."
    )

    @model_validator(mode="after")
    def _tailscale_key(self) -> Container:
        if self.tailscale and self.credentials.tailscale_auth_key is None:
            raise ValueError(f"container {self.name}: tailscale needs credentials.tailscaleAuthKey")
        return self


class HostSpec(_Model):
    schema_version: Literal[1] = Field(description="Version of this document's shape.")
    name: DnsLabel = Field(description="Hostname and k3s node name.")
    cluster_name: DnsLabel = Field(description="Name of the cluster this host belongs to.")
    system: Literal["x86_64-linux", "aarch64-linux"] = Field(description="Nix system.")
    state_version: str = Field(pattern=r"^[0-9]{2}\.(05|11)$", description="system.stateVersion.")
    hardware: Hardware = Field(description="Machine layer.")
    network: Network = Field(description="Addresses and interfaces.")
    ssh: Ssh = Field(description="SSH access.")
    k3s: K3s = Field(description="k3s node settings.")
    firewall: Firewall = Field(description="Host firewall.")
    cilium: Cilium = Field(description="Cilium host prerequisites.")
    tailscale: Tailscale = Field(description="Tailscale on the host.")
    persistence: Persistence = Field(description="Kept state paths.")
    containers: list[Container] = Field(description="k3s agents in nspawn containers on this host.")

    @model_validator(mode="after")
    def _cross_checks(self) -> HostSpec:
        if self.k3s.vpn_auth_file is not None and not self.tailscale.wrap_k3s:
            raise ValueError("k3s.vpnAuthFile needs tailscale.wrapK3s (k3s calls tailscale)")
        if self.tailscale.wrap_k3s and not self.tailscale.enable:
            raise ValueError("tailscale.wrapK3s needs tailscale.enable")
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ValueError(f"container names are not unique: {names}")
        return self


def host_json(spec: HostSpec) -> str:
    """The host document as written to hosts/<name>.json: byte-identical for equal specs."""
    return jsontext.pretty(spec.model_dump(mode="json", by_alias=True))


def host_schema() -> dict[str, Any]:
    """JSON schema of the host document (every key required, as host_json always writes all)."""
    return HostSpec.model_json_schema(by_alias=True, mode="serialization")


def schema_text() -> str:
    return json.dumps(host_schema(), sort_keys=True, indent=2) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> None:
    path.write_text(schema_text(), encoding="utf-8")


def hashed_files(nixos_dir: Path) -> list[Path]:
    """Files of nixos/ that can change a host's system, sorted by relative POSIX path.

    Every file except hosts/ (other hosts' data; this host's data is hashed separately). The
    schema is included: nixos/lib/host-check.nix validates host data against it at evaluation.
    Files of other hardware profiles are included on purpose:
    the whole directory is pushed and evaluated, so hashing all of it is never stale.
    """
    files = [
        path
        for path in nixos_dir.rglob("*")
        if path.is_file()
        and path.relative_to(nixos_dir).parts[0] not in HASH_EXCLUDED_DIRS
        and "__pycache__" not in path.parts
    ]
    return sorted(files, key=lambda p: p.relative_to(nixos_dir).as_posix())


def content_hasher(nixos_dir: Path | None = None) -> Callable[[str], str]:
    """content_hash over one snapshot of nixos/: the tree is read once, not once per host.

    nixos_dir defaults to NIXOS_DIR as it is when this is called.
    """
    root = NIXOS_DIR if nixos_dir is None else nixos_dir
    files = tuple(
        (path.relative_to(root).as_posix(), path.read_bytes()) for path in hashed_files(root)
    )

    def content_hash_of(host_json_text: str) -> str:
        digest = hashlib.sha256()

        def feed(label: str, data: bytes) -> None:
            digest.update(f"{label}\0{len(data)}\0".encode())
            digest.update(data)

        feed("host.json", host_json_text.encode())
        for label, data in files:
            feed(label, data)
        return digest.hexdigest()

    return content_hash_of


def content_hash(host_json_text: str, nixos_dir: Path | None = None) -> str:
    """sha256 (hex) over the host JSON and every hashed nixos/ file, with length framing."""
    return content_hasher(nixos_dir)(host_json_text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH}")
    args = parser.parse_args(argv)
    if args.write:
        write_schema()
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
