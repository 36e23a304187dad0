"""Run bench.child in fresh processes and collect what they measured."""

from __future__ import annotations

import filecmp
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import shapes

PROJECT_DIR = Path(__file__).resolve().parent.parent
# A shared module every host imports; editing it must change every host's content hash.
SHARED_MODULE = Path("nixos/modules/base.nix")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ruff_cache"
)


class ChildFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    wall_seconds: float
    phases: dict[str, float]
    maxrss_kib: int
    resources: int


def run_child(args: list[str], result: Path, cwd: Path = PROJECT_DIR) -> Sample:
    """One measurement in a fresh interpreter; wall time covers the whole process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.child", *args, str(result)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ChildFailed(f"bench.child {' '.join(args)} exited {done.returncode}:\n{tail}")
    data = json.loads(result.read_text(encoding="utf-8"))
    return Sample(wall, data["phases"], data["maxrssKib"], data["resources"])


def write_stack(cluster: dict[str, Any], path: Path, extra: dict[str, str] | None = None) -> Path:
    path.write_text(
        yaml.safe_dump(shapes.stack_document(cluster, extra), sort_keys=True), encoding="utf-8"
    )
    return path


def plan_once(config: Path, out: Path, cwd: Path = PROJECT_DIR) -> Sample:
    return run_child(["plan", str(config), str(out)], out.parent / f"{out.name}.result.json", cwd)


def baseline_once(plan_dir: Path, work: Path, tag: str) -> Sample:
    return run_child(
        ["baseline", str(plan_dir / "plan.json")], work / f"baseline-{tag}.result.json"
    )


def floor_once(count: int, work: Path, tag: str) -> Sample:
    return run_child(["floor", str(count)], work / f"floor-{tag}.result.json")


def replay_once(plan_dir: Path, work: Path, tag: str) -> Sample:
    return run_child(["replay", str(plan_dir / "plan.json")], work / f"replay-{tag}.result.json")


def load_plan(out: Path) -> dict[str, Any]:
    return json.loads((out / "plan.json").read_text(encoding="utf-8"))


def summary(samples: list[Sample]) -> dict[str, Any]:
    """Medians over runs, and every run's raw numbers."""
    phases = sorted({p for s in samples for p in s.phases})
    return {
        "wallSeconds": round(statistics.median(s.wall_seconds for s in samples), 4),
        "phaseSeconds": {
            p: round(statistics.median(s.phases.get(p, 0.0) for s in samples), 4) for p in phases
        },
        "maxrssMib": round(statistics.median(s.maxrss_kib for s in samples) / 1024, 1),
        "samples": [
            {
                "wallSeconds": round(s.wall_seconds, 4),
                "phaseSeconds": {p: round(v, 4) for p, v in sorted(s.phases.items())},
                "maxrssKib": s.maxrss_kib,
            }
            for s in samples
        ],
    }


def tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def compare_trees(a: Path, b: Path) -> dict[str, Any]:
    """Byte-for-byte comparison of two plan directories."""
    files_a, files_b = tree_files(a), tree_files(b)
    differing = sorted(set(files_a) ^ set(files_b))
    differing += [
        f for f in sorted(set(files_a) & set(files_b)) if not filecmp.cmp(a / f, b / f, False)
    ]
    return {"files": len(files_a), "differing": sorted(differing), "identical": not differing}


def project_copy(dest: Path, edit_shared_module: bool) -> Path:
    """A copy of the project (code, nixos/, scripts), optionally with the shared module edited."""
    shutil.copytree(PROJECT_DIR, dest, ignore=COPY_IGNORE)
    if edit_shared_module:
        module = dest / SHARED_MODULE
        module.write_text(
            module.read_text(encoding="utf-8") + "# bench: a change to a shared module\n",
            encoding="utf-8",
        )
    return dest
