"""Deploy-graph properties the benchmark reports, checked on small stacks in-process.

Only hosts whose rendered inputs changed are redeployed; the servers after the first and the
agents join in parallel once the bootstrap server runs, so adding hosts never lengthens the
critical path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import graph
from components.hosts import hostspec
from tests.conftest import run_plan, stack_data
from tests.reliability import isolated
from tests.reliability.isolated import plan_with_nixos_dir
from tooling import plan


def document(cluster: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(plan.plan_document(run_plan(cluster, stack="graph"))))


def with_agents(count: int) -> dict[str, Any]:
    cluster = stack_data("prod")
    cluster["nodePools"][1]["count"] = count
    return cluster


@pytest.fixture(scope="module")
def prod() -> dict[str, Any]:
    return document(stack_data("prod"))


def test_kubeconfig_waits_only_for_the_bootstrap_server(prod: dict[str, Any]) -> None:
    paths = graph.critical_paths(prod)
    assert paths.kubeconfig.names == (
        # hetzner.nixosImage (the default): the image comes first, then only the push.
        "prod-hetzner-image-x86-64-snapshot",
        "prod-control-1-install",
        "prod-control-1-build",
        "prod-control-1-push",
        "prod-api-ready",
        "prod-kubeconfig",
    )


def test_servers_join_together_after_the_bootstrap_server(prod: dict[str, Any]) -> None:
    """The servers after the first join at once (etcd's one-learner rule is k3s's to retry), so
    five servers give the same chain as three."""
    chain = graph.critical_paths(prod).nodes_ready.names
    assert "prod-api-ready" in chain and chain[-1] == "prod-nodes-ready"
    # nodes-Ready follows the pushes and the releases; it polls for the registrations itself.
    assert not any(name.endswith("-joined") for name in chain)
    five = stack_data("prod")
    five["nodePools"][0]["count"] = 5
    many = graph.critical_paths(document(five))
    assert many.nodes_ready.length == graph.critical_paths(prod).nodes_ready.length


def test_agents_do_not_lengthen_the_critical_path(prod: dict[str, Any]) -> None:
    many = document(with_agents(9))
    small, large = graph.critical_paths(prod), graph.critical_paths(many)
    assert large.nodes_ready.length == small.nodes_ready.length
    assert small.agent_join is not None and large.agent_join is not None
    assert large.agent_join.length == small.agent_join.length
    assert large.kubeconfig == small.kubeconfig


def test_component_dependency_means_all_its_children() -> None:
    plan_doc = {
        "resources": [
            {"urn": "c", "type": "x:index:Comp", "name": "c", "custom": False, "dependsOn": []},
            {"urn": "a", "type": "command:local:Command", "name": "a", "parent": "c"},
            {"urn": "b", "type": "command:local:Command", "name": "b", "dependsOn": ["c"]},
        ]
    }
    assert graph.DeployGraph(plan_doc).chain_to("b").names == ("a", "b")


def test_same_stack_same_code_changes_nothing(prod: dict[str, Any]) -> None:
    again = document(stack_data("prod"))
    assert graph.changed_resources(prod, again) == []


def test_label_change_redeploys_only_that_pool(prod: dict[str, Any]) -> None:
    cluster = stack_data("prod")
    cluster["nodePools"][1]["labels"] = {"node.example.com/pool": "renamed"}
    assert graph.changed_pushes(prod, document(cluster)) == ["prod-workers-1", "prod-workers-2"]


def test_shared_module_change_redeploys_every_host(prod: dict[str, Any], tmp_path: Path) -> None:
    nixos = tmp_path / "nixos"
    shutil.copytree(hostspec.NIXOS_DIR, nixos, ignore=shutil.ignore_patterns("__pycache__"))
    module = nixos / "modules" / "base.nix"
    module.write_text(module.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    stack_file = isolated.stack_file(stack_data("prod"), "graph")
    edited = json.loads(
        json.dumps(isolated.in_fresh_process(plan_with_nixos_dir, stack_file, nixos))
    )
    hosts = sorted(graph.push_triggers(prod))
    assert len(hosts) == 5
    assert graph.changed_pushes(prod, edited) == hosts
    # Nothing but the pushes (and the roll steps, which carry the push's environment: their
    # update finds ROLL_KEY unchanged; a server's pushes the release one server at a time, an
    # agent's does nothing): the host data itself did not change.
    changed = {r["urn"]: r["name"] for r in edited["resources"]}
    assert sorted(changed[u] for u in graph.changed_resources(prod, edited)) == sorted(
        f"{host}-{step}" for host in hosts for step in ("build", "push", "roll")
    )


def command_ancestors(doc: dict[str, Any], name: str) -> set[str]:
    """Names of every command resource `name` waits for, directly or through others."""
    deploy = graph.DeployGraph(doc)
    (start,) = deploy.urn_of(name)
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in deploy.dependencies(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return {
        deploy.resources[u]["name"]
        for u in seen
        if deploy.resources[u]["type"].startswith(graph.COMMAND_PREFIX)
    }


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_builds_are_off_the_gated_chain(stack: str) -> None:
    """Every host builds once its own machine is installed: no API, join or other host."""
    doc = document(stack_data(stack))
    hosts = sorted(graph.push_triggers(doc))
    assert len(hosts) >= 2
    for host in hosts:
        # Machines (a Colima VM: an agent's data names the first server's address, a Hetzner
        # server the NixOS image it boots) are no gate.
        waits_for = {
            n
            for n in command_ancestors(doc, f"{host}-build")
            if not n.endswith("-vm") and "-image-" not in n
        }
        assert waits_for <= {f"{host}-install", f"{host}-wake"}, waits_for
        assert f"{host}-install" in waits_for
        # Only the push (activation, confirm, k3s release) is gated, and it activates this build.
        push_waits_for = command_ancestors(doc, f"{host}-push")
        assert f"{host}-build" in push_waits_for


def test_only_pushes_wait_for_the_joins(prod: dict[str, Any]) -> None:
    """Servers after the first activate together once the bootstrap push confirmed its k3s,
    whose API is then up (Type=notify; etcd's one-learner rule is k3s's to retry, as for
    hetzner-k3s's parallel masters); their builds ran long before."""
    for server in ("prod-control-2", "prod-control-3"):
        waits_for = command_ancestors(prod, f"{server}-push")
        assert "prod-control-1-push" in waits_for
        assert "prod-api-ready" not in waits_for
        assert not {n for n in waits_for if n.endswith("-joined")}, waits_for
        others = {"prod-control-2-push", "prod-control-3-push"} - {f"{server}-push"}
        assert not others & waits_for, waits_for
    for host in ("prod-control-2", "prod-control-3", "prod-workers-1"):
        assert not {n for n in command_ancestors(prod, f"{host}-build") if "joined" in n}
        assert "prod-api-ready" not in command_ancestors(prod, f"{host}-build")


def test_the_install_puts_the_final_system_on_the_disk(prod: dict[str, Any]) -> None:
    """Build once: the stock image's install gets the same host data as the push, so the first
    push only activates (k3s is held back by nixosK3s.k3s.holdUntil until then). On the NixOS
    image (prod's default) the install builds nothing and gets none."""
    stock = stack_data("prod")
    stock["hetzner"] = {**stock["hetzner"], "nixosImage": False}
    for doc, from_image in ((prod, True), (document(stock), False)):
        by_name = {r["name"]: r for r in doc["resources"] if r["type"].startswith("command:")}
        for host in graph.push_triggers(doc):
            install = by_name[f"{host}-install"]["inputs"]["environment"]
            push = by_name[f"{host}-push"]["inputs"]
            if from_image:
                assert "HOST_JSON" not in install and install["FROM_IMAGE"] == "1"
            else:
                assert install["HOST_JSON"] == push["environment"]["HOST_JSON"]
    by_name = {r["name"]: r for r in prod["resources"] if r["type"].startswith("command:")}
    for host in graph.push_triggers(prod):
        build = by_name[f"{host}-build"]["inputs"]
        push = by_name[f"{host}-push"]["inputs"]
        assert build["environment"]["HOST_JSON"] == push["environment"]["HOST_JSON"]
        assert build["triggers"] == push["triggers"]
        assert build["create"] == "bash components/scripts/deploy.sh build"
        assert push["create"] == "bash components/scripts/deploy.sh"
