"""Stacks nobody wrote by hand, through the real nixpkgs modules.

tests/reliability/test_accepted_stacks.py shows that every stack the check accepts renders. Here a
fixed sample of such stacks, drawn from the stack schema (stack_strategy.py, derandomized, so a
failure reproduces), goes one step further: each distinct host document it renders is evaluated
through nixlite as test_real_modules.py does for the shipped stacks and the matrix. No Nix error,
no failed assertion, no warning but the known upstream one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from components.config import ConfigError
from components.stack import parse_cluster
from tests.reliability import offline
from tests.reliability.stack_strategy import stacks
from tests.reliability.test_invalid_stacks import LIMA_HOME

from .test_real_modules import _require_kit as _require_kit  # the kit or skip (autouse fixture)
from .test_real_modules import assert_evaluated_cleanly, evaluate

EXAMPLES = 200  # drawn stacks; about two thirds are accepted
MIN_DOCUMENTS = 100


def accepted_documents() -> dict[str, str]:
    """Host name -> host JSON for every distinct document the accepted sample renders."""
    documents: dict[str, str] = {}

    def collect(data: dict[str, Any]) -> None:
        try:
            cfg = parse_cluster(data)
        except ConfigError:
            return
        for name, text in offline.render_stack(cfg).hosts.items():
            if text not in documents.values():
                documents[f"{cfg.name}-{len(documents)}-{name}"] = text

    settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(given(stacks(""))(collect))()
    return documents


def test_generated_stacks_evaluate_against_real_nixpkgs_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMA_HOME", LIMA_HOME)
    documents = accepted_documents()
    assert len(documents) >= MIN_DOCUMENTS, f"only {len(documents)} host documents drawn"
    files = []
    for i, (name, text) in enumerate(sorted(documents.items())):
        path = tmp_path / f"{i:03d}.json"
        path.write_text(text, encoding="utf-8")
        files.append((name, path))
    with ThreadPoolExecutor(2) as pool:
        evaluations = list(pool.map(lambda item: evaluate(item[1], item[0]), files))
    assert_evaluated_cleanly(evaluations)
