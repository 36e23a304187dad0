"""The benchmark's baseline: bare resources of the plan's own types, registered for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import bare, runner, shapes
from tests.conftest import run_plan, stack_data
from tooling import plan


def document(cluster: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(plan.plan_document(run_plan(cluster, stack="bench"))))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_type_of_a_plan_has_a_bare_factory(stack: str) -> None:
    resources = document(stack_data(stack))["resources"]
    assert bare.missing(resources) == []


def test_an_unknown_type_is_named() -> None:
    resources = [{"type": "aws:ec2/instance:Instance", "custom": True}]
    assert bare.missing(resources) == ["aws:ec2/instance:Instance"]
    with pytest.raises(bare.UnknownType, match="aws:ec2/instance:Instance"):
        bare.register(resources)


def test_baseline_registers_one_bare_resource_per_plan_resource(tmp_path: Path) -> None:
    cluster = shapes.cluster_config(5)
    doc = document(cluster)
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(json.dumps(doc), encoding="utf-8")
    result = tmp_path / "baseline.json"
    subprocess.run(
        [sys.executable, "-m", "bench.child", "baseline", str(plan_json), str(result)],
        cwd=runner.PROJECT_DIR,
        check=True,
        timeout=120,
    )
    report = json.loads(result.read_text(encoding="utf-8"))
    assert report["resources"] == len(doc["resources"])
    assert set(report["phases"]) == {"import", "program", "write"}
