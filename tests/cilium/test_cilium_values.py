"""render_values: what Cilium on k3s gets for representative settings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.k8s.cilium import (
    SUPPORTED_VERSIONS,
    CiliumSettings,
    deep_merge,
    render_values,
    validate_values,
)

API = "10.0.1.2"
PODS = "10.42.0.0/16"


def settings(**overrides: Any) -> CiliumSettings:
    fields: dict[str, Any] = {"api_host": API, "cluster_cidr": PODS, "node_count": 3}
    fields.update(overrides)
    return CiliumSettings(**fields)


def test_tunnel_on_hetzner_renders_exactly() -> None:
    values = render_values(settings(mtu=1450, hubble=True))
    assert values == {
        "kubeProxyReplacement": True,
        "k8sServiceHost": API,
        "k8sServicePort": 6443,
        "ipam": {
            "mode": "cluster-pool",
            "operator": {
                "clusterPoolIPv4PodCIDRList": [PODS],
                "clusterPoolIPv4MaskSize": 24,
            },
        },
        "cni": {"binPath": "/opt/cni/bin", "confPath": "/etc/cni/net.d"},
        "routingMode": "tunnel",
        "tunnelProtocol": "vxlan",
        "MTU": 1450,
        "operator": {"replicas": 2, "rollOutPods": True},
        "rollOutCiliumPods": True,
        "hubble": {"enabled": True, "relay": {"enabled": True}, "ui": {"enabled": True}},
    }


def test_native_routing_sets_cidr_and_direct_routes_and_no_tunnel() -> None:
    values = render_values(
        settings(routing_mode="native", native_routing_cidr="10.0.0.0/8", tunnel_protocol="geneve")
    )
    assert values["routingMode"] == "native"
    assert values["ipv4NativeRoutingCIDR"] == "10.0.0.0/8"
    assert values["autoDirectNodeRoutes"] is True
    assert "tunnelProtocol" not in values


def test_geneve_tunnel() -> None:
    values = render_values(settings(tunnel_protocol="geneve"))
    assert values["tunnelProtocol"] == "geneve"
    assert "ipv4NativeRoutingCIDR" not in values
    assert "autoDirectNodeRoutes" not in values


def test_colima_leaves_mtu_to_autodetection() -> None:
    assert "MTU" not in render_values(settings(mtu=None))


def test_pod_pool_follows_cluster_cidr() -> None:
    values = render_values(settings(cluster_cidr="10.100.0.0/20"))
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["10.100.0.0/20"]


def test_api_address_and_port_are_passed_through() -> None:
    values = render_values(settings(api_host="192.168.5.15", api_port=16443))
    assert (values["k8sServiceHost"], values["k8sServicePort"]) == ("192.168.5.15", 16443)


@pytest.mark.parametrize(
    ("hubble", "hubble_ui", "expected"),
    [
        (False, None, (False, False, False)),
        (True, None, (True, True, True)),
        (True, False, (True, False, False)),
        (True, True, (True, True, True)),
    ],
)
def test_hubble_switches(
    hubble: bool, hubble_ui: bool | None, expected: tuple[bool, bool, bool]
) -> None:
    section = render_values(settings(hubble=hubble, hubble_ui=hubble_ui))["hubble"]
    assert (section["enabled"], section["relay"]["enabled"], section["ui"]["enabled"]) == expected


@pytest.mark.parametrize(("nodes", "replicas"), [(1, 1), (2, 2), (5, 2)])
def test_operator_replicas_default_to_two_at_most(nodes: int, replicas: int) -> None:
    assert render_values(settings(node_count=nodes))["operator"]["replicas"] == replicas


def test_explicit_operator_replicas_up_to_node_count() -> None:
    assert render_values(settings(node_count=3, operator_replicas=3))["operator"]["replicas"] == 3


def test_extra_values_override_and_deep_merge_last() -> None:
    extra = {
        "MTU": 1400,
        "operator": {"replicas": 1},
        "hubble": {"relay": {"rollOutPods": True}},
        "bpf": {"masquerade": True},
    }
    values = render_values(settings(mtu=1450, hubble=True, extra_values=extra))
    assert values["MTU"] == 1400
    assert values["operator"] == {"replicas": 1, "rollOutPods": True}
    assert values["hubble"]["relay"] == {"enabled": True, "rollOutPods": True}
    assert values["hubble"]["ui"] == {"enabled": True}
    assert values["bpf"] == {"masquerade": True}


def test_extra_values_replace_lists_instead_of_appending() -> None:
    extra = {"ipam": {"operator": {"clusterPoolIPv4PodCIDRList": ["10.60.0.0/16"]}}}
    values = render_values(settings(extra_values=extra))
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["10.60.0.0/16"]
    assert values["ipam"]["mode"] == "cluster-pool"


def test_extra_null_drops_a_rendered_key_as_helm_does() -> None:
    values = render_values(settings(mtu=1450, extra_values={"MTU": None}))
    assert values["MTU"] is None


def test_rendering_is_deterministic_and_does_not_alias_inputs() -> None:
    extra = {"hubble": {"ui": {"frontend": {"resources": {"limits": {"cpu": "100m"}}}}}}
    config = settings(hubble=True, extra_values=extra)
    first = render_values(config)
    second = render_values(config)
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    first["hubble"]["ui"]["frontend"]["resources"]["limits"]["cpu"] = "1"
    assert extra["hubble"]["ui"]["frontend"]["resources"]["limits"]["cpu"] == "100m"
    assert render_values(config) == second


def test_deep_merge_leaves_both_inputs_untouched() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    override = {"a": {"c": [3]}, "e": {"f": 2}}
    assert deep_merge(base, override) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert override == {"a": {"c": [3]}, "e": {"f": 2}}


def test_deep_merge_replaces_a_mapping_with_a_scalar_and_back() -> None:
    assert deep_merge({"a": {"b": 1}}, {"a": "x"}) == {"a": "x"}
    assert deep_merge({"a": "x"}, {"a": {"b": 1}}) == {"a": {"b": 1}}


REPRESENTATIVE = [
    {"mtu": 1450, "hubble": True},
    {"mtu": None, "hubble": False, "node_count": 1},
    {"routing_mode": "native", "native_routing_cidr": "10.0.0.0/8", "mtu": 1450},
    {"tunnel_protocol": "geneve", "hubble": True, "hubble_ui": False, "operator_replicas": 3},
]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("overrides", REPRESENTATIVE)
def test_every_rendering_validates_against_every_shipped_schema(
    version: str, overrides: dict[str, Any]
) -> None:
    values = render_values(settings(version=version, **overrides))
    validate_values(values, version)
    for other in SUPPORTED_VERSIONS:
        validate_values(values, other)
