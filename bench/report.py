"""The benchmark's table on stdout, from the document written to build/bench.json."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("N", ">5"),
    ("hosts", ">5"),
    ("res", ">5"),
    ("plan s", ">7"),
    ("plan MiB", ">8"),
    ("base s", ">7"),
    ("base MiB", ">8"),
    ("ratio", ">6"),
    ("prog ratio", ">10"),
    ("<=1.5", "<5"),
    ("floor s", ">7"),
    ("vs floor", ">8"),
    ("repl s", ">6"),
    ("vs repl", ">7"),
    ("path kube/ready/agent", "<21"),
    ("srv", ">3"),
    ("labels", "<10"),
    ("module", "<10"),
    ("determ", "<6"),
)


def _flag(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def _blast(blast: dict[str, Any] | None) -> str:
    if blast is None:
        return "-"
    return f"{blast['changedPushes']}/{blast['expected']} {_flag(blast['pass'])}"


def _row(s: dict[str, Any], target: float) -> list[str]:
    path = s["criticalPath"]
    agent = path["agentJoin"]["length"] if path["agentJoin"] else "-"
    blast = s.get("blastRadius", {})
    return [
        str(s["nodes"]),
        str(s["shape"]["hosts"]),
        str(s["resources"]),
        f"{s['plan']['wallSeconds']:.2f}",
        f"{s['plan']['maxrssMib']:.0f}",
        f"{s['baseline']['wallSeconds']:.2f}",
        f"{s['baseline']['maxrssMib']:.0f}",
        f"{s['overheadRatio']:.2f}",
        f"{s['programRatio']:.2f}",
        _flag(s["overheadRatio"] <= target),
        f"{s['floor']['wallSeconds']:.2f}",
        f"{s['floorRatio']:.2f}",
        f"{s['replay']['wallSeconds']:.2f}",
        f"{s['replayRatio']:.2f}",
        f"{path['kubeconfig']['length']}/{path['nodesReady']['length']}/{agent}",
        str(path["servers"]),
        _blast(blast.get("labels")),
        _blast(blast.get("sharedModule")),
        "yes" if s["deterministic"]["identical"] else "NO",
    ]


def render(document: dict[str, Any]) -> str:
    target = document["targets"]["overheadRatio"]
    before, after = document["machineBefore"], document["machineAfter"]
    lines = [
        f"nixos-k3s offline plan benchmark: {document['runs']} run(s) per size, medians; "
        f"{before['cpus']} cores, Python {before['python']}",
        f"load average before {before['loadavg']}, after {after['loadavg']}",
        "",
    ]
    header = [f"{name:{fmt}}" for name, fmt in COLUMNS]
    lines.append("  ".join(header))
    for s in document["sizes"]:
        cells = _row(s, target)
        lines.append("  ".join(f"{c:{fmt}}" for c, (_, fmt) in zip(cells, COLUMNS, strict=True)))
    lines += ["", "shapes:"]
    lines += [f"  {s['nodes']:>5} nodes: {s['shape']['description']}" for s in document["sizes"]]
    lines += [
        "",
        "base = the plan's resources registered bare: one resource of the same type through the",
        "same SDK class per plan resource, required inputs only, no parents, options or",
        "Outputs (the SDK's own cost; bench/bare.py). ratio = plan wall / base wall (whole fresh",
        "process); prog ratio = the same for the program phase only (after imports).",
        "floor = as many CustomResources with no properties at all (reference only: no real",
        "program registers these); vs floor = plan wall / floor wall.",
        "repl = the plan's resources registered again, flat, with the same inputs as plain",
        "values; vs repl = program-phase ratio plan/replay.",
        "path = longest chain of command resources to the kubeconfig / nodes-Ready gate / any",
        "agent's join gate; labels/module = push resources replaced / expected.",
        "",
        "checks:",
    ]
    for check in document["checks"]:
        kind = "target" if check["timing"] else "check "
        lines.append(
            f"  {_flag(check['pass'])}  {kind}  {check['name']}: {check['value']} "
            f"(want {check['target']})"
        )
    return "\n".join(lines) + "\n"
