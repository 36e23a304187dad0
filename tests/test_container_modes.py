"""Container agents under the cluster's CNI: the stack check, the host data, the Cilium values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from components import containermodes
from components.config import (
    ConfigError,
    ContainerModeName,
    has_nested_nodes,
)
from components.config.schema import Cni
from components.hosts.render import COLIMA_PRIVATE_INTERFACE, HETZNER_PRIVATE_INTERFACE
from components.k8s import cilium
from components.stack import parse_cluster
from tests.conftest import Plan, run_plan, stack_data

SHARED_CILIUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "cilium"
NIXOS_MODULES = Path(__file__).resolve().parents[1] / "nixos" / "modules"


def with_containers(cni: str | None = None, mode: str | None = None) -> dict[str, Any]:
    data = stack_data("prod")
    if cni is not None:
        data["k3s"] = {**data.get("k3s", {}), "cni": cni}
    if cni == "flannel":
        data.pop("cilium", None)  # refused with flannel (see below)
    box: dict[str, Any] = {"name": "edge"}
    if mode is not None:
        box["mode"] = mode
    data["nodePools"][1]["containers"] = [box, {"name": "batch", "ephemeral": True}]
    return data


def host_data(result: Plan, host: str) -> dict[str, Any]:
    return json.loads(result[f"{host}-push"].inputs["environment"]["HOST_JSON"])


def test_data_file_modes_match_the_config_and_host_models() -> None:
    assert set(containermodes.modes()) == set(get_args(ContainerModeName))
    for name, mode in containermodes.modes().items():
        assert mode.private_users in ("no", "pick"), name
        assert set(mode.cnis) <= {"cilium", "flannel"}, name
        assert all(cap.startswith("CAP_") and why for cap, why in mode.capabilities.items())
        assert all(why for why in mode.system_call_filter.values())


def test_every_pair_a_mode_cannot_run_has_its_reason_in_the_one_data_file() -> None:
    """The stack check and k3s-containers.nix (for a host document written by hand) quote the
    same reason: the data file's, which both read."""
    assert containermodes.DATA_PATH == NIXOS_MODULES / "k3s-container-modes.json"
    module = (NIXOS_MODULES / "k3s-containers.nix").read_text(encoding="utf-8")
    assert "lib.importJSON ./k3s-container-modes.json" in module
    assert 'modeData.refusals."${cni}/${c.mode}"' in module and "EPERM" not in module
    refusals = json.loads(containermodes.DATA_PATH.read_text(encoding="utf-8"))["refusals"]
    refused = {
        f"{cni}/{name}"
        for cni in get_args(Cni)
        for name, mode in containermodes.modes().items()
        if cni not in mode.cnis
    }
    assert set(refusals) == refused and all(refusals.values())


def test_only_the_host_users_mode_can_run_cilium() -> None:
    modes = containermodes.modes()
    assert "cilium" in modes["host-users"].cnis and not modes["host-users"].user_namespaced
    assert "cilium" not in modes["user-namespace"].cnis and modes["user-namespace"].user_namespaced
    assert "EPERM" in (containermodes.refusal("cilium", "user-namespace") or "")
    assert containermodes.refusal("flannel", "user-namespace") is None


@pytest.mark.parametrize("version", cilium.SUPPORTED_VERSIONS)
def test_host_users_containers_hold_every_capability_the_cilium_chart_asks_for(
    version: str,
) -> None:
    """runc refuses a pod whose capabilities exceed the node's bounding set."""
    values_file = SHARED_CILIUM / f"values-{version}.yaml"
    if not values_file.exists():
        pytest.skip(f"{values_file} not present (the chart's default values)")
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    wanted: set[str] = set()
    for caps in values["securityContext"]["capabilities"].values():
        wanted |= {f"CAP_{cap}" for cap in caps or []}
    for caps in values["envoy"]["securityContext"]["capabilities"].values():
        if isinstance(caps, list):
            wanted |= {f"CAP_{cap}" for cap in caps}
    held = containermodes.bounding_set(containermodes.modes()["host-users"])
    assert wanted <= held, sorted(wanted - held)


def test_cilium_cluster_refuses_user_namespaced_containers_with_the_kernel_reason() -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster(with_containers(mode="user-namespace"))
    (problem,) = [str(p) for p in info.value.problems]
    assert problem.startswith("nodePools[1].containers[0].mode: 'user-namespace' cannot run")
    assert "bpf(BPF_PROG_LOAD) fails with EPERM" in problem
    # The reason k3s-containers.nix gives too (tests/nixos/test_real_modules.py).
    reason = containermodes.refusal("cilium", "user-namespace")
    assert f"cannot run k3s.cni 'cilium': {reason}; " in problem
    assert "allowed with cilium: 'host-users'" in problem


def test_default_mode_follows_the_cni() -> None:
    cilium_cfg = parse_cluster(with_containers())
    flannel_cfg = parse_cluster(with_containers(cni="flannel"))
    assert has_nested_nodes(cilium_cfg) and not has_nested_nodes(flannel_cfg)
    assert has_nested_nodes(parse_cluster(with_containers(cni="flannel", mode="host-users")))


def test_flannel_cluster_refuses_cilium_settings() -> None:
    data = with_containers(cni="flannel")
    data["cilium"] = {"hubble": {"enabled": True}}
    with pytest.raises(ConfigError) as info:
        parse_cluster(data)
    assert [p.path for p in info.value.problems] == ["cilium"]
    assert "k3s.cni 'cilium' only" in str(info.value)


def test_unknown_cni_lists_the_allowed_values() -> None:
    data = stack_data("prod")
    data["k3s"] = {**data.get("k3s", {}), "cni": "calico"}
    with pytest.raises(ConfigError) as info:
        parse_cluster(data)
    assert "k3s.cni" in str(info.value) and "'cilium'" in str(info.value)


def test_nested_nodes_get_host_namespace_socket_lb_and_explicit_devices() -> None:
    cfg = parse_cluster(with_containers())
    values = cilium.render_values(cilium.cilium_settings(cfg, "10.0.1.10", 9))
    assert values["socketLB"] == {"hostNamespaceOnly": True}
    assert values["devices"] == ["en+", "eth+"]
    # The hosts' NICs match, the veths to the containers (ve-<name>) do not.
    assert HETZNER_PRIVATE_INTERFACE.startswith("en")
    assert not any(d.rstrip("+") and "ve-edge".startswith(d.rstrip("+")) for d in values["devices"])
    # Checked against every supported chart's schema (render_values validates the pinned one).
    for version in cilium.SUPPORTED_VERSIONS:
        cilium.validate_values(values, version)


def test_colima_devices_name_the_vm_interfaces() -> None:
    data = stack_data("dev")
    data["nodePools"][0]["containers"] = [{"name": "edge"}]
    cfg = parse_cluster(data)
    values = cilium.render_values(cilium.cilium_settings(cfg, "192.168.64.2", 2))
    assert COLIMA_PRIVATE_INTERFACE in values["devices"] and "eth+" in values["devices"]


def test_stacks_without_nested_nodes_keep_cilium_device_detection() -> None:
    cfg = parse_cluster(stack_data("prod"))
    values = cilium.render_values(cilium.cilium_settings(cfg, "10.0.1.10", 5))
    assert "devices" not in values and "socketLB" not in values


def test_overriding_host_namespace_socket_lb_is_refused_with_nested_nodes() -> None:
    data = with_containers()
    data["cilium"] = {"values": {"socketLB": {"hostNamespaceOnly": False}}}
    with pytest.raises(ConfigError) as info:
        parse_cluster(data)
    assert [p.path for p in info.value.problems] == ["cilium.values.socketLB.hostNamespaceOnly"]


@pytest.fixture(scope="module")
def flannel_plan() -> Plan:
    data = with_containers(cni="flannel")
    data["nodePools"][1]["containers"].append({"name": "bpf", "mode": "host-users"})
    return Plan(run_plan(data, stack="prod"))


def test_flannel_plan_has_no_cilium_release(flannel_plan: Plan) -> None:
    releases = {
        r.inputs.get("chart") for r in flannel_plan.of_type("kubernetes:helm.sh/v3:Release")
    }
    assert "cilium" not in releases, sorted(map(str, releases))
    # The Hetzner add-ons still run (through the cluster's Kubernetes provider) under flannel.
    assert "hcloud-cloud-controller-manager" in releases
    # The nodes-Ready gate still waits for every node, containers included.
    assert flannel_plan["prod-nodes-ready"].inputs["create"].endswith(" 11 900")


def test_flannel_host_data_follows_the_cni(flannel_plan: Plan) -> None:
    host = host_data(flannel_plan, "prod-workers-1")
    assert host["k3s"]["cni"] == "flannel"
    assert host["cilium"] == {"hostPrerequisites": False}
    firewall = host["firewall"]
    assert firewall["privateUdpPorts"] == [8472]
    assert firewall["privateTcpPorts"] == [10250]  # an agent: no API port
    assert firewall["trustedInterfaces"] == ["cni0", "flannel.1"]
    assert [(c["name"], c["mode"]) for c in host["containers"]] == [
        ("edge", "user-namespace"),
        ("batch", "user-namespace"),
        ("bpf", "host-users"),
    ]


def test_cilium_host_data_puts_containers_in_the_host_user_namespace() -> None:
    result = Plan(run_plan(with_containers(), stack="prod"))
    host = host_data(result, "prod-workers-2")
    assert host["k3s"]["cni"] == "cilium" and host["cilium"] == {"hostPrerequisites": True}
    assert {c["mode"] for c in host["containers"]} == {"host-users"}
    assert 4244 in host["firewall"]["privateTcpPorts"]


# Read by the chart's templates/cilium-configmap.yaml (`devices: {{ join " " .Values.devices |
# quote }}`, `bpf-lb-sock-hostns-only: {{ $socketLB.hostNamespaceOnly | quote }}`) although the
# values schema of some versions leaves them undeclared (additional properties are allowed).
TEMPLATE_KEYS_OUTSIDE_SCHEMA = {"devices", "socketLB.hostNamespaceOnly"}


@pytest.mark.parametrize("version", cilium.SUPPORTED_VERSIONS)
def test_nested_values_outside_a_schema_are_keys_the_chart_reads(version: str) -> None:
    data = with_containers()
    data["cilium"] = {**data.get("cilium", {}), "version": version}
    cfg = parse_cluster(data)
    values = cilium.render_values(cilium.cilium_settings(cfg, "10.0.1.10", 9))
    assert set(cilium.unknown_value_paths(values, version)) <= TEMPLATE_KEYS_OUTSIDE_SCHEMA
