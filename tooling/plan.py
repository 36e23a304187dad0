"""The offline plan: run the real program under mocks and write what it would create.

`python -m tooling plan --stack dev` needs no credentials, no Pulumi CLI and no cloud. It
reads Pulumi.<stack>.yaml, runs __main__.py in-process against `mocks.FakeProviders`, and writes
DIR/plan.json (every resource with its inputs, parent and dependencies, secrets redacted, and
the monthly cost at catalog.py's list prices),
DIR/hosts/<host>.json (each host's data exactly as pushed) and a tree on stdout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from components.config import ConfigError, Problem
from components.hosts import jsontext
from tooling import cost, mocks

PROJECT = "nixos-k3s"
PROJECT_DIR = Path(__file__).resolve().parent.parent
FINGERPRINT_KEY = b"nixos-k3s offline plan"
# Secrets the offline plan stands in for when the stack file does not have them: the hcloud
# token may come from HCLOUD_TOKEN at deploy time. The tailscale key has no such fallback, so a
# stack that needs it and does not set it fails the plan as it would fail `pulumi up`.
PLACEHOLDER_SECRETS = ("hcloud:token",)


class StackFileError(ConfigError):
    """A stack file that cannot be read as a Pulumi stack config."""


@dataclass(frozen=True)
class StackFile:
    stack: str
    config: dict[str, Any]
    secret_keys: frozenset[str]


def placeholder_secret(key: str, ciphertext: str | None) -> str:
    """Stand-in for a secret the plan cannot decrypt: changes when the ciphertext changes."""
    tag = hashlib.sha256((ciphertext or "unset").encode()).hexdigest()[:12]
    return f"offline-placeholder-{key.replace(':', '-')}-{tag}"


class _StackYamlLoader(yaml.SafeLoader):
    """YAML as the Pulumi CLI reads it: go-yaml keeps a date-like scalar (2026-12-03) a string."""


_StackYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_stack_file(path: Path, stack: str) -> StackFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackFileError(
            [Problem("", f"cannot read {path}: {exc.strerror}")], str(path)
        ) from None
    try:
        data = yaml.load(text, Loader=_StackYamlLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StackFileError([Problem("", f"invalid YAML{where}: {reason}")], str(path)) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("config", {}), Mapping):
        raise StackFileError(
            [Problem("config", "a stack file is a mapping with a 'config:' mapping inside")],
            str(path),
        )
    config: dict[str, Any] = {}
    secrets: set[str] = set()
    for key, value in (data.get("config") or {}).items():
        key = str(key)
        if ":" not in key:
            key = f"{PROJECT}:{key}"
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            config[key] = placeholder_secret(key, str(value["secure"]))
            secrets.add(key)
        else:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):  # so would the Pulumi CLI
                raise StackFileError(
                    [
                        Problem(
                            key,
                            "holds a value JSON cannot carry (NaN, infinity, !!binary or !!set)",
                        )
                    ],
                    str(path),
                ) from None
            config[key] = value
    for key in PLACEHOLDER_SECRETS:
        if key not in config:
            config[key] = placeholder_secret(key, None)
            secrets.add(key)
    return StackFile(stack=stack, config=config, secret_keys=frozenset(secrets))


def _runtime_config(stack_file: StackFile) -> dict[str, str]:
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in stack_file.config.items()
    }


@dataclass
class PlanResult:
    stack: str
    registrations: list[mocks.Registration]
    outputs: dict[str, Any]
    output_secrets: dict[str, Any]
    hosts: dict[str, tuple[str, str]]  # name -> (host json, content hash)


def _resolve_outputs(root: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    values: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for name, value in sorted(root.outputs.items()):
        output = pulumi.Output.from_input(value)
        resolved = _sync_await(output.future())
        if _sync_await(output.is_secret()):
            secrets[name] = resolved
            values[name] = mocks.REDACTED
        else:
            values[name] = mocks.redact(json.loads(json.dumps(resolved, default=str)), name, {})
    return values, secrets


def run_program(
    stack_file: StackFile,
    program: Path = PROJECT_DIR / "__main__.py",
    *,
    providers: mocks.FakeProviders | None = None,
    parallel: int | None = None,
) -> PlanResult:
    """Run the Pulumi program under mocks and return everything it registered.

    `providers` replaces the fake provider outputs (tests: slow providers); `parallel` sizes
    the SDK's thread pool as `pulumi up --parallel P` does (mocks.monitor_threads).
    """
    settings.ROOT.set(None)  # a fresh root stack for every run in this process
    providers = providers or mocks.FakeProviders()
    monitor = mocks.RecordingMonitor(providers)
    pulumi.runtime.set_all_config(_runtime_config(stack_file), list(stack_file.secret_keys))
    pulumi.runtime.set_mocks(
        providers, project=PROJECT, stack=stack_file.stack, preview=False, monitor=monitor
    )
    sys.path.insert(0, str(program.parent))
    try:
        with mocks.frozen_collector(), mocks.monitor_threads(parallel):
            # As `pulumi up` runs it, as __main__. Executed directly rather than through runpy: the
            # SDK records the call stack of every resource, and each frame costs per resource.
            code = compile(program.read_bytes(), str(program), "exec")
            exec(
                code,
                {"__name__": "__main__", "__file__": str(program), "__builtins__": __builtins__},
            )
            _sync_await(wait_for_rpcs())
            root = settings.get_root_resource()
            outputs, output_secrets = _resolve_outputs(root)
    finally:
        sys.path.remove(str(program.parent))
    registrations = sorted(monitor.registrations.values(), key=lambda r: r.urn)
    return PlanResult(
        stack=stack_file.stack,
        registrations=registrations,
        outputs=outputs,
        output_secrets=output_secrets,
        hosts=_pushed_hosts(registrations),
    )


def _pushed_hosts(registrations: list[mocks.Registration]) -> dict[str, tuple[str, str]]:
    """Host data as the push commands carry it: HOST_JSON and the content hash trigger."""
    hosts = {}
    for reg in registrations:
        if reg.type != "command:local:Command" or not reg.name.endswith("-push"):
            continue
        env = reg.inputs.get("environment", {})
        triggers = reg.inputs.get("triggers", [])
        hosts[env["HOST_NAME"]] = (env["HOST_JSON"], triggers[0] if triggers else "")
    return dict(sorted(hosts.items()))


def fingerprint(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, default=str).encode()
    return hmac.new(FINGERPRINT_KEY, data, hashlib.sha256).hexdigest()[:12]


def plan_document(result: PlanResult) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "stack": result.stack,
        "resources": [
            {
                "urn": reg.urn,
                "type": reg.type,
                "name": reg.name,
                "custom": reg.custom,
                "parent": reg.parent,
                "dependsOn": reg.depends_on,
                "inputs": reg.inputs,
                "provider": reg.provider,
                **({"ignoreChanges": list(reg.ignore_changes)} if reg.ignore_changes else {}),
                **({"aliases": list(reg.aliases)} if reg.aliases else {}),
            }
            for reg in result.registrations
        ],
        "outputs": result.outputs,
        "secretFingerprints": {
            reg.urn: {path: fingerprint(value) for path, value in sorted(reg.secret_paths.items())}
            for reg in result.registrations
            if reg.secret_paths
        },
        "hosts": {
            name: {"contentHash": content_hash, "file": f"hosts/{name}.json"}
            for name, (_, content_hash) in result.hosts.items()
        },
        "cost": cost.cost_document(plan_cost(result)),
    }


def plan_cost(result: PlanResult) -> cost.Cost:
    """Monthly cost of what the plan creates (catalog.py's dated price table)."""
    return cost.plan_cost(
        cost.PricedResource(reg.urn, reg.name, reg.type, reg.inputs)
        for reg in result.registrations
        if reg.custom
    )


def write_plan(result: PlanResult, out: Path) -> None:
    """Write plan.json and hosts/*.json; the directory holds only this plan afterwards."""
    if out.exists():
        shutil.rmtree(out)
    (out / "hosts").mkdir(parents=True)
    (out / "plan.json").write_text(jsontext.pretty(plan_document(result)), encoding="utf-8")
    for name, (host_json, _) in result.hosts.items():
        (out / "hosts" / f"{name}.json").write_text(host_json, encoding="utf-8")


def render_tree(result: PlanResult) -> str:
    """A `pulumi preview`-like tree of what would be created."""
    children: dict[str | None, list[mocks.Registration]] = {}
    urns = {reg.urn for reg in result.registrations}
    for reg in result.registrations:
        parent = reg.parent if reg.parent in urns else None
        children.setdefault(parent, []).append(reg)
    width = max((len(r.type) for r in result.registrations), default=10) + 8
    lines = [f"Previewing update ({result.stack}), offline with mocked providers:", ""]
    lines.append(f"     {'Type':<{width}} Name")
    lines.append(f" +   {'pulumi:pulumi:Stack':<{width}} {PROJECT}-{result.stack}")

    def walk(parent: str | None, prefix: str) -> None:
        items = children.get(parent, [])
        for i, reg in enumerate(items):
            last = i == len(items) - 1
            branch = "└─ " if last else "├─ "
            label = f"{prefix}{branch}{reg.type}"
            lines.append(f" +   {label:<{width}} {reg.name}")
            walk(reg.urn, prefix + ("   " if last else "│  "))

    walk(None, "")
    lines += ["", "Outputs:"]
    for name, value in result.outputs.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines.append(f"    {name}: {shown}")
    if result.hosts:
        lines += ["", "Hosts (rendered NixOS input):"]
        for name, (_, content_hash) in result.hosts.items():
            lines.append(f"    {name:<32} {content_hash[:16]}")
    lines += ["", "Resources:", f"    + {len(result.registrations) + 1} to create"]
    monthly = plan_cost(result)
    if monthly.items:
        lines += ["", f"Monthly cost: {cost.money(monthly.total)} ({cost.describe_basis(monthly)})"]
    return "\n".join(lines) + "\n"
