"""`python -m bench`: the offline plan at 3/30/100/300 nodes against a bare-SDK baseline.

For each size N (see bench/shapes.py for the stack shapes) every measurement runs in a fresh
process: the plan as `python -m tooling plan` does it; the baseline, registering the plan's
resources bare (same SDK classes, required inputs only, same mocks: the SDK's own cost, see
bench/bare.py); for reference, a floor of as many property-less resources and a replay of the
plan's resources with the same inputs as plain values. Medians over --runs.
Also from the plans: the critical path of the deploy graph, the blast radius of a label change
and of a shared-module change, and byte-for-byte determinism of two runs; and the modelled
minutes of a first deploy to the kubeconfig and to all nodes Ready (bench/deploy.py, step
times in bench/deploy_steps.yaml) beside hetzner-k3s's published figures. Writes a table to
stdout and build/bench.json.

Exit status: 0 when every structural check passes (critical path, blast radius, determinism),
1 otherwise. Timing targets are reported as PASS/FAIL only: they depend on the machine.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import deploy, measure, report, runner, shapes

DEFAULT_SIZES = (3, 30, 100, 300)
OVERHEAD_TARGET = 1.5
LARGE_N = 300
LARGE_N_SECONDS = 10.0


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
        for n in sizes:
            shapes.shape(n)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size")
    return sizes


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        help="comma-separated node counts (default 3,30,100,300)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per size (default 3)")
    parser.add_argument(
        "--out", type=Path, default=runner.PROJECT_DIR / "build" / "bench.json", help="JSON report"
    )
    parser.add_argument(
        "--no-blast", action="store_true", help="skip the blast-radius plans (faster)"
    )
    parser.add_argument(
        "--deploy-only",
        action="store_true",
        help="only the deploy-time model (no timed plans)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="instead: profile the plan of N nodes with cProfile, write build/bench-profile.txt",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def checks(sizes: list[dict[str, Any]], cpus: int | None) -> list[dict[str, Any]]:
    """Targets (timing: reported only) and structural checks (decide the exit status)."""
    out = []
    for s in sizes:
        n = s["nodes"]
        out.append(
            {
                "name": f"overhead ratio at {n} nodes",
                "target": f"<= {OVERHEAD_TARGET}",
                "value": s["overheadRatio"],
                "pass": s["overheadRatio"] <= OVERHEAD_TARGET,
                "timing": True,
            }
        )
        if n == LARGE_N:
            out.append(
                {
                    "name": f"{n} nodes planned (on {cpus} cores)",
                    "target": f"< {LARGE_N_SECONDS} s",
                    "value": s["plan"]["wallSeconds"],
                    "pass": s["plan"]["wallSeconds"] < LARGE_N_SECONDS,
                    "timing": True,
                }
            )
        out.append(
            {
                "name": f"deterministic plan at {n} nodes",
                "target": "byte-identical",
                "value": s["deterministic"]["differing"] or "identical",
                "pass": s["deterministic"]["identical"],
                "timing": False,
            }
        )
        for kind, blast in sorted(s.get("blastRadius", {}).items()):
            out.append(
                {
                    "name": f"blast radius of {kind} at {n} nodes",
                    "target": f"{blast['expected']} pushes",
                    "value": blast["changedPushes"],
                    "pass": blast["pass"],
                    "timing": False,
                }
            )
        if "locationIndependent" in s:
            out.append(
                {
                    "name": f"plan independent of the project's location at {n} nodes",
                    "target": "byte-identical",
                    "value": s["locationIndependent"],
                    "pass": s["locationIndependent"],
                    "timing": False,
                }
            )
    out += _constant_path_checks(sizes)
    return out


def _constant_path_checks(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key, label in (
        ("agentJoin", "agent join"),
        ("kubeconfig", "kubeconfig"),
        ("nodesReady", "nodes-Ready (same server count)"),
    ):
        groups: dict[int, dict[int, int]] = {}
        for s in sizes:
            path = s["criticalPath"]
            if path[key] is not None:
                servers = path["servers"] if key == "nodesReady" else 0
                groups.setdefault(servers, {})[s["nodes"]] = path[key]["length"]
        for lengths in groups.values():
            out.append(
                {
                    "name": f"critical path to {label} constant in N",
                    "target": "one length",
                    "value": {str(n): length for n, length in sorted(lengths.items())},
                    "pass": len(set(lengths.values())) == 1,
                    "timing": False,
                }
            )
    return out


def byte_compile() -> None:
    """Compile the project's modules before timing, as an installed program's are.

    Python reads .pyc files even where it may not write them (PYTHONDONTWRITEBYTECODE=1):
    without this, every fresh measured process would compile our sources again.
    """
    for package in ("components", "tooling", "bench"):
        compileall.compile_dir(runner.PROJECT_DIR / package, quiet=1)


def profile(nodes: int, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="nixos-k3s-bench-") as tmp:
        work = Path(tmp)
        config = runner.write_stack(shapes.cluster_config(nodes), work / "stack.yaml")
        result = work / "profile.json"
        runner.run_child(["profile", str(config)], result)
        text = result.with_suffix(".txt").read_text(encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"plan of {nodes} nodes ({shapes.shape(nodes).describe()})\n{text}")
    sys.stdout.write(out.read_text(encoding="utf-8"))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.profile is not None:
        return profile(args.profile, args.out.parent / "bench-profile.txt")
    byte_compile()
    before = machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="nixos-k3s-bench-") as tmp:
        work = Path(tmp)
        if not args.deploy_only:
            copies = (
                runner.project_copy(work / "project-pristine", edit_shared_module=False),
                runner.project_copy(work / "project-edited", edit_shared_module=True),
            )
            for nodes in args.sizes:
                print(f"bench: {nodes} nodes ...", file=sys.stderr, flush=True)
                results.append(
                    measure.size(nodes, args.runs, work / f"n{nodes}", copies, not args.no_blast)
                )
        print("bench: deploy-time model ...", file=sys.stderr, flush=True)
        deploy_model = deploy.run(work / "deploy")
    found = checks(results, before["cpus"]) + deploy.checks(deploy_model)
    document = {
        "machineBefore": before,
        "machineAfter": machine(),
        "runs": args.runs,
        "targets": {"overheadRatio": OVERHEAD_TARGET, f"plan{LARGE_N}Seconds": LARGE_N_SECONDS},
        "sizes": results,
        "deployModel": deploy_model,
        "checks": found,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    if not args.deploy_only:
        sys.stdout.write(report.render(document) + "\n")
    sys.stdout.write(deploy.render(deploy_model))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(c["pass"] for c in found if not c["timing"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
