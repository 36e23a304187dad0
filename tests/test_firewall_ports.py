"""Ports by role: servers alone open the API and etcd; every node its kubelet and the CNI's."""

from __future__ import annotations

import json
from typing import Any

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
