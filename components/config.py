"""The stack schema: what `nixos-k3s:cluster` in Pulumi.<stack>.yaml may say.

Parsing is in two steps, both before any resource exists: pydantic checks each field's type and
form, then `semantic_problems` checks what only the whole file can tell (overlapping CIDRs, quorum,
server types per location, impossible combinations). Either step reports every problem with its
path in the stack file (`nodePools[1].serverType`), the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast, get_args, get_origin

import pulumi
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from components import catalog, cilium, containermodes, rules
from components.cilium import DEFAULT_VERSION as CILIUM_DEFAULT_VERSION
from components.cilium import SUPPORTED_VERSIONS as CILIUM_VERSIONS
from components.hostspec import camel

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


_ssh_public_key = rules.ssh_public_key


DnsLabel = Annotated[str, AfterValidator(rules.dns_label)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Ipv4Cidr = Annotated[str, AfterValidator(_ipv4_cidr)]
Ipv4Address = Annotated[str, AfterValidator(_ipv4_address)]
Duration = Annotated[str, AfterValidator(_duration)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
SshPublicKey = Annotated[str, AfterValidator(_ssh_public_key)]
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
        default=CILIUM_DEFAULT_VERSION,
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
        if value not in CILIUM_VERSIONS:
            raise ValueError(
                f"{value!r} is not a Cilium version we ship a values schema for; "
                f"allowed: {', '.join(CILIUM_VERSIONS)}"
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


class ColimaConfig(Model):
    cpus: int = Field(default=4, ge=1, le=64, description="vCPUs per VM.")
    memory_gib: int = Field(default=8, ge=1, le=256, description="Memory per VM in GiB.")
    disk_gib: int = Field(default=60, ge=20, le=2048, description="Disk per VM in GiB.")
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


# --- semantic checks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Warning_:
    path: str
    message: str

    def __str__(self) -> str:
        return f"warning: {self.path}: {self.message}"


class ConfigError(pulumi.RunError):
    """Every problem in a stack config; str() is one line per problem."""

    def __init__(self, problems: Sequence[Problem], source: str = "nixos-k3s:cluster"):
        self.problems = list(problems)
        self.source = source
        lines = [f"invalid stack config ({source}): {len(self.problems)} problem(s)"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[Problem], str]]:
        # Rebuilt from its problems (not its message) when it crosses a process boundary.
        return (type(self), (self.problems, self.source))


def _networks(cfg: ClusterConfig) -> list[tuple[str, str]]:
    nets = [
        ("k3s.clusterCidr", cfg.k3s.cluster_cidr),
        ("k3s.serviceCidr", cfg.k3s.service_cidr),
        ("network.containerCidr", cfg.network.container_cidr),
    ]
    if cfg.provider == "hetzner":
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
    if cfg.provider == "hetzner" and not subnet.subnet_of(ip_range):  # type: ignore[arg-type]
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
    if colima.vm_type == "vz" and colima.arch == "x86_64":
        yield Problem(
            "colima.arch",
            "x86_64 with vmType vz cannot work: vz boots only aarch64 guests and Colima "
            "silently falls back to slow QEMU emulation; use arch aarch64 with rosetta: true",
        )
    if colima.vm_type == "qemu":
        yield Problem(
            "colima.vmType",
            "qemu is not supported: the dev NixOS profile (nixos/hardware/colima-vz.nix) is "
            "built for Apple's Virtualization.framework; use vmType vz",
        )
    if colima.rosetta and colima.vm_type != "vz":
        yield Problem("colima.rosetta", "Rosetta needs vmType vz; set rosetta: false for qemu")
    if colima.memory_gib < catalog.MIN_COLIMA_MEMORY_GIB:
        yield Problem(
            "colima.memoryGib",
            f"{colima.memory_gib} GiB is below the {catalog.MIN_COLIMA_MEMORY_GIB} GiB a k3s "
            "node with Cilium needs (nixos-anywhere's installer alone needs 1.5 GB)",
        )
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
    if cfg.firewall is None:
        if cfg.provider == "hetzner":
            yield Problem(
                "firewall", "required for provider hetzner: sshSources and apiSources (CIDRs)"
            )
        return
    rules = 3 + (2 if cfg.firewall.ingress else 0) + len(cfg.firewall.extra_rules)
    if rules > catalog.MAX_FIREWALL_RULES:
        yield Problem(
            "firewall.extraRules",
            f"{rules} rules: a Hetzner firewall holds at most {catalog.MAX_FIREWALL_RULES} "
            "(ssh, api and icmp count for 3, ingress for 2)",
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
    if cfg.cilium.hubble.ui and not cfg.cilium.hubble.enabled:
        yield Problem("cilium.hubble.ui", "needs cilium.hubble.enabled: true")
    snapshots = cfg.k3s.etcd_snapshots
    if snapshots.s3 is not None and not snapshots.enabled:
        yield Problem(
            "k3s.etcdSnapshots.s3",
            "needs k3s.etcdSnapshots.enabled: true (k3s uploads the scheduled snapshots)",
        )
    total = node_count(cfg)
    replicas = cfg.cilium.operator_replicas
    if replicas is not None and replicas > total:
        yield Problem(
            "cilium.operatorReplicas", f"{replicas} is more than the {total} node(s) of the stack"
        )


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


def _address_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    subnet = ipaddress.ip_network(cfg.network.subnet)
    taken: dict[int, str] = {}
    for i, (pool, start) in enumerate(zip(cfg.node_pools, pool_offsets(cfg), strict=True)):
        last = start + max(pool.count, 1) - 1
        if cfg.provider == "hetzner" and last >= subnet.num_addresses - 1:
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


def container_mode(cfg: ClusterConfig, container: ContainerConfig) -> ContainerModeName:
    """The container's mode: its own choice, else the CNI's default."""
    if container.mode is not None:
        return container.mode
    default = containermodes.default_mode(cfg.k3s.cni)
    if default not in get_args(ContainerModeName):
        raise ValueError(f"{containermodes.DATA_PATH}: unknown container mode {default!r}")
    return cast(ContainerModeName, default)


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


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(h|m|s)", duration))


def node_count(cfg: ClusterConfig) -> int:
    """Kubernetes nodes of the stack: every host plus every nspawn container on it."""
    return sum(p.count * (1 + len(p.containers)) for p in cfg.node_pools)


# tailscale0's MTU: with tailscale on, k3s uses the tailnet addresses between nodes.
TAILSCALE_MTU = 1280


def _node_link_mtu(cfg: ClusterConfig) -> int | None:
    """MTU of the link between nodes, for Cilium (None: let Cilium detect it)."""
    if cfg.tailscale.enabled:
        return TAILSCALE_MTU
    return catalog.HETZNER_PRIVATE_MTU if cfg.provider == "hetzner" else None


# Cilium's devices on clusters with nested nodes, by provider ('+' is Cilium's wildcard): the
# hosts' NICs (Hetzner: public en*/eth*, private enp7s0; Colima: Lima's eth0 and col0, see
# render.py) and each container's eth0. Not the hosts' ve-* veths to their containers: those
# belong to the container nodes, whose own agents manage them from the inside.
NESTED_NODE_DEVICES: dict[str, tuple[str, ...]] = {
    "hetzner": ("en+", "eth+"),
    "colima": ("col0", "eth+"),
}


def has_nested_nodes(cfg: ClusterConfig) -> bool:
    """Some host carries a container node outside a user namespace (it runs its own agent)."""
    return any(
        not containermodes.modes()[container_mode(cfg, c)].user_namespaced
        for pool in cfg.node_pools
        if pool.count
        for c in pool.containers
    )


def _cilium_devices(cfg: ClusterConfig) -> tuple[str, ...]:
    if not has_nested_nodes(cfg):
        return ()
    return NESTED_NODE_DEVICES[cfg.provider] + (("tailscale0",) if cfg.tailscale.enabled else ())


def cilium_settings(cfg: ClusterConfig, api_host: str, nodes: int) -> cilium.CiliumSettings:
    c = cfg.cilium
    return cilium.CiliumSettings(
        api_host=api_host,
        cluster_cidr=cfg.k3s.cluster_cidr,
        node_count=nodes,
        version=c.version,
        routing_mode=c.routing_mode,
        tunnel_protocol=c.tunnel_protocol,
        native_routing_cidr=c.native_routing_cidr,
        mtu=_node_link_mtu(cfg),
        hubble=c.hubble.enabled,
        hubble_ui=c.hubble.ui,
        operator_replicas=c.operator_replicas,
        extra_values=c.values,
        nested_nodes=has_nested_nodes(cfg),
        devices=_cilium_devices(cfg),
    )


# Stands in for the first server's address when values are checked before machines exist.
PLACEHOLDER_API_HOST = "10.0.1.10"


def _cilium_invariants(cfg: ClusterConfig, values: dict[str, Any], nodes: int) -> Iterable[Problem]:
    """What cilium.values may not override: the cluster does not work without these."""
    if str(values.get("kubeProxyReplacement")).lower() != "true":
        yield Problem(
            "cilium.values.kubeProxyReplacement",
            "must stay true: k3s runs with --disable-kube-proxy, so nothing else serves Services",
        )
    if values.get("k8sServiceHost") != PLACEHOLDER_API_HOST:
        yield Problem(
            "cilium.values.k8sServiceHost",
            "is set by nixos-k3s to the API load balancer's (or the first server's) private "
            "address; without kube-proxy the agents need a real API address (use apiEndpoint "
            "for the kubeconfig's address)",
        )
    if (
        has_nested_nodes(cfg)
        and (values.get("socketLB") or {}).get("hostNamespaceOnly") is not True
    ):
        yield Problem(
            "cilium.values.socketLB.hostNamespaceOnly",
            "must stay true while container nodes run their own agents: the host's socket-LB "
            "programs would otherwise translate the containers' connections with the host's maps",
        )
    replicas = (values.get("operator") or {}).get("replicas")
    if isinstance(replicas, int) and replicas > nodes:
        yield Problem(
            "cilium.values.operator.replicas",
            f"{replicas} is more than the {nodes} node(s): the operator pods repel each other, "
            "so the extra ones stay Pending",
        )


def _cilium_problems(cfg: ClusterConfig) -> Iterable[Problem]:
    if cfg.provider == "hetzner" and cfg.cilium.routing_mode == "native":
        yield Problem(
            "cilium.routingMode",
            "native routing cannot work on Hetzner private networks: they are routed through "
            "a gateway, not one L2 segment, so autoDirectNodeRoutes has no path; use 'tunnel'",
        )
        return
    nodes = node_count(cfg)
    if nodes == 0:
        return
    try:
        values = cilium.render_values(cilium_settings(cfg, PLACEHOLDER_API_HOST, nodes))
        yield from _cilium_invariants(cfg, values, nodes)
    except cilium.CiliumValuesError as exc:
        for line in exc.problems:
            yield Problem(
                "cilium.values", f"rejected by the chart schema {cfg.cilium.version}: {line}"
            )
    except ValueError as exc:
        yield Problem("cilium", str(exc))


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
    ]
    if cfg.k3s.cni == "flannel":
        if cfg.cilium.model_fields_set:
            problems.append(
                Problem(
                    "cilium",
                    "applies to k3s.cni 'cilium' only; with 'flannel' no Cilium is installed "
                    "(remove the cilium section or set k3s.cni: cilium)",
                )
            )
        return problems
    # The chart values are checked only once the cilium fields themselves are sound, so one
    # mistake is not reported twice (once here, once by the values check).
    if not any(p.path.startswith("cilium") for p in problems):
        problems += _cilium_problems(cfg)
    return problems


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


# --- error formatting ------------------------------------------------------------------------


def _format_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class a location inside the config points into, for listing allowed keys."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            return annotation
        annotation = args[-1] if get_origin(annotation) is dict else args[0]
    return annotation


def _allowed_suffix(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    """' (allowed: ...)' for a missing field that takes one of fixed values."""
    parent = _model_at(root, loc[:-1])
    field = next(
        (f for n, f in (parent.model_fields.items() if parent else []) if loc[-1] in (n, f.alias)),
        None,
    )
    if field is None or get_origin(field.annotation) is not Literal:
        return ""
    return " (allowed: " + ", ".join(repr(v) for v in get_args(field.annotation)) + ")"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problems_from_validation(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"unknown field{hint}; allowed: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required field is missing" + _allowed_suffix(root, loc)
        elif kind == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
        else:
            message = f"{item['msg']} (got {_shown(item.get('input'))})"
        problems.append(Problem(_format_path(loc), message))
    return problems


def parse_cluster(data: Any, source: str = "nixos-k3s:cluster") -> ClusterConfig:
    """Validate raw stack data; raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [Problem("", f"expected a mapping of cluster settings, got {type(data).__name__}")],
            source,
        )
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, ClusterConfig), source) from None
    problems = semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


# --- loading from Pulumi config --------------------------------------------------------------

REQUIRED_SECRET_HINT = "pulumi config set --secret"


@dataclass(frozen=True)
class StackConfig:
    cluster: ClusterConfig
    tailscale_auth_key: pulumi.Output[str] | None
    # The Hetzner API token for the in-cluster cloud controller and CSI driver (a Kubernetes
    # Secret); None when neither is installed.
    hcloud_token: pulumi.Output[str] | None = None
    etcd_s3_credentials: EtcdS3Credentials | None = None


def needs_tailscale_key(cfg: ClusterConfig) -> bool:
    return cfg.tailscale.enabled or any(
        c.tailscale for pool in cfg.node_pools for c in pool.containers
    )


TAILSCALE_KEY = "nixos-k3s:tailscaleAuthKey"
HCLOUD_TOKEN = "hcloud:token"


def _check_hcloud_token() -> None:
    """The provider reads the token itself; it must exist, and not in plain text."""
    if pulumi.runtime.get_config(HCLOUD_TOKEN):
        if not pulumi.runtime.is_config_secret(HCLOUD_TOKEN):
            raise ConfigError(
                [
                    Problem(
                        HCLOUD_TOKEN,
                        "is stored in plain text in the stack file: set it again with "
                        f"{REQUIRED_SECRET_HINT} {HCLOUD_TOKEN} <token>",
                    )
                ]
            )
    elif not os.environ.get("HCLOUD_TOKEN"):
        raise ConfigError(
            [
                Problem(
                    HCLOUD_TOKEN,
                    "the Hetzner Cloud API token is not set: "
                    f"{REQUIRED_SECRET_HINT} {HCLOUD_TOKEN} <token> (or export HCLOUD_TOKEN)",
                )
            ]
        )


def _hcloud_token(cluster: ClusterConfig) -> pulumi.Output[str] | None:
    """The token the in-cluster Hetzner add-ons need (checked by _check_hcloud_token first)."""
    if not (uses_cloud_controller(cluster) or uses_csi(cluster)):
        return None
    raw = pulumi.runtime.get_config(HCLOUD_TOKEN) or os.environ.get("HCLOUD_TOKEN", "")
    return pulumi.Output.secret(str(raw))


def _tailscale_key(cluster: ClusterConfig) -> pulumi.Output[str] | None:
    """The tailscale auth key when the stack needs one; it must have been set encrypted."""
    if not needs_tailscale_key(cluster):
        return None
    raw = pulumi.runtime.get_config(TAILSCALE_KEY)
    if not raw:
        raise ConfigError(
            [
                Problem(
                    TAILSCALE_KEY,
                    "tailscale is enabled but the auth key is not set: "
                    f"{REQUIRED_SECRET_HINT} {TAILSCALE_KEY} <tskey-auth-...>",
                )
            ]
        )
    if not pulumi.runtime.is_config_secret(TAILSCALE_KEY):
        raise ConfigError(
            [
                Problem(
                    TAILSCALE_KEY,
                    "is stored in plain text in the stack file: set it again with "
                    f"{REQUIRED_SECRET_HINT} {TAILSCALE_KEY} <tskey-auth-...>",
                )
            ]
        )
    return pulumi.Output.secret(str(raw))


ETCD_S3_ACCESS_KEY = "nixos-k3s:etcdS3AccessKeyId"
ETCD_S3_SECRET_KEY = "nixos-k3s:etcdS3SecretAccessKey"
# What a systemd EnvironmentFile line holds unquoted: no whitespace, quotes, '\\' or '$'.
S3_CREDENTIAL = re.compile(r"^[A-Za-z0-9+/=_.:@-]{1,256}$")


@dataclass(frozen=True)
class EtcdS3Credentials:
    """The S3 key pair for etcd snapshot uploads, both Pulumi secrets."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]


def _etcd_s3_credentials(cluster: ClusterConfig) -> EtcdS3Credentials | None:
    """Both keys when snapshots go to S3; each must be set, encrypted and one line of text.

    The messages never quote a value: these are secrets.
    """
    if cluster.k3s.etcd_snapshots.s3 is None:
        return None
    problems: list[Problem] = []
    values: dict[str, str] = {}
    for key, example in ((ETCD_S3_ACCESS_KEY, "<access key>"), (ETCD_S3_SECRET_KEY, "<secret>")):
        raw = pulumi.runtime.get_config(key)
        hint = f"{REQUIRED_SECRET_HINT} {key} {example}"
        if not raw:
            problems.append(Problem(key, f"k3s.etcdSnapshots.s3 is set but this is not: {hint}"))
        elif not pulumi.runtime.is_config_secret(key):
            problems.append(
                Problem(key, f"is stored in plain text in the stack file: set it again with {hint}")
            )
        elif not S3_CREDENTIAL.match(str(raw)):
            problems.append(
                Problem(
                    key,
                    "has characters an S3 key does not have (whitespace, quotes, '\\' or '$'): "
                    f"set it again with {hint}",
                )
            )
        else:
            values[key] = str(raw)
    if problems:
        raise ConfigError(problems)
    return EtcdS3Credentials(
        access_key_id=pulumi.Output.secret(values[ETCD_S3_ACCESS_KEY]),
        secret_access_key=pulumi.Output.secret(values[ETCD_S3_SECRET_KEY]),
    )


def load_config() -> StackConfig:
    """The validated stack config; raises ConfigError (no traceback in `pulumi up`)."""
    config = pulumi.Config("nixos-k3s")
    try:
        raw = config.get_object("cluster")
    except pulumi.ConfigTypeError as exc:
        raise ConfigError([Problem("nixos-k3s:cluster", f"not a YAML mapping ({exc})")]) from None
    if raw is None:
        raise ConfigError(
            [Problem("nixos-k3s:cluster", "missing: the stack file must define the cluster")]
        )
    cluster = parse_cluster(raw)
    if cluster.provider == "hetzner":
        _check_hcloud_token()
    key = _tailscale_key(cluster)
    s3_credentials = _etcd_s3_credentials(cluster)
    for warning in semantic_warnings(cluster):
        pulumi.log.warn(str(warning))
    return StackConfig(
        cluster=cluster,
        tailscale_auth_key=key,
        hcloud_token=_hcloud_token(cluster),
        etcd_s3_credentials=s3_credentials,
    )
