"""Helm values for the Cilium chart on k3s, and their check against the chart's JSON schema.

Pure functions: the caller (the Cluster component) owns the helm.v3.Release. The schemas in
components/data/cilium/ are the `values.schema.json` files of the chart versions we support.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components import catalog, profiles
from components.config.derived import has_nested_nodes, node_count
from components.config.errors import Problem
from components.config.schema import ClusterConfig
from components.hosts.render import NodeImages
from components.k8s import valuesschema

CHART_NAME = "cilium"
CHART_REPO = "https://helm.cilium.io"
NAMESPACE = "kube-system"
SUPPORTED_VERSIONS = catalog.CILIUM_VERSIONS
DEFAULT_VERSION = catalog.CILIUM_DEFAULT_VERSION

SCHEMA_DIR = Path(__file__).parents[1] / "data" / "cilium"

# k3s hands each node a /24 of --cluster-cidr (its default --node-cidr-mask-size-ipv4); the
# operator carves the pool the same way so per-node pod ranges look alike either way.
POD_CIDR_MASK_SIZE = 24
MTU_RANGE = (1280, 9216)
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"

RoutingMode = Literal["tunnel", "native"]
TunnelProtocol = Literal["vxlan", "geneve"]

_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class CiliumValuesError(ValueError):
    """Values the chart's schema rejects; `problems` holds one line per violation, sorted."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(f"cilium values: {problem}" for problem in self.problems))


@dataclass(frozen=True)
class CiliumSettings:
    """Everything the rendered values depend on. Invalid combinations fail at construction."""

    api_host: str
    cluster_cidr: str
    node_count: int
    version: str = DEFAULT_VERSION
    api_port: int = 6443
    routing_mode: RoutingMode = "tunnel"
    tunnel_protocol: TunnelProtocol = "vxlan"
    native_routing_cidr: str | None = None
    mtu: int | None = None
    hubble: bool = False
    hubble_ui: bool | None = None
    operator_replicas: int | None = None
    extra_values: Mapping[str, Any] = field(default_factory=dict)
    # Nodes nested in nspawn containers on other nodes (k3s-containers.nix, mode host-users).
    nested_nodes: bool = False
    # Interface name patterns ('+' is Cilium's wildcard) the agents attach to; () = detect.
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_version(self.version)
        _check_api_host(self.api_host)
        _check_int("api_port", self.api_port, 1, 65535)
        _check_int("node_count", self.node_count, 1, None)
        _check_cluster_cidr(self.cluster_cidr)
        self._check_routing()
        if self.mtu is not None:
            _check_int("mtu", self.mtu, *MTU_RANGE)
        if why := hubble_ui_refusal(self.hubble, self.hubble_ui):
            raise ValueError(f"hubble_ui needs hubble: {why}")
        if self.operator_replicas is not None:
            _check_int("operator_replicas", self.operator_replicas, 1, None)
            if why := operator_replicas_refusal(self.operator_replicas, self.node_count):
                raise ValueError(
                    f"operator_replicas {self.operator_replicas} is out of range "
                    f"(1..{self.node_count}): {why}"
                )
        if not isinstance(self.extra_values, Mapping) or not all(
            isinstance(key, str) for key in self.extra_values
        ):
            raise ValueError("extra_values must be a mapping with string keys")

    def _check_routing(self) -> None:
        if self.routing_mode not in ("tunnel", "native"):
            raise ValueError(f"routing_mode {self.routing_mode!r}: use 'tunnel' or 'native'")
        if self.tunnel_protocol not in ("vxlan", "geneve"):
            raise ValueError(f"tunnel_protocol {self.tunnel_protocol!r}: use 'vxlan' or 'geneve'")
        if self.routing_mode == "tunnel":
            if self.native_routing_cidr is not None:
                raise ValueError(
                    "native_routing_cidr applies to routing_mode 'native' only; "
                    f"got {self.native_routing_cidr!r} with 'tunnel'"
                )
            return
        if self.native_routing_cidr is None:
            raise ValueError("routing_mode 'native' needs native_routing_cidr")
        native = _ipv4_network("native_routing_cidr", self.native_routing_cidr)
        pods = ipaddress.IPv4Network(self.cluster_cidr)
        if not pods.subnet_of(native):
            # Pod-to-pod traffic outside this range would be masqueraded to the node address.
            raise ValueError(
                f"native_routing_cidr {self.native_routing_cidr} must contain cluster_cidr "
                f"{self.cluster_cidr}"
            )

    @property
    def effective_operator_replicas(self) -> int:
        if self.operator_replicas is not None:
            return self.operator_replicas
        return default_operator_replicas(self.node_count)

    @property
    def effective_hubble_ui(self) -> bool:
        return self.hubble if self.hubble_ui is None else self.hubble_ui


def hubble_ui_refusal(hubble: bool, hubble_ui: bool | None) -> str | None:
    """Why Hubble's relay and UI cannot run without Hubble (None: they can)."""
    if hubble_ui and not hubble:
        return "the relay and UI read the agents' Hubble"
    return None


def operator_replicas_refusal(replicas: int, nodes: int) -> str | None:
    """Why more operator replicas than nodes cannot work (None: they fit)."""
    if replicas > nodes:
        # Required anti-affinity: the release would never become ready.
        return (
            f"{replicas} is more than the {nodes} node(s): the operator pods repel each other, "
            "so the extra ones stay Pending"
        )
    return None


def default_operator_replicas(node_count: int) -> int:
    """Two operators for failover when there are two nodes to put them on, else one."""
    return min(2, node_count)


def check_version(version: str) -> str:
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"Cilium version {version!r} is not supported; allowed: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return version


def schema_path(version: str) -> Path:
    """The shipped values.schema.json of chart `version`."""
    return SCHEMA_DIR / f"values.schema-{check_version(version)}.json"


@functools.cache
def _schema(version: str) -> dict[str, Any]:
    schema = json.loads(schema_path(version).read_text(encoding="utf-8"))
    valuesschema.check_schema(schema)
    return schema


def render_values(settings: CiliumSettings) -> dict[str, Any]:
    """Chart values for Cilium on k3s; `extra_values` merged last. Validated before returning."""
    values = deep_merge(_base_values(settings), settings.extra_values)
    validate_values(values, settings.version)
    return values


def _base_values(settings: CiliumSettings) -> dict[str, Any]:
    values: dict[str, Any] = {
        # k3s runs with --disable-kube-proxy; the schema of every supported chart types this key
        # [string, boolean] and the chart compares `toString` of it with "true".
        "kubeProxyReplacement": True,
        # Without kube-proxy nothing serves the kubernetes Service VIP before Cilium is up, so
        # the agents must reach a real API server address.
        "k8sServiceHost": settings.api_host,
        "k8sServicePort": settings.api_port,
        # cluster-pool is what Cilium's k3s guide uses (clusterPoolIPv4PodCIDRList = k3s's
        # --cluster-cidr): the operator hands out per-node ranges itself, so pods do not depend
        # on kube-controller-manager's node podCIDR allocation and stay inside the range the
        # k3s flags, firewall and host data were built for.
        "ipam": {
            "mode": "cluster-pool",
            "operator": {
                "clusterPoolIPv4PodCIDRList": [settings.cluster_cidr],
                "clusterPoolIPv4MaskSize": POD_CIDR_MASK_SIZE,
            },
        },
        # With --flannel-backend=none k3s leaves containerd's CNI directories at containerd's
        # defaults (it sets bin_dir/conf_dir only for its embedded flannel); pin the chart to
        # the same paths so a chart default change cannot split them.
        "cni": {"binPath": CNI_BIN_DIR, "confPath": CNI_CONF_DIR},
        "routingMode": settings.routing_mode,
        "operator": {
            "replicas": settings.effective_operator_replicas,
            "rollOutPods": True,
        },
        # Agents read cilium-config only at start: restart them when a deploy changes it.
        "rollOutCiliumPods": True,
        "hubble": _hubble_values(settings),
    }
    if settings.routing_mode == "tunnel":
        values["tunnelProtocol"] = settings.tunnel_protocol
    else:
        values["ipv4NativeRoutingCIDR"] = settings.native_routing_cidr
        values["autoDirectNodeRoutes"] = True
    if settings.mtu is not None:
        values["MTU"] = settings.mtu
    if settings.nested_nodes:
        # The host's agent attaches socket-LB programs to the host's cgroup root, which the
        # containers' cgroups inherit, and "the LB BPF maps cannot be shared" between agents on
        # one machine (cilium/cilium#14951). Kept to the host namespace (bpf-lb-sock-hostns-only),
        # an agent's programs leave other namespaces' sockets alone; pods there use the tc
        # service LB at their interface.
        values["socketLB"] = {"hostNamespaceOnly": True}
    if settings.devices:
        values["devices"] = list(settings.devices)
    return values


def _hubble_values(settings: CiliumSettings) -> dict[str, Any]:
    ui = settings.effective_hubble_ui
    return {
        "enabled": settings.hubble,
        "relay": {"enabled": ui},
        "ui": {"enabled": ui},
    }


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm-style merge: mappings merge key by key, anything else (lists too) is replaced."""
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_values(values: Mapping[str, Any], version: str) -> None:
    """Raise CiliumValuesError naming the path of every value the chart's schema rejects."""
    schema = _schema(check_version(version))
    problems = sorted(
        f"{_format_path(problem.path)}: {problem.message}"
        for problem in valuesschema.problems(_without_nulls(values), schema)
    )
    if problems:
        raise CiliumValuesError(problems)


def unknown_value_paths(values: Mapping[str, Any], version: str) -> tuple[str, ...]:
    """Keys the chart does not declare (likely typos): worth a warning, not an error.

    The schemas allow additional properties everywhere, so Helm would silently ignore these.
    Maps whose defaults carry example keys (e.g. nodeSelector) can show false positives.
    """
    found: list[str] = []
    _collect_unknown(values, _schema(check_version(version)), (), found)
    return tuple(sorted(found))


def _collect_unknown(
    value: Any, schema: Mapping[str, Any], path: tuple[str | int, ...], found: list[str]
) -> None:
    properties = schema.get("properties")
    items = schema.get("items")
    if isinstance(value, Mapping) and isinstance(properties, Mapping):
        for key, child in value.items():
            if key in properties:
                _collect_unknown(child, properties[key], (*path, key), found)
            else:
                found.append(_format_path((*path, key)))
    elif isinstance(value, list) and isinstance(items, Mapping):
        for index, child in enumerate(value):
            _collect_unknown(child, items, (*path, index), found)


def _without_nulls(value: Any) -> Any:
    # Helm deletes keys set to null while merging user values over the chart's defaults, before
    # it validates; a null is how a user drops one of our rendered keys.
    if isinstance(value, Mapping):
        return {key: _without_nulls(child) for key, child in value.items() if child is not None}
    if isinstance(value, list):
        return [_without_nulls(child) for child in value]
    return value


def _format_path(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text or "(root)"


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} {value} is out of range ({bound})")


def _check_api_host(host: str) -> None:
    if not isinstance(host, str) or not host:
        raise ValueError(f"api_host must be a non-empty address, got {host!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host in ("localhost", "auto") or not _HOSTNAME.match(host):
            raise ValueError(
                f"api_host {host!r} must be an IP address or DNS name every node can reach"
            ) from None
        return
    if address.is_loopback or address.is_unspecified:
        raise ValueError(
            f"api_host {host} is not reachable from other nodes; use the first server's "
            "private address"
        )


def _ipv4_network(name: str, cidr: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(cidr)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} {cidr!r} is not an IPv4 network: {error}") from None


def _check_cluster_cidr(cidr: str) -> None:
    network = _ipv4_network("cluster_cidr", cidr)
    if network.prefixlen > POD_CIDR_MASK_SIZE:
        raise ValueError(
            f"cluster_cidr {cidr} is smaller than one node's /{POD_CIDR_MASK_SIZE} pod range"
        )


# --- the stack's Cilium settings ----------------------------------------------------------

# tailscale0's MTU: with tailscale on, k3s uses the tailnet addresses between nodes.
TAILSCALE_MTU = 1280


def _node_link_mtu(cfg: ClusterConfig) -> int | None:
    """MTU of the link between nodes, for Cilium (None: let Cilium detect it)."""
    if cfg.tailscale.enabled:
        return TAILSCALE_MTU
    return profiles.profile(cfg.provider).cilium_mtu


def _cilium_devices(cfg: ClusterConfig) -> tuple[str, ...]:
    if not has_nested_nodes(cfg):
        return ()
    devices = profiles.profile(cfg.provider).nested_node_devices
    return devices + (("tailscale0",) if cfg.tailscale.enabled else ())


def cilium_settings(cfg: ClusterConfig, api_host: str, nodes: int) -> CiliumSettings:
    c = cfg.cilium
    return CiliumSettings(
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


# Stands in for the API address when values are checked before machines exist: a documentation
# address (RFC 5737), never a host's, so it cannot be mistaken for a real setting.
PLACEHOLDER_API_HOST = "192.0.2.1"


def _cilium_invariants(cfg: ClusterConfig, values: dict[str, Any], nodes: int) -> Iterable[Problem]:
    """What cilium.values may not override: the cluster does not work without these."""
    if str(values.get("kubeProxyReplacement")).lower() != "true":
        yield Problem(
            "cilium.values.kubeProxyReplacement",
            "must stay true: k3s runs with --disable-kube-proxy, so nothing else serves Services",
        )
    if "k8sServiceHost" in cfg.cilium.values:
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
    if isinstance(replicas, int) and (why := operator_replicas_refusal(replicas, nodes)):
        yield Problem("cilium.values.operator.replicas", why)


def stack_problems(cfg: ClusterConfig, earlier: Sequence[Problem]) -> Iterable[Problem]:
    """The stack's Cilium values, rendered and checked against the chart's schema and the
    invariants; only for k3s.cni cilium and once the cilium fields themselves are sound (one
    mistake is not reported twice). A `config.load.parse_cluster` extra check."""
    if cfg.k3s.cni != "cilium":
        return
    c = cfg.cilium
    nodes = node_count(cfg)
    fields = []
    if hubble_ui_refusal(c.hubble.enabled, c.hubble.ui):
        fields.append(Problem("cilium.hubble.ui", "needs cilium.hubble.enabled: true"))
    replicas = c.operator_replicas
    if replicas is not None and (why := operator_replicas_refusal(replicas, nodes)):
        fields.append(Problem("cilium.operatorReplicas", why))
    yield from fields
    if fields or any(p.path.startswith("cilium") for p in earlier):
        return
    refusal = profiles.profile(cfg.provider).native_routing_refusal
    if refusal and c.routing_mode == "native":
        yield Problem("cilium.routingMode", refusal)
        return
    if nodes == 0:
        return
    try:
        values = render_values(cilium_settings(cfg, PLACEHOLDER_API_HOST, nodes))
        yield from _cilium_invariants(cfg, values, nodes)
    except CiliumValuesError as exc:
        for line in exc.problems:
            yield Problem(
                "cilium.values", f"rejected by the chart schema {cfg.cilium.version}: {line}"
            )
    except ValueError as exc:
        yield Problem("cilium", str(exc))


# --- the images the chart runs, pulled by the nodes while their k3s starts ------------------

CHART_IMAGES_PATH = SCHEMA_DIR / "chart-images.json"
# The chart defaults that decide which images its pods run, per version: these keys of each
# version's values.yaml, and nothing else of it (tests/cilium/test_cilium_images.py holds the
# file to the charts' values.yaml).
IMAGE_VALUE_PATHS: tuple[tuple[str, ...], ...] = (
    ("image",),
    ("l7Proxy",),
    ("upgradeCompatibility",),
    ("agent",),
    ("envoy", "enabled"),
    ("envoy", "image"),
    ("operator", "enabled"),
    ("operator", "image"),
    ("eni", "enabled"),
    ("azure", "enabled"),
    ("alibabacloud", "enabled"),
    ("hubble", "relay", "image"),
    ("hubble", "ui", "frontend", "image"),
    ("hubble", "ui", "backend", "image"),
)


def image_defaults(chart_values: Mapping[str, Any]) -> dict[str, Any]:
    """The IMAGE_VALUE_PATHS of a chart's default values.yaml, as chart-images.json holds them."""
    picked: dict[str, Any] = {}
    for path in IMAGE_VALUE_PATHS:
        value: Any = chart_values
        for key in path:
            value = value[key]
        node = picked
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = copy.deepcopy(value)
    return picked


@functools.cache
def _image_defaults(version: str) -> dict[str, Any]:
    return json.loads(CHART_IMAGES_PATH.read_text(encoding="utf-8"))[check_version(version)]


@dataclass(frozen=True)
class ChartImages:
    """The images of the chart's pods, as its templates write them into the pod specs."""

    # DaemonSets, one pod on every node: the agent (its init containers run the same image)
    # and cilium-envoy when the chart runs it apart from the agent.
    every_node: tuple[str, ...]
    # Deployments, a few pods in the cluster: the operator, Hubble's relay and UI.
    cluster: tuple[str, ...]


def _image(section: Mapping[str, Any]) -> str:
    """templates/_helpers.tpl `cilium.image`: the override, else repository[:tag][@digest]."""
    if section.get("override"):
        return str(section["override"])
    tag = f":{section['tag']}" if section.get("tag") else ""
    digest = f"@{section['digest']}" if section.get("useDigest") else ""
    return f"{section['repository']}{tag}{digest}"


# templates/cilium-operator/_helpers.tpl `cilium.operator.cloud`: the first IPAM cloud enabled
# names the operator's image and its digest; none is `generic`.
_OPERATOR_CLOUDS = (("eni", "aws"), ("azure", "azure"), ("alibabacloud", "alibabacloud"))


def _operator_image(values: Mapping[str, Any]) -> str:
    """`cilium.operator.image`: <repository>-<cloud><suffix>:<tag>[@<cloud>Digest]."""
    image = values["operator"]["image"]
    if image.get("override"):
        return str(image["override"])
    cloud = next(
        (name for key, name in _OPERATOR_CLOUDS if (values.get(key) or {}).get("enabled")),
        "generic",
    )
    digest = f"@{image[f'{cloud}Digest']}" if image.get("useDigest") else ""
    tag = f":{image['tag']}" if image.get("tag") else ""
    return f"{image['repository']}-{cloud}{image.get('suffix') or ''}{tag}{digest}"


def _envoy_daemonset(values: Mapping[str, Any]) -> bool:
    """`envoyDaemonSetEnabled`: off without l7Proxy; envoy.enabled when set; else on for a new
    installation (upgradeCompatibility unset or >= 1.16)."""
    if not values.get("l7Proxy"):
        return False
    enabled = (values.get("envoy") or {}).get("enabled")
    if enabled is not None:
        return bool(enabled)
    compatibility = values.get("upgradeCompatibility")
    if compatibility is None:
        return True
    major, minor = (int(part) for part in str(compatibility).split(".")[:2])
    return (major, minor) >= (1, 16)


def chart_images(values: Mapping[str, Any], version: str) -> ChartImages:
    """The images chart `version` runs with `values` (what render_values returns) over its
    defaults, for the nodes to pull before the pods ask for them."""
    merged = deep_merge(_image_defaults(version), _without_nulls(values))
    every_node: list[str] = []
    if merged.get("agent", True):
        every_node.append(_image(merged["image"]))
    if _envoy_daemonset(merged):
        every_node.append(_image(merged["envoy"]["image"]))
    cluster: list[str] = []
    if merged["operator"].get("enabled", True):
        cluster.append(_operator_image(merged))
    hubble = merged.get("hubble") or {}
    if hubble.get("enabled") and (hubble.get("relay") or {}).get("enabled"):
        cluster.append(_image(hubble["relay"]["image"]))
    if hubble.get("enabled") and (hubble.get("ui") or {}).get("enabled"):
        cluster += [
            _image(hubble["ui"]["frontend"]["image"]),
            _image(hubble["ui"]["backend"]["image"]),
        ]
    return ChartImages(every_node=tuple(every_node), cluster=tuple(cluster))


def node_images(cfg: ClusterConfig) -> NodeImages:
    """What each kind of node pulls while its k3s starts: every node the DaemonSets' images,
    the servers the Deployments' too (they are the first nodes to register, and the operator,
    which tolerates every taint, must run before any node gets its pod CIDR). None for flannel,
    which k3s runs itself."""
    if cfg.k3s.cni != "cilium":
        return NodeImages()
    nodes = max(node_count(cfg), 1)
    images = chart_images(
        render_values(cilium_settings(cfg, PLACEHOLDER_API_HOST, nodes)), cfg.cilium.version
    )
    return NodeImages(server=images.every_node + images.cluster, agent=images.every_node)
