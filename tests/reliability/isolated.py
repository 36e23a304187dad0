"""Program runs under mocks, each batch in a fresh interpreter.

Pulumi's runtime is process-global: a program that failed on purpose can leave apply chains
behind that surface in (or hang) a later run in the same process. So every run here happens in
a spawned process, as tests/conftest.py does; the functions below are what the child runs.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from components.config import ConfigError
from components.hosts import hostspec
from tooling import mocks, plan
from tooling.__main__ import main as cli_main

T = TypeVar("T")


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def stack_file(
    cluster: dict[str, Any], stack: str, secrets: dict[str, str] | None = None
) -> plan.StackFile:
    """A stack with `secrets` set (as secrets) and placeholders for the other secrets."""
    config: dict[str, Any] = {"nixos-k3s:cluster": cluster, **(secrets or {})}
    for key in plan.PLACEHOLDER_SECRETS:
        config.setdefault(key, plan.placeholder_secret(key, None))
    keys = frozenset(secrets or {}) | frozenset(plan.PLACEHOLDER_SECRETS)
    return plan.StackFile(stack=stack, config=config, secret_keys=keys)


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str
    wrote_plan: bool


def run_cli_in_process(config_files: list[Path], out: Path) -> dict[str, CliRun]:
    """`python -m tooling plan --config-file F --out DIR --quiet` through its entry point."""
    runs = {}
    for path in config_files:
        stdout, stderr = io.StringIO(), io.StringIO()
        target = out / path.stem
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli_main(["plan", "--config-file", str(path), "--out", str(target), "--quiet"])
        runs[path.stem] = CliRun(
            code, stdout.getvalue(), stderr.getvalue(), (target / "plan.json").exists()
        )
    return runs


def config_problems(stack_file: plan.StackFile) -> tuple[list[str], str]:
    """Field paths and text of the ConfigError the program raises (none: ([], ""))."""
    try:
        plan.run_program(stack_file)
    except ConfigError as exc:
        return [problem.path for problem in exc.problems], str(exc)
    return [], ""


class AsoMonitor(mocks.RecordingMonitor):
    """Also records each resource's additionalSecretOutputs (not part of the plan format)."""

    instances: ClassVar[list[AsoMonitor]] = []

    def __init__(self, providers: Any):
        super().__init__(providers)
        self.secret_outputs: dict[str, list[str]] = {}
        AsoMonitor.instances.append(self)

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        self.secret_outputs[request.name] = list(request.additionalSecretOutputs)
        return response


def plan_with_secret_outputs(
    stack_file: plan.StackFile,
) -> tuple[plan.PlanResult, dict[str, list[str]]]:
    """The plan, and each resource's additionalSecretOutputs by resource name."""
    mocks.RecordingMonitor = AsoMonitor  # this process only runs this one program
    result = plan.run_program(stack_file)
    return result, AsoMonitor.instances[-1].secret_outputs


def plan_with_nixos_dir(stack_file: plan.StackFile, nixos_dir: Path) -> dict[str, Any]:
    """The plan document with host content hashes taken over another copy of nixos/."""
    # content hashes read hostspec.NIXOS_DIR when the program runs: point it at the copy.
    hostspec.NIXOS_DIR = nixos_dir
    return plan.plan_document(plan.run_program(stack_file))
