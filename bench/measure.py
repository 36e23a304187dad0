"""Everything the benchmark measures for one cluster size."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import graph, runner, shapes


def _chain(chain: graph.Chain | None) -> dict[str, Any] | None:
    if chain is None:
        return None
    return {"target": chain.target, "length": chain.length, "chain": list(chain.names)}


def critical_path(plan: dict[str, Any]) -> dict[str, Any]:
    paths = graph.critical_paths(plan)
    return {
        "servers": paths.servers,
        "kubeconfig": _chain(paths.kubeconfig),
        "nodesReady": _chain(paths.nodes_ready),
        "agentJoin": _chain(paths.agent_join),
    }


def label_blast_radius(
    cluster: dict[str, Any], before: dict[str, Any], work: Path
) -> dict[str, Any]:
    """Change one pool's labels: exactly that pool's hosts must get a new push."""
    changed_cluster, pool, count = shapes.relabelled(cluster)
    config = runner.write_stack(changed_cluster, work / "relabelled.yaml")
    out = work / "relabelled"
    runner.plan_once(config, out)
    after = runner.load_plan(out)
    changed = graph.changed_pushes(before, after)
    expected = [f"{shapes.CLUSTER_NAME}-{pool}-{i}" for i in range(1, count + 1)]
    return {
        "pool": pool,
        "expected": count,
        "changedPushes": len(changed),
        "changedResources": len(graph.changed_resources(before, after)),
        "pass": changed == sorted(expected),
    }


def module_blast_radius(config: Path, work: Path, pristine: Path, edited: Path) -> dict[str, Any]:
    """Edit a shared NixOS module: every host must get a new push.

    Both plans run in copies of the project, so the only difference is the edited module; the
    pristine copy's plan also shows the plan does not depend on where the project lives.
    """
    runner.plan_once(config, work / "pristine", cwd=pristine)
    runner.plan_once(config, work / "edited", cwd=edited)
    before, after = runner.load_plan(work / "pristine"), runner.load_plan(work / "edited")
    changed = graph.changed_pushes(before, after)
    hosts = sorted(graph.push_triggers(before))
    return {
        "file": runner.SHARED_MODULE.as_posix(),
        "expected": len(hosts),
        "changedPushes": len(changed),
        "changedResources": len(graph.changed_resources(before, after)),
        "pass": changed == hosts,
    }


def size(
    nodes: int, runs: int, work: Path, copies: tuple[Path, Path], blast: bool
) -> dict[str, Any]:
    """Timed plan, baseline, floor and replay runs (interleaved), then the structural checks."""
    work.mkdir(parents=True)
    layout = shapes.shape(nodes)
    cluster = shapes.cluster_config(nodes)
    config = runner.write_stack(cluster, work / "stack.yaml")
    plans: list[runner.Sample] = []
    baselines: list[runner.Sample] = []
    floors: list[runner.Sample] = []
    replays: list[runner.Sample] = []
    for run in range(max(runs, 2)):
        sample = runner.plan_once(config, work / f"plan-{run}")
        if run < runs:
            plans.append(sample)
            baselines.append(runner.baseline_once(work / f"plan-{run}", work, str(run)))
            floors.append(runner.floor_once(sample.resources, work, str(run)))
            replays.append(runner.replay_once(work / f"plan-{run}", work, str(run)))
    resources = {s.resources for s in plans}
    if len(resources) != 1:
        raise runner.ChildFailed(f"{nodes} nodes: runs registered {sorted(resources)} resources")
    plan = runner.load_plan(work / "plan-0")
    plan_summary, base_summary = runner.summary(plans), runner.summary(baselines)
    floor_summary, replay_summary = runner.summary(floors), runner.summary(replays)
    result: dict[str, Any] = {
        "nodes": nodes,
        "shape": {**asdict(layout), "hosts": layout.hosts, "description": layout.describe()},
        "resources": resources.pop(),
        "plan": plan_summary,
        "baseline": base_summary,
        "overheadRatio": round(plan_summary["wallSeconds"] / base_summary["wallSeconds"], 2),
        "programRatio": round(
            plan_summary["phaseSeconds"]["program"] / base_summary["phaseSeconds"]["program"], 2
        ),
        "floor": floor_summary,
        "floorRatio": round(plan_summary["wallSeconds"] / floor_summary["wallSeconds"], 2),
        "replay": replay_summary,
        "replayRatio": round(
            plan_summary["phaseSeconds"]["program"] / replay_summary["phaseSeconds"]["program"], 2
        ),
        "criticalPath": critical_path(plan),
        "deterministic": runner.compare_trees(work / "plan-0", work / "plan-1"),
    }
    if blast:
        result["blastRadius"] = {
            "labels": label_blast_radius(cluster, plan, work),
            "sharedModule": module_blast_radius(config, work, *copies),
        }
        pristine = runner.compare_trees(work / "plan-0", work / "pristine")
        result["locationIndependent"] = pristine["identical"]
    return result
