"""validate_values / schema_path / unknown_value_paths against the shipped chart schemas."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema.validators import validator_for

from components.k8s.cilium import (
    DEFAULT_VERSION,
    SCHEMA_DIR,
    SUPPORTED_VERSIONS,
    CiliumSettings,
    CiliumValuesError,
    render_values,
    schema_path,
    unknown_value_paths,
    validate_values,
)


def settings(**overrides: Any) -> CiliumSettings:
    fields: dict[str, Any] = {"api_host": "10.0.1.2", "cluster_cidr": "10.42.0.0/16"}
    fields.update({"node_count": 3, **overrides})
    return CiliumSettings(**fields)


def test_supported_versions_and_default() -> None:
    assert SUPPORTED_VERSIONS == ("1.18.12", "1.19.6", "1.20.0")
    minors = [v for v in SUPPORTED_VERSIONS if v.startswith("1.19.")]
    latest = max(minors, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert latest == DEFAULT_VERSION


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_each_version_ships_a_draft7_schema(version: str) -> None:
    path = schema_path(version)
    assert path.parent == SCHEMA_DIR
    assert path.name == f"values.schema-{version}.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    validator_for(schema).check_schema(schema)


def test_no_schema_ships_without_being_supported() -> None:
    shipped = sorted(p.name for p in SCHEMA_DIR.glob("values.schema-*.json"))
    assert shipped == sorted(f"values.schema-{v}.json" for v in SUPPORTED_VERSIONS)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_kube_proxy_replacement_accepts_the_boolean_we_render(version: str) -> None:
    schema = json.loads(schema_path(version).read_text(encoding="utf-8"))
    assert "boolean" in schema["properties"]["kubeProxyReplacement"]["type"]


@pytest.mark.parametrize("bad", ["1.19", "1.17.0", "v1.19.6", ""])
def test_unsupported_version_names_the_allowed_ones(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape("allowed: 1.18.12, 1.19.6, 1.20.0")) as info:
        schema_path(bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="allowed: "):
        validate_values({}, bad)


def test_string_mtu_from_extra_values_is_named() -> None:
    with pytest.raises(CiliumValuesError) as info:
        render_values(settings(mtu=1450, extra_values={"MTU": "1450"}))
    assert str(info.value) == "cilium values: MTU: '1450' is not of type 'integer'"
    assert info.value.problems == ("MTU: '1450' is not of type 'integer'",)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_problem_is_reported_with_its_path_sorted(version: str) -> None:
    values = {
        "operator": {"replicas": "2"},
        "MTU": "1450",
        "hubble": {"relay": {"enabled": "yes"}},
        "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": ["10.42.0.0/16", 7]}},
        "nodeSelector": {"kubernetes.io/os": 1},
    }
    with pytest.raises(CiliumValuesError) as info:
        validate_values(values, version)
    paths = [problem.split(": ", 1)[0] for problem in info.value.problems]
    assert paths == sorted(paths)
    assert set(paths) == {
        "MTU",
        "hubble.relay.enabled",
        "ipam.operator.clusterPoolIPv4PodCIDRList[1]",
        'nodeSelector["kubernetes.io/os"]',
        "operator.replicas",
    }
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert all(line.startswith("cilium values: ") for line in lines)


def test_non_mapping_values_are_reported_at_the_root() -> None:
    with pytest.raises(CiliumValuesError, match=re.escape("cilium values: (root): ")):
        validate_values([], DEFAULT_VERSION)  # type: ignore[arg-type]


def test_nulls_are_dropped_before_validation_like_helm() -> None:
    validate_values({"MTU": None, "operator": {"replicas": None}}, DEFAULT_VERSION)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_rendered_values_use_only_declared_keys(version: str) -> None:
    native = settings(
        version=version, routing_mode="native", native_routing_cidr="10.0.0.0/8", mtu=1450
    )
    tunnel = settings(version=version, hubble=True, mtu=1450)
    assert unknown_value_paths(render_values(native), version) == ()
    assert unknown_value_paths(render_values(tunnel), version) == ()


def test_typos_are_listed_as_unknown_keys() -> None:
    values = {
        "hubbel": {"enabled": True},
        "operator": {"replica": 2, "replicas": 1},
        "ipam": {"operator": {"clusterPoolIPv4PodCIDRList": ["10.42.0.0/16"]}},
        "podAnnotations": {"free": "form"},
    }
    assert unknown_value_paths(values, DEFAULT_VERSION) == ("hubbel", "operator.replica")
