"""One measurement, in a fresh process: `python -m bench.child plan|baseline ... RESULT_JSON`.

plan CONFIG_FILE OUT_DIR RESULT   the offline plan as `python -m tooling plan` runs it
                                  (read the stack file, run the program under mocks, write files)
baseline PLAN_JSON RESULT         the plan's resources bare: same SDK classes, required inputs
                                  only, under the same mocks (tooling.mocks.FakeProviders,
                                  no RecordingMonitor); see bench/bare.py
floor COUNT RESULT                COUNT custom resources with no properties (reference only)
replay PLAN_JSON RESULT           the plan's resources again, flat, with their recorded inputs as
                                  plain values: the SDK's cost for the same inputs, no Outputs
profile CONFIG_FILE RESULT        the plan's program under cProfile; RESULT gets the hotspots

RESULT receives {"phases": {name: seconds}, "resources": n, "maxrssKib": n}. Phases are timed
inside the process; the parent adds the process's own wall time.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Clock:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now


def measure_plan(config_file: Path, out: Path, clock: Clock) -> int:
    from tooling import plan

    clock.lap("import")
    result = plan.run_program(plan.read_stack_file(config_file, "bench"))
    clock.lap("program")
    plan.write_plan(result, out)
    clock.lap("write")
    return len(result.registrations)


def _under_mocks(register: Callable[[], int], clock: Clock) -> int:
    import pulumi
    from pulumi.runtime import settings
    from pulumi.runtime.stack import wait_for_rpcs
    from pulumi.runtime.sync_await import _sync_await

    from tooling import mocks

    clock.lap("import")
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(
        mocks.FakeProviders(), project="nixos-k3s", stack="bench", preview=False
    )
    # The plan's GC and executor setup (tooling.plan.run_program): the collector frozen
    # at the same point (after the imports, before any resource), same threads, loops closed.
    with mocks.frozen_collector(), mocks.monitor_threads():
        count = register()
        _sync_await(wait_for_rpcs())
    clock.lap("program")
    clock.phases["write"] = 0.0
    return count


def measure_baseline(plan_json: Path, clock: Clock) -> int:
    from bench import bare

    resources = json.loads(plan_json.read_text(encoding="utf-8"))["resources"]
    return _under_mocks(lambda: bare.register(resources), clock)


def measure_floor(count: int, clock: Clock) -> int:
    from bench import bare

    return _under_mocks(lambda: bare.register_floor(count), clock)


def measure_replay(plan_json: Path, clock: Clock) -> int:
    import pulumi

    resources = json.loads(plan_json.read_text(encoding="utf-8"))["resources"]

    def register() -> int:
        for res in resources:
            if res["custom"]:
                pulumi.CustomResource(res["type"], res["name"], dict(res["inputs"]))
            else:
                pulumi.ComponentResource(res["type"], res["name"], dict(res["inputs"]))
        return len(resources)

    return _under_mocks(register, clock)


def profile_plan(config_file: Path, clock: Clock) -> tuple[int, str]:
    import cProfile

    from bench import hotspots
    from tooling import plan

    stack_file = plan.read_stack_file(config_file, "bench")
    clock.lap("import")
    profiler = cProfile.Profile()
    result = profiler.runcall(plan.run_program, stack_file)
    clock.lap("program")
    return len(result.registrations), hotspots.report(profiler)


def main(argv: list[str]) -> int:
    clock = Clock()
    mode, *rest = argv
    if mode == "profile":
        count, text = profile_plan(Path(rest[0]), clock)
        Path(rest[-1]).with_suffix(".txt").write_text(text, encoding="utf-8")
    else:
        runners: dict[str, Callable[[], int]] = {
            "plan": lambda: measure_plan(Path(rest[0]), Path(rest[1]), clock),
            "baseline": lambda: measure_baseline(Path(rest[0]), clock),
            "floor": lambda: measure_floor(int(rest[0]), clock),
            "replay": lambda: measure_replay(Path(rest[0]), clock),
        }
        count = runners[mode]()
    report: dict[str, Any] = {
        "phases": clock.phases,
        "resources": count,
        # Linux reports ru_maxrss in KiB.
        "maxrssKib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(rest[-1]).write_text(json.dumps(report, sort_keys=True), encoding="utf-8")
    return 0


if __name__ == "__main__":
    # Every mode ends the way `python -m tooling plan` does (tooling.process.hard_exit).
    from tooling.process import hard_exit

    hard_exit(main(sys.argv[1:]))
