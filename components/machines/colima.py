"""Colima dev machines: one Colima profile (a Lima VM on Apple's Virtualization.framework) per host.

Colima creates the VM from its own Ubuntu image with a reachable address (`--network-address`,
Lima's vzNAT NIC, named `col0` in the guest); the common install path then replaces Ubuntu with
NixOS (nixos-anywhere kexec + disko) over that address, as root, with our deploy key. The NixOS
hardware profile nixos/hardware/colima-vz.nix keeps what Colima and Lima need afterwards.

Profile naming (Colima config/profile.go): profile `foo` is the Lima instance `colima-foo` and
`colima ls` shows it as `foo`; the profile `default` (Lima instance `colima`) is the user's own
Docker VM, so it is refused here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
from pulumi_command import local

from components import catalog, profiles, rules
from components.hosts import render
from components.hosts.machineview import MachineView, WakeCommand
from components.scripts import local_invocation

TYPE_TOKEN = "nixos-k3s:colima:Machine"
SSH_USER = "root"


class ColimaError(Exception):
    """A Colima profile is not in the state this program needs."""


@dataclass(frozen=True)
class ColimaVm:
    """One line of `colima ls --json` (Colima's limautil.InstanceInfo; sizes in bytes)."""

    name: str
    status: str
    arch: str
    cpus: int
    memory: int
    disk: int
    address: str | None


def short_profile_name(profile: str) -> str:
    """The name `colima ls` prints for a profile (Colima's config.ProfileFromName ShortName)."""
    if profile in ("", "colima", "default"):
        return "default"
    return profile.removeprefix("colima-")


def _number(record: dict[str, object], key: str) -> int:
    # Colima encodes memory as float32 in some versions, e.g. "memory":8589934592 or 8.589935e+09.
    value = record.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ColimaError(f"`colima ls --json`: {key} of {record.get('name')!r} is {value!r}")
    return int(value)


def _vm_from_record(record: dict[str, object]) -> ColimaVm:
    address = record.get("address")
    return ColimaVm(
        name=str(record["name"]),
        status=str(record.get("status", "")),
        arch=str(record.get("arch", "")),
        cpus=_number(record, "cpus"),
        memory=_number(record, "memory"),
        disk=_number(record, "disk"),
        address=str(address) if address else None,
    )


def _records(ndjson: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    for number, line in enumerate(ndjson.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ColimaError(f"`colima ls --json` line {number} is not JSON: {line!r}") from error
        if not isinstance(record, dict) or "name" not in record:
            raise ColimaError(f"`colima ls --json` line {number} has no name: {line!r}")
        records.append(record)
    return records


def parse_colima_list(ndjson: str, profile: str) -> ColimaVm:
    """The running, addressable VM of `profile` from `colima ls --json` output (NDJSON)."""
    wanted = short_profile_name(profile)
    matches = [_vm_from_record(r) for r in _records(ndjson) if r["name"] == wanted]
    if not matches:
        raise ColimaError(
            f"Colima profile {wanted!r} does not exist; create it with "
            f"`colima start --profile {wanted} --vm-type vz --network-address --runtime none`"
        )
    vm = matches[0]
    if vm.status != "Running":
        raise ColimaError(
            f"Colima profile {wanted!r} is {vm.status or 'in an unknown state'}, not Running; "
            f"start it with `colima start --profile {wanted}`"
        )
    if vm.address is None:
        raise ColimaError(
            f"Colima profile {wanted!r} has no reachable address: it was created without "
            f"--network-address (or its col0 NIC has no DHCP lease yet); recreate it with "
            f"`colima delete --profile {wanted}` and "
            f"`colima start --profile {wanted} --vm-type vz --network-address`"
        )
    return vm


HOST_KEY_PREFIX = "host-key "
_ED25519_LINE = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+={0,2}$")


def vm_host_key(text: str) -> str:
    """The VM's ed25519 host key from colima-create.sh's `host-key ssh-ed25519 ...` line.

    colima-create.sh reads it through `colima ssh` (Lima's own channel into the VM), so the
    install's first connection over the VM's network address can pin it."""
    keys = [
        line.removeprefix(HOST_KEY_PREFIX).strip()
        for line in text.splitlines()
        if line.startswith(HOST_KEY_PREFIX)
    ]
    if len(keys) != 1 or not _ED25519_LINE.match(keys[0]):
        raise ColimaError(
            "colima-create.sh printed no single 'host-key ssh-ed25519 ...' line "
            "(the VM's /etc/ssh/ssh_host_ed25519_key.pub)"
        )
    return keys[0]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ColimaError("colima-create.sh printed nothing on stdout")
    return lines[-1]


@dataclass(frozen=True)
class ColimaMachineArgs:
    profile: str
    cpus: int
    memory_gib: int
    disk_gib: int
    deploy_public_key: pulumi.Input[str]
    arch: str = "aarch64"
    vm_type: str = "vz"
    rosetta: bool = False


def validate_machine_args(args: ColimaMachineArgs) -> None:
    """Refuse sizes and combinations that cannot host a NixOS k3s node."""
    rules.colima_profile(args.profile, rules.lima_home())
    for field, reason in profiles.colima.vm_problems(
        arch=args.arch, vm_type=args.vm_type, rosetta=args.rosetta, memory_gib=args.memory_gib
    ):
        raise ValueError(f"colima profile {args.profile!r}: {field}: {reason}")
    if args.cpus < 1:
        raise ValueError(f"colima profile {args.profile!r}: cpus {args.cpus} < 1")
    least = catalog.MIN_COLIMA_DISK_GIB
    if args.disk_gib < least:
        raise ValueError(f"colima profile {args.profile!r}: disk_gib {args.disk_gib} < {least}")


def check_public_key(key: str) -> str:
    if not rules.SSH_PUBLIC_KEY.fullmatch(key.strip()):
        raise ValueError("deploy_public_key is not a single OpenSSH public key line")
    return key.strip()


def sizing_triggers(args: ColimaMachineArgs) -> list[str | int | bool]:
    """Inputs Colima cannot change on an existing VM: any change replaces (recreates) it."""
    return [
        args.profile,
        args.cpus,
        args.memory_gib,
        args.disk_gib,
        args.arch,
        args.vm_type,
        args.rosetta,
    ]


def create_environment(args: ColimaMachineArgs) -> dict[str, pulumi.Input[str]]:
    return {
        "PROFILE": args.profile,
        "CPUS": str(args.cpus),
        "MEMORY_GIB": str(args.memory_gib),
        "DISK_GIB": str(args.disk_gib),
        "ARCH": args.arch,
        "VM_TYPE": args.vm_type,
        "ROSETTA": "1" if args.rosetta else "0",
        "DEPLOY_PUBLIC_KEY": pulumi.Output.from_input(args.deploy_public_key).apply(
            check_public_key
        ),
    }


class ColimaMachine(pulumi.ComponentResource):
    """A Colima VM reachable from the Mac, with our deploy key authorized for root.

    Changing profile, cpus, memory_gib, disk_gib, arch, vm_type or rosetta deletes the VM and
    creates a new one (Colima applies sizing only at creation), so NixOS is installed again.
    Changing deploy_public_key re-runs the idempotent create script, which authorizes the new key.
    """

    address: pulumi.Output[str]
    stock_host_key: pulumi.Output[str]
    ssh_user: pulumi.Output[str]
    profile: pulumi.Output[str]
    machine_id: pulumi.Output[str]
    environment: dict[str, pulumi.Input[str]]

    def __init__(
        self,
        name: str,
        args: ColimaMachineArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        validate_machine_args(args)
        super().__init__(TYPE_TOKEN, name, None, opts)
        vm = local.Command(
            f"{name}-vm",
            create=local_invocation("colima-create.sh"),
            delete=local_invocation("colima-delete.sh"),
            environment=create_environment(args),
            triggers=sizing_triggers(args),
            add_previous_output_in_env=False,
            # Both VMs share the profile name: the old one must go before the new one is made.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        profile = args.profile
        self.machine_id = vm.id
        self.environment = create_environment(args)
        self.address = vm.stdout.apply(
            lambda out: parse_colima_list(last_line(out), profile).address or ""
        )
        self.stock_host_key = vm.stdout.apply(vm_host_key)
        self.ssh_user = pulumi.Output.from_input(SSH_USER)
        self.profile = pulumi.Output.from_input(profile)
        self.register_outputs(
            {"address": self.address, "ssh_user": self.ssh_user, "profile": self.profile}
        )

    def view(self) -> MachineView:
        """The VM as the NixOS layer sees it: reached as root at its vzNAT address, woken by
        the create script after the install (a vz VM may stop instead of rebooting)."""
        return MachineView(
            ssh_host=self.address,
            ssh_user="root",
            install_user="root",
            machine_id=self.machine_id,
            wake=WakeCommand(local_invocation("colima-create.sh"), self.environment),
            fact_inputs=(self.address,),
            facts_of=lambda v: render.MachineFacts(
                private_ipv4=v[0], private_cidr=render.COLIMA_NETWORK
            ),
            private_ipv4=self.address,
            stock_host_key=self.stock_host_key,
        )
