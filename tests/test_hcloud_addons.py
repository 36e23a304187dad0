"""Issue 19 items 1-3: Hetzner cloud controller, CSI driver and the API load balancer.

Plan shape under the mocks, the config checks, and the chart values against the pinned charts'
schemas (the CSI chart's own; the cloud controller's derived from its values.yaml).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.validators import validator_for

from components.config import (
    ClusterConfig,
    load_balancer_private_ip,
    semantic_problems,
    semantic_warnings,
)
from components.hosts.render import CONTAINER_PROVIDER_ID_PREFIX
from components.k8s import chartschema, hcloud_addons, valuesschema
from components.k8s.cilium import _without_nulls
from components.stack import parse_cluster
from tests.conftest import PROJECT_DIR, Plan, run_plan, stack_data
from tooling.mocks import fake_id, fake_ipv4

SERVERS = ["prod-control-1", "prod-control-2", "prod-control-3"]
AGENTS = ["prod-workers-1", "prod-workers-2"]
LB_IP = "10.0.1.254"
PLANTED_TOKEN = "planted-hcloud-token-for-addons-7d1e"


def host_doc(plan: Plan, host: str) -> dict[str, Any]:
    return json.loads(plan.result.hosts[host][0])


# --- the API load balancer -------------------------------------------------------------------


def test_api_load_balancer_resources(prod_plan: Plan) -> None:
    lb = prod_plan["prod-hetzner-api-lb"].inputs
    assert lb["loadBalancerType"] == "lb11" and lb["networkZone"] == "eu-central"
    assert "location" not in lb
    assert prod_plan["prod-hetzner-api-lb"].delete_before_replace is True
    assert lb["name"] == "prod-api" and lb["deleteProtection"] is True
    network = prod_plan["prod-hetzner-api-lb-private"]
    assert network.inputs["ip"] == LB_IP
    # prod keeps its API load balancer private (apiSources would not apply to a public one).
    assert network.inputs["enablePublicInterface"] is False
    assert "prod-hetzner-subnet" in prod_plan.deps("prod-hetzner-api-lb-private")
    service = prod_plan["prod-hetzner-api-lb-6443"].inputs
    assert service["protocol"] == "tcp"
    assert service["listenPort"] == 6443 and service["destinationPort"] == 6443
    assert service["healthCheck"]["protocol"] == "tcp" and service["healthCheck"]["port"] == 6443


def test_every_server_and_only_servers_are_private_ip_targets(prod_plan: Plan) -> None:
    targets = prod_plan.of_type("hcloud:index/loadBalancerTarget:LoadBalancerTarget")
    assert sorted(t.name for t in targets) == [f"{s}-api-lb-target" for s in SERVERS]
    for server in SERVERS:
        target = prod_plan[f"{server}-api-lb-target"]
        assert target.inputs["type"] == "server" and target.inputs["usePrivateIp"] is True
        assert isinstance(target.inputs["serverId"], int)
        # Health checks and traffic arrive from the load balancer's private address: the
        # host firewall opens 6443 on the private interface.
        assert 6443 in host_doc(prod_plan, server)["firewall"]["privateTcpPorts"]
        # Both ends must be in the network before a private-IP target can be added.
        assert {"prod-hetzner-api-lb-private", f"{server}-private"} <= prod_plan.deps(
            f"{server}-api-lb-target"
        )


def test_cilium_reaches_the_api_through_the_load_balancer(prod_plan: Plan) -> None:
    values = prod_plan["prod-cilium"].inputs["values"]
    assert values["k8sServiceHost"] == LB_IP and values["k8sServicePort"] == 6443
    deps = prod_plan.deps("prod-cilium")
    assert {"prod-hetzner-api-lb-private", "prod-hetzner-api-lb-6443"} <= deps
    assert {f"{s}-api-lb-target" for s in SERVERS} <= deps


def test_load_balancer_address_is_a_san_of_every_server(prod_plan: Plan) -> None:
    for server in SERVERS:
        assert LB_IP in host_doc(prod_plan, server)["k3s"]["tlsSans"]
    for agent in AGENTS:
        assert host_doc(prod_plan, agent)["k3s"]["tlsSans"] == []


def test_load_balancer_address_is_the_subnets_last_usable_one() -> None:
    cfg = parse_cluster(stack_data("prod"))
    assert load_balancer_private_ip(cfg) == LB_IP
    data = stack_data("prod")
    data["network"]["subnet"] = "10.0.16.0/20"
    assert load_balancer_private_ip(parse_cluster(data)) == "10.0.31.254"


def public_lb_stack() -> dict[str, Any]:
    data = stack_data("prod")
    del data["apiEndpoint"]
    data["hetzner"]["loadBalancerPublic"] = True
    return data


def test_public_load_balancer_is_the_default_api_endpoint(plan_of: Callable[..., Plan]) -> None:
    plan = plan_of(public_lb_stack(), stack="prod")
    public = fake_ipv4("prod-hetzner-api-lb")
    assert plan.result.outputs["apiEndpoint"] == f"https://{public}:6443"
    assert plan["prod-hetzner-api-lb-private"].inputs["enablePublicInterface"] is True
    for server in SERVERS:
        assert {LB_IP, public} <= set(host_doc(plan, server)["k3s"]["tlsSans"])
    # The kubeconfig is rewritten for the load balancer's address.
    assert public in plan["prod-kubeconfig"].inputs["create"]


def test_private_load_balancer_is_no_default_endpoint(plan_of: Callable[..., Plan]) -> None:
    data = stack_data("prod")
    del data["apiEndpoint"]  # prod's load balancer is private
    plan = plan_of(data, stack="prod")
    bootstrap_public = fake_ipv4("prod-control-1")
    assert plan.result.outputs["apiEndpoint"] == f"https://{bootstrap_public}:6443"
    assert plan["prod-cilium"].inputs["values"]["k8sServiceHost"] == LB_IP


def test_load_balancer_opt_out_keeps_the_bootstrap_server(plan_of: Callable[..., Plan]) -> None:
    data = stack_data("prod")
    del data["apiEndpoint"]
    data["hetzner"]["loadBalancer"] = False
    plan = plan_of(data, stack="prod")
    assert not [r for r in plan.result.registrations if "loadBalancer" in r.type]
    assert plan["prod-cilium"].inputs["values"]["k8sServiceHost"] == "10.0.1.10"
    bootstrap_public = fake_ipv4("prod-control-1")
    assert plan.result.outputs["apiEndpoint"] == f"https://{bootstrap_public}:6443"
    assert LB_IP not in host_doc(plan, "prod-control-1")["k3s"]["tlsSans"]


def test_colima_has_no_hetzner_addons(dev_plan: Plan) -> None:
    types = {r.type for r in dev_plan.result.registrations}
    assert not any(t.startswith("hcloud:") for t in types)
    assert "kubernetes:core/v1:Secret" not in types
    assert [r.name for r in dev_plan.of_type("kubernetes:helm.sh/v3:Release")] == ["dev-cilium"]
    for name, (text, _) in dev_plan.result.hosts.items():
        assert json.loads(text)["k3s"]["externalCloudProvider"] is False, name


def test_load_balancer_address_must_not_be_a_hosts() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["ipOffset"] = 253  # workers-1 .253, workers-2 .254
    problems = [str(p) for p in semantic_problems(parse_cluster_unchecked(data))]
    assert any(
        p.startswith("nodePools[1].ipOffset: address offset 254 (10.0.1.254)") for p in problems
    ), problems
    data["hetzner"]["loadBalancer"] = False
    assert not semantic_problems(parse_cluster_unchecked(data))


def test_public_load_balancer_warns_when_api_sources_are_restricted() -> None:
    warnings = [str(w) for w in semantic_warnings(parse_cluster(public_lb_stack()))]
    assert len(warnings) == 1 and "hetzner.loadBalancerPublic" in warnings[0]
    open_api = public_lb_stack()
    open_api["firewall"]["apiSources"] = ["0.0.0.0/0", "::/0"]
    assert not semantic_warnings(parse_cluster(open_api))
    assert not semantic_warnings(parse_cluster(stack_data("prod")))


# --- cloud controller manager and CSI --------------------------------------------------------


def test_ccm_release(prod_plan: Plan) -> None:
    release = prod_plan["prod-hcloud-ccm"]
    inputs = release.inputs
    assert inputs["chart"] == "hcloud-cloud-controller-manager" and inputs["version"] == "1.35.0"
    assert inputs["repositoryOpts"] == {"repo": "https://charts.hetzner.cloud"}
    assert inputs["namespace"] == "kube-system"
    values = inputs["values"]
    assert values["networking"] == {"enabled": True, "clusterCIDR": "10.42.0.0/16"}
    env = values["env"]
    # Routes off: Cilium tunnels and allocates pod ranges itself (cluster-pool IPAM).
    assert env["HCLOUD_NETWORK_ROUTES_ENABLED"] == {"value": "false"}
    assert env["HCLOUD_LOAD_BALANCERS_USE_PRIVATE_IP"] == {"value": "true"}
    assert env["HCLOUD_LOAD_BALANCERS_NETWORK_ZONE"] == {"value": "eu-central"}
    assert prod_plan["prod-cilium"].inputs["values"]["routingMode"] == "tunnel"
    assert {"prod-cilium", "prod-hcloud-token"} <= prod_plan.deps("prod-hcloud-ccm")
    assert release.provider == prod_plan["prod-k8s"].urn


def test_csi_release_with_a_default_storage_class(prod_plan: Plan) -> None:
    inputs = prod_plan["prod-hcloud-csi"].inputs
    assert inputs["chart"] == "hcloud-csi" and inputs["version"] == "2.22.1"
    assert inputs["values"]["storageClasses"] == [
        {"name": "hcloud-volumes", "defaultStorageClass": True, "reclaimPolicy": "Delete"}
    ]
    assert inputs["values"]["controller"]["volumeExtraLabels"] == {
        "cluster": "prod",
        "managed-by": "nixos-k3s",
    }
    assert {"prod-cilium", "prod-hcloud-token"} <= prod_plan.deps("prod-hcloud-csi")


def test_token_secret_is_the_one_both_charts_read(prod_plan: Plan) -> None:
    secret = prod_plan["prod-hcloud-token"]
    assert secret.inputs["metadata"] == {"name": "hcloud", "namespace": "kube-system"}
    assert secret.inputs["stringData"] == "[secret]"
    # The CCM chart reads `token` and `network` from secret `hcloud`; CSI reads `token`.
    ccm_defaults = yaml.safe_load(
        (
            hcloud_addons.SCHEMA_DIR / "hcloud-cloud-controller-manager-1.35.0.values.yaml"
        ).read_text()
    )
    assert ccm_defaults["env"]["HCLOUD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hcloud",
        "key": "token",
    }
    assert ccm_defaults["networking"]["network"]["valueFrom"]["secretKeyRef"] == {
        "name": "hcloud",
        "key": "network",
    }


def test_token_comes_from_hcloud_token_and_stays_secret(plan_of: Callable[..., Plan]) -> None:
    plan = plan_of(
        stack_data("prod"),
        stack="prod",
        extra={"hcloud:token": PLANTED_TOKEN},
        secret_keys=frozenset({"hcloud:token"}),
    )
    secret = plan["prod-hcloud-token"]
    data = secret.secret_paths["stringData"]
    assert data["token"] == PLANTED_TOKEN
    assert data["network"] == fake_id("hcloud:index/network:Network", "prod-hetzner-network")
    everything = json.dumps([r.inputs for r in plan.result.registrations])
    assert PLANTED_TOKEN not in everything
    assert all(PLANTED_TOKEN not in text for text, _ in plan.result.hosts.values())


def test_nodes_ready_waits_for_the_addons(prod_plan: Plan) -> None:
    assert {"prod-cilium", "prod-hcloud-ccm", "prod-hcloud-csi"} <= prod_plan.deps(
        "prod-nodes-ready"
    )


def test_every_kubelet_runs_with_an_external_cloud_provider(prod_plan: Plan) -> None:
    for host in SERVERS + AGENTS:
        assert host_doc(prod_plan, host)["k3s"]["externalCloudProvider"] is True


def test_csi_opt_out_and_ccm_opt_out(plan_of: Callable[..., Plan]) -> None:
    data = stack_data("prod")
    data["hetzner"]["csi"] = False
    plan = plan_of(data, stack="prod")
    assert "prod-hcloud-csi" not in plan.by_name and "prod-hcloud-ccm" in plan.by_name
    data["hetzner"]["cloudControllerManager"] = False
    plan = plan_of(data, stack="prod")
    assert not {"prod-hcloud-csi", "prod-hcloud-ccm", "prod-hcloud-token"} & set(plan.by_name)
    assert host_doc(plan, "prod-control-1")["k3s"]["externalCloudProvider"] is False


def test_csi_needs_the_cloud_controller() -> None:
    data = stack_data("prod")
    data["hetzner"]["cloudControllerManager"] = False
    problems = [str(p) for p in semantic_problems(parse_cluster_unchecked(data))]
    assert len(problems) == 1 and problems[0].startswith("hetzner.csi: needs"), problems


@pytest.fixture(scope="module")
def containers_plan() -> Plan:
    data = yaml.safe_load(
        (PROJECT_DIR / "tests/reliability/stacks/Pulumi.tailscale.yaml").read_text()
    )["config"]["nixos-k3s:cluster"]
    return Plan(
        run_plan(
            data,
            extra={"nixos-k3s:tailscaleAuthKey": "tskey-auth-x"},
            secret_keys=frozenset({"nixos-k3s:tailscaleAuthKey"}),
        )
    )


def test_nspawn_agents_carry_a_foreign_provider_id(containers_plan: Plan) -> None:
    found = 0
    for text, _ in containers_plan.result.hosts.values():
        doc = json.loads(text)
        for container in doc["containers"]:
            node = container["k3s"]["nodeName"]
            kubelet = container["k3s"]["kubeletConfig"]
            assert kubelet["providerID"] == f"{CONTAINER_PROVIDER_ID_PREFIX}{node}"
            found += 1
    assert found > 0


NIXLITE = PROJECT_DIR.parent / "shared" / "nixlite" / "eval-project-host.sh"


@pytest.mark.skipif(
    not (NIXLITE.exists() and shutil.which("nix-instantiate")), reason="needs ../shared/nixlite"
)
def test_kubelet_flag_with_the_real_k3s_module(containers_plan: Plan, tmp_path: Path) -> None:
    """The hosts' k3s ExecStart (from nixpkgs' k3s module) has cloud-provider=external; the
    nspawn agents inside do not, their providerID is in the generated kubelet config."""
    for host, containers in (("hyg-control-2", 0), ("hyg-dense-1", 2)):
        path = tmp_path / f"{host}.json"
        path.write_text(containers_plan.result.hosts[host][0])
        done = subprocess.run(
            [str(NIXLITE), str(PROJECT_DIR), str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert "--kubelet-arg=cloud-provider=external" in report["host"]["k3s"]["execStart"]
        assert len(report.get("containers", {})) == containers
        for name, container in report.get("containers", {}).items():
            inner = container["inner"]["k3s"]
            assert "cloud-provider" not in inner["execStart"], name
            assert inner["kubeletConfigGenerated"]["providerID"].startswith("nspawn://"), name


def parse_cluster_unchecked(data: dict[str, Any]) -> ClusterConfig:
    """The model without the semantic checks (parse_cluster raises on the first problem)."""
    return ClusterConfig.model_validate(copy.deepcopy(data))


# --- values against the pinned charts' schemas -----------------------------------------------

CCM_SCHEMA = hcloud_addons.schema_path(hcloud_addons.CCM_CHART, hcloud_addons.CCM_VERSION)
CSI_SCHEMA = hcloud_addons.schema_path(hcloud_addons.CSI_CHART, hcloud_addons.CSI_VERSION)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def reference(instance: Any, schema: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    validator = validator_for(schema)(schema)
    return sorted((tuple(e.absolute_path), e.message) for e in validator.iter_errors(instance))


def ours(instance: Any, schema: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    return sorted((p.path, p.message) for p in valuesschema.problems(instance, schema))


def test_ccm_schema_is_derived_from_the_pinned_values_yaml() -> None:
    source = hcloud_addons.SCHEMA_DIR / "hcloud-cloud-controller-manager-1.35.0.values.yaml"
    assert chartschema.schema_text(chartschema.derive_file(source)) == CCM_SCHEMA.read_text()


def test_shipped_schemas_are_valid_and_supported() -> None:
    for path in (CCM_SCHEMA, CSI_SCHEMA):
        schema = load(path)
        validator_for(schema).check_schema(schema)
        valuesschema.check_schema(schema)


def test_ccm_chart_defaults_pass_the_derived_schema() -> None:
    schema = load(CCM_SCHEMA)
    defaults = yaml.safe_load(
        (
            hcloud_addons.SCHEMA_DIR / "hcloud-cloud-controller-manager-1.35.0.values.yaml"
        ).read_text()
    )
    # Helm validates after dropping nulls (nameOverride: ~).
    assert reference(_without_nulls(defaults), schema) == []
    hcloud_addons.validate(defaults, hcloud_addons.CCM_CHART, hcloud_addons.CCM_VERSION)


def test_rendered_values_pass_the_reference_validator() -> None:
    cfg = parse_cluster(stack_data("prod"))
    assert reference(hcloud_addons.ccm_values(cfg), load(CCM_SCHEMA)) == []
    assert reference(hcloud_addons.csi_values(cfg), load(CSI_SCHEMA)) == []


BROKEN: list[tuple[str, Any]] = [
    ("netwroking", {"enabled": True}),  # typo at the top level
    ("networking", {"enabled": "yes"}),
    ("networking", {"enabled": True, "clusterCidr": "10.42.0.0/16"}),  # wrong case
    ("kind", "StatefulSet"),
    ("replicaCount", 0),
    ("image", {"tag": 1}),
    ("monitoring", {"enabled": True, "podMonitor": {"enable": True}}),
]


@pytest.mark.parametrize(("key", "value"), BROKEN)
def test_broken_ccm_values_match_the_reference(key: str, value: Any) -> None:
    schema = load(CCM_SCHEMA)
    instance = {**hcloud_addons.ccm_values(parse_cluster(stack_data("prod"))), key: value}
    expected = reference(instance, schema)
    assert expected and ours(instance, schema) == expected
    with pytest.raises(hcloud_addons.HcloudValuesError):
        hcloud_addons.validate(instance, hcloud_addons.CCM_CHART, hcloud_addons.CCM_VERSION)


@pytest.mark.parametrize(
    "instance",
    [
        {"controller": {"volumeExtraLabels": {"a": 1, "b": "x", "c": None}}},
        {"storageClasses": [{"name": 1, "defaultStorageClass": "yes"}]},
        {"node": {"kubeletDir": False}},
    ],
)
def test_broken_csi_values_match_the_reference(instance: dict[str, Any]) -> None:
    schema = load(CSI_SCHEMA)
    expected = reference(instance, schema)
    assert expected and ours(instance, schema) == expected


def test_additional_properties_false_lists_every_extra_like_jsonschema() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": False}
    for instance in ({"b": 1}, {"b": 1, "c": 2, "a": 0}, {"a": 1}, [1]):
        assert ours(instance, schema) == reference(instance, schema)
