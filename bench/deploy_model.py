"""Modelled time of a first deploy, from a plan's resource graph and a table of step times.

Every resource of plan.json gets a time from bench/deploy_steps.yaml (first matching rule). The
graph is then scheduled as Pulumi's engine runs it: a resource starts once every resource it
depends on has finished (dependencies as bench.graph reads them: a component means all of its
children) and a worker is free; at most `parallel` resource operations run at once (the
engine's --parallel: one worker per degree of parallelism, pkg/resource/deploy/step_executor.go).
Ready resources take free workers in the order they became ready.

Beside the resources, every host whose host JSON lists images to download before k3s runs
(k3s.fetchImages: the digest-pinned images of the host and its nspawn containers) gets a
download of them (the table's `fetches`), a set time after its build step starts, and every node
that pulls images while its k3s starts (k3s.prePullImages) a pull of its own (`pulls`): a set
time after its host's push starts, but not before its host's download, if any, has ended.
Neither takes a worker (they run on the node, not in the engine), and the nodes-Ready gate
starts only once every pull has ended. Hetzner steps are timed by the stack's action polling
(`seen_at`).

The result: minutes to the kubeconfig and to the nodes-Ready gate, with the critical path that
decided each, step by step, once with every step's low time and once with every high time; and
every resource that runs past its rule's `limit` (where the project's own scripts would fail the
step: such a deploy fails, it does not merely take longer).
"""

from __future__ import annotations

import heapq
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import graph
from components.config.hcloud_polling import HcloudPolling
from components.hosts import hostspec

STEPS_FILE = Path(__file__).with_name("deploy_steps.yaml")
# The step that makes the Hetzner NixOS image: zero time in a scenario whose image exists.
IMAGE_STEP = "nixos image"
IMAGE_COMPONENT = "nixos-k3s:hetzner:NixosImage"
ROLES = ("bootstrap", "server", "agent", "container")
BOUNDS = ("low", "high")
# The CNIs a host document can name (k3s.cni).
CNIS: tuple[str, ...] = typing.get_args(hostspec.K3s.model_fields["cni"].annotation)
# The command that first starts k3s on a host (and its containers): the anchor of its pulls.
PUSH_SUFFIX = "-push"
# Keys of the modelled pulls and fetches in a schedule; no URN starts like these.
PULL_KEY = "pull::"
FETCH_KEY = "fetch::"
# The on-host build step: the anchor of its host's fetch of the CNI's images.
BUILD_SUFFIX = "-build"


class StepTableError(ValueError):
    """The step table is malformed, or a resource of the plan matches none of its rules."""


# Which half of the Hetzner provider serves a resource, and so which backoff it polls with:
# terraform-provider-hcloud serves most resources from its SDKv2 provider (hcloud/provider.go
# ResourcesMap: server, network, subnet, route, load balancer) and some from its plugin-framework
# provider (hcloud/plugin_provider.go Resources: a server's or load balancer's network attach).
POLLERS = ("sdk", "framework")
# hcloud-go ExponentialBackoff: truncated at one minute (hcloud/client.go, Cap: time.Minute).
EXPONENTIAL_CAP = 60.0
# The plugin-framework provider without poll_interval: ExponentialBackoffWithOpts(Base 500ms,
# Multiplier 2, Cap 10s) (hcloud/plugin_provider.go Configure).
FRAMEWORK_DEFAULT_CAP = 10.0


def poll_wait(polling: HcloudPolling, poller: str, retries: int) -> float:
    """Seconds hcloud-go waits before its poll number `retries` (from 0) of a running action."""
    if polling.function == "constant":
        return polling.interval
    cap = EXPONENTIAL_CAP
    if poller == "framework" and not polling.configured:
        cap = FRAMEWORK_DEFAULT_CAP
    return min(cap, polling.interval * 2.0**retries)


def seen_at(action: float, polling: HcloudPolling, poller: str) -> float:
    """When the provider sees an action of `action` seconds end: its first poll at or after it
    (hcloud-go ActionClient.WaitForFunc waits the backoff, then polls, until the action ends)."""
    at, retries = 0.0, 0
    while True:
        at += poll_wait(polling, poller, retries)
        retries += 1
        if at >= action:
            return at


@dataclass(frozen=True)
class Rule:
    step: str
    type: str
    suffix: str
    role: str | None
    # (low, high) seconds; None for a rule timed by Hetzner `actions` (exactly one of the two).
    seconds: tuple[float, float] | None
    source: str
    # True/False: only in plans with/without the Hetzner NixOS image; None: either.
    nixos_image: bool | None = None
    # Resources of this rule that run at the same time wait for each other: the k-th to start
    # while k-1 others of the same queue still run takes (k-1) x queue_seconds longer.
    queue: str | None = None
    queue_seconds: tuple[float, float] = (0.0, 0.0)
    # True/False: only in plans whose nodes do / do not pull the CNI's images while k3s starts
    # (host JSON k3s.prePullImages); None: either.
    pre_pull: bool | None = None
    # When the project's own scripts fail the step; None: no such limit.
    limit: Limit | None = None
    # Only in plans whose hosts run this CNI (host JSON k3s.cni); None: any.
    cni: str | None = None
    # Hetzner actions the resource waits for, one after another, each (low, high) seconds long;
    # its time is when the provider sees each end (seen_at), so it depends on the stack's
    # polling. None: `seconds` is the time.
    actions: tuple[tuple[float, float], ...] | None = None
    poller: str = "sdk"
    # The step's work (a server's boot) begins when the Hetzner actions of the resource it waits
    # for end on Hetzner's side, not when the provider sees them end: its time counts from
    # then, but once the engine starts it, it still takes at least these (low, high) seconds
    # (its own SSH round trips). None: its time counts from its start.
    overlap_min: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.actions is None):
            raise ValueError(f"step {self.step!r}: seconds or actions, exactly one")

    def time(self, polling: HcloudPolling) -> tuple[float, float]:
        """Low and high seconds with the stack's Hetzner polling."""
        if self.actions is None:
            assert self.seconds is not None  # __post_init__: one of the two
            return self.seconds
        low = sum(seen_at(action[0], polling, self.poller) for action in self.actions)
        high = sum(seen_at(action[1], polling, self.poller) for action in self.actions)
        return low, high

    def action_seconds(self) -> tuple[float, float] | None:
        """How long its actions run on Hetzner's side, low and high: one after another (a
        server's create, then its start, a next action that Hetzner runs as soon as the create
        ends), whenever the provider sees them. None: not timed by actions."""
        if self.actions is None:
            return None
        return sum(a[0] for a in self.actions), sum(a[1] for a in self.actions)

    def matches(
        self,
        res: Mapping[str, Any],
        role: str | None,
        nixos_image: bool,
        pre_pull: bool = False,
        cni: str | None = None,
    ) -> bool:
        return (
            res["type"].startswith(self.type)
            and res["name"].endswith(self.suffix)
            and (self.role is None or self.role == role)
            and (self.nixos_image is None or self.nixos_image == nixos_image)
            and (self.pre_pull is None or self.pre_pull == pre_pull)
            and (self.cni is None or self.cni == cni)
        )


@dataclass(frozen=True)
class PullRule:
    """How long a node's pull (or a host's download) of the CNI's images takes, and when it
    starts: `offset` seconds after its anchor (its host's push, or build) starts (low, high)."""

    step: str
    role: str | None
    offset: tuple[float, float]
    offset_source: str
    seconds: tuple[float, float]
    source: str


@dataclass(frozen=True)
class StepTable:
    parallel: int
    cli_default: int
    rules: tuple[Rule, ...]
    pulls: tuple[PullRule, ...] = ()
    # Each downloading host's (k3s.fetchImages) fetch of the CNI's images before k3s runs (the
    # first that matches; role is always None): anchored at its build step, the pulls wait for it.
    fetches: tuple[PullRule, ...] = ()


def _rule(index: int, entry: Any) -> Rule:
    where = f"steps[{index}]"
    if not isinstance(entry, Mapping):
        raise StepTableError(f"{where}: a rule is a mapping")
    unknown = set(entry) - {
        "step",
        "type",
        "suffix",
        "role",
        "seconds",
        "source",
        "nixosImage",
        "queue",
        "prePull",
        "limit",
        "cni",
        "actions",
        "poller",
        "overlapsActions",
    }
    if unknown:
        raise StepTableError(f"{where}: unknown key(s) {sorted(unknown)}")
    actions = _actions(where, entry)
    role = _common(where, entry)
    seconds = None if actions else _seconds(f"{where}.seconds", entry.get("seconds"))
    poller = entry.get("poller", "sdk")
    if poller not in POLLERS:
        raise StepTableError(f"{where}.poller: {poller!r} is not one of {', '.join(POLLERS)}")
    if not entry.get("type"):
        raise StepTableError(f"{where}.type: required (a resource type or type prefix)")
    suffix = str(entry.get("suffix", ""))
    image = entry.get("nixosImage")
    if image is not None and not isinstance(image, bool):
        raise StepTableError(f"{where}.nixosImage: true, false or absent; got {image!r}")
    queue, queue_seconds = _queue(where, entry.get("queue"))
    pre_pull = entry.get("prePull")
    if pre_pull is not None and not isinstance(pre_pull, bool):
        raise StepTableError(f"{where}.prePull: true, false or absent; got {pre_pull!r}")
    cni = entry.get("cni")
    if cni is not None and cni not in CNIS:
        raise StepTableError(f"{where}.cni: {cni!r} is not one of {', '.join(CNIS)}")
    return Rule(
        overlap_min=_overlap(where, entry.get("overlapsActions")),
        actions=actions,
        poller=poller,
        cni=cni,
        limit=_limit(where, entry.get("limit")),
        pre_pull=pre_pull,
        queue=queue,
        queue_seconds=queue_seconds,
        nixos_image=image,
        step=str(entry["step"]),
        type=str(entry["type"]),
        suffix=suffix,
        role=role,
        seconds=seconds,
        source=" ".join(str(entry["source"]).split()),
    )


def _sourced(
    where: str, entry: Any, keys: tuple[set[str], ...], want: str, no_source: str
) -> Mapping[str, Any]:
    """A nested mapping of a rule with exactly one of the key sets `keys` and a non-empty
    source: `want` says what it should be, `no_source` what its source should say."""
    if not isinstance(entry, Mapping) or set(entry) not in keys:
        raise StepTableError(f"{where}: want {want}")
    if not str(entry["source"]).strip():
        raise StepTableError(f"{where}.source: {no_source}")
    return entry


def _overlap(where: str, entry: Any) -> tuple[float, float] | None:
    """`overlapsActions: {min: [low, high], source}` of a rule, or None."""
    if entry is None:
        return None
    where = f"{where}.overlapsActions"
    entry = _sourced(
        where, entry, ({"min", "source"},), "a mapping with min and source", "must not be empty"
    )
    return _seconds(f"{where}.min", entry["min"])


def _actions(where: str, entry: Mapping[str, Any]) -> tuple[tuple[float, float], ...] | None:
    """`actions: [[low, high], ...]` of a rule (in place of `seconds`), or None."""
    if "actions" not in entry:
        return None
    if "seconds" in entry:
        raise StepTableError(f"{where}: seconds or actions, not both")
    actions = entry["actions"]
    if not isinstance(actions, list) or not actions:
        raise StepTableError(f"{where}.actions: want a list of [low, high], got {actions!r}")
    return tuple(_seconds(f"{where}.actions[{i}]", a) for i, a in enumerate(actions))


def _common(where: str, entry: Mapping[str, Any]) -> str | None:
    """The keys every rule has: step, source and an optional role (returned)."""
    role = entry.get("role")
    if role is not None and role not in ROLES:
        raise StepTableError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    if not str(entry.get("source", "")).strip():
        raise StepTableError(f"{where}.source: say where the time comes from or why it is a guess")
    if not str(entry.get("step", "")).strip():
        raise StepTableError(f"{where}.step: required (a short name for the step)")
    return role


def _pull(index: int, entry: Any, section: str = "pulls") -> PullRule:
    """`pulls[i]` or `fetches[i]`: {step, role?, offset: {seconds, source}, seconds, source}."""
    where = f"{section}[{index}]"
    if not isinstance(entry, Mapping):
        raise StepTableError(f"{where}: a pull is a mapping")
    unknown = set(entry) - {"step", "role", "offset", "seconds", "source"}
    if unknown:
        raise StepTableError(f"{where}: unknown key(s) {sorted(unknown)}")
    role = _common(where, entry)
    seconds = _seconds(f"{where}.seconds", entry.get("seconds"))
    offset = _sourced(
        f"{where}.offset",
        entry.get("offset"),
        ({"seconds", "source"},),
        "a mapping with seconds (after its push, or for a fetch its build, starts) and source",
        "say when the pull starts and why",
    )
    return PullRule(
        step=str(entry["step"]),
        role=role,
        offset=_seconds(f"{where}.offset.seconds", offset["seconds"]),
        offset_source=" ".join(str(offset["source"]).split()),
        seconds=seconds,
        source=" ".join(str(entry["source"]).split()),
    )


def _seconds(where: str, seconds: Any) -> tuple[float, float]:
    if (
        not isinstance(seconds, list)
        or len(seconds) != 2
        or not all(isinstance(s, int | float) and s >= 0 for s in seconds)
        or seconds[0] > seconds[1]
    ):
        raise StepTableError(f"{where}: want [low, high], 0 <= low <= high; got {seconds}")
    return float(seconds[0]), float(seconds[1])


def _queue(where: str, entry: Any) -> tuple[str | None, tuple[float, float]]:
    """`queue: {name, seconds: [low, high], source}` of a rule, or no queue."""
    if entry is None:
        return None, (0.0, 0.0)
    if not isinstance(entry, Mapping) or set(entry) != {"name", "seconds", "source"}:
        raise StepTableError(f"{where}.queue: want a mapping with name, seconds and source")
    if not str(entry["name"]).strip() or not str(entry["source"]).strip():
        raise StepTableError(f"{where}.queue: name and source must not be empty")
    return str(entry["name"]), _seconds(f"{where}.queue.seconds", entry["seconds"])


@dataclass(frozen=True)
class Limit:
    """Where the project's own scripts fail a step: after fixed `seconds`, or after as many
    seconds as the resource's `environment` variable of that name says (a timeout the stack
    sets, e.g. JOIN_TIMEOUT from deploy.joinTimeoutSeconds)."""

    seconds: float | None = None
    environment: str | None = None

    def of(self, res: Mapping[str, Any]) -> float:
        if self.environment is None:
            assert self.seconds is not None  # _limit gives one of the two
            return self.seconds
        value = str((res.get("inputs", {}).get("environment") or {}).get(self.environment))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise StepTableError(
                f"{res['name']}: its limit is its environment's {self.environment}, which is "
                f"{value!r}, not a number of seconds"
            ) from None


def _limit(where: str, entry: Any) -> Limit | None:
    """`limit: {seconds | environment, source}` of a rule, or no limit."""
    if entry is None:
        return None
    entry = _sourced(
        f"{where}.limit",
        entry,
        ({"seconds", "source"}, {"environment", "source"}),
        "a mapping with source and either seconds or environment",
        "say which script fails the step and when",
    )
    if "environment" in entry:
        name = entry["environment"]
        if not isinstance(name, str) or not name.strip():
            raise StepTableError(f"{where}.limit.environment: want a variable name, got {name!r}")
        return Limit(environment=name)
    seconds = entry["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise StepTableError(f"{where}.limit.seconds: want a positive number, got {seconds!r}")
    return Limit(seconds=float(seconds))


def load_steps(path: Path = STEPS_FILE) -> StepTable:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    engine = data.get("engine", {})
    parallel, default = engine.get("parallel"), engine.get("cliDefault")
    for key, value in (("engine.parallel", parallel), ("engine.cliDefault", default)):
        if not isinstance(value, int) or value < 1:
            raise StepTableError(f"{key}: want a positive integer, got {value!r}")
    assert isinstance(parallel, int) and isinstance(default, int)
    rules = tuple(_rule(i, entry) for i, entry in enumerate(data.get("steps") or []))
    if not rules:
        raise StepTableError("steps: the table has no rules")
    pulls = data.get("pulls") or []
    if not isinstance(pulls, list):
        raise StepTableError(f"pulls: want a list of pulls, got {pulls!r}")
    fetches = data.get("fetches") or []
    if not isinstance(fetches, list):
        raise StepTableError(f"fetches: want a list of fetches, got {fetches!r}")
    fetch_rules = tuple(_pull(i, entry, "fetches") for i, entry in enumerate(fetches))
    if any(f.role is not None for f in fetch_rules):
        raise StepTableError("fetches[].role: a host fetches for itself and its containers")
    return StepTable(
        parallel=parallel,
        cli_default=default,
        rules=rules,
        pulls=tuple(_pull(i, entry) for i, entry in enumerate(pulls)),
        fetches=fetch_rules,
    )


def host_roles(plan: Mapping[str, Any]) -> dict[str, str]:
    """Host name -> bootstrap/server/agent, from the host JSON the deploy commands carry."""
    roles: dict[str, str] = {}
    for res in plan["resources"]:
        env = res.get("inputs", {}).get("environment")
        if not isinstance(env, Mapping) or "HOST_JSON" not in env or "HOST_NAME" not in env:
            continue
        if "IMAGE_KEY" in env:  # the NixOS image's builder, not a host of the cluster
            continue
        k3s = json.loads(env["HOST_JSON"]).get("k3s", {})
        roles[env["HOST_NAME"]] = "bootstrap" if k3s.get("clusterInit") else k3s.get("role", "")
    return roles


def resource_role(name: str, roles: Mapping[str, str]) -> str | None:
    """The role of the host a resource belongs to; `container` for a container's node gate."""
    owner = max((h for h in roles if name == h or name.startswith(f"{h}-")), key=len, default=None)
    if owner is None:
        return None
    rest = name[len(owner) :]
    if rest.endswith("-joined") and rest != "-joined":
        return "container"
    return roles[owner]


@dataclass(frozen=True)
class Timed:
    urn: str
    name: str
    step: str
    seconds: tuple[float, float]
    queue: str | None = None
    queue_seconds: tuple[float, float] = (0.0, 0.0)
    limit: float | None = None
    # Seconds its Hetzner actions run on Hetzner's side (Rule.action_seconds), low and high.
    action_seconds: tuple[float, float] | None = None
    # Rule.overlap_min: its work began when its dependency's actions ended.
    overlap_min: tuple[float, float] | None = None


def uses_nixos_image(plan: Mapping[str, Any]) -> bool:
    return any(res["type"] == IMAGE_COMPONENT for res in plan["resources"])


def _host_documents(plan: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Host name -> (URN of its push, its host JSON), from the push commands."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for res in plan["resources"]:
        env = res.get("inputs", {}).get("environment")
        if (
            isinstance(env, Mapping)
            and "HOST_JSON" in env
            and "IMAGE_KEY" not in env
            and res["name"] == f"{env.get('HOST_NAME')}{PUSH_SUFFIX}"
        ):
            out[env["HOST_NAME"]] = (res["urn"], json.loads(env["HOST_JSON"]))
    return out


@dataclass(frozen=True)
class PullNode:
    """A node that pulls the CNI's images while its k3s starts, its host's push and its host
    (the node itself, or the host of its nspawn container)."""

    node: str
    role: str
    push: str
    host: str


def pull_nodes(plan: Mapping[str, Any]) -> list[PullNode]:
    """Every node with a non-empty k3s.prePullImages, a host's or one of its nspawn
    containers' (nixos/modules/k3s.nix k3s-pre-pull.service: enabled only then), by name."""
    roles = host_roles(plan)
    out = []
    for host, (push, doc) in _host_documents(plan).items():
        if doc.get("k3s", {}).get("prePullImages"):
            out.append(PullNode(host, roles[host], push, host))
        for container in doc.get("containers", []):
            k3s = container.get("k3s", {})
            if k3s.get("prePullImages"):
                out.append(PullNode(k3s["nodeName"], "container", push, host))
    return sorted(out, key=lambda n: n.node)


def pre_pulls(plan: Mapping[str, Any]) -> bool:
    """Whether any node of the plan pulls the CNI's images while k3s starts."""
    return bool(pull_nodes(plan))


def plan_cni(plan: Mapping[str, Any]) -> str | None:
    """The CNI the plan's hosts run (host JSON k3s.cni), or None without host documents."""
    cnis = {doc.get("k3s", {}).get("cni") for _, doc in _host_documents(plan).values()}
    if len(cnis) > 1:
        raise ValueError(f"the plan's hosts name different CNIs: {sorted(map(str, cnis))}")
    return next(iter(cnis), None)


def timed_resources(
    plan: Mapping[str, Any], table: StepTable, polling: HcloudPolling | None = None
) -> dict[str, Timed]:
    """Every resource's time from its rule; `polling`: the stack's Hetzner action polling
    (None: the provider's defaults)."""
    polling = polling or HcloudPolling()
    roles = host_roles(plan)
    image = uses_nixos_image(plan)
    pre_pull = pre_pulls(plan)
    cni = plan_cni(plan)
    out: dict[str, Timed] = {}
    for res in plan["resources"]:
        role = resource_role(res["name"], roles)
        rule = next((r for r in table.rules if r.matches(res, role, image, pre_pull, cni)), None)
        if rule is None:
            raise StepTableError(
                f"no step in {STEPS_FILE.name} for {res['type']} {res['name']!r}"
                f" (role {role or 'none'}): add a rule"
            )
        out[res["urn"]] = Timed(
            res["urn"],
            res["name"],
            rule.step,
            rule.time(polling),
            rule.queue,
            rule.queue_seconds,
            None if rule.limit is None else rule.limit.of(res),
            rule.action_seconds(),
            rule.overlap_min,
        )
    return out


@dataclass(frozen=True)
class TimedPull:
    """A node's pull (or a host's fetch): from `offset` seconds after `anchor` (its push, its
    build step) starts, but not before `after` (its host's fetch) has ended; `seconds` long."""

    key: str
    name: str
    step: str
    anchor: str
    offset: tuple[float, float]
    seconds: tuple[float, float]
    after: str | None = None


def timed_pulls(plan: Mapping[str, Any], table: StepTable) -> dict[str, TimedPull]:
    """Every node's pull, by key (PULL_KEY + node name), from the first matching pull rule."""
    out: dict[str, TimedPull] = {}
    fetching = fetch_hosts(plan)
    for node in pull_nodes(plan):
        rule = next((r for r in table.pulls if r.role in (None, node.role)), None)
        if rule is None:
            raise StepTableError(
                f"no pull in {STEPS_FILE.name} for node {node.node!r} (role {node.role}),"
                " which pulls the CNI's images while its k3s starts: add one"
            )
        key = f"{PULL_KEY}{node.node}"
        after = f"{FETCH_KEY}{node.host}" if table.fetches and node.host in fetching else None
        out[key] = TimedPull(key, node.node, rule.step, node.push, rule.offset, rule.seconds, after)
    return out


def fetch_hosts(plan: Mapping[str, Any]) -> set[str]:
    """The hosts whose document lists images to download before k3s runs (k3s.fetchImages:
    its own and its containers' digest-pinned images; nixos/modules/k3s.nix
    k3s-cni-fetch.service, enabled only then)."""
    return {h for h, (_, doc) in _host_documents(plan).items() if doc["k3s"].get("fetchImages")}


def timed_fetches(plan: Mapping[str, Any], table: StepTable) -> dict[str, TimedPull]:
    """Every fetching host's download of the CNI's images (for itself and its containers),
    anchored at its build step, by key (FETCH_KEY + host name); empty without `fetches`."""
    if not table.fetches:
        return {}
    rule = table.fetches[0]
    builds = {res["name"]: res["urn"] for res in plan["resources"]}
    out: dict[str, TimedPull] = {}
    for host in sorted(fetch_hosts(plan)):
        build = builds.get(f"{host}{BUILD_SUFFIX}")
        if build is None:
            raise StepTableError(
                f"host {host!r} downloads images but the plan has no {host}{BUILD_SUFFIX}"
            )
        key = f"{FETCH_KEY}{host}"
        out[key] = TimedPull(key, host, rule.step, build, rule.offset, rule.seconds)
    return out


@dataclass(frozen=True)
class Slot:
    start: float
    end: float


def schedule(
    deps: Mapping[str, set[str]],
    durations: Mapping[str, float],
    parallel: int,
    queues: Mapping[str, tuple[str, float]] | None = None,
    anchored: Mapping[str, tuple[str, float]] | None = None,
    overlaps: Mapping[str, tuple[str, float, float]] | None = None,
) -> dict[str, Slot]:
    """Start and end of every resource with at most `parallel` running at once.

    A resource of zero duration takes no worker (nothing to wait for). A resource in a queue
    (`queues`: urn -> queue name, seconds) that starts while k others of its queue run takes
    k x seconds longer. An anchored activity (`anchored`: key -> anchor, offset) is no engine
    operation: it starts `offset` seconds after its anchor starts, or when its own `deps` have
    ended if that is later, lasts its duration and takes no worker; others may depend on it.
    A resource that overlaps (`overlaps`: urn -> (dependency, seconds, minimum)) began its work
    `seconds` after that dependency started (its actions' end on Hetzner's side, before the
    provider saw them): it ends its duration after that, but at least `minimum` after its own
    start. Ties are broken by URN, so the schedule is deterministic.
    """
    queues = queues or {}
    overlaps = overlaps or {}
    anchored = anchored or {}
    waiting = {urn: set(d) for urn, d in deps.items()}
    dependents: dict[str, list[str]] = {}
    for urn, ds in deps.items():
        for dep in ds:
            dependents.setdefault(dep, []).append(urn)
    followers: dict[str, list[str]] = {}
    for key, (anchor, _) in anchored.items():
        followers.setdefault(anchor, []).append(key)
    ready: list[tuple[float, str]] = [
        (0.0, urn) for urn, ds in waiting.items() if not ds and urn not in anchored
    ]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    # Anchored activities, started: (end, key); they hold no worker.
    timers: list[tuple[float, str]] = []
    slots: dict[str, Slot] = {}
    # When each anchored activity's anchor started.
    anchor_start: dict[str, float] = {}
    now = 0.0

    def begin_anchored(key: str, at: float) -> None:
        """Start `key` once its anchor has started and its deps have ended (`at`: now)."""
        if key in slots or waiting[key] or key not in anchor_start:
            return
        begin = max(anchor_start[key] + anchored[key][1], at)
        slots[key] = Slot(begin, begin + durations[key])
        heapq.heappush(timers, (slots[key].end, key))

    def finish(urn: str, at: float) -> None:
        for dependent in dependents.get(urn, []):
            waiting[dependent].discard(urn)
            if dependent in anchored:
                begin_anchored(dependent, at)
            elif not waiting[dependent]:
                heapq.heappush(ready, (at, dependent))

    def start(urn: str, end: float) -> None:
        slots[urn] = Slot(now, end)
        for key in sorted(followers.get(urn, [])):
            anchor_start[key] = now
            begin_anchored(key, now)

    while ready or running or timers:
        deferred: list[tuple[float, str]] = []
        while ready:
            item = heapq.heappop(ready)
            urn = item[1]
            if durations[urn] == 0:
                start(urn, now)
                finish(urn, now)
            elif len(running) < parallel:
                length = durations[urn]
                if urn in overlaps:
                    dep, seconds, minimum = overlaps[urn]
                    length = max(minimum, slots[dep].start + seconds + length - now)
                if urn in queues:
                    name, extra = queues[urn]
                    ahead = sum(1 for _, other in running if queues.get(other, ("",))[0] == name)
                    length += ahead * extra
                start(urn, now + length)
                heapq.heappush(running, (now + length, urn))
            else:
                deferred.append(item)
        for item in deferred:
            heapq.heappush(ready, item)
        if not running and not timers:
            continue
        now = min(heap[0][0] for heap in (running, timers) if heap)
        for heap in (running, timers):
            while heap and heap[0][0] == now:
                finish(heapq.heappop(heap)[1], now)
    if len(slots) != len(deps):
        stuck = sorted(set(deps) - set(slots))[:5]
        raise ValueError(f"dependency cycle or unknown dependency around {stuck}")
    return slots


@dataclass(frozen=True)
class Step:
    """What a critical path prints of a resource or a pull."""

    name: str
    step: str


def _critical_path(
    target: str,
    deps: Mapping[str, set[str]],
    slots: Mapping[str, Slot],
    steps: Mapping[str, Step],
    anchors: Mapping[str, str] | None = None,
    began: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Back from `target`: at each step the dependency that finished last (what it waited for);
    from a pull (`anchors`: key -> the push it starts in) on to that push. `began`: when the
    work of a step that overlaps its dependency's Hetzner actions began."""
    anchors = anchors or {}
    began = began or {}
    path = []
    urn: str | None = target
    while urn is not None:
        slot = slots[urn]
        if slot.end > slot.start or urn == target:
            path.append(
                {
                    "resource": steps[urn].name,
                    "step": steps[urn].step,
                    "startMinutes": round(slot.start / 60, 2),
                    "endMinutes": round(slot.end / 60, 2),
                }
            )
        if urn in began and began[urn] < slot.start:
            path[-1]["workBeganMinutes"] = round(began[urn] / 60, 2)
        if urn in anchors:
            anchor = anchors[urn]
            waited = [d for d in deps[urn] if slots[d].end == slot.start]
            if waited:
                # It began when what it waits for (a pull: its host's fetch) ended, later than
                # its anchor alone would have let it.
                path[-1]["afterEndOf"] = steps[waited[0]].name
                urn = waited[0]
                continue
            # It began when its anchor (a push, a build) had run `offset`.
            path[-1]["afterStartOf"] = steps[anchor].name
            path[-1]["offsetMinutes"] = round((slot.start - slots[anchor].start) / 60, 2)
            urn = anchor
            continue
        before = [d for d in deps[urn] if slots[d].end > 0]
        urn = max(before, key=lambda d: (slots[d].end, d), default=None)
        if urn is not None and slots[urn].end < slot.start:
            # Started later than its last dependency finished: it waited for a free worker.
            path[-1]["waitedForWorkerMinutes"] = round((slot.start - slots[urn].end) / 60, 2)
    return list(reversed(path))


def model(
    plan: Mapping[str, Any],
    table: StepTable,
    parallel: int | None = None,
    image_ready: bool = False,
    polling: HcloudPolling | None = None,
) -> dict[str, Any]:
    """Minutes to the kubeconfig and to all nodes Ready, low and high, with critical paths.

    image_ready: the Hetzner NixOS image exists already (a scale-up, a replacement, a deploy
    after the first): its step takes no time. polling: the stack's Hetzner action polling
    (None: the provider's defaults).
    """
    parallel = table.parallel if parallel is None else parallel
    deploy = graph.DeployGraph(plan)
    targets = {
        "kubeconfig": deploy.urn_of("-kubeconfig"),
        "nodesReady": deploy.urn_of("-nodes-ready"),
    }
    if not all(targets.values()):
        raise ValueError("plan has no -kubeconfig or -nodes-ready command")
    result: dict[str, Any] = {"parallel": parallel}
    for index, bound in enumerate(BOUNDS):
        run = schedule_plan(plan, table, index, parallel, image_ready, deploy, polling)
        slots = run.slots
        # The pulls run on the nodes, not in the engine's workers.
        peak = _peak_concurrency({urn: slots[urn] for urn in run.timed})
        entry: dict[str, Any] = {
            "peakRunning": peak,
            "overLimit": over_limit(slots, run.timed),
            "pulls": len(run.pulls),
            "lastPullEndMinutes": round(max((slots[k].end for k in run.pulls), default=0) / 60, 2),
            "fetches": len(run.fetches),
            "lastFetchEndMinutes": round(
                max((slots[k].end for k in run.fetches), default=0) / 60, 2
            ),
        }
        for key, urns in targets.items():
            last = max(urns, key=lambda u: (slots[u].end, u))
            entry[f"{key}Minutes"] = round(slots[last].end / 60, 2)
            entry[f"{key}Path"] = _critical_path(
                last, run.deps, slots, run.steps, run.anchors, run.began
            )
        result[bound] = entry
    return result


@dataclass(frozen=True)
class PlanSchedule:
    """One schedule of a plan: every resource's and every pull's slot, with what they wait for."""

    deps: dict[str, set[str]]
    slots: dict[str, Slot]
    timed: dict[str, Timed]
    steps: dict[str, Step]
    # Pull or fetch key -> the push or build it starts in.
    anchors: dict[str, str]
    pulls: dict[str, TimedPull]
    fetches: dict[str, TimedPull]
    # When the work of each step that overlaps its dependency's Hetzner actions began.
    began: dict[str, float]


def schedule_plan(
    plan: Mapping[str, Any],
    table: StepTable,
    index: int,
    parallel: int | None = None,
    image_ready: bool = False,
    deploy: graph.DeployGraph | None = None,
    polling: HcloudPolling | None = None,
) -> PlanSchedule:
    """The plan scheduled with every step's low (index 0) or high (1) time: the resources as
    the engine runs them, each node's pull beside its push, and the nodes-Ready gate after its
    dependencies and every pull."""
    parallel = table.parallel if parallel is None else parallel
    deploy = deploy or graph.DeployGraph(plan)
    timed = timed_resources(plan, table, polling)
    pulls = timed_pulls(plan, table)
    fetches = timed_fetches(plan, table)
    deps = {urn: deploy.dependencies(urn) for urn in deploy.resources}
    for urn in deploy.urn_of("-nodes-ready"):
        deps[urn] = deps[urn] | set(pulls)
    deps.update({key: set() if p.after is None else {p.after} for key, p in pulls.items()})
    deps.update({key: set() for key in fetches})
    pulls_and_fetches = {**pulls, **fetches}
    durations = {
        urn: 0.0 if image_ready and t.step == IMAGE_STEP else t.seconds[index]
        for urn, t in timed.items()
    }
    durations.update({key: p.seconds[index] for key, p in pulls_and_fetches.items()})
    queues = {urn: (t.queue, t.queue_seconds[index]) for urn, t in timed.items() if t.queue}
    anchored = {key: (p.anchor, p.offset[index]) for key, p in pulls_and_fetches.items()}
    overlaps: dict[str, tuple[str, float, float]] = {}
    for urn, t in timed.items():
        if t.overlap_min is not None:
            dep, seconds = _overlapped(deploy, timed, urn)
            overlaps[urn] = (dep, seconds[index], t.overlap_min[index])
    slots = schedule(deps, durations, parallel, queues, anchored, overlaps)
    steps = {urn: Step(t.name, t.step) for urn, t in timed.items()}
    steps.update({key: Step(p.name, p.step) for key, p in pulls_and_fetches.items()})
    return PlanSchedule(
        deps=deps,
        slots=slots,
        timed=timed,
        steps=steps,
        anchors={key: p.anchor for key, p in pulls_and_fetches.items()},
        pulls=pulls,
        fetches=fetches,
        began={urn: slots[dep].start + seconds for urn, (dep, seconds, _) in overlaps.items()},
    )


def _overlapped(
    deploy: graph.DeployGraph, timed: Mapping[str, Timed], urn: str
) -> tuple[str, tuple[float, float]]:
    """The one resource timed by Hetzner actions that `urn` (a rule with overlapsActions) depends
    on directly, and how long its actions run on Hetzner's side."""
    found: list[tuple[str, tuple[float, float]]] = []
    for dep in sorted(deploy.resources[urn].get("dependsOn", [])):
        seconds = timed[dep].action_seconds if dep in timed else None
        if seconds is not None:
            found.append((dep, seconds))
    if len(found) != 1:
        raise StepTableError(
            f"{timed[urn].name} ({timed[urn].step}) overlaps the Hetzner actions of what it"
            f" waits for, so it must wait for exactly one resource timed by actions;"
            f" it waits for {len(found)}"
        )
    return found[0]


def over_limit(slots: Mapping[str, Slot], timed: Mapping[str, Timed]) -> list[dict[str, Any]]:
    """Resources that run longer than their rule's limit (queue wait included), by name."""
    out = []
    for urn, t in timed.items():
        length = slots[urn].end - slots[urn].start
        if t.limit is not None and length > t.limit:
            out.append(
                {"resource": t.name, "step": t.step, "seconds": length, "limitSeconds": t.limit}
            )
    return sorted(out, key=lambda o: o["resource"])


def _peak_concurrency(slots: Mapping[str, Slot]) -> int:
    events = sorted(
        [(s.start, 1) for s in slots.values() if s.end > s.start]
        + [(s.end, -1) for s in slots.values() if s.end > s.start]
    )
    peak = running = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak
