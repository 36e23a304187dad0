"""`pulumi destroy` leaves nothing behind: every command either undoes itself or need not.

A command resource has a `delete` command, or components.lifecycle says why deleting
something else covers it. Enumerated from the dev and prod plans, plus a stack with
containers and tailscale (the widest set of commands).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import yaml

from components import lifecycle
from tests.conftest import Plan, run_plan
from tests.reliability.test_secret_hygiene import PLANTED, STACK_FILE
from tooling.mocks import REDACTED, Registration

COMMAND_TYPES = ("command:local:Command", "command:remote:Command")


def uncovered(registrations: Iterable[Registration]) -> list[str]:
    """Commands with neither a delete step nor a coverage reason."""
    missing = []
    for reg in registrations:
        if reg.type not in COMMAND_TYPES:
            continue
        delete = reg.inputs.get("delete")
        has_delete = isinstance(delete, str) and delete.strip() not in ("", REDACTED)
        if not has_delete and lifecycle.coverage_reason(reg.name) is None:
            missing.append(reg.name)
    return sorted(missing)


@pytest.fixture(scope="module")
def wide_plan() -> Plan:
    cluster = yaml.safe_load(STACK_FILE.read_text(encoding="utf-8"))["config"]
    return Plan(
        run_plan(
            cluster["nixos-k3s:cluster"],
            stack="wide",
            extra=dict(PLANTED),
            secret_keys=frozenset(PLANTED),
        )
    )


def commands(plan: Plan) -> list[Registration]:
    return [r for r in plan.result.registrations if r.type in COMMAND_TYPES]


def test_the_check_catches_a_command_without_delete() -> None:
    stray = Registration(
        urn="urn:pulumi:t::nixos-k3s::command:remote:Command::t-frobnicate",
        type="command:remote:Command",
        name="t-frobnicate",
        custom=True,
        parent=None,
        depends_on=[],
        inputs={"create": "frobnicate --on"},
        secret_paths={},
        provider=None,
    )
    assert uncovered([stray]) == ["t-frobnicate"]
    assert uncovered([Registration(**{**stray.__dict__, "inputs": {"delete": "x"}})]) == []


@pytest.mark.parametrize("which", ["dev_plan", "prod_plan", "wide_plan"])
def test_every_command_is_undone_or_covered(which: str, request: pytest.FixtureRequest) -> None:
    plan: Plan = request.getfixturevalue(which)
    assert len(commands(plan)) >= 8
    assert uncovered(plan.result.registrations) == []


def test_coverage_table_has_no_stale_entries(prod_plan: Plan, dev_plan: Plan) -> None:
    names = [r.name for plan in (prod_plan, dev_plan) for r in commands(plan)]
    for suffix in lifecycle.COVERED_WITHOUT_DELETE:
        assert any(name.endswith(suffix) for name in names), f"nothing is named *{suffix}"


def test_commands_that_change_shared_state_have_delete(prod_plan: Plan, dev_plan: Plan) -> None:
    # Node objects live in the cluster, VMs on the Mac: deleting them is not implied.
    shared = [
        reg
        for plan in (prod_plan, dev_plan)
        for reg in commands(plan)
        if reg.name.endswith(("-joined", "-vm"))
    ]
    assert {r.name.rsplit("-", 1)[1] for r in shared} == {"joined", "vm"}
    for reg in shared:
        assert isinstance(reg.inputs.get("delete"), str), reg.name
        assert lifecycle.coverage_reason(reg.name) is None, reg.name
