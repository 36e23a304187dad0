"""Golden host JSON for the shipped stacks: any change to rendered host data shows up here.

After an intended change, regenerate with `UPDATE_GOLDEN=1 make test` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from components.hosts.hostspec import SCHEMA_PATH
from tests.conftest import Plan

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_host_json_matches_golden(stack: str, request: pytest.FixtureRequest) -> None:
    plan: Plan = request.getfixturevalue(f"{stack}_plan")
    directory = GOLDEN / stack
    if os.environ.get("UPDATE_GOLDEN"):
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.json"):
            old.unlink()
        for name, (text, _) in plan.result.hosts.items():
            (directory / f"{name}.json").write_text(text)
    expected = {p.stem: p.read_text() for p in sorted(directory.glob("*.json"))}
    actual = {name: text for name, (text, _) in plan.result.hosts.items()}
    assert sorted(actual) == sorted(expected)
    for name, text in actual.items():
        assert text == expected[name], f"{stack}/{name}.json differs: UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_golden_files_validate_against_the_schema(stack: str) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    files = sorted((GOLDEN / stack).glob("*.json"))
    assert files
    for path in files:
        jsonschema.validate(json.loads(path.read_text()), schema)
