"""Ports by role: servers alone open the API and etcd; every node its kubelet and the CNI's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import catalog
from components.config import ClusterConfig, ConfigError
from components.hosts import render
from components.machines import hetzner
from components.stack import parse_cluster
from tests.conftest import Plan, run_plan, stack_data


def firewall_of(plan: Plan, host: str) -> dict[str, Any]:
    text, _ = plan.result.hosts[host]
    return json.loads(text)["firewall"]


def test_agents_open_no_server_only_port(prod_plan: Plan) -> None:
    server = firewall_of(prod_plan, "prod-control-1")
    agent = firewall_of(prod_plan, "prod-workers-1")
    assert server["privateTcpPortRanges"] == [{"start": 2379, "end": 2380}]
    assert 6443 in server["privateTcpPorts"] and 6443 in server["publicTcpPorts"]
    assert agent["privateTcpPortRanges"] == []
    assert 6443 not in agent["privateTcpPorts"] + agent["publicTcpPorts"]
    assert agent["publicTcpPorts"] == [22]
    # Both run a kubelet and Cilium's node ports.
    for firewall in (server, agent):
        assert {10250, 4240, 4244} <= set(firewall["privateTcpPorts"])
        assert firewall["privateUdpPorts"] == [8472]


def test_flannel_nodes_open_no_cilium_port() -> None:
    data = stack_data("prod")
    data["k3s"]["cni"] = "flannel"
    data.pop("cilium", None)
    plan = Plan(run_plan(data, stack="prod"))
    agent = firewall_of(plan, "prod-workers-1")
    server = firewall_of(plan, "prod-control-1")
    assert agent["privateTcpPorts"] == [10250]
    assert server["privateTcpPorts"] == [6443, 10250]
    assert agent["privateUdpPorts"] == server["privateUdpPorts"] == [8472]


def _cloud_tcp_ports(rules: list[dict[str, Any]]) -> set[int]:
    return {int(r["port"]) for r in rules if r["protocol"] == "tcp"}


def test_cloud_firewall_opens_the_public_ports_of_the_ports_file(plan_of) -> None:
    """Each port a host opens publicly (numbers from firewall-ports.json) is open in the Hetzner
    firewall, and the Hetzner firewall opens no other TCP port but the stack's extra rules."""
    data = stack_data("prod")
    data["firewall"]["ingress"] = True
    plan = plan_of(data, stack="prod")
    hosts_public = {
        port for host in plan.result.hosts for port in firewall_of(plan, host)["publicTcpPorts"]
    }
    ports_file = {entry["port"] for entry in render.FIREWALL_PORTS["tcp"].values()}
    assert hosts_public == {22, 6443, 80, 443} and hosts_public <= ports_file
    rules = plan["prod-hetzner-firewall"].inputs["rules"]
    assert _cloud_tcp_ports(rules) == hosts_public
    cfg = ClusterConfig.model_validate(data)
    public_names = set(render.public_tcp_port_names(cfg, is_server=True))
    assert {render.tcp_port(name) for name in public_names} == hosts_public


def test_a_new_public_port_reaches_the_cloud_firewall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port a host opens publicly reaches the cloud firewall with no Hetzner-side edit: open to
    everyone like ingress, SSH and the API alone narrowed to the admins' CIDRs."""
    cfg = ClusterConfig.model_validate(stack_data("prod"))
    assert cfg.firewall is not None
    names = render.public_tcp_port_names
    monkeypatch.setattr(
        render,
        "public_tcp_port_names",
        lambda cfg, *, is_server: [*names(cfg, is_server=is_server), "hubble"],
    )
    rules = hetzner.firewall_rules(cfg)
    by_port = {rule.port: rule for rule in rules if rule.protocol == "tcp"}
    assert set(by_port) == {"22", "6443", str(render.tcp_port("hubble"))}
    assert by_port["4244"].source_ips == ["0.0.0.0/0", "::/0"]
    assert by_port["22"].source_ips == list(cfg.firewall.ssh_sources)


def _extra_rules(count: int) -> list[dict[str, Any]]:
    return [
        {"protocol": "tcp", "port": str(30000 + i), "sources": ["0.0.0.0/0"]} for i in range(count)
    ]


@pytest.mark.parametrize(
    ("ingress", "extras"), [(False, 0), (True, 0), (False, 2), (True, 3)], ids=str
)
def test_the_rule_limit_counts_the_rules_the_plan_creates(
    plan_of, ingress: bool, extras: int
) -> None:
    """The stack check's count is the number of rules the plan gives the cloud firewall: filled
    up to Hetzner's limit with extra rules the stack is accepted, one more rule is refused."""
    data = stack_data("prod")
    data["firewall"]["ingress"] = ingress
    data["firewall"]["extraRules"] = _extra_rules(extras)
    created = len(plan_of(data, stack="prod")["prod-hetzner-firewall"].inputs["rules"])
    room = catalog.MAX_FIREWALL_RULES - created
    assert room > 0, created
    data["firewall"]["extraRules"] = _extra_rules(extras + room)
    parse_cluster(data)
    data["firewall"]["extraRules"] = _extra_rules(extras + room + 1)
    with pytest.raises(ConfigError) as refused:
        parse_cluster(data)
    assert [str(p) for p in refused.value.problems] == [
        f"firewall.extraRules: {catalog.MAX_FIREWALL_RULES + 1} rules: a Hetzner firewall holds "
        f"at most {catalog.MAX_FIREWALL_RULES} (the cluster's own take {created - extras}: "
        + ", ".join(
            ["ssh from admins", "kubernetes api from admins", "icmp"]
            + (["ingress 80", "ingress 443"] if ingress else [])
        )
        + ")"
    ]


def test_a_new_public_port_counts_against_the_rule_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port the hosts open publicly takes a rule of the cloud firewall, and the limit check
    counts it without an edit of its own."""
    data = stack_data("prod")
    own = len(hetzner.firewall_rules(ClusterConfig.model_validate(data)))
    data["firewall"]["extraRules"] = _extra_rules(catalog.MAX_FIREWALL_RULES - own)
    cfg = ClusterConfig.model_validate(data)
    assert list(hetzner.stack_problems(cfg, [])) == []
    names = render.public_tcp_port_names
    monkeypatch.setattr(
        render,
        "public_tcp_port_names",
        lambda cfg, *, is_server: [*names(cfg, is_server=is_server), "hubble"],
    )
    (problem,) = hetzner.stack_problems(cfg, [])
    assert str(problem).startswith(f"firewall.extraRules: {catalog.MAX_FIREWALL_RULES + 1} rules")
