"""ColimaMachine under Pulumi's mocks: the command resource it declares and its outputs."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from pulumi_command import local

from components.machines.colima import TYPE_TOKEN, ColimaError, ColimaMachine, ColimaMachineArgs
from components.scripts import local_invocation

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeDeployKeyForTestsOnly0123456789abcd deploy"
VM_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeVmHostKeyForTestsOnly0123456789abcd"


class ColimaMocks(pulumi.runtime.Mocks):
    """Answers a create of the command with what colima-create.sh prints for its profile."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "command:local:Command":
            profile = args.inputs["environment"]["PROFILE"]
            line = {
                "name": profile,
                "status": "Running",
                "arch": "aarch64",
                "cpus": 4,
                "memory": 4 * 1024**3,
                "disk": 40 * 1024**3,
                "address": "192.168.64.21" if profile != "nonet" else "",
                "runtime": "none",
            }
            state["stdout"] = f"host-key {VM_HOST_KEY}\n" + json.dumps(line) + "\n"
        return f"{args.name}-id", state

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


MOCKS = ColimaMocks()
pulumi.runtime.set_mocks(MOCKS, preview=False)


@pytest.fixture
def recorded_options(monkeypatch: pytest.MonkeyPatch) -> list[pulumi.ResourceOptions | None]:
    recorded: list[pulumi.ResourceOptions | None] = []
    original = local.Command

    class RecordingCommand(original):  # type: ignore[misc, valid-type]
        def __init__(self, resource_name: str, *args: Any, **kwargs: Any) -> None:
            recorded.append(kwargs.get("opts"))
            super().__init__(resource_name, *args, **kwargs)

    monkeypatch.setattr(local, "Command", RecordingCommand)
    return recorded


def _machine(profile: str = "dev-a", **changes: Any) -> ColimaMachine:
    values: dict[str, Any] = {
        "profile": profile,
        "cpus": 4,
        "memory_gib": 6,
        "disk_gib": 40,
        "rosetta": True,
        "deploy_public_key": KEY,
    }
    values.update(changes)
    return ColimaMachine(f"node-{profile}", ColimaMachineArgs(**values))


def _command_inputs(name: str) -> dict[str, Any]:
    matches = [r for r in MOCKS.resources if r.name == name and r.typ == "command:local:Command"]
    assert len(matches) == 1, [r.name for r in MOCKS.resources]
    return matches[0].inputs


@pulumi.runtime.test
def test_address_flows_from_the_create_commands_stdout() -> pulumi.Output[None]:
    machine = _machine()

    def check(values: list[Any]) -> None:
        address, ssh_user, profile = values
        assert address == "192.168.64.21"
        assert ssh_user == "root"
        assert profile == "dev-a"

    return pulumi.Output.all(machine.address, machine.ssh_user, machine.profile).apply(check)


@pulumi.runtime.test
def test_command_runs_the_scripts_with_non_secret_environment() -> pulumi.Output[None]:
    machine = _machine("dev-b", rosetta=False)

    def check(_: Any) -> None:
        inputs = _command_inputs("node-dev-b-vm")
        assert inputs["create"] == local_invocation("colima-create.sh")
        assert inputs["delete"] == local_invocation("colima-delete.sh")
        assert inputs["environment"] == {
            "PROFILE": "dev-b",
            "CPUS": "4",
            "MEMORY_GIB": "6",
            "DISK_GIB": "40",
            "ARCH": "aarch64",
            "VM_TYPE": "vz",
            "ROSETTA": "0",
            "DEPLOY_PUBLIC_KEY": KEY,
        }
        assert inputs["triggers"] == ["dev-b", 4.0, 6.0, 40.0, "aarch64", "vz", False]
        assert inputs["addPreviousOutputInEnv"] is False
        component = [r for r in MOCKS.resources if r.name == "node-dev-b"]
        assert [r.typ for r in component] == [TYPE_TOKEN]

    return machine.address.apply(check)


@pulumi.runtime.test
def test_replacement_deletes_the_old_vm_first(
    recorded_options: list[pulumi.ResourceOptions | None],
) -> pulumi.Output[None]:
    machine = _machine("dev-c")

    def check(_: Any) -> None:
        [opts] = recorded_options
        assert opts is not None
        assert opts.delete_before_replace is True
        assert opts.parent is machine

    return machine.address.apply(check)


@pulumi.runtime.test
def test_invalid_arguments_fail_before_any_resource() -> pulumi.Output[None]:
    with pytest.raises(ValueError, match="vz boots only aarch64"):
        _machine("dev-d", arch="x86_64")
    machine = _machine("dev-e")

    def check(_: Any) -> None:
        names = {r.name for r in MOCKS.resources}
        assert {"node-dev-e", "node-dev-e-vm"} <= names
        assert not {"node-dev-d", "node-dev-d-vm"} & names

    return machine.address.apply(check)


def test_missing_address_fails_the_deployment() -> None:
    @pulumi.runtime.test
    def scenario() -> pulumi.Output[None]:
        return _machine("nonet").address.apply(lambda _: None)

    with pytest.raises(ColimaError, match="'nonet' has no reachable address"):
        scenario()
