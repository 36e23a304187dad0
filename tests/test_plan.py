"""The offline plan command: files written, determinism, redaction, exit codes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR, Plan
from tooling import plan as plan_module
from tooling.mocks import Registration, engine_urn

PLANTED_TOKEN = "planted-hcloud-token-3f9c1e7a"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tooling", *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def prod_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prod")
    done = run_cli("plan", "--stack", "prod", "--out", str(out))
    assert done.returncode == 0, done.stderr
    (out / "stdout.txt").write_text(done.stdout)
    return out


def test_plan_writes_plan_json_and_hosts(prod_dir: Path) -> None:
    plan = json.loads((prod_dir / "plan.json").read_text())
    assert plan["project"] == "nixos-k3s" and plan["stack"] == "prod"
    hosts = sorted(p.stem for p in (prod_dir / "hosts").glob("*.json"))
    assert hosts == [
        "prod-control-1",
        "prod-control-2",
        "prod-control-3",
        "prod-workers-1",
        "prod-workers-2",
    ]
    assert sorted(plan["hosts"]) == hosts
    for resource in plan["resources"]:
        # ignoreChanges only where the program sets it (the servers: image, userData); aliases
        # only on what moved into the stage components (and their children).
        assert set(resource) - {"ignoreChanges", "aliases"} == {
            "urn",
            "type",
            "name",
            "custom",
            "parent",
            "dependsOn",
            "inputs",
            "provider",
        }
        assert resource["urn"].startswith("urn:pulumi:prod::nixos-k3s::")
    assert plan["resources"] == sorted(plan["resources"], key=lambda r: r["urn"])


def test_plan_prints_a_preview_tree(prod_dir: Path) -> None:
    tree = (prod_dir / "stdout.txt").read_text()
    assert "pulumi:pulumi:Stack" in tree and "nixos-k3s:index:Cluster" in tree
    assert "hcloud:index/server:Server" in tree and "prod-control-1" in tree
    assert "kubeconfig: [secret]" in tree


def test_host_files_are_what_the_push_carries(prod_dir: Path) -> None:
    plan = json.loads((prod_dir / "plan.json").read_text())
    for resource in plan["resources"]:
        if resource["name"].endswith("-push"):
            env = resource["inputs"]["environment"]
            text = (prod_dir / "hosts" / f"{env['HOST_NAME']}.json").read_text()
            assert text == env["HOST_JSON"]
            assert resource["inputs"]["triggers"] == [
                plan["hosts"][env["HOST_NAME"]]["contentHash"]
            ]


def test_outputs_and_secret_inputs_are_redacted(prod_dir: Path) -> None:
    plan = json.loads((prod_dir / "plan.json").read_text())
    assert plan["outputs"]["kubeconfig"] == "[secret]"
    assert plan["outputs"]["apiEndpoint"] == "https://k8s.example.com:6443"
    by_name = {r["name"]: r for r in plan["resources"]}
    assert by_name["prod-control-1-push"]["inputs"]["stdin"] == "[secret]"
    assert by_name["prod-control-1-secrets"]["inputs"]["stdin"] == "[secret]"
    text = (prod_dir / "plan.json").read_text()
    assert "PRIVATE KEY" not in text and "mock-openssh-private-key" not in text
    fingerprints = plan["secretFingerprints"]
    assert all(len(fp) == 12 for fps in fingerprints.values() for fp in fps.values())


def test_planted_secret_never_written(tmp_path: Path) -> None:
    stack = (PROJECT_DIR / "Pulumi.prod.yaml").read_text()
    stack += f"  hcloud:token:\n    secure: {PLANTED_TOKEN}\n"
    path = tmp_path / "Pulumi.planted.yaml"
    path.write_text(stack)
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert PLANTED_TOKEN not in done.stdout + done.stderr
    for file in (tmp_path / "out").rglob("*"):
        if file.is_file():
            assert PLANTED_TOKEN not in file.read_text()


def test_plain_text_token_refused_without_echo(tmp_path: Path) -> None:
    stack = (PROJECT_DIR / "Pulumi.prod.yaml").read_text() + f"  hcloud:token: {PLANTED_TOKEN}\n"
    path = tmp_path / "Pulumi.plain.yaml"
    path.write_text(stack)
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "hcloud:token: is stored in plain text" in done.stderr
    assert PLANTED_TOKEN not in done.stdout + done.stderr


def test_same_input_same_bytes(tmp_path: Path, prod_dir: Path) -> None:
    done = run_cli(
        "plan",
        "--stack",
        "prod",
        "--out",
        str(tmp_path),
        "--quiet",
        env={"PYTHONHASHSEED": "12345"},
    )
    assert done.returncode == 0, done.stderr
    for file in sorted((prod_dir).rglob("*.json")):
        other = tmp_path / file.relative_to(prod_dir)
        assert other.read_bytes() == file.read_bytes(), file.name


def test_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(
        "config:\n  nixos-k3s:cluster:\n    name: bad\n    provider: aws\n"
        "    nodePools: [{name: a, role: server, count: 1}]\n"
    )
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "provider: Input should be 'hetzner' or 'colima'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_bad_yaml_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text("config:\n  nixos-k3s:cluster: {name: [\n")
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "invalid YAML at line" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_stack_file_exits_2(tmp_path: Path) -> None:
    done = run_cli("plan", "--config-file", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_bad_arguments_exit_2() -> None:
    done = run_cli("plan", "--stak", "dev")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


def test_hetzner_stack_without_token_is_refused_by_the_program() -> None:
    stack_file = plan_module.read_stack_file(PROJECT_DIR / "Pulumi.prod.yaml", "prod")
    config = {k: v for k, v in stack_file.config.items() if k != "hcloud:token"}
    without = plan_module.StackFile("prod", config, stack_file.secret_keys - {"hcloud:token"})
    env = {k: v for k, v in os.environ.items() if k != "HCLOUD_TOKEN"}
    script = (
        "import pickle, sys\n"
        "from tooling import plan\n"
        "from components.config import ConfigError\n"
        "try:\n"
        "    plan.run_program(pickle.loads(sys.stdin.buffer.read()))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(without),
        cwd=PROJECT_DIR,
        capture_output=True,
        env=env,
        check=False,
    )
    assert b"hcloud:token: the Hetzner Cloud API token is not set" in done.stdout, done.stderr


def test_tailscale_without_its_key_fails_the_plan(tmp_path: Path) -> None:
    stack = (PROJECT_DIR / "Pulumi.prod.yaml").read_text() + "    tailscale:\n      enabled: true\n"
    path = tmp_path / "Pulumi.ts.yaml"
    path.write_text(stack)
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "nixos-k3s:tailscaleAuthKey: tailscale is enabled but the auth key is not set" in (
        done.stderr
    )


def test_tailscale_key_in_plain_text_is_refused(tmp_path: Path) -> None:
    stack = (PROJECT_DIR / "Pulumi.prod.yaml").read_text()
    stack += "    tailscale:\n      enabled: true\n  nixos-k3s:tailscaleAuthKey: tskey-auth-plain\n"
    path = tmp_path / "Pulumi.ts.yaml"
    path.write_text(stack)
    done = run_cli("plan", "--config-file", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "is stored in plain text" in done.stderr and "tskey-auth-plain" not in done.stderr


def test_pulumi_yaml_declares_only_what_pulumi_accepts() -> None:
    import yaml

    project = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
    assert project["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": ".venv"},
    }
    for key, declaration in project["config"].items():
        # Provider keys may only carry a fixed value; own keys a simple type (Pulumi's schema).
        assert ":" not in key or key.startswith("nixos-k3s:"), key
        assert declaration["type"] in ("string", "integer", "boolean", "array"), key
        assert "default" in declaration, f"{key} would be required in every stack"


LOOPS_AFTER_PLAN = """
import asyncio, gc, sys
from tooling import plan
result = plan.run_program(plan.read_stack_file(plan.PROJECT_DIR / "Pulumi.dev.yaml", "dev"))
main = asyncio.get_event_loop()
open_loops = [
    o for o in gc.get_objects()
    if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed() and o is not main
]
print(len(result.registrations), len(open_loops), gc.get_freeze_count())
"""


def test_plan_leaves_no_event_loop_open_and_nothing_frozen() -> None:
    """Loops left to interpreter shutdown print 'Exception ignored in BaseEventLoop.__del__'
    now and then; the monitor's threads must close theirs (mocks.monitor_threads). The
    plan runner freezes the collector's view of its long-lived objects while the program runs
    (mocks.frozen_collector); after the plan, everything is collectable again."""
    proc = subprocess.run(
        [sys.executable, "-c", LOOPS_AFTER_PLAN],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    registered, open_loops, frozen = map(int, proc.stdout.split())
    assert registered > 10
    assert open_loops == 0
    assert frozen == 0
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


# -- URNs: the engine's, so they can be copied into `pulumi up --replace/--target` ---------------


def engine_type_path(plan: Plan, registration: Registration) -> str:
    """The types of the resource and all its ancestors below the root stack, outermost first."""
    types = [registration.type]
    parent = registration.parent
    while parent in plan.by_urn:
        ancestor = plan.by_urn[parent]
        types.insert(0, ancestor.type)
        parent = ancestor.parent
    # the chain ends at the root stack, which the engine leaves out of its children's URNs
    assert parent == f"urn:pulumi:{plan.result.stack}::nixos-k3s::pulumi:pulumi:Stack::" + (
        f"nixos-k3s-{plan.result.stack}"
    )
    return "$".join(types)


def test_a_resource_three_levels_deep_has_the_engines_urn(dev_plan: Plan) -> None:
    """pulumi/pulumi Deployment.generateURN: the parent's whole qualified type, then `$`."""
    [vm] = [r for r in dev_plan.of_type("command:local:Command") if r.name == "dev-server-1-vm"]
    assert vm.parent is not None
    machine = dev_plan.by_urn[vm.parent]
    assert machine.parent is not None
    cluster = dev_plan.by_urn[machine.parent]

    assert vm.urn == (
        "urn:pulumi:dev::nixos-k3s::nixos-k3s:index:Cluster$nixos-k3s:colima:Machine"
        "$command:local:Command::dev-server-1-vm"
    )
    assert machine.urn == (
        "urn:pulumi:dev::nixos-k3s::nixos-k3s:index:Cluster$nixos-k3s:colima:Machine::dev-server-1"
    )
    # a child of the root stack: the stack's type is not part of the URN
    assert cluster.urn == "urn:pulumi:dev::nixos-k3s::nixos-k3s:index:Cluster::dev"
    assert cluster.parent == "urn:pulumi:dev::nixos-k3s::pulumi:pulumi:Stack::nixos-k3s-dev"


@pytest.mark.parametrize("fixture", ["dev_plan", "prod_plan"])
def test_every_urn_joins_the_types_of_all_ancestors(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    plan: Plan = request.getfixturevalue(fixture)
    stack = plan.result.stack
    depths = set()
    for registration in plan.result.registrations:
        type_path = engine_type_path(plan, registration)
        depths.add(type_path.count("$") + 1)
        assert (
            registration.urn == f"urn:pulumi:{stack}::nixos-k3s::{type_path}::{registration.name}"
        )
    assert {1, 2, 3} <= depths


def test_explicit_provider_urns_and_references_are_the_engines(dev_plan: Plan) -> None:
    [provider] = dev_plan.of_type("pulumi:providers:kubernetes")
    [release] = dev_plan.of_type("kubernetes:helm.sh/v3:Release")

    assert provider.urn == (
        "urn:pulumi:dev::nixos-k3s::nixos-k3s:index:Cluster$pulumi:providers:kubernetes::dev-k8s"
    )
    assert release.provider == provider.urn


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        ("", "urn:pulumi:s::p::t:m:T::n"),
        ("urn:pulumi:s::p::pulumi:pulumi:Stack::p-s", "urn:pulumi:s::p::t:m:T::n"),
        ("urn:pulumi:s::p::a:m:A::x", "urn:pulumi:s::p::a:m:A$t:m:T::n"),
        ("urn:pulumi:s::p::a:m:A$b:m:B::x::y", "urn:pulumi:s::p::a:m:A$b:m:B$t:m:T::n"),
    ],
)
def test_engine_urn(parent: str, expected: str) -> None:
    assert engine_urn("s", "p", parent, "t:m:T", "n") == expected


def test_plan_says_which_plan_it_replaces(tmp_path: Path) -> None:
    """A plan from another stack file into the same directory names what it replaces."""
    other = tmp_path / "elsewhere" / "Pulumi.dev.yaml"
    other.parent.mkdir()
    other.write_text((PROJECT_DIR / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    out = tmp_path / "out"

    def plan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tooling", "plan", "--quiet", "--out", str(out), *args],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=False,
        )

    first = plan("--stack", "dev")
    assert first.returncode == 0, first.stderr
    assert (out / "source").read_text() == "Pulumi.dev.yaml\n"
    assert "replacing" not in first.stderr
    second = plan("--config-file", str(other))
    assert second.returncode == 0, second.stderr
    assert f"note: replacing {out}, the plan of Pulumi.dev.yaml" in second.stderr
    assert (out / "source").read_text() == f"{other}\n"
    again = plan("--config-file", str(other))
    assert "replacing" not in again.stderr


def test_moved_resources_keep_their_old_urns_as_aliases(prod_dir: Path) -> None:
    """The hosts and gates moved under the stage components (bringup.py) keep the URN they had
    directly under the Cluster, and their children inherit it, as the engine resolves them."""
    plan = json.loads((prod_dir / "plan.json").read_text())
    by_name = {r["name"]: r for r in plan["resources"]}
    cluster = "urn:pulumi:prod::nixos-k3s::nixos-k3s:index:Cluster"
    assert by_name["prod-api-ready"]["aliases"] == [
        f"{cluster}$command:remote:Command::prod-api-ready"
    ]
    assert by_name["prod-control-1-push"]["aliases"] == [
        f"{cluster}$nixos-k3s:index:NixosHost$command:local:Command::prod-control-1-push"
    ]
    host = next(r for r in plan["resources"] if r["type"] == "nixos-k3s:index:NixosHost")
    assert host["aliases"] == [f"{cluster}$nixos-k3s:index:NixosHost::{host['name']}"]
    assert "aliases" not in by_name["prod-k3s"] and "aliases" not in by_name["prod-hosts"]
    server = next(r for r in plan["resources"] if r["type"] == "hcloud:index/server:Server")
    assert "aliases" not in server, "the machines did not move"


def test_every_resource_under_a_stage_keeps_the_urn_it_had_without_the_stage(
    prod_dir: Path,
) -> None:
    """Every gate of the k3s stage and every host of the hosts stage (and, inherited, their
    children) is aliased to its URN with the stage component taken out of its type chain."""
    plan = json.loads((prod_dir / "plan.json").read_text())
    stages = ("$nixos-k3s:k3s:BringUp", "$nixos-k3s:nixos:Hosts")
    moved = [r for r in plan["resources"] if any(f"{s}$" in r["urn"] for s in stages)]
    assert len(moved) > 20
    for res in moved:
        old = res["urn"]
        for stage in stages:
            old = old.replace(stage, "")
        assert res["aliases"] == [old], res["urn"]


def test_recorded_inputs_read_as_message_to_dict_reads_them(prod_plan: Plan) -> None:
    """The monitor's own Struct reader gives what json_format.MessageToDict gives."""
    from google.protobuf import json_format, struct_pb2

    from tooling.mocks import SECRET_SIG, SIG_KEY, struct_to_dict

    documents = [reg.inputs for reg in prod_plan.result.registrations]
    documents.append(
        {
            "secret": {SIG_KEY: SECRET_SIG, "value": {"nested": [1, 1.5, -2, True, None]}},
            "empty": {},
            "emptyList": [],
            "deep": [[{"a": [{"b": "c"}]}], "x", 0, 1e300],
            "null": None,
        }
    )
    for document in documents:
        struct = struct_pb2.Struct()
        struct.update(document)
        expected = json_format.MessageToDict(struct, preserving_proto_field_name=True)
        assert struct_to_dict(struct) == expected
        assert json.dumps(struct_to_dict(struct)) == json.dumps(expected)
