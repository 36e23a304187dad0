"""Parallelism of a real run: the plan's graph lets every install of a 50-host stack run at once.

Under `pulumi up --parallel P` the engine runs at most P resource operations at once, and the
Python language host gives the program max(P, 1) * 4 threads, each RegisterResource holding one
until the engine created the resource (bench/README.md). Here the program runs under mocks whose
installs are slow (each waits, up to a timeout, until every install is in flight) with the
thread pool the language host would size for the workflows' `parallel`.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pulumi
import yaml

from bench import deploy_model, shapes
from tooling import mocks, plan

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"
AGENTS = 50
SERVERS = 3


class SlowInstalls(mocks.FakeProviders):
    """Installs that take as long as it takes for `expected` of them to be in flight."""

    def __init__(self, expected: int, timeout: float) -> None:
        super().__init__()
        self.expected, self.timeout = expected, timeout
        self.in_flight = self.peak = self.installs = 0
        self.cond = threading.Condition()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        if args.typ == "command:local:Command" and args.name.endswith("-install"):
            with self.cond:
                self.in_flight += 1
                self.installs += 1
                self.peak = max(self.peak, self.in_flight)
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.in_flight >= self.expected, self.timeout)
                self.in_flight -= 1
        return super().new_resource(args)


def _slow_plan(cluster: dict[str, Any], parallel: int, expected: int) -> tuple[int, int]:
    config = {
        "nixos-k3s:cluster": cluster,
        "hcloud:token": plan.placeholder_secret("hcloud:token", None),
    }
    stack_file = plan.StackFile("parallel", config, frozenset({"hcloud:token"}))
    providers = SlowInstalls(expected, timeout=3.0)
    plan.run_program(stack_file, providers=providers, parallel=parallel)
    return providers.installs, providers.peak


def slow_plan(parallel: int) -> tuple[int, int]:
    """(installs, most installs in flight at once) for 3 servers + 50 agents, in a fresh
    interpreter (Pulumi's runtime is process-global)."""
    cluster = shapes.cluster_config(SERVERS + AGENTS, SERVERS, plain_cap=AGENTS)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_slow_plan, cluster, parallel, SERVERS + AGENTS).result()


def workflow_parallel(name: str) -> list[int]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return [
        int(step["with"]["parallel"])
        for job in workflow["jobs"].values()
        for step in job.get("steps", [])
        if str(step.get("uses", "")).startswith("pulumi/actions@")
        and step.get("with", {}).get("command") in ("up", "destroy", "preview")
    ]


def test_workflows_pass_the_parallel_the_deploy_model_assumes() -> None:
    expected = deploy_model.load_steps().parallel
    for name in ("deploy.yml", "destroy.yml", "preview.yml"):
        values = workflow_parallel(name)
        assert values and set(values) == {expected}, name
    # A Hetzner network holds at most 100 servers: every host's install fits in one wave.
    assert expected >= 100


def test_all_installs_of_a_50_agent_stack_are_in_flight_at_once() -> None:
    installs, peak = slow_plan(deploy_model.load_steps().parallel)
    assert installs == SERVERS + AGENTS
    assert peak == SERVERS + AGENTS


def test_a_small_thread_pool_would_hold_installs_back() -> None:
    """The same graph with --parallel 8 (32 threads): installs queue for threads."""
    installs, peak = slow_plan(8)
    assert installs == SERVERS + AGENTS
    assert peak <= 8 * mocks.LANGUAGE_HOST_THREADS_PER_WORKER < SERVERS + AGENTS
