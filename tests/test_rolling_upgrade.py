"""Rolling upgrades in the plan: each host's roll step, their order, and what keys them."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pulumi
import pytest

from components.config import ConfigError
from components.hosts import render
from components.stack import parse_cluster
from tests.conftest import Plan, run_plan, stack_data
from tooling import mocks, plan


def cluster(workers: int = 4, max_unavailable: int | None = None, **k3s: str) -> dict[str, Any]:
    data = stack_data("prod")
    data["nodePools"][1]["count"] = workers
    data["k3s"].update(k3s)
    if max_unavailable is not None:
        data["deploy"] = {"maxUnavailable": max_unavailable}
    return data


@pytest.fixture(scope="module")
def batched() -> Plan:
    return Plan(run_plan(cluster(max_unavailable=2), stack="prod"))


def rolls_before(plan: Plan, name: str) -> set[str]:
    return {dep for dep in plan.deps(f"{name}-roll") if dep.endswith("-roll")}


def test_servers_roll_one_at_a_time_then_agents_in_batches(batched: Plan) -> None:
    assert rolls_before(batched, "prod-control-1") == set()
    assert rolls_before(batched, "prod-control-2") == {"prod-control-1-roll"}
    assert rolls_before(batched, "prod-control-3") == {"prod-control-2-roll"}
    for agent in ("prod-workers-1", "prod-workers-2"):
        assert rolls_before(batched, agent) == {"prod-control-3-roll"}
    for agent in ("prod-workers-3", "prod-workers-4"):
        assert rolls_before(batched, agent) == {"prod-workers-1-roll", "prod-workers-2-roll"}


def test_each_push_waits_for_its_roll_and_the_roll_for_nothing_of_the_install(
    batched: Plan,
) -> None:
    for host in ("prod-control-1", "prod-control-3", "prod-workers-4"):
        assert f"{host}-roll" in batched.deps(f"{host}-push")
        # creating a cluster: the roll steps only record their key, so they must not wait
        # for installs (agents would stop installing in parallel)
        assert not batched.reaches(f"{host}-roll", f"{host}-install")


def test_roll_step_inputs(batched: Plan) -> None:
    roll = batched["prod-workers-3-roll"]
    push = batched["prod-workers-3-push"]
    key = render.roll_key(parse_cluster(cluster()))
    env = roll.inputs["environment"]
    assert roll.inputs["create"] == f"echo {key}"
    assert roll.inputs["update"] == "bash components/scripts/node-roll.sh"
    assert roll.inputs["addPreviousOutputInEnv"] is True
    assert env["ROLL_KEY"] == key
    assert env["DRAIN_TIMEOUT"] == "300" and env["READY_TIMEOUT"] == "600"
    assert env["ROLL_EVERY_RELEASE"] == "0"  # an agent's release is pushed by its push
    # the node is reached like its push, the drain runs on the bootstrap server
    for name in ("TARGET_HOST", "HOST_NAME", "HOST_JSON", "RELEASE_ID", "HOST_PUBLIC_KEY"):
        assert env[name] == push.inputs["environment"][name]
    bootstrap_push = batched["prod-control-1-push"].inputs["environment"]
    assert env["GATE_HOST"] == bootstrap_push["TARGET_HOST"]
    assert env["GATE_HOST_PUBLIC_KEY"] == bootstrap_push["HOST_PUBLIC_KEY"]
    assert "triggers" not in roll.inputs  # a new key updates, never replaces
    assert roll.inputs["stdin"] == "[secret]"


def test_only_the_k3s_package_or_the_nixpkgs_pin_change_the_roll_key() -> None:
    base = render.roll_key(parse_cluster(cluster()))
    assert render.roll_key(parse_cluster(cluster(package="k3s_1_33"))) != base
    labelled = cluster()
    labelled["nodePools"][1]["labels"] = {"tier": "batch"}
    assert render.roll_key(parse_cluster(labelled)) == base
    assert render.roll_key(parse_cluster(cluster(workers=9))) == base


@pytest.mark.parametrize("value", [0, 101, "two"])
def test_max_unavailable_is_checked(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(cluster(max_unavailable=value))  # type: ignore[arg-type]
    assert "deploy.maxUnavailable" in str(caught.value)


class TimedRolls(mocks.FakeProviders):
    """Fake providers that take a while to create a roll step and note when each one ran."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: dict[str, tuple[float, float]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if not args.name.endswith("-roll"):
            return super().new_resource(args)
        start = time.monotonic()
        time.sleep(0.05)
        result = super().new_resource(args)
        self.spans[args.name] = (start, time.monotonic())
        return result


def _roll_spans(data: dict[str, Any]) -> tuple[plan.PlanResult, dict[str, tuple[float, float]]]:
    config: dict[str, Any] = {"nixos-k3s:cluster": data}
    keys = set()
    for key in plan.PLACEHOLDER_SECRETS:
        config[key] = plan.placeholder_secret(key, None)
        keys.add(key)
    providers = TimedRolls()
    result = plan.run_program(plan.StackFile("prod", config, frozenset(keys)), providers=providers)
    return result, providers.spans


def test_a_roll_step_is_registered_only_after_the_rolls_it_depends_on() -> None:
    # The engine starts a roll step once its RegisterResource arrives; the program sends it only
    # after the rolls of the batch before are registered (their URNs, see nixos_host.
    # once_registered), which in a real deploy means created or updated.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result, spans = pool.submit(_roll_spans, cluster(max_unavailable=2)).result()
    planned = Plan(result)
    assert len(spans) == 7
    for name, (start, _) in spans.items():
        for dep in rolls_before(planned, name.removesuffix("-roll")):
            assert spans[dep][1] <= start, (dep, name)


def test_servers_push_every_release_along_the_roll_chain(batched: Plan) -> None:
    """A server's roll pushes any new release itself (node-roll.sh, ROLL_EVERY_RELEASE), so
    the servers' activations go one at a time along the chain and etcd keeps its quorum; the
    agents' rolls leave it to their pushes, which run in parallel."""
    every = {
        name.removesuffix("-roll"): batched[name].inputs["environment"]["ROLL_EVERY_RELEASE"]
        for name in batched.by_name
        if name.endswith("-roll")
    }
    assert every == {
        "prod-control-1": "1",
        "prod-control-2": "1",
        "prod-control-3": "1",
        "prod-workers-1": "0",
        "prod-workers-2": "0",
        "prod-workers-3": "0",
        "prod-workers-4": "0",
    }
