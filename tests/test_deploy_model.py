"""The deploy-time model of `make bench`: step table, schedule with a worker limit, paths."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import deploy, deploy_model, shapes
from components.config.hcloud_polling import HcloudPolling
from tests.conftest import run_plan, stack_data
from tooling import plan

PULL = "cni image pull"
FETCH = "cni image fetch"


def document(stack: str) -> dict[str, Any]:
    return json.loads(json.dumps(plan.plan_document(run_plan(stack_data(stack), stack=stack))))


def planned(cluster: dict[str, Any], stack: str = "prod") -> dict[str, Any]:
    return json.loads(json.dumps(plan.plan_document(run_plan(cluster, stack=stack))))


def flannel_document() -> dict[str, Any]:
    data = stack_data("prod")
    data["k3s"] = {**data.get("k3s", {}), "cni": "flannel"}
    data.pop("cilium", None)
    return planned(data)


def instant_pulls(table: deploy_model.StepTable) -> deploy_model.StepTable:
    """The table with every pull taking no time (for tests of what the pushes do)."""
    return replace(table, pulls=tuple(replace(p, seconds=(0.0, 0.0)) for p in table.pulls))


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
        low, high = rule.time(HcloudPolling())
        assert 0 <= low <= high
    assert table.pulls
    for pull in table.pulls:
        assert pull.source and pull.offset_source and pull.step
        assert 0 <= pull.seconds[0] <= pull.seconds[1]
        assert 0 <= pull.offset[0] <= pull.offset[1]
    # The last pull rule takes any node: a role the table forgot cannot go unpulled.
    assert table.pulls[-1].role is None


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
        ("{step: x, type: 'hcloud:', actions: [[1, 2]], seconds: [1, 2], source: s}", "not both"),
        ("{step: x, type: 'hcloud:', actions: [], source: s}", r"steps\[0\]\.actions: want"),
        ("{step: x, type: 'hcloud:', actions: [[3, 1]], source: s}", r"actions\[0\]"),
        ("{step: x, type: 'hcloud:', actions: [[1, 2]], poller: go, source: s}", "poller"),
        ("{step: x, type: 'hcloud:', source: s}", r"steps\[0\]\.seconds: want"),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s, overlapsActions: [1, 2]}",
            r"steps\[0\]\.overlapsActions: want",
        ),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s,"
            " overlapsActions: {min: [2, 1], source: s}}",
            r"steps\[0\]\.overlapsActions\.min",
        ),
        (
            "{step: x, type: 'tls:', seconds: [1, 2], source: s,"
            " overlapsActions: {min: [1, 2], source: ' '}}",
            r"steps\[0\]\.overlapsActions\.source",
        ),
    ],
)
def test_a_bad_table_is_refused(tmp_path: Path, rule: str, error: str) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text(f"engine: {{parallel: 8, cliDefault: 8}}\nsteps:\n  - {rule}\n", "utf-8")
    with pytest.raises(deploy_model.StepTableError, match=error):
        deploy_model.load_steps(bad)


def test_an_action_timed_rule_has_no_seconds(table: deploy_model.StepTable) -> None:
    timed = [r for r in table.rules if r.actions is not None]
    assert timed and all(r.seconds is None for r in timed)
    assert all(r.seconds is not None for r in table.rules if r.actions is None)
    with pytest.raises(ValueError, match="exactly one"):
        replace(timed[0], seconds=(1.0, 2.0))


GOOD_PULL = "step: p, offset: {seconds: [1, 2], source: s}, seconds: [3, 4], source: s"


def test_a_fetch_has_no_role(tmp_path: Path) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text(
        "engine: {parallel: 8, cliDefault: 8}\nsteps:\n"
        "  - {step: x, type: 'tls:', seconds: [1, 2], source: s}\n"
        f"fetches: [{{{GOOD_PULL}, role: agent}}]\n",
        "utf-8",
    )
    with pytest.raises(deploy_model.StepTableError, match=r"fetches\[\]\.role"):
        deploy_model.load_steps(bad)


@pytest.mark.parametrize(
    ("pulls", "error"),
    [
        ("[{step: p, seconds: [3, 4], source: s}]", r"pulls\[0\]\.offset: want"),
        ("[{step: p, offset: [1, 2], seconds: [3, 4], source: s}]", r"pulls\[0\]\.offset: want"),
        (
            "[{step: p, offset: {seconds: [2, 1], source: s}, seconds: [3, 4], source: s}]",
            r"pulls\[0\]\.offset\.seconds",
        ),
        (
            "[{step: p, offset: {seconds: [1, 2], source: ' '}, seconds: [3, 4], source: s}]",
            r"pulls\[0\]\.offset\.source",
        ),
        (
            f"[{{{GOOD_PULL}}}, {{step: p, offset: {{seconds: [1, 2], source: s}}, source: s}}]",
            r"pulls\[1\]\.seconds",
        ),
        (
            "[{step: p, offset: {seconds: [1, 2], source: s}, seconds: [3, 4]}]",
            r"pulls\[0\]\.source",
        ),
        (f"[{{{GOOD_PULL}, role: boss}}]", r"pulls\[0\]\.role"),
        (f"[{{{GOOD_PULL}, suffix: -push}}]", r"pulls\[0\]: unknown key"),
        (
            "[{offset: {seconds: [1, 2], source: s}, seconds: [3, 4], source: s}]",
            r"pulls\[0\]\.step",
        ),
        ("[3]", r"pulls\[0\]: a pull is a mapping"),
        ("{step: p}", r"pulls: want a list"),
    ],
)
def test_a_bad_pull_is_refused(tmp_path: Path, pulls: str, error: str) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text(
        "engine: {parallel: 8, cliDefault: 8}\n"
        "steps:\n  - {step: x, type: 'tls:', seconds: [1, 2], source: s}\n"
        f"pulls: {pulls}\n",
        "utf-8",
    )
    with pytest.raises(deploy_model.StepTableError, match=error):
        deploy_model.load_steps(bad)


def test_a_rule_for_an_unknown_cni_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text(
        "engine: {parallel: 8, cliDefault: 8}\n"
        "steps:\n  - {step: x, type: 'tls:', seconds: [1, 2], source: s, cni: weave}\n",
        "utf-8",
    )
    with pytest.raises(deploy_model.StepTableError, match=r"steps\[0\]\.cni: 'weave'"):
        deploy_model.load_steps(bad)


def test_a_node_without_a_pull_rule_is_named(table: deploy_model.StepTable) -> None:
    servers_only = replace(table, pulls=(replace(table.pulls[-1], role="server"),))
    with pytest.raises(deploy_model.StepTableError, match="'prod-control-1' \\(role bootstrap\\)"):
        deploy_model.timed_pulls(document("prod"), servers_only)


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
    # Pulls of no time: on the high times the nodes' pulls outlast the joins (tested below).
    result = deploy_model.model(document("prod"), instant_pulls(table))
    for bound in deploy_model.BOUNDS:
        entry = result[bound]
        assert 0 < entry["kubeconfigMinutes"] < entry["nodesReadyMinutes"]
        names = [step["resource"] for step in entry["nodesReadyPath"]]
        assert names[-1] == "prod-nodes-ready"
        # The servers after the first push together, after the bootstrap push (its confirm
        # needs k3s's API up; the API-ready gate is off the path); the second in the etcd
        # learner queue is the later one.
        assert "prod-api-ready" not in names
        assert names.index("prod-control-1-push") + 1 == names.index("prod-control-3-push")
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
    assert {"hetzner 3+50", "hetzner 5+200", "colima 1+1 (dev)"} <= set(labels)
    assert any(label.startswith("hetzner 3+2") for label in labels)


def test_servers_joining_together_wait_in_the_learner_queue(table: deploy_model.StepTable) -> None:
    five = stack_data("prod")
    five["nodePools"][0]["count"] = 5
    doc = json.loads(json.dumps(plan.plan_document(run_plan(five, stack="prod"))))
    result = deploy_model.model(doc, instant_pulls(table))
    rule = next(r for r in table.rules if r.queue)
    assert rule.seconds is not None
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
        assert path[-1]["step"].startswith("nodes ready")
        # The last push, or a node's pull that outlasted it; before the pull, its push (the
        # pull began that far into it) or its host's download (the pull waited for it).
        before, anchor = path[-2], path[-3]
        if before["step"] != PULL:
            assert before["step"].startswith("push"), before
            continue
        if anchor["step"] == FETCH:
            assert before["afterEndOf"] == anchor["resource"] == before["resource"]
            assert path[-4]["step"].startswith("build") and "afterStartOf" in anchor
        else:
            assert anchor["step"].startswith("push"), anchor
            assert before["afterStartOf"] == anchor["resource"]


def test_pre_pull_rules_apply_to_plans_that_pre_pull(
    tmp_path: Path, table: deploy_model.StepTable
) -> None:
    prod = document("prod")
    flannel = flannel_document()
    assert deploy_model.pre_pulls(prod) and not deploy_model.pre_pulls(flannel)
    assert (deploy_model.plan_cni(prod), deploy_model.plan_cni(flannel)) == ("cilium", "flannel")

    def nodes_ready_step(doc: dict[str, Any]) -> str:
        timed = deploy_model.timed_resources(doc, table)
        (step,) = {t.step for t in timed.values() if t.name.endswith("-nodes-ready")}
        return step

    assert nodes_ready_step(prod) == "nodes ready: after the pulls"
    assert nodes_ready_step(flannel) == "nodes ready: flannel, nothing to pull"
    # A Cilium plan whose nodes pull nothing (no host document lists an image) keeps the rule
    # where the pull follows the last push.
    no_pull = json.loads(json.dumps(prod))
    for res in no_pull["resources"]:
        env = res.get("inputs", {}).get("environment")
        if isinstance(env, dict) and "HOST_JSON" in env:
            host = json.loads(env["HOST_JSON"])
            host["k3s"]["prePullImages"] = host["k3s"]["fetchImages"] = []
            env["HOST_JSON"] = json.dumps(host)
    assert not deploy_model.pre_pulls(no_pull) and not deploy_model.fetch_hosts(no_pull)
    assert nodes_ready_step(no_pull) == "nodes ready: without pre-pull"


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


def test_a_pull_starts_its_offset_after_its_push_starts_and_takes_no_worker() -> None:
    # One worker: the push waits for `blocker`; its pull starts 30 s after the push really
    # started, not when it became ready; `other` gets the worker while the pull still runs.
    deps: dict[str, set[str]] = {
        "blocker": set(),
        "push": set(),
        "other": {"push"},
        "pull": set(),
        "gate": {"push", "pull"},
    }
    durations = {"blocker": 50.0, "push": 100.0, "other": 20.0, "pull": 200.0, "gate": 10.0}
    slots = deploy_model.schedule(deps, durations, 1, anchored={"pull": ("push", 30.0)})
    assert (slots["push"].start, slots["push"].end) == (50.0, 150.0)
    assert (slots["pull"].start, slots["pull"].end) == (80.0, 280.0)
    assert (slots["other"].start, slots["other"].end) == (150.0, 170.0)
    assert (slots["gate"].start, slots["gate"].end) == (280.0, 290.0)


def test_every_pre_pulling_node_pulls_beside_its_own_push(table: deploy_model.StepTable) -> None:
    """Hosts and their nspawn containers; each pull from its rule's offset after its push."""
    doc = planned(shapes.cluster_config(6, 3, 1), stack="bench")
    pulls = deploy_model.timed_pulls(doc, table)
    names = {p.name: p for p in pulls.values()}
    assert sorted(names) == [
        "bench-control-1",
        "bench-control-2",
        "bench-control-3",
        "bench-dense-1-1",
        "bench-dense-1-1-c1",
        "bench-workers-1-1",
    ]
    container = next(r for r in table.pulls if r.role == "container")
    assert names["bench-dense-1-1-c1"].offset == container.offset
    assert names["bench-control-1"].offset == table.pulls[-1].offset != container.offset
    for index in (0, 1):
        run = deploy_model.schedule_plan(doc, table, index)
        (gate,) = [u for u, t in run.timed.items() if t.name.endswith("-nodes-ready")]
        for key, pull in pulls.items():
            host = pull.name.removesuffix("-c1")
            push = run.slots[pull.anchor]
            assert run.timed[pull.anchor].name == f"{host}-push"
            # Not before its host's fetch (one per host, for its containers too) has ended.
            assert pull.after == f"{deploy_model.FETCH_KEY}{host}"
            fetch = run.slots[f"{deploy_model.FETCH_KEY}{host}"]
            assert run.slots[key].start == max(push.start + pull.offset[index], fetch.end)
            assert run.slots[key].end == run.slots[key].start + pull.seconds[index]
            assert run.slots[gate].start >= run.slots[key].end


def test_every_pre_pulling_host_fetches_from_its_build(table: deploy_model.StepTable) -> None:
    doc = planned(shapes.cluster_config(6, 3, 1), stack="bench")
    fetches = deploy_model.timed_fetches(doc, table)
    hosts = ["bench-control-1", "bench-control-2", "bench-control-3"]
    assert sorted(f.name for f in fetches.values()) == [
        *hosts,
        "bench-dense-1-1",
        "bench-workers-1-1",
    ]
    (rule,) = table.fetches
    for index in (0, 1):
        run = deploy_model.schedule_plan(doc, table, index)
        for key, fetch in fetches.items():
            assert run.timed[fetch.anchor].name == f"{fetch.name}-build"
            build = run.slots[fetch.anchor]
            assert run.slots[key].start == build.start + rule.offset[index]
            assert run.slots[key].end == run.slots[key].start + rule.seconds[index]


def test_a_host_with_nothing_to_download_has_no_fetch_and_its_pulls_do_not_wait(
    table: deploy_model.StepTable,
) -> None:
    """Only digest-pinned images are downloaded (k3s.fetchImages); tag-only ones are pulled."""
    doc = planned(shapes.cluster_config(6, 3, 1), stack="bench")
    for res in doc["resources"]:
        env = res.get("inputs", {}).get("environment")
        if (
            isinstance(env, dict)
            and env.get("HOST_NAME") == "bench-dense-1-1"
            and "HOST_JSON" in env
        ):
            host = json.loads(env["HOST_JSON"])
            host["k3s"]["fetchImages"] = []
            env["HOST_JSON"] = json.dumps(host)
    assert "bench-dense-1-1" not in deploy_model.fetch_hosts(doc)
    assert "bench-control-1" in deploy_model.fetch_hosts(doc)
    pulls = deploy_model.timed_pulls(doc, table)
    waits = {p.name: p.after for p in pulls.values()}
    dense = [name for name in waits if name.startswith("bench-dense-1-1")]
    assert dense and all(waits[name] is None for name in dense)
    assert waits["bench-control-1"] == f"{deploy_model.FETCH_KEY}bench-control-1"
    assert f"{deploy_model.FETCH_KEY}bench-dense-1-1" not in deploy_model.timed_fetches(doc, table)


def test_a_pull_waits_for_its_hosts_fetch() -> None:
    """An anchored activity starts `offset` after its anchor, or when its deps end if later."""
    deps = {"build": set(), "push": {"build"}, "fetch": set(), "pull": {"fetch"}}
    durations = {"build": 10.0, "push": 20.0, "fetch": 100.0, "pull": 5.0}
    anchored = {"fetch": ("build", 2.0), "pull": ("push", 3.0)}
    slots = deploy_model.schedule(deps, durations, 4, anchored=anchored)
    assert (slots["fetch"].start, slots["fetch"].end) == (2.0, 102.0)
    assert (slots["pull"].start, slots["pull"].end) == (102.0, 107.0)
    # A fast fetch: the push's start decides.
    slots = deploy_model.schedule(deps, {**durations, "fetch": 1.0}, 4, anchored=anchored)
    assert (slots["pull"].start, slots["pull"].end) == (13.0, 18.0)


def test_a_slow_fetch_is_on_the_critical_path(table: deploy_model.StepTable) -> None:
    doc = document("prod")
    (rule,) = table.fetches
    slow = replace(table, fetches=(replace(rule, seconds=(2000, 2000)),))
    result = deploy_model.model(doc, slow)
    for bound in deploy_model.BOUNDS:
        path = result[bound]["nodesReadyPath"]
        fetch, pull = path[-3], path[-2]
        assert fetch["step"] == rule.step and pull["step"] == PULL
        assert pull["afterEndOf"] == fetch["resource"]
        assert fetch["afterStartOf"] == f"{fetch['resource']}-build"
        assert result[bound]["fetches"] == 5
        assert abs(pull["startMinutes"] - fetch["endMinutes"]) < 0.01


def test_nodes_ready_waits_for_the_slowest_pull(table: deploy_model.StepTable) -> None:
    doc = document("prod")
    slow = deploy_model.PullRule(
        step=PULL, role="agent", offset=(5, 5), offset_source="s", seconds=(900, 1000), source="s"
    )
    instant_fetch = tuple(replace(f, seconds=(0.0, 0.0)) for f in table.fetches)
    result = deploy_model.model(
        doc, replace(table, pulls=(slow, *table.pulls), fetches=instant_fetch)
    )
    (gate,) = {r for r in table.rules if r.step == "nodes ready: after the pulls"}
    assert gate.seconds is not None
    for index, bound in enumerate(deploy_model.BOUNDS):
        path = result[bound]["nodesReadyPath"]
        pull, push = path[-2], path[-3]
        assert pull["step"] == PULL and pull["resource"].startswith("prod-workers-")
        assert push["resource"] == f"{pull['resource']}-push"
        assert pull["afterStartOf"] == push["resource"]
        assert abs(pull["startMinutes"] - push["startMinutes"] - 5 / 60) < 0.01
        assert abs(pull["endMinutes"] - pull["startMinutes"] - slow.seconds[index] / 60) < 0.01
        ready = result[bound]["nodesReadyMinutes"]
        assert abs(ready - pull["endMinutes"] - gate.seconds[index] / 60) < 0.01
    # The printed path shows it.
    text = deploy.render(
        {
            "stepsFile": "x",
            "parallel": 128,
            "scenarios": [{"label": "prod", "hosts": 5, "anchor": "-", **result}],
        }
    )
    assert f"[{PULL}] 16.7 (from 0.1 into prod-workers-" in text


def test_a_flannel_plan_pulls_nothing(table: deploy_model.StepTable) -> None:
    flannel = flannel_document()
    assert deploy_model.timed_pulls(flannel, table) == {}
    assert deploy_model.timed_fetches(flannel, table) == {}
    result = deploy_model.model(flannel, table)
    (rule,) = {r for r in table.rules if r.step == "nodes ready: flannel, nothing to pull"}
    assert rule.seconds is not None
    for index, bound in enumerate(deploy_model.BOUNDS):
        path = result[bound]["nodesReadyPath"]
        assert result[bound]["pulls"] == 0
        assert not any(step["step"] == PULL for step in path)
        # Right after the last push, for no longer than the rule says.
        assert path[-2]["step"].startswith("push")
        length = (path[-1]["endMinutes"] - path[-1]["startMinutes"]) * 60
        assert abs(length - rule.seconds[index]) < 1


# --- Hetzner action polling ------------------------------------------------------------------

DEFAULT = HcloudPolling()


def test_default_polling_is_hcloud_gos_backoff() -> None:
    # ExponentialBackoff(2, 500ms) capped at a minute: polls 0.5, 1.5, ... 63.5, 123.5, 183.5 s.
    seen = [deploy_model.seen_at(t, DEFAULT, "sdk") for t in (0, 1, 30, 31.5, 32, 64, 124)]
    assert seen == [0.5, 1.5, 31.5, 31.5, 63.5, 123.5, 183.5]
    # The plugin-framework half caps at 10 s while poll_interval is unset ...
    framework = [deploy_model.seen_at(t, DEFAULT, "framework") for t in (8, 16, 26)]
    assert framework == [15.5, 25.5, 35.5]
    # ... and uses the configured backoff, capped at a minute, once it is set.
    configured = HcloudPolling("exponential", 0.5, configured=True)
    assert deploy_model.seen_at(26, configured, "framework") == 31.5


def test_constant_polling_sees_an_action_within_its_interval() -> None:
    every6 = HcloudPolling("constant", 6.0, configured=True)
    assert [
        deploy_model.seen_at(t, every6, p) for t, p in ((0, "sdk"), (70, "sdk"), (10, "framework"))
    ] == [6.0, 72.0, 12.0]


def test_server_create_from_the_snapshot_is_timed_by_its_polling(
    table: deploy_model.StepTable,
) -> None:
    rule = next(r for r in table.rules if r.step == "server create" and r.nixos_image)
    # The default polling reproduces #966's 2m11s at the high end.
    assert rule.time(DEFAULT) == (32.0, 131.0)
    assert rule.time(HcloudPolling("constant", 6.0, configured=True)) == (36.0, 84.0)


def test_polling_times_the_plans_hetzner_resources(table: deploy_model.StepTable) -> None:
    doc = document("prod")
    default = deploy_model.timed_resources(doc, table)
    every5 = deploy_model.timed_resources(doc, table, HcloudPolling("constant", 5.0, True))
    servers = [u for u, t in default.items() if t.step == "server create"]
    assert servers
    for urn in servers:
        assert default[urn].seconds == (32.0, 131.0)
        assert every5[urn].seconds == (35.0, 80.0)
    # Only Hetzner resources depend on the polling.
    changed = {default[u].step for u in default if default[u].seconds != every5[u].seconds}
    assert changed == {"server create", "private network attach", "hetzner api call"}


def test_scenario_stacks_carry_their_polling(tmp_path: Path) -> None:
    polled = next(sc for sc in deploy.SCENARIOS if sc.constant_polling)
    polling = deploy.stack_polling(polled.config_file(tmp_path))
    assert polling.function == "constant" and polling.configured
    default = next(
        sc for sc in deploy.SCENARIOS if sc.stack_file is None and not sc.constant_polling
    )
    assert deploy.stack_polling(default.config_file(tmp_path)) == DEFAULT


def test_an_overlapping_step_counts_from_its_dependency_s_actions() -> None:
    """A boot that began when the server's actions ended (before the provider saw them) ends
    its duration after that, but takes at least its minimum once started."""
    deps = {"server": set(), "boot": {"server"}, "later": set(), "late": {"later"}}
    durations = {"server": 84.0, "boot": 60.0, "later": 200.0, "late": 60.0}
    # The server's actions ran 77 of its 84 s: the boot began 7 s before it could start.
    overlaps = {"boot": ("server", 77.0, 15.0), "late": ("later", 10.0, 15.0)}
    slots = deploy_model.schedule(deps, durations, 4, overlaps=overlaps)
    assert (slots["boot"].start, slots["boot"].end) == (84.0, 137.0)
    # Long since booted: only the minimum (its own SSH round trips).
    assert (slots["late"].start, slots["late"].end) == (200.0, 215.0)


def test_the_image_boot_overlaps_the_create_s_polling(table: deploy_model.StepTable) -> None:
    """With the provider's default polling a create whose actions end by 77 s is seen at 131 s
    (#966); the server booted meanwhile, and the critical path says when its boot began."""
    (rule,) = [r for r in table.rules if r.overlap_min is not None]
    assert rule.step == "install: boot the image" and rule.overlap_min is not None
    minimum = rule.overlap_min[1]
    doc = document("prod")
    run = deploy_model.schedule_plan(doc, table, 1, image_ready=True)
    installs = [u for u, t in run.timed.items() if t.step == rule.step]
    assert installs and set(run.began) == set(installs)
    for urn in installs:
        server = next(d for d in run.deps[urn] if run.timed[d].step == "server create")
        assert run.began[urn] == run.slots[server].start + 77.0
        assert run.slots[server].end - run.slots[server].start == 131.0
        length = run.slots[urn].end - run.slots[urn].start
        assert length == max(minimum, 60.0 - (131.0 - 77.0))
        path = deploy_model._critical_path(
            urn, run.deps, run.slots, run.steps, run.anchors, run.began
        )
        assert path[-1]["workBeganMinutes"] == round(run.began[urn] / 60, 2)
        assert path[-1]["workBeganMinutes"] < path[-1]["startMinutes"]


def test_an_overlapping_step_needs_one_action_timed_dependency(
    table: deploy_model.StepTable,
) -> None:
    doc = document("prod")
    install = next(r for r in doc["resources"] if r["name"] == "prod-control-1-install")
    install["dependsOn"] = [d for d in install["dependsOn"] if "hcloud:" not in d]
    with pytest.raises(deploy_model.StepTableError, match=r"prod-control-1-install .* waits for 0"):
        deploy_model.schedule_plan(doc, table, 1)
