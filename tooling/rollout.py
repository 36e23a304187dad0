"""The deploy order of a plan's changed part, as a Mermaid flowchart for the PR comment.

The order is derived from the plan's dependency graph (each resource's `dependsOn`, its
provider, and component dependencies expanded to the component's resources), never written down
here: a stage resource A comes before B when B (transitively) depends on A. Only the resources
that the deploy will create, replace or update are drawn, grouped by stage (machines, installs,
node rolls of a rolling upgrade, pushes, joins, Helm releases, nodes Ready), with an edge where
one must finish before the other starts (transitive reduction of that order). Added, replaced
and changed resources are coloured differently; removed ones are listed in a block of their own
(Pulumi deletes them after the rest). A large change is drawn one box per stage, with counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """A resource of a plan, as far as its place in the deploy order goes."""

    urn: str
    type: str
    name: str
    parent: str | None
    depends_on: tuple[str, ...]
    provider: str | None
    custom: bool


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    matches: Callable[[Node], bool]


def _command(suffix: str) -> Callable[[Node], bool]:
    return lambda node: node.type.startswith("command:") and node.name.endswith(suffix)


STAGES: tuple[Stage, ...] = (
    Stage(
        "machines",
        "Machines",
        lambda n: n.type == "hcloud:index/server:Server" or _command("-vm")(n),
    ),
    Stage("installs", "NixOS installs", _command("-install")),
    Stage(
        "rolls",
        "Node rolls (drain, push, Ready, uncordon; servers' and container hosts' releases)",
        _command("-roll"),
    ),
    Stage("pushes", "Pushes (nixos-rebuild)", _command("-push")),
    Stage("joins", "Joins (node registered)", _command("-joined")),
    Stage("releases", "Helm releases (Cilium)", lambda n: n.type.startswith("kubernetes:helm.sh/")),
    Stage("ready", "Nodes Ready", _command("-nodes-ready")),
)
# The input whose change makes a host's roll step drain and upgrade its node.
ROLL_KEY_PATH = "environment.ROLL_KEY"
# The input whose change makes a server's roll step push its new release (ROLL_EVERY_RELEASE; also
# a host whose roll step recorded container nodes: tooling/diff.py _does_work).
RELEASE_ID_PATH = "environment.RELEASE_ID"
# Beyond this many boxes, the picture is drawn one box per stage.
MAX_NODES = 60
KIND_LABEL = {"add": "added", "replace": "replaced", "change": "changed", "remove": "removed"}
CLASS_DEFS = (
    "classDef add fill:#dafbe1,stroke:#1a7f37,color:#0d2e16",
    "classDef replace fill:#ffebe9,stroke:#cf222e,color:#4c0b0f,stroke-width:2px",
    "classDef change fill:#fff8c5,stroke:#9a6700,color:#3b2300",
    "classDef remove fill:#eaeef2,stroke:#57606a,color:#24292f,stroke-dasharray:4 3",
)


def stage_of(node: Node) -> Stage | None:
    for stage in STAGES:
        if node.custom and stage.matches(node):
            return stage
    return None


def _dependencies(nodes: Mapping[str, Node]) -> dict[str, set[str]]:
    """Direct dependencies of each resource, components expanded to their custom descendants."""
    children: dict[str, list[str]] = {}
    for node in nodes.values():
        if node.parent is not None:
            children.setdefault(node.parent, []).append(node.urn)

    def expand(urn: str) -> set[str]:
        node = nodes.get(urn)
        if node is None:
            return set()
        if node.custom:
            return {urn}
        found: set[str] = set()
        for child in children.get(urn, []):
            found |= expand(child)
        return found

    deps: dict[str, set[str]] = {}
    for node in nodes.values():
        direct = set(node.depends_on)
        if node.provider:
            direct.add(_provider_urn(node.provider, nodes))
        deps[node.urn] = {d for urn in direct for d in expand(urn)}
    return deps


def _provider_urn(reference: str, nodes: Mapping[str, Node]) -> str:
    # a provider reference is "URN" or "URN::ID"
    return reference if reference in nodes else reference.rsplit("::", 1)[0]


def deploy_order(nodes: Mapping[str, Node], shown: set[str]) -> set[tuple[str, str]]:
    """Edges (before, after) among `shown`: the transitive reduction of the dependency order."""
    deps = _dependencies(nodes)
    memo: dict[str, frozenset[str]] = {}

    def ancestors(urn: str) -> frozenset[str]:
        # iterative DFS: plans have thousands of resources, recursion depth is not bounded
        if urn in memo:
            return memo[urn]
        stack = [(urn, False)]
        while stack:
            current, done = stack.pop()
            if current in memo:
                continue
            if done:
                found: set[str] = set()
                for dep in deps.get(current, ()):
                    found.add(dep)
                    found |= memo[dep]
                memo[current] = frozenset(found)
                continue
            stack.append((current, True))
            stack.extend((dep, False) for dep in deps.get(current, ()) if dep not in memo)
        return memo[urn]

    before = {urn: ancestors(urn) & shown for urn in shown}
    edges: set[tuple[str, str]] = set()
    for after, preds in before.items():
        for pred in preds:
            # keep pred -> after unless it also goes through another shown resource
            if not any(pred in before[middle] for middle in preds if middle != pred):
                edges.add((pred, after))
    return edges


def mermaid(nodes: Mapping[str, Node], kinds: Mapping[str, str], old: Mapping[str, Node]) -> str:
    """Flowchart of the changed stage resources; "" when the change touches none.

    `kinds` maps a URN to add/replace/change/remove; `old` holds the resources of the old plan
    (a removed resource is only there).
    """
    staged: dict[str, tuple[Stage, Node, str]] = {}
    for urn, kind in kinds.items():
        node = old.get(urn) if kind == "remove" else nodes.get(urn)
        stage = stage_of(node) if node is not None else None
        if node is not None and stage is not None:
            staged[urn] = (stage, node, kind)
    if not staged:
        return ""
    running = {urn for urn, (_, _, kind) in staged.items() if kind != "remove"}
    edges = deploy_order(nodes, running)
    if len(staged) > MAX_NODES:
        return _by_stage(staged, edges)
    return _by_resource(staged, edges)


def _order_key(item: tuple[str, tuple[Stage, Node, str]]) -> tuple[int, tuple[object, ...], str]:
    urn, (stage, node, _) = item
    return (STAGES.index(stage), natural_key(node.name), urn)


def _by_resource(staged: Mapping[str, tuple[Stage, Node, str]], edges: set[tuple[str, str]]) -> str:
    ordered = sorted(staged.items(), key=_order_key)
    ids = {urn: f"n{index}" for index, (urn, _) in enumerate(ordered)}
    lines = ["flowchart LR"]
    running = [(urn, entry) for urn, entry in ordered if entry[2] != "remove"]
    removed = [(urn, entry) for urn, entry in ordered if entry[2] == "remove"]
    for stage in STAGES:
        members = [(urn, node, kind) for urn, (s, node, kind) in running if s is stage]
        if not members:
            continue
        lines.append(f'  subgraph {stage.key}["{_label(stage.title)}"]')
        for urn, node, kind in members:
            lines.append(f'    {ids[urn]}["{_label(node.name)}<br/>{KIND_LABEL[kind]}"]')
        lines.append("  end")
    if removed:
        lines.append('  subgraph removed["Removed (deleted last)"]')
        for urn, (_, node, kind) in removed:
            lines.append(f'    {ids[urn]}["{_label(node.name)}<br/>{KIND_LABEL[kind]}"]')
        lines.append("  end")
    for before, after in sorted(edges, key=lambda e: (int(ids[e[0]][1:]), int(ids[e[1]][1:]))):
        lines.append(f"  {ids[before]} --> {ids[after]}")
    lines.extend(f"  {definition}" for definition in CLASS_DEFS)
    for kind in KIND_LABEL:
        members = [ids[urn] for urn, (_, _, k) in ordered if k == kind]
        if members:
            lines.append(f"  class {','.join(members)} {kind}")
    return "\n".join(lines) + "\n"


def _by_stage(staged: Mapping[str, tuple[Stage, Node, str]], edges: set[tuple[str, str]]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for stage, _, kind in staged.values():
        key = "removed" if kind == "remove" else stage.key
        counts.setdefault(key, {}).setdefault(kind, 0)
        counts[key][kind] += 1
    titles = {stage.key: stage.title for stage in STAGES} | {"removed": "Removed (deleted last)"}
    order = [stage.key for stage in STAGES if stage.key in counts]
    if "removed" in counts:
        order.append("removed")
    lines = ["flowchart LR"]
    for key in order:
        tally = ", ".join(f"{n} {KIND_LABEL[k]}" for k, n in sorted(counts[key].items()))
        lines.append(f'  {key}["{_label(titles[key])}<br/>{_label(tally)}"]')
    stage_edges = {
        (staged[before][0].key, staged[after][0].key)
        for before, after in edges
        if staged[before][0] is not staged[after][0]
    }
    for before, after in sorted(stage_edges, key=lambda e: (order.index(e[0]), order.index(e[1]))):
        lines.append(f"  {before} --> {after}")
    lines.extend(f"  {definition}" for definition in CLASS_DEFS)
    for key in order:
        kinds = counts[key]
        worst = next(k for k in ("replace", "remove", "change", "add") if k in kinds)
        lines.append(f"  class {key} {worst}")
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    """Text safe inside a quoted Mermaid label (Mermaid's #name; entity codes)."""
    replacements = {"#": "#35;", "&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "`": "#96;"}
    return "".join(replacements.get(char, char) for char in text)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts agent-2 before agent-10."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)
