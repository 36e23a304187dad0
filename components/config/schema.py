"""The stack schema: what `nixos-k3s:cluster` in Pulumi.<stack>.yaml may say.

pydantic models that check each field's type and form; what only the whole file can tell
(overlapping CIDRs, quorum, server types per location) is in `checks`. A leaf of the import
graph: besides pydantic and the standard library it reads only the upstream facts (catalog),
the value rules shared with the host document (rules) and the container modes.
"""

from __future__ import annotations

import difflib
import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from components import catalog, rules
from components.rules import camel

_cidr = rules.cidr


def _ipv4_cidr(value: str) -> str:
    value = _cidr(value)
    if ipaddress.ip_network(value).version != 4:
        raise ValueError(f"{value!r} must be an IPv4 network")
    return value


def _ipv4_address(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


_duration = rules.duration


def _labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        rules.label_key(key)
        rules.label_value(value, f"label {key}: value")
    return labels


DnsLabel = Annotated[str, AfterValidator(rules.dns_label)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Ipv4Cidr = Annotated[str, AfterValidator(_ipv4_cidr)]
Ipv4Address = Annotated[str, AfterValidator(_ipv4_address)]
Duration = Annotated[str, AfterValidator(_duration)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
SshPublicKey = Annotated[str, AfterValidator(rules.ssh_public_key)]
TlsSan = Annotated[str, AfterValidator(rules.tls_san)]
K3sFlag = Annotated[str, AfterValidator(rules.k3s_flag)]
AdminUserName = Annotated[str, AfterValidator(rules.admin_user_name)]
ApiEndpointText = Annotated[str, AfterValidator(rules.api_endpoint)]
Location = Literal["fsn1", "nbg1", "hel1", "ash", "hil", "sin"]
NetworkZone = Literal["eu-central", "us-east", "us-west", "ap-southeast"]
K3sComponent = catalog.K3sComponent
Cni = Literal["cilium", "flannel"]
ContainerModeName = Literal["host-users", "user-namespace"]


class Model(BaseModel):
    """Base of every stack model: immutable, camelCase in YAML, unknown keys refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=camel,
        populate_by_name=True,
        validate_default=True,
    )


class Taint(Model):
    key: str = Field(description="Taint key, a Kubernetes label key.")
    value: str = Field(default="", description="Taint value; may be empty.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        description="What the scheduler does with pods that do not tolerate the taint."
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return rules.label_key(value)

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return rules.label_value(value, "taint value")

    def render(self) -> str:
        """The `key=value:Effect` form k3s --node-taint takes."""
        return (
            f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"
        )


class GracefulShutdown(Model):
    enabled: bool = Field(default=True, description="Let the kubelet stop pods before shutdown.")
    grace_period: Duration = Field(
        default="30s", description="Total time the node delays shutdown for pods to stop."
    )
    critical_pods_grace_period: Duration = Field(
        default="10s",
        description="Part of gracePeriod reserved for critical pods; must be shorter than it.",
    )


_s3_endpoint = rules.s3_endpoint
_s3_bucket = rules.s3_bucket
_s3_folder = rules.s3_folder
_s3_region = rules.s3_region


class EtcdS3(Model):
    """Where k3s uploads its scheduled snapshots (k3s --etcd-s3-*); keys are Pulumi secrets."""

    endpoint: Annotated[str, AfterValidator(_s3_endpoint)] = Field(
        description="S3 host name[:port] without scheme, e.g. 'fsn1.your-objectstorage.com' "
        "(Hetzner Object Storage) or 's3.eu-central-1.amazonaws.com'."
    )
    bucket: Annotated[str, AfterValidator(_s3_bucket)] = Field(description="Bucket name.")
    folder: Annotated[str, AfterValidator(_s3_folder)] | None = Field(
        default=None,
        description="Folder (key prefix) inside the bucket; default: the cluster name, so "
        "clusters can share a bucket.",
    )
    region: Annotated[str, AfterValidator(_s3_region)] = Field(
        default="us-east-1",
        description="Bucket region (k3s's default us-east-1; Hetzner: fsn1, nbg1 or hel1).",
    )


class EtcdSnapshots(Model):
    enabled: bool = Field(default=True, description="Scheduled etcd snapshots on every server.")
    schedule_cron: str = Field(
        default="0 */12 * * *", description="Cron schedule of the snapshots (5 fields)."
    )
    retention: int = Field(default=5, ge=1, le=1000, description="Snapshots kept per server.")
    s3: EtcdS3 | None = Field(
        default=None,
        description="Also upload every snapshot to this S3 bucket; needs the secrets "
        "nixos-k3s:etcdS3AccessKeyId and nixos-k3s:etcdS3SecretAccessKey.",
    )

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return rules.cron(value)


class K3sConfig(Model):
    package: str = Field(
        default="k3s",
        description="nixpkgs attribute of the k3s package: 'k3s' (the release's default) or "
        "a pinned minor such as 'k3s_1_33'. Changing it upgrades every node.",
    )
    cluster_cidr: Ipv4Cidr = Field(
        default="10.42.0.0/16", description="Pod network (k3s --cluster-cidr, Cilium's pool)."
    )
    service_cidr: Ipv4Cidr = Field(
        default="10.43.0.0/16", description="Service network (k3s --service-cidr)."
    )
    cluster_dns: Ipv4Address = Field(
        default="10.43.0.10", description="CoreDNS service IP; must lie inside serviceCidr."
    )
    bootstrap_host: str | None = Field(
        default=None,
        description="Host that initialises embedded etcd (clusterInit). Default: the first "
        "server. Set it to another server before removing the first one.",
    )
    tls_sans: list[TlsSan] = Field(
        default_factory=list,
        description="Extra names/addresses in the API certificate (public addresses are added).",
    )
    disable: list[K3sComponent] = Field(
        default_factory=lambda: list(catalog.K3S_DEFAULT_DISABLED),
        description="Bundled k3s components to turn off (k3s --disable).",
    )
    extra_flags: list[K3sFlag] = Field(
        default_factory=list, description="Further k3s flags, one '--flag=value' per item."
    )
    graceful_shutdown: GracefulShutdown = Field(
        default_factory=GracefulShutdown, description="Kubelet graceful node shutdown."
    )
    kubelet: dict[str, Any] = Field(
        default_factory=dict,
        description="KubeletConfiguration fields merged into every node's kubelet config.",
    )
    etcd_snapshots: EtcdSnapshots = Field(
        default_factory=EtcdSnapshots, description="Embedded etcd snapshot schedule."
    )
    cni: Cni = Field(
        default="cilium",
        description="Pod network: 'cilium' (Helm release, no kube-proxy) or 'flannel' (k3s's "
        "own flannel with VXLAN; no Cilium release, containers may stay unprivileged).",
    )

    @field_validator("package")
    @classmethod
    def _package(cls, value: str) -> str:
        return rules.k3s_package(value)

    @field_validator("disable", mode="before")
    @classmethod
    def _no_flannel(cls, value: Any) -> Any:
        if isinstance(value, list) and "flannel" in value:
            raise ValueError(
                "'flannel' is not a k3s --disable component; k3s.cni chooses the pod network "
                "(cilium replaces it with --flannel-backend=none). Allowed: "
                + ", ".join(catalog.K3S_DISABLABLE)
            )
        return value

    @field_validator("extra_flags")
    @classmethod
    def _flags(cls, flags: list[str]) -> list[str]:
        for flag in flags:
            name = flag.split("=", 1)[0]
            if name in catalog.K3S_MANAGED_FLAGS:
                raise ValueError(f"{name} is set by nixos-k3s from the stack config; use its field")
        return flags


class HubbleConfig(Model):
    enabled: bool = Field(default=False, description="Hubble flow observability.")
    ui: bool = Field(default=False, description="Hubble relay and UI (needs enabled).")


class CiliumConfig(Model):
    version: str = Field(
        default=catalog.CILIUM_DEFAULT_VERSION,
        description="Cilium chart version; one of the versions whose values schema we ship.",
    )
    routing_mode: Literal["tunnel", "native"] = Field(
        default="tunnel", description="Pod traffic between nodes: VXLAN/Geneve tunnel or native."
    )
    tunnel_protocol: Literal["vxlan", "geneve"] = Field(
        default="vxlan", description="Encapsulation in tunnel mode."
    )
    native_routing_cidr: Ipv4Cidr | None = Field(
        default=None, description="ipv4NativeRoutingCIDR; required with routingMode native."
    )
    hubble: HubbleConfig = Field(default_factory=HubbleConfig, description="Hubble settings.")
    operator_replicas: int | None = Field(
        default=None, ge=1, description="cilium-operator replicas; default min(2, node count)."
    )
    values: dict[str, Any] = Field(
        default_factory=dict, description="Chart values merged last, over the rendered ones."
    )

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in catalog.CILIUM_VERSIONS:
            raise ValueError(
                f"{value!r} is not a Cilium version we ship a values schema for; "
                f"allowed: {', '.join(catalog.CILIUM_VERSIONS)}"
            )
        return value


class NetworkConfig(Model):
    ip_range: Ipv4Cidr = Field(
        default="10.0.0.0/16", description="The private network's range (Hetzner Network)."
    )
    subnet: Ipv4Cidr = Field(
        default="10.0.1.0/24", description="Subnet of ipRange the servers get addresses from."
    )
    zone: NetworkZone = Field(
        default="eu-central", description="Hetzner network zone; must hold every pool location."
    )
    container_cidr: Ipv4Cidr = Field(
        default="10.250.0.0/16",
        description="Addresses of nspawn k3s containers: a /24 per host, a /30 per container.",
    )
    pool_block_size: int = Field(
        default=32,
        ge=4,
        le=256,
        description="Addresses reserved per node pool, in declaration order, so adding a host "
        "never renumbers another.",
    )


class FirewallRule(Model):
    description: str = Field(default="", description="Shown in the Hetzner console.")
    protocol: Literal["tcp", "udp"] = Field(description="Transport protocol.")
    port: str = Field(description="Port or range, e.g. '443' or '30000-32767'.")
    sources: list[Cidr] = Field(min_length=1, description="Source CIDRs allowed.")

    @field_validator("port")
    @classmethod
    def _port(cls, value: str) -> str:
        parts = value.split("-")
        if len(parts) > 2 or not all(p.isdigit() and 1 <= int(p) <= 65535 for p in parts):
            raise ValueError(f"{value!r} is not a port (1-65535) or a range like '30000-32767'")
        return value


class FirewallConfig(Model):
    ssh_sources: list[Cidr] = Field(
        min_length=1, description="CIDRs allowed to reach SSH (22) on every host."
    )
    api_sources: list[Cidr] = Field(
        min_length=1, description="CIDRs allowed to reach the Kubernetes API (6443)."
    )
    ingress: bool = Field(default=False, description="Open 80/443 to the world on every host.")
    extra_rules: list[FirewallRule] = Field(
        default_factory=list, description="Further inbound rules on the Hetzner firewall."
    )


class ContainerConfig(Model):
    name: DnsLabel = Field(description="Container name (nixos-container name, <= 11 chars).")
    role: Literal["agent"] = Field(default="agent", description="k3s role inside the container.")
    labels: Labels = Field(default_factory=dict, description="Kubernetes node labels.")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints.")
    kubelet: dict[str, Any] = Field(default_factory=dict, description="Extra kubelet config.")
    ephemeral: bool = Field(
        default=False, description="Fresh root on every start; k3s state kept on the host."
    )
    tailscale: bool = Field(default=False, description="Run tailscale inside the container.")
    mode: ContainerModeName | None = Field(
        default=None,
        description="'host-users' (the host's user namespace with the capabilities Cilium "
        "needs) or 'user-namespace' (unprivileged, privateUsers pick; flannel only). Default: "
        "user-namespace with k3s.cni flannel, host-users with cilium.",
    )

    @field_validator("name")
    @classmethod
    def _short(cls, value: str) -> str:
        return rules.container_name(value)


class NodePool(Model):
    name: DnsLabel = Field(description="Pool name; hosts are named <cluster>-<pool>-<n>.")
    role: Literal["server", "agent"] = Field(description="k3s role of every host in the pool.")
    count: int = Field(ge=0, le=100, description="Number of hosts.")
    server_type: str | None = Field(
        default=None, description="Hetzner server type (hetzner only), e.g. cx33 or cax21."
    )
    locations: list[Location] = Field(
        default_factory=list,
        description="Hetzner locations; hosts are spread over them in order (hetzner only).",
    )
    labels: Labels = Field(default_factory=dict, description="Kubernetes node labels.")
    taints: list[Taint] = Field(default_factory=list, description="Kubernetes node taints.")
    kubelet: dict[str, Any] = Field(
        default_factory=dict, description="Kubelet config merged over k3s.kubelet for the pool."
    )
    containers: list[ContainerConfig] = Field(
        default_factory=list, description="k3s agents in nspawn containers on every host."
    )
    ip_offset: int | None = Field(
        default=None,
        ge=2,
        description="First address of the pool's block in the subnet (default: by pool order).",
    )

    @field_validator("server_type")
    @classmethod
    def _server_type(cls, value: str | None) -> str | None:
        if value is None or value in catalog.SERVER_TYPES:
            return value
        if value in catalog.DEPRECATED_SERVER_TYPES:
            raise ValueError(
                f"{value!r} was deprecated by Hetzner on 2025-10-16; use "
                f"{catalog.DEPRECATED_SERVER_TYPES[value]!r}"
            )
        close = difflib.get_close_matches(value, catalog.SERVER_TYPES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{value!r} is not a Hetzner server type{hint}; allowed: "
            + ", ".join(sorted(catalog.SERVER_TYPES))
        )


class HetznerConfig(Model):
    image: str = Field(
        default="ubuntu-24.04",
        description="Stock image the server boots before nixos-anywhere replaces it.",
    )
    protection: bool = Field(
        default=False, description="Delete and rebuild protection on servers and the network."
    )
    ipv6: bool = Field(default=True, description="Give every server a public IPv6 /64.")
    register_admin_keys: bool = Field(
        default=True,
        description="Also upload sshKeys as Hetzner SSH keys (for the console and rescue "
        "system). Hetzner refuses a key whose fingerprint the project already has: set false "
        "when they are uploaded already.",
    )
    cloud_controller_manager: bool = Field(
        default=True,
        description="Install hcloud-cloud-controller-manager (Helm): node providerIDs, "
        "region/zone labels and addresses, node removal when a server is deleted, and "
        "`type: LoadBalancer` Services as Hetzner Load Balancers in the private network. "
        "Kubelets then run with cloud-provider=external.",
    )
    csi: bool = Field(
        default=True,
        description="Install the Hetzner CSI driver (Helm) with a default StorageClass "
        "'hcloud-volumes', so PersistentVolumeClaims get Hetzner Volumes. Needs "
        "cloudControllerManager.",
    )
    load_balancer: bool = Field(
        default=True,
        description="A Hetzner Load Balancer in front of the servers' API (TCP 6443): the "
        "default apiEndpoint (when public), a TLS SAN and Cilium's k8sServiceHost (its private "
        "address), so "
        "the API stays reachable while any one server is down. false: the bootstrap server's "
        "addresses instead (fine for single-server stacks).",
    )
    load_balancer_type: Literal["lb11", "lb21", "lb31"] = Field(
        default="lb11", description="Hetzner Load Balancer type of the API load balancer."
    )
    load_balancer_public: bool = Field(
        default=True,
        description="Give the API load balancer a public IPv4/IPv6 (the default apiEndpoint). "
        "Hetzner firewalls do not apply to load balancers: the public side accepts 6443 from "
        "anywhere. false: private network only; the default apiEndpoint is then the first "
        "server's public address.",
    )
    csi_reclaim_policy: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description="reclaimPolicy of the default StorageClass: Delete removes a Hetzner "
        "Volume with its PersistentVolume; Retain keeps it (and its cost) until deleted by hand.",
    )
    nixos_image: bool = Field(
        default=True,
        description="Boot new servers from a NixOS snapshot the program makes once per nixpkgs "
        "pin, architecture and base configuration (no kexec install: fast scale-ups and "
        "replacements). false: every server boots `image` and nixos-anywhere installs NixOS. "
        "Switching either way never replaces running servers.",
    )


class ColimaConfig(Model):
    cpus: int = Field(default=4, ge=1, le=64, description="vCPUs per VM.")
    memory_gib: int = Field(default=8, ge=1, le=256, description="Memory per VM in GiB.")
    disk_gib: int = Field(
        default=60, ge=catalog.MIN_COLIMA_DISK_GIB, le=2048, description="Disk per VM in GiB."
    )
    arch: Literal["aarch64", "x86_64"] = Field(
        default="aarch64", description="Guest architecture; vz boots only aarch64."
    )
    vm_type: Literal["vz", "qemu"] = Field(
        default="vz", description="Colima VM backend (Apple Virtualization.framework or QEMU)."
    )
    rosetta: bool = Field(
        default=True, description="Run x86_64 binaries in aarch64 guests via Rosetta (vz only)."
    )


class TailscaleConfig(Model):
    enabled: bool = Field(
        default=False,
        description="Run tailscale on every host and route k3s over it (--vpn-auth-file). "
        "Needs the secret nixos-k3s:tailscaleAuthKey.",
    )


class DeployConfig(Model):
    rollback_timeout_seconds: int = Field(
        default=180, ge=30, le=3600, description="Time a new config has to prove itself."
    )
    join_timeout_seconds: int = Field(
        default=600,
        ge=30,
        le=7200,
        description="A host's first push, the one that starts k3s there for the first time: how "
        "long it may take for k3s.service to become active (a server joining etcd, where servers "
        "joining together wait for each other because etcd admits one learner at a time) before "
        "the host rolls back. At least rollbackTimeoutSeconds; later pushes use that.",
    )
    api_ready_timeout_seconds: int = Field(
        default=600, ge=30, le=7200, description="How long to wait for the first server's API."
    )
    nodes_ready_timeout_seconds: int = Field(
        default=900, ge=30, le=7200, description="How long to wait for every node to be Ready."
    )
    max_unavailable: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Rolling upgrade (a change of k3s.package or the nixpkgs pin): agents drained "
        "and upgraded at once, per batch. Servers always go one at a time.",
    )
    drain_timeout_seconds: int = Field(
        default=300,
        ge=30,
        le=7200,
        description="Rolling upgrade: how long `kubectl drain` may take (it respects "
        "PodDisruptionBudgets); a drain that does not finish stops the roll.",
    )
    node_ready_timeout_seconds: int = Field(
        default=600,
        ge=30,
        le=7200,
        description="Rolling upgrade: how long an upgraded node has to be Ready again.",
    )


class ClusterConfig(Model):
    name: DnsLabel = Field(description="Cluster name: prefix of every host and resource.")
    provider: Literal["hetzner", "colima"] = Field(description="Where the machines run.")
    node_pools: list[NodePool] = Field(min_length=1, description="Groups of identical hosts.")
    ssh_keys: list[SshPublicKey] = Field(
        default_factory=list, description="Admins' OpenSSH public keys (root and admin users)."
    )
    admin_users: list[AdminUserName] = Field(
        default_factory=list,
        description="Login users with sudo, each with every sshKeys key (not root or another "
        "user NixOS creates itself).",
    )
    api_endpoint: ApiEndpointText | None = Field(
        default=None,
        description="Where users reach the API, " + rules.API_ENDPOINT_GRAMMAR + " (default: "
        "the first server's public address). Its host is added to the TLS SANs.",
    )
    k3s: K3sConfig = Field(default_factory=K3sConfig, description="k3s settings.")
    cilium: CiliumConfig = Field(default_factory=CiliumConfig, description="Cilium settings.")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="Private network.")
    firewall: FirewallConfig | None = Field(
        default=None, description="Public firewall (required for hetzner)."
    )
    hetzner: HetznerConfig = Field(default_factory=HetznerConfig, description="Hetzner options.")
    colima: ColimaConfig = Field(default_factory=ColimaConfig, description="Colima VM sizing.")
    tailscale: TailscaleConfig = Field(
        default_factory=TailscaleConfig, description="Tailscale on hosts."
    )
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Deploy timeouts.")
