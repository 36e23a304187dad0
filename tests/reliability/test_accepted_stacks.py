"""Property: a stack the check accepts never crashes the plan; one it refuses names a path.

Stacks come from the stack schema (stack_strategy.py), valid and invalid field by field. Each is
checked in-process: refused stacks must name stack paths, accepted ones go through everything the
program derives from the stack (offline.render_stack). A sample of both then runs through the
real CLI (`python -m tooling plan`) in a fresh interpreter: accepted ones exit 0 with host
data byte-identical to the in-process render, refused ones exit 2 naming the same path.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from components.config import ClusterConfig, ConfigError
from components.hosts import render
from components.stack import parse_cluster
from tests.conftest import stack_data
from tests.reliability import offline
from tests.reliability.isolated import in_fresh_process, run_cli_in_process
from tests.reliability.stack_strategy import (
    TARGETS,
    VISITED,
    freeform_paths,
    schema_paths,
    stacks,
)
from tests.reliability.test_invalid_stacks import LIMA_HOME, names_field, problem_lines
from tooling import mocks
from tooling.__main__ import EXIT_CONFIG_ERROR

WELL_FORMED = 220  # examples without a target; PER_TARGET more for each target
PER_TARGET = 4
CLI_SAMPLES = 6  # of each kind
SCHEMA_PATHS = schema_paths()
FREEFORM_PATHS = freeform_paths()


def is_stack_path(path: str) -> bool:
    """A path into the stack file: a schema property, or a key inside a free-form mapping."""
    general = re.sub(r"\[[0-9]+\]", "[]", path)
    if general.removesuffix("[]") in SCHEMA_PATHS:
        return True
    parts = general.split(".")
    return any(".".join(parts[:i]) in FREEFORM_PATHS for i in range(1, len(parts)))


def stack_yaml(cluster: dict[str, Any]) -> str:
    config: dict[str, Any] = {"nixos-k3s:cluster": cluster}
    # As `pulumi config set --secret` stores it; the plan stands in a placeholder.
    config["nixos-k3s:tailscaleAuthKey"] = {"secure": "v1:offline-test-ciphertext"}
    return yaml.safe_dump({"config": config}, sort_keys=True)


def facts_from_host(host_json: str) -> render.MachineFacts:
    network = json.loads(host_json)["network"]
    return render.MachineFacts(
        private_ipv4=network["privateIpv4"],
        private_cidr=network["privateCidr"],
        public_ipv4=network["publicIpv4"],
        public_ipv6=network["publicIpv6"],
        private_mac_address=network["privateMacAddress"],
    )


def render_like_plan(cfg: ClusterConfig, plan_dir: Path) -> offline.Rendered:
    """The in-process render with the machine facts and deploy key the plan had."""
    pushed = {p.stem: p.read_text(encoding="utf-8") for p in (plan_dir / "hosts").glob("*.json")}
    facts = {name: facts_from_host(text) for name, text in pushed.items()}
    deploy_key = json.loads(next(iter(pushed.values())))["ssh"]["authorizedKeys"][0]
    document = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
    balancers = [
        r["name"]
        for r in document["resources"]
        if r["type"] == "hcloud:index/loadBalancer:LoadBalancer"
    ]
    if balancers:
        return offline.render_stack(cfg, facts, deploy_key, mocks.fake_ipv4(balancers[0]))
    return offline.render_stack(cfg, facts, deploy_key)


def assert_plan_matches_render(cfg: ClusterConfig, plan_dir: Path) -> None:
    document = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
    rendered = render_like_plan(cfg, plan_dir)
    for name, text in rendered.hosts.items():
        assert (plan_dir / "hosts" / f"{name}.json").read_text(encoding="utf-8") == text, name
    assert sorted(rendered.hosts) == sorted(document["hosts"])
    assert document["outputs"]["apiEndpoint"] == rendered.api_endpoint
    creates = [r["inputs"].get("create") for r in document["resources"]]
    assert rendered.kubeconfig_create in creates


@pytest.fixture(autouse=True)
def lima_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMA_HOME", LIMA_HOME)


def test_paths_of_the_schema_are_stack_paths() -> None:
    assert is_stack_path("nodePools[2].taints[0].value")
    assert is_stack_path("cilium.values.operator.replicas")
    assert is_stack_path("nodePools[1]")
    assert not is_stack_path("")
    assert not is_stack_path("k3s.tlsSan")


def test_generated_stacks_never_crash_and_refusals_name_a_path(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    accepted: list[dict[str, Any]] = []
    refused: list[tuple[dict[str, Any], str]] = []

    def check(data: dict[str, Any]) -> None:
        try:
            cfg = parse_cluster(data)
        except ConfigError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert is_stack_path(problem.path), f"{problem} does not name a stack path"
                assert problem.message
            outcomes["refused"] += 1
            if len(refused) < CLI_SAMPLES and outcomes["refused"] % 40 == 1:
                refused.append((data, exc.problems[0].path))
            return
        rendered = offline.render_stack(cfg)
        assert rendered.hosts
        assert offline.render_stack(cfg) == rendered, "rendering is deterministic"
        outcomes["accepted"] += 1
        outcomes["hosts"] += len(rendered.hosts)
        if len(accepted) < CLI_SAMPLES and outcomes["accepted"] % 30 == 1:
            accepted.append(data)

    # Well-formed stacks, then a few with each field invalid in turn: every field is hit.
    for target, examples in [("", WELL_FORMED), *((t, PER_TARGET) for t in TARGETS)]:
        settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,  # the same examples on every run: a failure reproduces
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(stacks(target))(check))()
    print(f"generated stacks: {dict(outcomes)}")
    assert outcomes["accepted"] + outcomes["refused"] >= 500, outcomes
    assert outcomes["accepted"] >= 100, outcomes
    assert outcomes["refused"] >= 100, outcomes
    assert SCHEMA_PATHS <= VISITED, f"never generated: {sorted(SCHEMA_PATHS - VISITED)}"

    # The same stacks through the real CLI: the in-process path is the one the plan takes.
    files = []
    for i, data in enumerate([*accepted, *(d for d, _ in refused)]):
        path = tmp_path / f"Pulumi.sample{i}.yaml"
        path.write_text(stack_yaml(data), encoding="utf-8")
        files.append(path)
    runs = in_fresh_process(run_cli_in_process, files, tmp_path / "plans")
    for i, data in enumerate(accepted):
        run = runs[f"Pulumi.sample{i}"]
        assert run.code == 0, f"{data}\n{run.stderr}"
        assert_plan_matches_render(parse_cluster(data), tmp_path / "plans" / f"Pulumi.sample{i}")
    for j, (data, path) in enumerate(refused, start=len(accepted)):
        run = runs[f"Pulumi.sample{j}"]
        assert run.code == EXIT_CONFIG_ERROR, f"{data}\n{run.stderr}"
        assert "Traceback" not in run.stderr
        assert names_field(problem_lines(run.stderr), path), run.stderr


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_stacks_render_as_the_plan_does(stack: str, tmp_path: Path) -> None:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(stack_yaml(stack_data(stack)), encoding="utf-8")
    runs = in_fresh_process(run_cli_in_process, [path], tmp_path / "plans")
    assert runs[path.stem].code == 0, runs[path.stem].stderr
    assert_plan_matches_render(parse_cluster(stack_data(stack)), tmp_path / "plans" / path.stem)


def test_an_unquoted_yaml_date_stays_a_string(tmp_path: Path) -> None:
    # YAML 1.1 reads 2026-12-03 as a date, which JSON (how Pulumi hands config over) cannot carry.
    path = tmp_path / "Pulumi.dated.yaml"
    path.write_text(
        "config:\n  nixos-k3s:cluster:\n    name: 2026-12-03\n    provider: colima\n"
        "    nodePools: [{name: server, role: server, count: 1}]\n",
        encoding="utf-8",
    )
    runs = in_fresh_process(run_cli_in_process, [path], tmp_path / "plans")
    assert runs[path.stem].code == 0, runs[path.stem].stderr
    assert (tmp_path / "plans" / path.stem / "hosts" / "2026-12-03-server-1.json").exists()
