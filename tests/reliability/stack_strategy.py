"""Hypothesis strategy for whole stacks, driven by the stack model's JSON schema.

Every property of ClusterConfig's schema is generated (fields added later are picked up from
the schema too). Fields with a known meaning draw from curated valid and invalid values
(FIELD_VALUES, keyed by schema path such as `nodePools[].taints[].value`); the others from
their schema type, bounds and enum. With a target (one of TARGETS, the leaf fields) that one
field takes an invalid value, so the check must catch that value on its own; without, every
field is well-formed on its own and the examples exercise the whole-stack checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from components.config import ClusterConfig
from components.k8s.cilium import SUPPORTED_VERSIONS
from tests.reliability.test_api_endpoint import ACCEPTED, REFUSED

KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3mQ2bJ0pM1wq6Zr7s8S3bA2VfM0g5qTj9Gkq1mLrX "
    "ops@example.com"
)
SCHEMA = ClusterConfig.model_json_schema(by_alias=True)
DEFS: dict[str, Any] = SCHEMA["$defs"]
# Schema paths the strategy generated, over all examples (the test checks it covers them all).
VISITED: set[str] = set()

Values = tuple[list[Any], list[Any]]  # (valid, invalid)

LABELS: Values = (
    [{}, {"role": "edge"}, {"example.com/tier": "a.b-c_d"}, {"empty": ""}],
    [{"Bad Key": "x"}, {"k": "a b"}, {"k": "-x"}, {"a/b/c": "x"}, {"k": "v" * 64}],
)
KUBELET: Values = (
    [{}, {"maxPods": 200}, {"evictionHard": {"memory.available": "100Mi"}}],
    [],
)
BAD_CIDRS = ["10.42.0.1/16", "fd00::/8", "garbage", "10.0.0.0/33", ""]
SOURCES: Values = (
    [["198.51.100.0/24"], ["0.0.0.0/0", "::/0"], ["2001:db8::/32"]],
    [[], ["198.51.100.1/24"], ["nope"]],
)
TAINT_KEYS: Values = (["dedicated", "example.com/gpu", "a.b_c-d"], ["Bad Key", "", "-x", "a/b/c"])
TAINT_VALUES: Values = (["", "gpu", "a.b-c_d", "x" * 63], ["a b", "-a", "x" * 64, "a/b", "$x"])
NAMES: Values = (["t", "prod", "dev-1", "k" * 20], ["Bad", "-x", "a_b", "", "a" * 64])

FIELD_VALUES: dict[str, Values] = {
    "name": (NAMES[0], [*NAMES[1], "colima", "colima-dev"]),
    "nodePools[].name": (["control", "workers", "gpu", "p" * 30], NAMES[1]),
    "nodePools[].count": ([0, 1, 1, 2, 3, 3], [-1, 101, "two"]),
    "nodePools[].serverType": (["cx23", "cx33", "cax21", "ccx13", None], ["cx22", "huge"]),
    "nodePools[].locations[]": (["fsn1", "nbg1", "hel1", "ash"], ["mars"]),
    "nodePools[].labels": LABELS,
    "nodePools[].kubelet": KUBELET,
    "nodePools[].ipOffset": ([None, 2, 10, 100, 240], [1, 0, "x"]),
    "nodePools[].taints[].key": TAINT_KEYS,
    "nodePools[].taints[].value": TAINT_VALUES,
    "nodePools[].containers[].name": (["edge", "runner", "a" * 11], ["1edge", "a" * 12, "Edge"]),
    "nodePools[].containers[].labels": LABELS,
    "nodePools[].containers[].kubelet": KUBELET,
    "nodePools[].containers[].taints[].key": TAINT_KEYS,
    "nodePools[].containers[].taints[].value": TAINT_VALUES,
    "sshKeys[]": ([KEY], ["not a key", "-----BEGIN OPENSSH PRIVATE KEY-----"]),
    "adminUsers[]": (
        ["ops", "alice", "a" * 31, "deploy-1"],
        ["root", "nixbld1", "sshd", "systemd-network", "1ops", "a" * 32, "Ops"],
    ),
    "apiEndpoint": ([None, *ACCEPTED], REFUSED),
    "k3s.package": (["k3s", "k3s_1_33", "k3s_1_34"], ["k3s-1.33", "kubernetes"]),
    "k3s.clusterCidr": (["10.42.0.0/16", "172.16.0.0/16", "10.43.0.0/16"], BAD_CIDRS),
    "k3s.serviceCidr": (["10.43.0.0/16", "10.43.0.0/16", "10.96.0.0/12"], BAD_CIDRS),
    "k3s.clusterDns": (["10.43.0.10"], ["10.43.0.300", "fd00::10", "10.44.0.10"]),
    "k3s.bootstrapHost": ([None, None, None, "t-control-1"], ["nope", "", "t-workers-1"]),
    "k3s.tlsSans[]": (
        ["api.example.com", "10.0.0.1", "2001:db8::1", "API.Example.com", "k8s"],
        ["Bad_Name!", "*.example.com", "[2001:db8::1]", "a b", "999.999.999.999", ""],
    ),
    "k3s.extraFlags[]": (
        ["--kubelet-arg=max-pods=200", "--node-label=a=b", "--debug", "--etcd-expose-metrics"],
        ["--Foo=1", "--a b", "-v", "--x='a'", "--cluster-cidr=10.0.0.0/8", "--flannel-backend=x"],
    ),
    "k3s.gracefulShutdown.gracePeriod": (["30s", "2m", "1h30m"], ["30", "1d", ""]),
    "k3s.gracefulShutdown.criticalPodsGracePeriod": (["10s", "1m"], ["ten", "5"]),
    "k3s.kubelet": KUBELET,
    "k3s.etcdSnapshots.scheduleCron": (
        ["0 */12 * * *", "5,35 1-23/2 * * 0-6", "0  3 * * *", "*/15 * 1-31 */3 *"],
        ["a b c d e", "0 */6 * *", "60 * * * *", "0 0 0 * *", "*/0 * * * *", "@daily"],
    ),
    "cilium.version": (list(SUPPORTED_VERSIONS), ["1.0.0", "latest"]),
    "cilium.nativeRoutingCidr": ([None, None, "10.42.0.0/16"], ["10.42.0.1/16", "x"]),
    "cilium.operatorReplicas": ([None, 1, 2], [0, "two"]),
    "cilium.values": (
        [{}, {"hubble": {"relay": {"enabled": False}}}, {"debug": {"enabled": True}}],
        [
            {"kubeProxyReplacement": False},
            {"operator": {"replicas": 99}},
            {"operator": "x"},
            {"MTU": "1450"},
            {"k8sServiceHost": "x"},
            {"unknownTopLevelKey": 1},
        ],
    ),
    "network.ipRange": (["10.0.0.0/16", "10.0.0.0/12"], ["10.0.0.1/16", "nope", "10.0.0.0/8"]),
    "network.subnet": (["10.0.1.0/24", "10.0.64.0/18"], ["10.1.0.0/24", "10.0.1.1/24"]),
    "network.containerCidr": (["10.250.0.0/16", "10.200.0.0/14"], ["10.250.0.0/24", "x"]),
    "firewall.sshSources": SOURCES,
    "firewall.apiSources": SOURCES,
    "firewall.extraRules[].port": (["443", "30000-32767"], ["0", "1-2-3", "http", "70000"]),
    "firewall.extraRules[].sources": SOURCES,
    "hetzner.image": (["ubuntu-24.04", "debian-12"], [7]),
}


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return DEFS[ref.rsplit("/", 1)[-1]] if ref else node


def _choose(draw: Callable[..., Any], values: Values, path: str, target: str) -> Any:
    """A valid value, or an invalid one where `path` is the example's target."""
    valid, invalid = values
    if invalid and (target in (path, path.removesuffix("[]")) or not valid):
        return draw(st.sampled_from(invalid))
    return draw(st.sampled_from(valid))


def _from_schema(draw: Callable[..., Any], node: dict[str, Any], path: str, target: str) -> Any:
    if path in FIELD_VALUES:
        return _choose(draw, FIELD_VALUES[path], path, target)
    node = _resolve(node)
    if "anyOf" in node:
        options = [_resolve(n) for n in node["anyOf"]]
        real = [n for n in options if n.get("type") != "null"]
        if len(real) < len(options) and not target.startswith(path) and draw(st.booleans()):
            return None
        return _from_schema(draw, real[0], path, target)
    kind = node.get("type")
    if "enum" in node or "const" in node:
        allowed = node.get("enum", [node.get("const")])
        return _choose(draw, (allowed, ["not-one-of-them"]), path, target)
    if kind == "boolean":
        return _choose(draw, ([True, False], ["maybe"]), path, target)
    if kind == "integer":
        low = node.get("minimum", 0)
        high = node.get("maximum", low + 1000)
        valid = sorted({low, high, node.get("default", low), min(high, low + 3)})
        return _choose(draw, (valid, [low - 1, high + 1, "12"]), path, target)
    if kind == "object" and "properties" in node:
        return _object(draw, node, path, target)
    if kind == "object":
        return _choose(draw, ([{}], ["not-a-mapping"]), path, target)
    if kind == "array":
        size = draw(st.integers(1 if target.startswith(path) else 0, 2))
        return [_from_schema(draw, node["items"], f"{path}[]", target) for _ in range(size)]
    default = node.get("default")
    return _choose(draw, ([default] if isinstance(default, str) else ["x"], [12]), path, target)


def _object(
    draw: Callable[..., Any], node: dict[str, Any], path: str, target: str, skip: str = ""
) -> dict:
    required = set(node.get("required", ()))
    out = {}
    for key, child in node["properties"].items():
        child_path = f"{path}.{key}" if path else key
        if key == skip:
            continue
        wanted = target == child_path or target.startswith((f"{child_path}.", f"{child_path}["))
        if key in required or wanted or draw(st.integers(0, 3)) == 0:
            VISITED.add(child_path)
            out[key] = _from_schema(draw, child, child_path, target)
    return out


def schema_paths(node: dict[str, Any] = SCHEMA, path: str = "") -> set[str]:
    """Every property path of the stack schema."""
    node = _resolve(node)
    paths: set[str] = set()
    for option in node.get("anyOf", ()):
        paths |= schema_paths(option, path)
    if node.get("type") == "array":
        paths |= schema_paths(node["items"], f"{path}[]")
    for key, child in node.get("properties", {}).items():
        child_path = f"{path}.{key}" if path else key
        paths |= {child_path} | schema_paths(child, child_path)
    return paths


def freeform_paths(node: dict[str, Any] = SCHEMA, path: str = "") -> set[str]:
    """Paths of free-form mappings (labels, kubelet, chart values): any key may follow."""
    node = _resolve(node)
    paths: set[str] = set()
    if node.get("type") == "object" and "properties" not in node and path:
        paths.add(path)
    for option in node.get("anyOf", ()):
        paths |= freeform_paths(option, path)
    if node.get("type") == "array":
        paths |= freeform_paths(node["items"], f"{path}[]")
    for key, child in node.get("properties", {}).items():
        paths |= freeform_paths(child, f"{path}.{key}" if path else key)
    return paths


def _leaves(paths: set[str]) -> list[str]:
    """Paths with no property below them: where an invalid value can be put."""
    return sorted(p for p in paths if not any(q.startswith((f"{p}.", f"{p}[].")) for q in paths))


# An example's target: the one field that gets an invalid value.
TARGETS = _leaves(schema_paths())


def _pool(draw: Callable[..., Any], provider: str, role: str, target: str) -> dict[str, Any]:
    pool = _object(draw, _resolve(DEFS["NodePool"]), "nodePools[]", target)
    if target != "nodePools[].role":
        pool["role"] = role
    if role == "server" and target != "nodePools[].count":
        pool["count"] = draw(st.sampled_from([1, 1, 3]))
    if not target.startswith("nodePools[].containers"):
        for j, container in enumerate(pool.get("containers", [])):
            container["name"] = f"c{j}{container.get('name', '')}"[:11]
    if provider == "hetzner" and not target.startswith(
        ("nodePools[].serverType", "nodePools[].loc")
    ):
        if pool.get("serverType") is None:
            pool["serverType"] = draw(st.sampled_from(["cx33", "cax21"]))
        pool["locations"] = pool.get("locations") or ["fsn1"]
    if provider == "colima" and not target.startswith(
        ("nodePools[].serverType", "nodePools[].loc")
    ):
        pool.pop("serverType", None)
        pool.pop("locations", None)
    return pool


@st.composite
def stacks(draw: Callable[..., Any], target: str = "") -> dict[str, Any]:
    """The `nixos-k3s:cluster` mapping of a stack file; `target` (a TARGETS path) is invalid."""
    stack = _object(draw, SCHEMA, "", target, skip="nodePools")  # made below, per provider
    provider = stack["provider"]
    if provider not in ("hetzner", "colima"):
        return stack
    if provider == "hetzner" and stack.get("firewall") is None:
        VISITED.update({"firewall", "firewall.sshSources", "firewall.apiSources"})
        stack["firewall"] = {"sshSources": ["198.51.100.0/24"], "apiSources": ["0.0.0.0/0"]}
    pools = [_pool(draw, provider, "server", target)]
    pools += [_pool(draw, provider, "agent", target) for _ in range(draw(st.integers(0, 2)))]
    if not target.startswith("nodePools[].name"):
        for i, pool in enumerate(pools):
            if [p.get("name") for p in pools].count(pool.get("name")) > 1:
                pool["name"] = f"{str(pool.get('name', 'p'))[:17]}{i}"
    VISITED.add("nodePools")
    stack["nodePools"] = pools
    return stack
