"""The deploy graph of a plan.json: critical paths, push triggers, changed resources.

A deploy runs command resources (type command:*) one after another where dependencies say so;
every other resource counts as zero length here (a cloud API call, not a build or a join), and
so does a command whose create only echoes, but dependencies are followed through them.
Depending on a component means waiting for all of its children, and a resource waits for its
explicit provider, as in Pulumi's engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMMAND_PREFIX = "command:"
PUSH_TYPE = "command:local:Command"
SERVER_TYPE = "hcloud:index/server:Server"


@dataclass(frozen=True)
class Chain:
    """A longest chain of command resources ending at `target` (names, first to last)."""

    target: str
    names: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.names)


class DeployGraph:
    def __init__(self, plan: Mapping[str, Any]):
        self.resources: dict[str, dict[str, Any]] = {r["urn"]: r for r in plan["resources"]}
        self._children: dict[str, list[str]] = {}
        self._memo: dict[str, tuple[str, ...]] = {}
        for urn, res in self.resources.items():
            if res.get("parent"):
                self._children.setdefault(res["parent"], []).append(urn)

    def _descendants(self, urn: str) -> list[str]:
        out = []
        for child in self._children.get(urn, []):
            out.append(child)
            out += self._descendants(child)
        return out

    def dependencies(self, urn: str) -> set[str]:
        res = self.resources[urn]
        direct = set(res.get("dependsOn", []))
        if res.get("provider"):
            direct.add(res["provider"])
        deps: set[str] = set()
        for dep in direct:
            if dep not in self.resources:
                continue
            deps.add(dep)
            if not self.resources[dep].get("custom", True):
                deps.update(self._descendants(dep))
        return deps

    def _weight(self, urn: str) -> int:
        res = self.resources[urn]
        if not res["type"].startswith(COMMAND_PREFIX):
            return 0
        # A command whose create only echoes (a host's rolling-upgrade step records its key when
        # created; its work is its update) costs nothing when the cluster is built.
        return 0 if str(res.get("inputs", {}).get("create", "")).startswith("echo ") else 1

    def _longest(self, urn: str) -> tuple[str, ...]:
        if urn not in self._memo:
            best: tuple[str, ...] = ()
            for dep in sorted(self.dependencies(urn)):
                candidate = self._longest(dep)
                if len(candidate) > len(best):
                    best = candidate
            self._memo[urn] = (*best, self.resources[urn]["name"]) if self._weight(urn) else best
        return self._memo[urn]

    def urn_of(self, name_suffix: str, type_prefix: str = COMMAND_PREFIX) -> list[str]:
        return sorted(
            urn
            for urn, res in self.resources.items()
            if res["name"].endswith(name_suffix) and res["type"].startswith(type_prefix)
        )

    def chain_to(self, urn: str) -> Chain:
        return Chain(self.resources[urn]["name"], self._longest(urn))

    def longest_chain(self, urns: list[str]) -> Chain | None:
        chains = [self.chain_to(urn) for urn in urns]
        return max(chains, key=lambda c: (c.length, c.target), default=None)

    def hosts_by_role(self) -> dict[str, list[str]]:
        roles: dict[str, list[str]] = {}
        for res in self.resources.values():
            if res["type"] == SERVER_TYPE:
                role = res["inputs"].get("labels", {}).get("role", "")
                roles.setdefault(role, []).append(res["name"])
        return {role: sorted(names) for role, names in roles.items()}


@dataclass(frozen=True)
class CriticalPaths:
    kubeconfig: Chain
    nodes_ready: Chain
    agent_join: Chain | None
    servers: int


def critical_paths(plan: Mapping[str, Any]) -> CriticalPaths:
    """Longest command chains to the kubeconfig, the nodes-Ready gate and any agent's join."""
    graph = DeployGraph(plan)
    kubeconfig = graph.longest_chain(graph.urn_of("-kubeconfig"))
    nodes_ready = graph.longest_chain(graph.urn_of("-nodes-ready"))
    if kubeconfig is None or nodes_ready is None:
        raise ValueError("plan has no -kubeconfig or -nodes-ready command")
    roles = graph.hosts_by_role()
    agent_gates = [urn for host in roles.get("agent", []) for urn in graph.urn_of(f"{host}-joined")]
    return CriticalPaths(
        kubeconfig=kubeconfig,
        nodes_ready=nodes_ready,
        agent_join=graph.longest_chain(agent_gates),
        servers=len(roles.get("server", [])),
    )


def push_triggers(plan: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Host name -> `triggers` of its push command (the content hash)."""
    return {
        res["name"].removesuffix("-push"): res["inputs"].get("triggers", [])
        for res in plan["resources"]
        if res["type"] == PUSH_TYPE and res["name"].endswith("-push")
    }


def changed_pushes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Hosts whose push would be replaced: its triggers differ (or it is new or gone)."""
    old, new = push_triggers(before), push_triggers(after)
    return sorted(host for host in old.keys() | new.keys() if old.get(host) != new.get(host))


def changed_resources(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """URNs whose inputs, dependencies or provider differ between two plans."""

    def key(res: Mapping[str, Any]) -> tuple[Any, ...]:
        return res["inputs"], res["dependsOn"], res["provider"]

    old = {r["urn"]: key(r) for r in before["resources"]}
    new = {r["urn"]: key(r) for r in after["resources"]}
    return sorted(urn for urn in old.keys() | new.keys() if old.get(urn) != new.get(urn))
