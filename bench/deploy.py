"""The deploy-time part of `make bench`: plan each scenario, model its first deploy, report.

Scenarios: 3 servers + 2 agents, 3 + 50 and 5 + 200 nodes on Hetzner, the Colima dev stack
(1 + 1), and 3 + 50 once more at the CLI's default --parallel, to show what the workflows'
setting buys. Each is printed beside hetzner-k3s's published figures (its README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import deploy_model, runner, shapes
from components.config.hcloud_polling import (
    POLL_FUNCTION,
    POLL_INTERVAL,
    HcloudPolling,
    read_polling,
)
from components.stack import parse_cluster

# hetzner-k3s README (vitobotta/hetzner-k3s): a 3-master HA cluster in 2-3 minutes, and "a
# 500-node highly available cluster (3 masters, 497 worker nodes) in just under 11 minutes".
ANCHOR_HA3 = "hetzner-k3s: 3-node HA in 2-3 min"
ANCHOR_500 = "hetzner-k3s: 500 nodes (3+497) in under 11 min"


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    anchor: str
    # Modelled minutes to all nodes Ready that the issue asks for (None: no target).
    target_minutes: float | None
    nodes: int = 0
    servers: int | None = None
    plain_cap: int = shapes.PLAIN_AGENT_CAP
    stack_file: str | None = None  # a project stack file instead of a generated shape
    default_parallel: bool = False
    # The Hetzner NixOS image exists already (built by an earlier deploy of the same pin).
    image_ready: bool = False
    # hetzner.nixosImage: false, every server installs NixOS with nixos-anywhere.
    stock_install: bool = False
    # hcloud:pollInterval with hcloud:pollFunction constant (None: the provider's default
    # polling). Constant polling needs a second per server (components/config/hcloud_polling.py),
    # so it pays off only for small stacks.
    constant_polling: str | None = None

    def config_file(self, work: Path) -> Path:
        if self.stack_file is not None:
            return runner.PROJECT_DIR / self.stack_file
        cluster = shapes.cluster_config(self.nodes, self.servers, self.plain_cap)
        if self.stock_install:
            cluster["hetzner"] = {**cluster.get("hetzner", {}), "nixosImage": False}
        extra = {}
        if self.constant_polling is not None:
            extra = {POLL_FUNCTION: "constant", POLL_INTERVAL: self.constant_polling}
        return runner.write_stack(cluster, work / f"deploy-{self.key}.yaml", extra)


def stack_polling(config_file: Path) -> HcloudPolling:
    """The Hetzner action polling a stack file sets (the plan has checked it)."""
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))["config"]
    polling, problems = read_polling(config.get, parse_cluster(config["nixos-k3s:cluster"]))
    if problems:
        raise ValueError(f"{config_file}: {'; '.join(map(str, problems))}")
    return polling


SCENARIOS = (
    Scenario(
        "hetzner-3+2",
        "hetzner 3+2, polling every 5 s",
        ANCHOR_HA3,
        None,
        nodes=5,
        servers=3,
        constant_polling="5s",
    ),
    Scenario("hetzner-3+50", "hetzner 3+50", ANCHOR_500, 8, nodes=53, servers=3, plain_cap=50),
    Scenario("hetzner-5+200", "hetzner 5+200", ANCHOR_500, 12, nodes=205, servers=5),
    Scenario("colima-1+1", "colima 1+1 (dev)", "-", None, stack_file="Pulumi.dev.yaml"),
    Scenario(
        "hetzner-3+50-cli-default",
        "hetzner 3+50, CLI default --parallel",
        ANCHOR_500,
        None,
        nodes=53,
        servers=3,
        plain_cap=50,
        default_parallel=True,
    ),
    Scenario(
        "hetzner-3+3-image",
        "hetzner 3+3, image, polling every 6 s",
        ANCHOR_HA3,
        5,
        nodes=6,
        servers=3,
        image_ready=True,
        constant_polling="6s",
    ),
    Scenario(
        "hetzner-3+3-image-default-polling",
        "hetzner 3+3, image, default polling",
        ANCHOR_HA3,
        None,
        nodes=6,
        servers=3,
        image_ready=True,
    ),
    Scenario(
        "hetzner-3+50-image",
        "hetzner 3+50, image exists",
        ANCHOR_500,
        8,
        nodes=53,
        servers=3,
        plain_cap=50,
        image_ready=True,
    ),
    Scenario(
        "hetzner-5+200-image",
        "hetzner 5+200, image exists",
        ANCHOR_500,
        12,
        nodes=205,
        servers=5,
        image_ready=True,
    ),
    Scenario(
        "hetzner-3+50-stock",
        "hetzner 3+50, stock image + install",
        ANCHOR_500,
        None,
        nodes=53,
        servers=3,
        plain_cap=50,
        stock_install=True,
    ),
)


def run(work: Path, table: deploy_model.StepTable | None = None) -> dict[str, Any]:
    """Plan every scenario (fresh process each) and model its first deploy."""
    table = table or deploy_model.load_steps()
    work.mkdir(parents=True, exist_ok=True)
    plans: dict[tuple[int, int | None, int, str | None, bool], dict[str, Any]] = {}
    results = []
    for sc in SCENARIOS:
        # The polling is provider config: it changes no resource of the plan.
        key = (sc.nodes, sc.servers, sc.plain_cap, sc.stack_file, sc.stock_install)
        config_file = sc.config_file(work)
        if key not in plans:
            out = work / f"deploy-plan-{sc.key}"
            runner.plan_once(config_file, out)
            plans[key] = runner.load_plan(out)
        plan = plans[key]
        parallel = table.cli_default if sc.default_parallel else table.parallel
        polling = stack_polling(config_file)
        modelled = deploy_model.model(
            plan, table, parallel, image_ready=sc.image_ready, polling=polling
        )
        hosts = len(deploy_model.host_roles(plan))
        results.append(
            {
                "scenario": sc.key,
                "label": sc.label,
                "hosts": hosts,
                "anchor": sc.anchor,
                "targetNodesReadyMinutes": sc.target_minutes,
                "hcloudPolling": {
                    "function": polling.function,
                    "intervalSeconds": polling.interval,
                    "configured": polling.configured,
                },
                **modelled,
            }
        )
    return {
        "stepsFile": deploy_model.STEPS_FILE.name,
        "parallel": table.parallel,
        "cliDefaultParallel": table.cli_default,
        "steps": [
            {
                "step": r.step,
                "type": r.type,
                "suffix": r.suffix,
                "role": r.role,
                # A rule timed by Hetzner actions: its seconds depend on the stack's polling.
                **(
                    {"seconds": list(r.seconds)}
                    if r.seconds is not None
                    else {"actions": [list(a) for a in r.actions or ()], "poller": r.poller}
                ),
                "limitSeconds": None if r.limit is None else r.limit.seconds,
                "limitEnvironment": None if r.limit is None else r.limit.environment,
                "source": r.source,
            }
            for r in table.rules
        ],
        "pulls": [_anchored_rule(r) for r in table.pulls],
        "fetches": [_anchored_rule(r) for r in table.fetches],
        "scenarios": results,
    }


def _anchored_rule(rule: deploy_model.PullRule) -> dict[str, Any]:
    """A `pulls` or `fetches` entry of the step table, as bench.json reports it."""
    return {
        "step": rule.step,
        "role": rule.role,
        "offsetSeconds": list(rule.offset),
        "offsetSource": rule.offset_source,
        "seconds": list(rule.seconds),
        "source": rule.source,
    }


def checks(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Timing targets of issue 18, read from the model (reported, never asserted), and whether
    the modelled deploy keeps within the project's own step limits (a step past its limit fails
    the deploy, whatever the minutes say)."""
    out = []
    for sc in document["scenarios"]:
        target = sc["targetNodesReadyMinutes"]
        if target is None:
            continue
        low, high = sc["low"]["nodesReadyMinutes"], sc["high"]["nodesReadyMinutes"]
        out.append(
            {
                "name": f"modelled minutes to all nodes Ready, {sc['label']} (high times)",
                "target": f"<= {target}",
                "value": f"{low}-{high}",
                "pass": high <= target,
                "timing": True,
            }
        )
        over = [len(sc[bound]["overLimit"]) for bound in deploy_model.BOUNDS]
        out.append(
            {
                "name": f"modelled steps past their limit, {sc['label']} (low-high times)",
                "target": "0",
                "value": "-".join(str(n) for n in over),
                "pass": not any(over),
                "timing": True,
            }
        )
    return out


def _range(sc: dict[str, Any], key: str) -> str:
    return f"{sc['low'][key]:.1f}-{sc['high'][key]:.1f}"


def render(document: dict[str, Any]) -> str:
    lines = [
        f"modelled first deploy (minutes, low-high; steps from bench/{document['stepsFile']}, "
        f"--parallel {document['parallel']} unless said):",
        "",
        f"  {'scenario':<38} {'hosts':>5} {'kubeconfig':>11} {'all Ready':>10} {'peak':>5}  anchor",
    ]
    for sc in document["scenarios"]:
        lines.append(
            f"  {sc['label']:<38} {sc['hosts']:>5} {_range(sc, 'kubeconfigMinutes'):>11} "
            f"{_range(sc, 'nodesReadyMinutes'):>10} {sc['high']['peakRunning']:>5}  {sc['anchor']}"
        )
    lines += ["", "steps past their limit (the step would fail and roll back), per scenario:"]
    for sc in document["scenarios"]:
        for bound in deploy_model.BOUNDS:
            over = sc[bound]["overLimit"]
            if over:
                listed = ", ".join(
                    f"{o['resource']} {o['seconds']:.0f} s > {o['limitSeconds']:.0f} s"
                    for o in over
                )
                lines.append(f"  {sc['label']} ({bound} times): {listed}")
    if not any(sc[b]["overLimit"] for sc in document["scenarios"] for b in deploy_model.BOUNDS):
        lines.append("  none")
    lines += ["", "critical path to all nodes Ready (high times), per scenario:"]
    for sc in document["scenarios"]:
        steps = " -> ".join(
            f"{p['resource']} [{p['step']}] {p['endMinutes'] - p['startMinutes']:.1f}"
            + (
                f" (+{p['waitedForWorkerMinutes']:.1f} waiting for a worker)"
                if "waitedForWorkerMinutes" in p
                else ""
            )
            + (
                f" (from {p['offsetMinutes']:.1f} into {p['afterStartOf']})"
                if "afterStartOf" in p
                else ""
            )
            + (f" (after {p['afterEndOf']}'s fetch)" if "afterEndOf" in p else "")
            + (
                f" (its work from {p['workBeganMinutes']:.1f}, when the actions it waits for"
                " ended on Hetzner's side)"
                if "workBeganMinutes" in p
                else ""
            )
            for p in sc["high"]["nodesReadyPath"]
        )
        lines.append(f"  {sc['label']}: {steps}")
    return "\n".join(lines) + "\n"
