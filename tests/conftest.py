"""Shared fixtures: stack data and the program run under the mocks.

Everything Pulumi-specific about mocks (camelCase inputs, numbers as floats, wrapped secrets,
URNs, dependencies) is handled once, in tooling/mocks.py and tooling/plan.py; tests
look at plain `Registration` records.
"""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tooling import plan
from tooling.mocks import Registration

PROJECT_DIR = Path(__file__).resolve().parent.parent


def stack_data(stack: str) -> dict[str, Any]:
    """The `nixos-k3s:cluster` mapping of Pulumi.<stack>.yaml, as a mutable copy."""
    data = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return copy.deepcopy(data["config"]["nixos-k3s:cluster"])


def _run_in_this_process(stack_file: plan.StackFile) -> plan.PlanResult:
    return plan.run_program(stack_file)


def run_plan(
    cluster: dict[str, Any],
    stack: str = "test",
    extra: dict[str, Any] | None = None,
    secret_keys: frozenset[str] = frozenset(),
) -> plan.PlanResult:
    """Run the program on `cluster` under the mocks, in a fresh interpreter.

    Pulumi's runtime is process-global: a test that ran another program under mocks (and let
    it fail on purpose) can leave apply chains behind that would surface in this run.
    """
    config: dict[str, Any] = {"nixos-k3s:cluster": cluster, **(extra or {})}
    keys = set(secret_keys)
    for key in plan.PLACEHOLDER_SECRETS:
        if key not in config:
            config[key] = plan.placeholder_secret(key, None)
            keys.add(key)
    stack_file = plan.StackFile(stack=stack, config=config, secret_keys=frozenset(keys))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_in_this_process, stack_file).result()


class Plan:
    """A PlanResult with look-ups by resource name and type."""

    def __init__(self, result: plan.PlanResult):
        self.result = result
        # Names are unique per type only (a host's Server and its NixosHost share a name);
        # custom resources win over components.
        ordered = sorted(result.registrations, key=lambda r: r.custom)
        self.by_name = {r.name: r for r in ordered}
        self.by_urn = {r.urn: r for r in result.registrations}

    def __getitem__(self, name: str) -> Registration:
        return self.by_name[name]

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.result.registrations if r.type == typ]

    def deps(self, name: str) -> set[str]:
        return {self.by_urn[u].name for u in self.by_name[name].depends_on if u in self.by_urn}

    def reaches(self, start: str, target: str) -> bool:
        """Whether `start` depends on `target`, directly or through others."""
        seen, todo = set(), [start]
        while todo:
            for dep in self.deps(todo.pop()):
                if dep == target:
                    return True
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return False


@pytest.fixture
def plan_of() -> Callable[..., Plan]:
    return lambda cluster, **kw: Plan(run_plan(cluster, **kw))


@pytest.fixture(scope="session")
def prod_plan() -> Plan:
    return Plan(run_plan(stack_data("prod"), stack="prod"))


@pytest.fixture(scope="session")
def dev_plan() -> Plan:
    return Plan(run_plan(stack_data("dev"), stack="dev"))
