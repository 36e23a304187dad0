"""Compare two offline plans (`python -m tooling plan`) the way a reviewer needs them.

`python -m tooling diff OLD NEW [--format text|markdown]` says which resources a deploy would
add, remove, replace or change (input by input), which hosts it would redeploy, and shows the
unified diff of every changed host's rendered data. Secret values never appear: a plan holds
only the marker "[secret]" and a keyed fingerprint, so a changed secret reads "changed (secret)".
Exit status: 0 when nothing changes, 1 when something does, 2 on bad arguments or plan dirs.
"""

from __future__ import annotations

import argparse
import difflib
import html
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NoReturn

from tooling import cost, rollout

SECRET = "[secret]"
PLAN_FILE = "plan.json"
# GitHub rejects a comment body over 65536 characters; stay well below so a caller can add a
# heading or put two stacks in one comment.
DEFAULT_MARKDOWN_MAX_CHARS = 60_000
MIN_MAX_CHARS = 2_000
VALUE_PREVIEW_CHARS = 160
NOTE_NAMES_CHARS = 400

# Inputs whose change makes the provider delete and re-create the resource instead of updating
# it in place. hcloud: the attributes marked ForceNew / RequiresReplace in
# terraform-provider-hcloud's schemas (which pulumi-hcloud bridges). pulumi-command: its SDK sets
# replace_on_changes=["triggers[*]"] on every command resource. pulumi-kubernetes helm Release:
# its Diff treats .name and .namespace as force-new fields.
REPLACED_BY_INPUT: Mapping[str, frozenset[str]] = {
    "hcloud:index/server:Server": frozenset(
        {"image", "location", "datacenter", "userData", "sshKeys"}
    ),
    "hcloud:index/network:Network": frozenset({"ipRange"}),
    "hcloud:index/networkSubnet:NetworkSubnet": frozenset(
        {"networkId", "type", "networkZone", "ipRange", "vswitchId"}
    ),
    "hcloud:index/serverNetwork:ServerNetwork": frozenset(
        {"serverId", "networkId", "subnetId", "ip"}
    ),
    "hcloud:index/sshKey:SshKey": frozenset({"publicKey"}),
    "command:local:Command": frozenset({"triggers"}),
    "command:remote:Command": frozenset({"triggers"}),
    "command:remote:CopyToRemote": frozenset({"triggers"}),
    "kubernetes:helm.sh/v3:Release": frozenset({"name", "namespace"}),
}
# Packages whose resources have no update at all: any input change replaces them.
REPLACED_BY_ANY_INPUT = ("random:", "tls:")

Kind = Literal["add", "remove", "replace", "change"]
KIND_ORDER: Mapping[Kind, int] = {"add": 0, "remove": 1, "replace": 2, "change": 3}
KIND_SYMBOL: Mapping[Kind, str] = {"add": "+", "remove": "-", "replace": "+-", "change": "~"}
HostKind = Literal["added", "removed", "changed"]


class PlanError(Exception):
    """A plan directory that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Host:
    content_hash: str
    text: str


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    name: str
    custom: bool
    inputs: Mapping[str, Any]
    provider: str | None
    parent: str | None = None
    depends_on: tuple[str, ...] = ()
    ignore_changes: frozenset[str] = frozenset()  # top-level inputs kept from the state
    aliases: tuple[str, ...] = ()  # URNs the engine takes as this resource (a moved resource)


@dataclass(frozen=True)
class Plan:
    stack: str
    resources: Mapping[str, Resource]
    outputs: Mapping[str, Any]
    fingerprints: Mapping[str, Mapping[str, str]]
    hosts: Mapping[str, Host]


@dataclass(frozen=True)
class ValueChange:
    """One changed input (or output) path, already safe to print."""

    path: str
    summary: str
    detail: tuple[str, ...] = ()
    forces_replacement: bool = False


@dataclass(frozen=True)
class ResourceChange:
    kind: Kind
    type: str
    name: str
    urn: str
    changes: tuple[ValueChange, ...] = ()
    runs: bool = True  # whether the deploy does work for it (see _does_work)


@dataclass(frozen=True)
class HostChange:
    name: str
    kind: HostKind
    redeploy: bool
    diff: tuple[str, ...]


@dataclass(frozen=True)
class PlanDiff:
    old_stack: str
    new_stack: str
    resource_count: int
    host_count: int
    resources: tuple[ResourceChange, ...]
    outputs: tuple[ValueChange, ...]
    hosts: tuple[HostChange, ...]
    cost: CostChange | None = None
    rollout: str = ""  # Mermaid flowchart of the deploy order of the changed part ("" if none)

    def count(self, kind: Kind) -> int:
        return sum(1 for change in self.resources if change.kind == kind)

    @property
    def redeployed_hosts(self) -> tuple[str, ...]:
        return tuple(host.name for host in self.hosts if host.redeploy)

    @property
    def has_changes(self) -> bool:
        return bool(self.resources or self.outputs or self.hosts)


@dataclass(frozen=True)
class CostChange:
    """Monthly cost of both plans at today's price table, and the priced items that differ."""

    before: cost.Cost
    after: cost.Cost

    @property
    def delta(self) -> Decimal:
        return self.after.total - self.before.total

    def summary(self) -> str:
        before, after = cost.money(self.before.total), cost.money(self.after.total)
        if self.delta == 0:
            return f"{after} EUR per month (unchanged)"
        sign = "+" if self.delta > 0 else "-"
        return f"{before} -> {after} EUR per month ({sign}{cost.money(abs(self.delta))})"

    def lines(self) -> tuple[str, ...]:
        """Items added (+) and removed (-), like a diff, then the basis of the prices."""
        old = Counter(self.before.items)
        new = Counter(self.after.items)
        changed = [("-", item) for item in (old - new).elements()]
        changed += [("+", item) for item in (new - old).elements()]
        changed.sort(key=lambda pair: (_natural(pair[1].name), pair[1].what, pair[0]))
        lines = [
            f"{sign} {item.name}: {item.what} "
            + ("(no price)" if item.monthly is None else cost.money(item.monthly))
            for sign, item in changed
        ]
        return (*lines, f"# {cost.describe_basis(self.after)}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_plan(directory: Path) -> Plan:
    """Read DIR/plan.json and the host files it names; PlanError on anything malformed."""
    if not directory.is_dir():
        raise PlanError(f"{directory}: not a plan directory (it does not exist or is not a dir)")
    document = _read_json(directory / PLAN_FILE)
    where = str(directory / PLAN_FILE)
    _expect(isinstance(document, dict), where, "top level is not a JSON object")
    stack = document.get("stack")
    _expect(isinstance(stack, str), where, '"stack" is missing or not a string')
    return Plan(
        stack=str(stack),
        resources=_load_resources(document.get("resources"), where),
        outputs=_load_mapping(document.get("outputs", {}), where, "outputs"),
        fingerprints=_load_fingerprints(document.get("secretFingerprints", {}), where),
        hosts=_load_hosts(document.get("hosts", {}), directory, where),
    )


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PlanError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None


def _expect(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise PlanError(f"{where}: {problem}")


def _load_mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    _expect(isinstance(value, dict), where, f'"{key}" is not a JSON object')
    return value


def _load_resources(value: Any, where: str) -> Mapping[str, Resource]:
    _expect(isinstance(value, list), where, '"resources" is missing or not a list')
    resources: dict[str, Resource] = {}
    for index, item in enumerate(value):
        at = f"resources[{index}]"
        _expect(isinstance(item, dict), where, f"{at} is not an object")
        for key in ("urn", "type", "name"):
            _expect(isinstance(item.get(key), str), where, f'{at}."{key}" is not a string')
        _expect(isinstance(item.get("inputs", {}), dict), where, f'{at}."inputs" is not an object')
        provider = item.get("provider")
        _expect(provider is None or isinstance(provider, str), where, f"{at}.provider is invalid")
        parent = item.get("parent")
        _expect(parent is None or isinstance(parent, str), where, f"{at}.parent is invalid")
        depends_on = item.get("dependsOn", [])
        valid = isinstance(depends_on, list) and all(isinstance(d, str) for d in depends_on)
        _expect(valid, where, f'{at}."dependsOn" is not a list of strings')
        aliases = item.get("aliases", [])
        valid = isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)
        _expect(valid, where, f'{at}."aliases" is not a list of strings')
        urn = item["urn"]
        _expect(urn not in resources, where, f"{at}: duplicate urn {urn}")
        resources[urn] = Resource(
            urn=urn,
            type=item["type"],
            name=item["name"],
            custom=bool(item.get("custom", True)),
            inputs=item.get("inputs", {}),
            provider=provider,
            parent=parent,
            depends_on=tuple(depends_on),
            ignore_changes=frozenset(item.get("ignoreChanges") or ()),
            aliases=tuple(aliases),
        )
    return resources


def _load_fingerprints(value: Any, where: str) -> Mapping[str, Mapping[str, str]]:
    _expect(isinstance(value, dict), where, '"secretFingerprints" is not a JSON object')
    for urn, paths in value.items():
        valid = isinstance(paths, dict) and all(isinstance(v, str) for v in paths.values())
        _expect(valid, where, f'"secretFingerprints" of {urn} is not an object of strings')
    return value


def _load_hosts(value: Any, directory: Path, where: str) -> Mapping[str, Host]:
    _expect(isinstance(value, dict), where, '"hosts" is not a JSON object')
    root = directory.resolve()
    hosts: dict[str, Host] = {}
    for name, entry in sorted(value.items()):
        valid = (
            isinstance(entry, dict)
            and isinstance(entry.get("contentHash"), str)
            and isinstance(entry.get("file"), str)
        )
        _expect(valid, where, f'hosts."{name}" needs string "contentHash" and "file"')
        path = (root / entry["file"]).resolve()
        _expect(path.is_relative_to(root), where, f'hosts."{name}".file leaves the plan dir')
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PlanError(f"{path}: cannot read host data of {name} ({error})") from None
        hosts[name] = Host(content_hash=entry["contentHash"], text=text)
    return hosts


# ---------------------------------------------------------------------------------------------
# Comparing

_ABSENT = object()
UNKNOWN = "[unknown]"


@dataclass(frozen=True)
class HostTexts:
    """Host files by content, so an input carrying a host's data points at that host's diff."""

    old: Mapping[str, str]
    new: Mapping[str, str]

    @staticmethod
    def of(old: Plan, new: Plan) -> HostTexts:
        def index(plan: Plan) -> dict[str, str]:
            return {host.text.rstrip("\n"): name for name, host in plan.hosts.items()}

        return HostTexts(index(old), index(new))

    def host_of(self, before: str, after: str) -> str | None:
        name = self.old.get(before.rstrip("\n"))
        return name if name is not None and self.new.get(after.rstrip("\n")) == name else None


NO_HOST_TEXTS = HostTexts({}, {})


def plan_cost(plan: Plan) -> cost.Cost:
    """Priced with the current catalog, so that a diff compares resources, not price tables."""
    return cost.plan_cost(
        cost.PricedResource(r.urn, r.name, r.type, r.inputs)
        for r in plan.resources.values()
        if r.custom
    )


def as_seen_by(old: Plan, new: Plan) -> Plan:
    """`old` with its URNs as `new` names the same resources, so that the diff compares what the
    engine would: a plan of another stack name (the stack is part of every URN; the resources
    are matched as if `old` were planned under `new`'s name), and a resource that `new` moved
    under another parent with an alias to its old URN."""
    prefix_old, prefix_new = f"urn:pulumi:{old.stack}::", f"urn:pulumi:{new.stack}::"

    def restacked(urn: str) -> str:
        return prefix_new + urn[len(prefix_old) :] if urn.startswith(prefix_old) else urn

    moved = {
        alias: urn
        for urn, res in new.resources.items()
        for alias in map(restacked, res.aliases)
        if alias not in new.resources
    }

    def seen(urn: str) -> str:
        urn = restacked(urn)
        return moved.get(urn, urn)

    resources = {
        seen(urn): replace(
            res,
            urn=seen(urn),
            provider=seen(res.provider) if res.provider else None,
            parent=seen(res.parent) if res.parent else None,
            depends_on=tuple(seen(d) for d in res.depends_on),
        )
        for urn, res in old.resources.items()
    }
    fingerprints = {seen(urn): paths for urn, paths in old.fingerprints.items()}
    return replace(old, resources=resources, fingerprints=fingerprints)


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
    old_stack = old.stack
    old = as_seen_by(old, new)
    before, after = plan_cost(old), plan_cost(new)
    resources = _resource_changes(old, new)
    return PlanDiff(
        old_stack=old_stack,
        new_stack=new.stack,
        resource_count=len(new.resources),
        host_count=len(new.hosts),
        resources=resources,
        outputs=tuple(_value_changes(old.outputs, new.outputs, {}, {}, NO_HOST_TEXTS)),
        hosts=_host_changes(old.hosts, new.hosts),
        cost=CostChange(before, after) if before.items or after.items else None,
        rollout=_rollout(old, new, resources),
    )


def _rollout(old: Plan, new: Plan, changes: Sequence[ResourceChange]) -> str:
    def nodes(plan: Plan) -> dict[str, rollout.Node]:
        return {
            urn: rollout.Node(urn, r.type, r.name, r.parent, r.depends_on, r.provider, r.custom)
            for urn, r in plan.resources.items()
        }

    kinds = {change.urn: change.kind for change in changes if change.runs}
    return rollout.mermaid(nodes(new), kinds, nodes(old))


def _does_work(
    kind: Kind,
    resource: Resource,
    paths: frozenset[str] = frozenset(),
    before: Resource | None = None,
) -> bool:
    """Whether the deploy does work for this change of `resource` (changed input `paths`;
    `before`, the resource as it was). A host's roll step does when its ROLL_KEY changes (an
    upgrade), and that of a server or of a host with container nodes (ROLL_EVERY_RELEASE) also
    when its release does (it pushes it, one host at a time), as does that of a host that had
    container nodes (its run recorded them: it drains the removed ones' nodes and pushes);
    created, or updated for any other reason, it only records the key (see NixosHost._roll).
    An install's update only says it is installed already (nixos_host.ALREADY_INSTALLED); it
    runs again only when replaced with its machine."""
    if not resource.type.startswith("command:"):
        return True
    if resource.name.endswith("-install"):
        return kind != "change"
    if resource.name.endswith("-roll"):
        if kind == "add":
            return False
        environment = resource.inputs.get("environment") or {}
        had = (before.inputs.get("environment") or {}) if before is not None else {}
        pushes_release = environment.get("ROLL_EVERY_RELEASE") == "1" or bool(
            had.get("CONTAINER_NODES")
        )
        return rollout.ROLL_KEY_PATH in paths or (
            pushes_release and rollout.RELEASE_ID_PATH in paths
        )
    return True


def _resource_changes(old: Plan, new: Plan) -> tuple[ResourceChange, ...]:
    changes: list[ResourceChange] = []
    host_texts = HostTexts.of(old, new)
    for urn in sorted(old.resources.keys() | new.resources.keys()):
        before, after = old.resources.get(urn), new.resources.get(urn)
        if before is None and after is not None:
            runs = _does_work("add", after)
            changes.append(ResourceChange("add", after.type, after.name, urn, runs=runs))
        elif after is None and before is not None:
            runs = _does_work("remove", before)
            changes.append(ResourceChange("remove", before.type, before.name, urn, runs=runs))
        elif before is not None and after is not None and after.custom:
            fingerprints = (old.fingerprints.get(urn, {}), new.fingerprints.get(urn, {}))
            change = _compare_resource(before, after, fingerprints, host_texts)
            if change is not None:
                changes.append(change)
    changes.sort(key=lambda c: (KIND_ORDER[c.kind], c.type, _natural(c.name), c.urn))
    return tuple(changes)


_natural = rollout.natural_key


def _compare_resource(
    before: Resource,
    after: Resource,
    fingerprints: tuple[Mapping[str, str], Mapping[str, str]],
    host_texts: HostTexts,
) -> ResourceChange | None:
    changes = _value_changes(before.inputs, after.inputs, *fingerprints, host_texts)
    # ignore_changes: the engine keeps the state's value, so these inputs change nothing.
    changes = [
        c for c in changes if re.split(r"[.\[]", c.path, maxsplit=1)[0] not in after.ignore_changes
    ]
    changes = [_mark_replacement(after.type, change) for change in changes]
    if before.provider != after.provider:
        summary = f"{_short_urn(before.provider)} -> {_short_urn(after.provider)}"
        changes.append(ValueChange("(provider)", summary))
    if not changes:
        return None
    replaced = any(change.forces_replacement for change in changes)
    kind: Kind = "replace" if replaced else "change"
    runs = _does_work(kind, after, frozenset(change.path for change in changes), before)
    return ResourceChange(kind, after.type, after.name, after.urn, tuple(changes), runs)


def _mark_replacement(resource_type: str, change: ValueChange) -> ValueChange:
    top = re.split(r"[.\[]", change.path, maxsplit=1)[0]
    forces = resource_type.startswith(REPLACED_BY_ANY_INPUT) or top in REPLACED_BY_INPUT.get(
        resource_type, frozenset()
    )
    if not forces:
        return change
    return ValueChange(change.path, change.summary, change.detail, forces_replacement=True)


def _short_urn(urn: str | None) -> str:
    return "(default)" if urn is None else urn.rsplit("::", 1)[-1]


def _value_changes(
    old_values: Mapping[str, Any],
    new_values: Mapping[str, Any],
    old_fingerprints: Mapping[str, str],
    new_fingerprints: Mapping[str, str],
    host_texts: HostTexts,
) -> list[ValueChange]:
    secret_paths = {_normal_path(p) for p in old_fingerprints.keys() | new_fingerprints.keys()}
    old_flat, new_flat = _flatten(old_values), _flatten(new_values)
    changes: list[ValueChange] = []
    for path in old_flat.keys() | new_flat.keys():
        if _is_under(path, secret_paths):
            continue  # fingerprints decide below: the value itself is never shown
        before, after = old_flat.get(path, _ABSENT), new_flat.get(path, _ABSENT)
        if _canonical(before) != _canonical(after):
            changes.append(_describe(path, before, after, host_texts))
    for path in old_fingerprints.keys() | new_fingerprints.keys():
        before, after = old_fingerprints.get(path), new_fingerprints.get(path)
        if before != after:
            verb = "added" if before is None else "removed" if after is None else "changed"
            changes.append(ValueChange(path, f"{verb} (secret)"))
    changes.sort(key=lambda change: change.path)
    return changes


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key in value:
                walk(value[key], f"{path}.{key}")
        elif isinstance(value, list) and value:
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        else:
            flat[path] = value

    for key in values:
        walk(values[key], key)
    return flat


def _normal_path(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path)


def _is_under(path: str, secret_paths: set[str]) -> bool:
    normal = _normal_path(path)
    return any(normal == secret or normal.startswith(secret + ".") for secret in secret_paths)


def _canonical(value: Any) -> str:
    # json, not ==, so that true and 1 (equal in Python) still count as a change
    return "\0absent" if value is _ABSENT else json.dumps(value, sort_keys=True)


def _describe(path: str, before: Any, after: Any, host_texts: HostTexts) -> ValueChange:
    if isinstance(before, str) and isinstance(after, str):
        host = host_texts.host_of(before, after)
        if host is not None:
            return ValueChange(path, f"data of host {host} (see its diff)")
    if isinstance(before, str) and isinstance(after, str) and ("\n" in before or "\n" in after):
        lines = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=1)
        detail = tuple(line for line in lines if not line.startswith(("---", "+++")))
        summary = f"text of {_line_count(before)} -> {_line_count(after)} lines"
        return ValueChange(path, summary, detail)
    return ValueChange(path, f"{_preview(before)} -> {_preview(after)}")


def _line_count(text: str) -> int:
    return len(text.splitlines())


def _preview(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if value in (SECRET, UNKNOWN):
        return str(value)
    shown = json.dumps(value, sort_keys=True, ensure_ascii=False)
    if len(shown) > VALUE_PREVIEW_CHARS:
        return f"{shown[:VALUE_PREVIEW_CHARS]}... ({len(shown)} chars)"
    return shown


def _host_changes(old: Mapping[str, Host], new: Mapping[str, Host]) -> tuple[HostChange, ...]:
    changes: list[HostChange] = []
    for name in sorted(old.keys() | new.keys(), key=_natural):
        before, after = old.get(name), new.get(name)
        if before is not None and after is not None:
            if before == after:
                continue
            kind: HostKind = "changed"
            redeploy = before.content_hash != after.content_hash
        else:
            kind = "added" if before is None else "removed"
            redeploy = before is None
        lines = difflib.unified_diff(
            before.text.splitlines() if before else [],
            after.text.splitlines() if after else [],
            fromfile=f"a/hosts/{name}.json" if before else "/dev/null",
            tofile=f"b/hosts/{name}.json" if after else "/dev/null",
            lineterm="",
        )
        changes.append(HostChange(name, kind, redeploy, tuple(lines)))
    return tuple(changes)


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Section:
    """A titled block of lines that truncation may cut but never drops half-open."""

    title: str
    lines: tuple[str, ...]


def _resource_lines(plan_diff: PlanDiff) -> tuple[str, ...]:
    lines: list[str] = []
    for change in plan_diff.resources:
        lines.append(f"{KIND_SYMBOL[change.kind]} {change.type} {change.name}")
        for value in change.changes:
            note = " (forces replacement)" if value.forces_replacement else ""
            lines.append(f"    {value.path}: {value.summary}{note}")
            lines.extend(f"      {line}" for line in value.detail)
    return tuple(lines)


def _sections(plan_diff: PlanDiff) -> list[Section]:
    sections: list[Section] = []
    if plan_diff.resources:
        title = f"Resources ({len(plan_diff.resources)})"
        sections.append(Section(title, _resource_lines(plan_diff)))
    if plan_diff.outputs:
        lines = tuple(f"~ {value.path}: {value.summary}" for value in plan_diff.outputs)
        sections.append(Section(f"Outputs ({len(plan_diff.outputs)})", lines))
    for host in plan_diff.hosts:
        action = ", redeploy" if host.redeploy else ""
        sections.append(Section(f"Host {host.name} ({host.kind}{action})", host.diff))
    if plan_diff.cost is not None and plan_diff.cost.delta != 0:
        sections.append(Section("Monthly cost by item", plan_diff.cost.lines()))
    return sections


def _counts(plan_diff: PlanDiff) -> tuple[int, int, int, int, int]:
    """Added, removed, replaced, re-run, changed. A command "replaced" by a new trigger is a
    re-run (pulumi-command deletes and creates it: its script runs again), not a machine being
    replaced; an install updated only in state (it says it is installed already) is left out."""
    replaced = [c for c in plan_diff.resources if c.kind == "replace"]
    reruns = sum(1 for c in replaced if c.type.startswith("command:"))
    changed = sum(1 for c in plan_diff.resources if c.kind == "change" and c.runs)
    return (
        plan_diff.count("add"),
        plan_diff.count("remove"),
        len(replaced) - reruns,
        reruns,
        changed,
    )


def _stack_label(plan_diff: PlanDiff) -> str:
    if plan_diff.old_stack == plan_diff.new_stack:
        return plan_diff.new_stack
    return f"{plan_diff.old_stack} -> {plan_diff.new_stack}"


def _no_changes_line(plan_diff: PlanDiff) -> str:
    return (
        f"No changes: {plan_diff.resource_count} resources and "
        f"{plan_diff.host_count} hosts stay as they are."
    )


def render_text(plan_diff: PlanDiff, max_chars: int = 0) -> str:
    """Terminal report; max_chars=0 means no limit."""
    head = [f"Plan diff for stack {_stack_label(plan_diff)}"]
    if not plan_diff.has_changes:
        return "\n".join([*head, _no_changes_line(plan_diff)]) + "\n"
    added, removed, replaced, reruns, changed = _counts(plan_diff)
    hosts = plan_diff.redeployed_hosts
    head.append(
        f"Resources: {added} to add, {removed} to remove, {replaced} to replace, "
        f"{reruns} commands to re-run, {changed} to change"
    )
    head.append(f"Hosts to redeploy: {len(hosts)}" + (f" ({', '.join(hosts)})" if hosts else ""))
    if plan_diff.cost is not None:
        head.append(f"Monthly cost: {plan_diff.cost.summary()}")

    def wrap(section: Section, lines: Sequence[str]) -> str:
        return "\n".join([f"{section.title}:", *lines, ""]) + "\n"

    def note(omitted: Sequence[str]) -> str:
        return f"[truncated: {_omitted_names(omitted)} not shown]\n"

    return _assemble("\n".join(head) + "\n\n", _sections(plan_diff), wrap, note, max_chars)


def render_markdown(plan_diff: PlanDiff, max_chars: int = DEFAULT_MARKDOWN_MAX_CHARS) -> str:
    """PR-comment report: summary table, then one collapsed section per block; fits max_chars."""
    heading = f"### Plan diff: {_md_code(_stack_label(plan_diff))}\n\n"
    if not plan_diff.has_changes:
        return heading + _no_changes_line(plan_diff) + "\n"
    added, removed, replaced, reruns, changed = _counts(plan_diff)
    hosts = plan_diff.redeployed_hosts
    table = (
        "| added | removed | replaced | commands re-run | changed | hosts redeployed |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"| {added} | {removed} | {replaced} | {reruns} | {changed} | {len(hosts)} |\n\n"
    )
    if hosts:
        names = ", ".join(f"<code>{_md_text(host)}</code>" for host in hosts)
        table += f"Hosts to redeploy: {names}\n\n"
    if plan_diff.cost is not None:
        basis = cost.describe_basis(plan_diff.cost.after)
        summary = _md_text(plan_diff.cost.summary())
        table += f"Monthly cost: **{summary}** <sub>{_md_text(basis)}</sub>\n\n"
    if plan_diff.rollout:
        table += (
            "Deploy order of the changed part (an arrow: must finish before):\n\n"
            f"```mermaid\n{plan_diff.rollout}```\n\n"
        )

    def wrap(section: Section, lines: Sequence[str]) -> str:
        fence = "`" * max(3, _longest_backtick_run(lines) + 1)
        body = "\n".join(lines)
        return (
            f"<details><summary>{_md_text(section.title)}</summary>\n\n"
            f"{fence}diff\n{body}\n{fence}\n\n</details>\n\n"
        )

    def note(omitted: Sequence[str]) -> str:
        return (
            f"> [!WARNING]\n> Truncated to fit a comment: {_md_text(_omitted_names(omitted))} "
            "not shown. Run `python -m tooling diff` on the two plans for the full diff.\n"
        )

    return _assemble(heading + table, _sections(plan_diff), wrap, note, max_chars)


def _assemble(
    head: str,
    sections: Sequence[Section],
    wrap: Callable[[Section, Sequence[str]], str],
    note: Callable[[Sequence[str]], str],
    max_chars: int,
) -> str:
    """Head, then whole sections while they fit; the first that does not fit is cut line-wise."""
    parts = [head]
    used = len(head)
    reserve = len(note(["x" * NOTE_NAMES_CHARS]))
    for index, section in enumerate(sections):
        block = wrap(section, section.lines)
        if not max_chars or used + len(block) + reserve <= max_chars:
            parts.append(block)
            used += len(block)
            continue
        later = [other.title for other in sections[index + 1 :]]
        cut = _cut_section(section, wrap, max_chars - used - reserve)
        if cut is None:
            parts.append(note([section.title, *later]))
        else:
            parts.extend([cut, note([f"the rest of {section.title}", *later])])
        break
    return "".join(parts)


def _cut_section(
    section: Section, wrap: Callable[[Section, Sequence[str]], str], room: int
) -> str | None:
    """The section with as many leading lines as fit in room, plus a line saying what is left."""
    kept: list[str] = []
    for line in section.lines:
        marker = f"... {len(section.lines) - len(kept) - 1} more lines not shown"
        if len(wrap(section, [*kept, line, marker])) > room:
            break
        kept.append(line)
    if not kept:
        return None
    return wrap(section, [*kept, f"... {len(section.lines) - len(kept)} more lines not shown"])


def _omitted_names(titles: Sequence[str]) -> str:
    """'the rest of X' style list, capped so the note has a bounded size."""
    shown: list[str] = []
    for title in titles:
        if len("; ".join([*shown, title])) > NOTE_NAMES_CHARS:
            break
        shown.append(title)
    rest = len(titles) - len(shown)
    listed = "; ".join(shown) if shown else ""
    if rest:
        listed = f"{listed}; and {rest} more sections" if listed else f"{rest} sections"
    return listed


def _longest_backtick_run(lines: Sequence[str]) -> int:
    runs = (len(run) for line in lines for run in re.findall(r"`+", line))
    return max(runs, default=0)


def _md_code(text: str) -> str:
    """A code span: shown literally, so nothing is escaped; the fence is longer than any run of
    backticks inside."""
    fence = "`" * (_longest_backtick_run([text]) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_text(text: str) -> str:
    """Plain text made safe for a summary, a table cell or inline HTML."""
    return html.escape(text).replace("|", "&#124;").replace("`", "&#96;")


# ---------------------------------------------------------------------------------------------
# Command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _max_chars(text: str) -> int:
    if not text.isdigit() or int(text) < MIN_MAX_CHARS:
        raise argparse.ArgumentTypeError(f"must be an integer >= {MIN_MAX_CHARS}, not {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m tooling diff",
        description="Compare two offline plan directories written by `components plan`.",
    )
    parser.add_argument("old", type=Path, metavar="OLD", help="plan directory before the change")
    parser.add_argument("new", type=Path, metavar="NEW", help="plan directory after the change")
    parser.add_argument("--format", choices=("text", "markdown"), default="text")
    parser.add_argument(
        "--max-chars",
        type=_max_chars,
        default=None,
        help=f"cut the report to this many characters (markdown default "
        f"{DEFAULT_MARKDOWN_MAX_CHARS}, text default: no limit; at least {MIN_MAX_CHARS})",
    )
    return parser


def main(argv: list[str]) -> int:
    """Exit 0 when nothing changes, 1 when something does, 2 on bad arguments or plans."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as error:
        print(f"python -m tooling diff: {error}", file=sys.stderr)
        return 2
    except SystemExit as leave:  # --help
        return leave.code if isinstance(leave.code, int) else 0
    max_chars: int | None = args.max_chars
    try:
        plan_diff = diff_plans(load_plan(args.old), load_plan(args.new))
    except PlanError as error:
        print(f"python -m tooling diff: {error}", file=sys.stderr)
        return 2
    if args.format == "markdown":
        report = render_markdown(plan_diff, max_chars or DEFAULT_MARKDOWN_MAX_CHARS)
    else:
        report = render_text(plan_diff, max_chars or 0)
    sys.stdout.write(report)
    return 1 if plan_diff.has_changes else 0
