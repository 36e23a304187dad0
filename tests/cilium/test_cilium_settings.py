"""CiliumSettings refuses what would install a broken or unreachable Cilium."""

from __future__ import annotations

import re
from typing import Any

import pytest

from components.k8s.cilium import CiliumSettings, default_operator_replicas


def settings(**overrides: Any) -> CiliumSettings:
    fields: dict[str, Any] = {"api_host": "10.0.1.2", "cluster_cidr": "10.42.0.0/16"}
    fields.update({"node_count": 3, **overrides})
    return CiliumSettings(**fields)


def test_defaults() -> None:
    config = settings()
    assert (config.version, config.api_port, config.routing_mode, config.tunnel_protocol) == (
        "1.19.6",
        6443,
        "tunnel",
        "vxlan",
    )
    assert (config.mtu, config.hubble, config.effective_hubble_ui) == (None, False, False)
    assert config.effective_operator_replicas == 2


@pytest.mark.parametrize(("nodes", "replicas"), [(1, 1), (2, 2), (3, 2), (100, 2)])
def test_default_operator_replicas(nodes: int, replicas: int) -> None:
    assert default_operator_replicas(nodes) == replicas


def test_native_without_cidr_is_refused() -> None:
    with pytest.raises(ValueError, match="routing_mode 'native' needs native_routing_cidr"):
        settings(routing_mode="native")


def test_native_cidr_must_contain_the_pod_cidr() -> None:
    with pytest.raises(ValueError, match=r"must contain cluster_cidr 10\.42\.0\.0/16"):
        settings(routing_mode="native", native_routing_cidr="10.0.0.0/16")


def test_native_cidr_in_tunnel_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="applies to routing_mode 'native' only"):
        settings(native_routing_cidr="10.0.0.0/8")


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0.1/8", "fd00::/64", "banana"])
def test_native_cidr_must_be_an_ipv4_network(cidr: str) -> None:
    with pytest.raises(ValueError, match=r"native_routing_cidr .* is not an IPv4 network"):
        settings(routing_mode="native", native_routing_cidr=cidr)


@pytest.mark.parametrize(("replicas", "nodes"), [(3, 2), (2, 1), (0, 3), (-1, 3)])
def test_operator_replicas_bound_by_node_count(replicas: int, nodes: int) -> None:
    with pytest.raises(ValueError, match=f"operator_replicas {replicas} is out of range"):
        settings(operator_replicas=replicas, node_count=nodes)


@pytest.mark.parametrize("replicas", [True, 1.0, "1"])
def test_operator_replicas_must_be_an_integer(replicas: object) -> None:
    with pytest.raises(ValueError, match="operator_replicas must be an integer"):
        settings(operator_replicas=replicas)


def test_node_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="node_count 0 is out of range"):
        settings(node_count=0)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "auto", "", "Bad_Host", "10.0.1.2:6443"]
)
def test_api_host_must_be_reachable_from_other_nodes(host: str) -> None:
    with pytest.raises(ValueError, match="api_host"):
        settings(api_host=host)


@pytest.mark.parametrize("host", ["10.0.1.2", "fd00::2", "api.cluster.internal"])
def test_api_host_accepts_addresses_and_names(host: str) -> None:
    assert settings(api_host=host).api_host == host


@pytest.mark.parametrize("port", [0, 65536, "6443"])
def test_api_port_range(port: object) -> None:
    with pytest.raises(ValueError, match="api_port"):
        settings(api_port=port)


@pytest.mark.parametrize("cidr", ["10.42.0.1/16", "10.42.0.0/25", "fd00::/48", "10.42.0.0"])
def test_cluster_cidr_must_be_an_ipv4_network_holding_a_node_range(cidr: str) -> None:
    with pytest.raises(ValueError, match="cluster_cidr"):
        settings(cluster_cidr=cidr)


@pytest.mark.parametrize("mtu", [1279, 9217, "1450", 1450.0])
def test_mtu_must_be_a_sane_integer(mtu: object) -> None:
    with pytest.raises(ValueError, match="mtu"):
        settings(mtu=mtu)


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="routing_mode 'direct'"):
        settings(routing_mode="direct")
    with pytest.raises(ValueError, match="tunnel_protocol 'wireguard'"):
        settings(tunnel_protocol="wireguard")


def test_unsupported_version_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("allowed: 1.18.12, 1.19.6, 1.20.0")):
        settings(version="1.16.0")


def test_hubble_ui_needs_hubble() -> None:
    with pytest.raises(ValueError, match="hubble_ui needs hubble"):
        settings(hubble_ui=True)


def test_extra_values_need_string_keys() -> None:
    with pytest.raises(ValueError, match="extra_values"):
        settings(extra_values={1: "x"})
    with pytest.raises(ValueError, match="extra_values"):
        settings(extra_values=[("MTU", 1)])
