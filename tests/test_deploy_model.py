"""The deploy-time model of `make bench`: step table, schedule with a worker limit, paths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import deploy, deploy_model
from tests.conftest import run_plan, stack_data
from tooling import plan


def document(stack: str) -> dict[str, Any]:
    return json.loads(json.dumps(plan.plan_document(run_plan(stack_data(stack), stack=stack))))


@pytest.fixture(scope="module")
def table() -> deploy_model.StepTable:
    return deploy_model.load_steps()


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_of_a_plan_has_a_step(stack: str, table: deploy_model.StepTable) -> None:
    timed = deploy_model.timed_resources(document(stack), table)
    assert len(timed) == len(document(stack)["resources"])


def test_every_rule_says_where_its_time_comes_from(table: deploy_model.StepTable) -> None:
    for rule in table.rules:
        assert rule.source and rule.step
        assert 0 <= rule.seconds[0] <= rule.seconds[1]


def test_a_resource_without_a_rule_is_named(table: deploy_model.StepTable) -> None:
    plan_doc = {"resources": [{"urn": "u", "type": "aws:ec2/instance:Instance", "name": "web-1"}]}
    with pytest.raises(deploy_model.StepTableError, match="web-1"):
        deploy_model.timed_resources(plan_doc, table)


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ("{step: x, type: 'tls:', seconds: [5, 1], source: guess}", r"steps\[0\]\.seconds"),
        ("{step: x, type: 'tls:', seconds: [1, 2]}", r"steps\[0\]\.source"),
        ("{step: x, type: 'tls:', seconds: [1, 2], source: s, role: boss}", r"steps\[0\]\.role"),
        ("{step: x, type: 'tls:', seconds: [1, 2], source: s, prePull: yes-ish}", r"prePull"),
        ("{step: x, type: 'tls:', seconds: [1, 2], source: s, limit: 90}", r"steps\[0\]\.limit"),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s, limit: {seconds: 0, source: s}}",
            r"steps\[0\]\.limit\.seconds",
        ),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s, limit: {seconds: 9, source: ''}}",
            r"steps\[0\]\.limit\.source",
        ),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s,"
            " limit: {seconds: 9, environment: T, source: s}}",
            r"steps\[0\]\.limit: want",
        ),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s,"
            " limit: {environment: 3, source: s}}",
            r"steps\[0\]\.limit\.environment",
        ),
    ],
)
def test_a_bad_table_is_refused(tmp_path: Path, rule: str, error: str) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text(f"engine: {{parallel: 8, cliDefault: 8}}\nsteps:\n  - {rule}\n", "utf-8")
    with pytest.raises(deploy_model.StepTableError, match=error):
        deploy_model.load_steps(bad)


def test_schedule_runs_at_most_parallel_operations_at_once() -> None:
    deps: dict[str, set[str]] = {f"t{i}": set() for i in range(4)}
    deps["after"] = {"t0", "t1", "t2", "t3"}
    durations = {**{f"t{i}": 10.0 for i in range(4)}, "after": 1.0}
    wide = deploy_model.schedule(deps, durations, parallel=4)
    narrow = deploy_model.schedule(deps, durations, parallel=2)
    assert wide["after"].end == 11.0
    assert narrow["after"].end == 21.0
    assert sorted(s.start for k, s in narrow.items() if k != "after") == [0, 0, 10, 10]


def test_zero_time_resources_take_no_worker() -> None:
    deps: dict[str, set[str]] = {"long": set(), "free": set(), "next": {"free"}}
    slots = deploy_model.schedule(deps, {"long": 10.0, "free": 0.0, "next": 1.0}, parallel=1)
    # `free` does not wait for `long`; `next` waits only for the one worker.
    assert slots["free"].end == 0.0
    assert slots["next"].start in (0.0, 10.0)


def test_roles_come_from_the_host_data() -> None:
    roles = deploy_model.host_roles(document("prod"))
    assert roles == {
        "prod-control-1": "bootstrap",
        "prod-control-2": "server",
        "prod-control-3": "server",
        "prod-workers-1": "agent",
        "prod-workers-2": "agent",
    }
    assert deploy_model.resource_role("prod-workers-1-push", roles) == "agent"
    assert deploy_model.resource_role("prod-workers-1-edge-joined", roles) == "container"
    assert deploy_model.resource_role("prod-workers-1-joined", roles) == "agent"
    assert deploy_model.resource_role("prod-kubeconfig", roles) is None


def test_model_of_prod_follows_the_server_joins(table: deploy_model.StepTable) -> None:
    result = deploy_model.model(document("prod"), table)
    for bound in deploy_model.BOUNDS:
        entry = result[bound]
        assert 0 < entry["kubeconfigMinutes"] < entry["nodesReadyMinutes"]
        names = [step["resource"] for step in entry["nodesReadyPath"]]
        assert names[-1] == "prod-nodes-ready"
        # The servers after the first push together, after the API answered; the second in
        # the etcd learner queue is the later one.
        assert names.index("prod-api-ready") < names.index("prod-control-3-push")
        ends = [step["endMinutes"] for step in entry["nodesReadyPath"]]
        assert ends == sorted(ends) and ends[-1] == entry["nodesReadyMinutes"]
    assert result["low"]["nodesReadyMinutes"] < result["high"]["nodesReadyMinutes"]


def test_fewer_workers_never_make_a_deploy_faster(table: deploy_model.StepTable) -> None:
    doc = document("prod")
    wide = deploy_model.model(doc, table, parallel=64)
    narrow = deploy_model.model(doc, table, parallel=2)
    assert narrow["high"]["nodesReadyMinutes"] >= wide["high"]["nodesReadyMinutes"]
    assert narrow["high"]["peakRunning"] <= 2


def test_deploy_report_names_the_anchors() -> None:
    assert any("500" in sc.anchor for sc in deploy.SCENARIOS)
    labels = [sc.label for sc in deploy.SCENARIOS]
    assert {"hetzner 3+2", "hetzner 3+50", "hetzner 5+200", "colima 1+1 (dev)"} <= set(labels)


def test_servers_joining_together_wait_in_the_learner_queue(table: deploy_model.StepTable) -> None:
    five = stack_data("prod")
    five["nodePools"][0]["count"] = 5
    doc = json.loads(json.dumps(plan.plan_document(run_plan(five, stack="prod"))))
    result = deploy_model.model(doc, table)
    rule = next(r for r in table.rules if r.queue)
    for index, bound in enumerate(deploy_model.BOUNDS):
        pushes = [s for s in result[bound]["nodesReadyPath"] if s["step"] == rule.step]
        (last,) = pushes
        # Four servers start together: the last in the queue waits for the three ahead.
        length = last["endMinutes"] - last["startMinutes"]
        expected = rule.seconds[index] + 3 * rule.queue_seconds[index]
        assert abs(length * 60 - expected) < 1, (bound, length)


def test_a_queue_serialises_only_its_own_members() -> None:
    deps: dict[str, set[str]] = {"a": set(), "b": set(), "c": set(), "d": set()}
    durations = {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}
    queues = {"a": ("q", 5.0), "b": ("q", 5.0), "c": ("q", 5.0)}
    slots = deploy_model.schedule(deps, durations, 8, queues)
    assert sorted(slot.end for urn, slot in slots.items() if urn in queues) == [10.0, 15.0, 20.0]
    assert slots["d"].end == 10.0


def test_nodes_ready_follows_the_last_push_not_a_node_gate(table: deploy_model.StepTable) -> None:
    result = deploy_model.model(document("prod"), table)
    for bound in deploy_model.BOUNDS:
        path = result[bound]["nodesReadyPath"]
        assert not any(step["resource"].endswith("-joined") for step in path)
        assert path[-2]["step"].startswith("push") and path[-1]["step"].startswith("nodes ready")


def test_pre_pull_rules_apply_to_plans_that_pre_pull(
    tmp_path: Path, table: deploy_model.StepTable
) -> None:
    prod = document("prod")
    flannel_stack = stack_data("prod")
    flannel_stack["k3s"] = {**flannel_stack.get("k3s", {}), "cni": "flannel"}
    flannel_stack.pop("cilium", None)
    flannel = json.loads(json.dumps(plan.plan_document(run_plan(flannel_stack, stack="prod"))))
    assert deploy_model.pre_pulls(prod) and not deploy_model.pre_pulls(flannel)

    def nodes_ready_step(doc: dict[str, Any]) -> str:
        timed = deploy_model.timed_resources(doc, table)
        (step,) = {t.step for t in timed.values() if t.name.endswith("-nodes-ready")}
        return step

    assert nodes_ready_step(prod) == "nodes ready: images pulled during the join"
    assert nodes_ready_step(flannel) == "nodes ready: without pre-pull"


def test_steps_past_their_limit_are_reported(table: deploy_model.StepTable) -> None:
    doc = document("prod")
    push = next(r for r in table.rules if r.queue)
    assert push.limit is not None
    # Every joining server's push, queue wait included, compared with the rule's limit.
    for limit, expect in ((1.0, {"prod-control-2-push", "prod-control-3-push"}), (1e6, set())):
        rules = tuple(
            replace(r, limit=deploy_model.Limit(seconds=limit)) if r is push else r
            for r in table.rules
        )
        result = deploy_model.model(doc, replace(table, rules=rules))
        for bound in deploy_model.BOUNDS:
            over = result[bound]["overLimit"]
            assert {o["resource"] for o in over} == expect, (limit, bound)
            assert all(o["seconds"] > o["limitSeconds"] == limit for o in over)


def test_the_pushes_limit_is_the_stack_s_join_timeout(table: deploy_model.StepTable) -> None:
    """The limit of a first deploy's pushes is deploy.joinTimeoutSeconds, read from the plan."""
    data = stack_data("prod")
    data["deploy"] = {"rollbackTimeoutSeconds": 60, "joinTimeoutSeconds": 75}
    doc = json.loads(json.dumps(plan.plan_document(run_plan(data, stack="prod"))))
    timed = deploy_model.timed_resources(doc, table)
    pushes = [t for t in timed.values() if t.name.endswith("-push")]
    assert pushes and {t.limit for t in pushes} == {75.0}
    over = deploy_model.model(doc, table)["high"]["overLimit"]
    assert {o["resource"] for o in over} >= {"prod-control-2-push", "prod-control-3-push"}
    default = deploy_model.model(document("prod"), table)["high"]["overLimit"]
    assert default == [], "600 s covers the modelled joins, queue included"


def test_deploy_checks_report_steps_past_their_limit() -> None:
    entry = {"nodesReadyMinutes": 4.0, "overLimit": []}
    over = {"nodesReadyMinutes": 9.0, "overLimit": [{"resource": "x-push"}]}
    scenario = {"label": "s", "targetNodesReadyMinutes": 5, "low": entry, "high": over}
    found = {c["name"]: c for c in deploy.checks({"scenarios": [scenario]})}
    limit = found["modelled steps past their limit, s (low-high times)"]
    assert (limit["value"], limit["pass"]) == ("0-1", False)
    assert found["modelled minutes to all nodes Ready, s (high times)"]["pass"] is False
