"""colima-create.sh and colima-delete.sh run for real against a fake `colima` first on PATH."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.machines.colima import last_line, parse_colima_list, vm_host_key
from components.scripts import PROJECT_DIR, local_invocation, script_path

FAKE = Path(__file__).with_name("fake_colima.py")
GIB = 1024**3
KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeDeployKeyForTestsOnly0123456789abcd nixos-k3s-deploy"
)
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherDeployKeyForTests0123456789ab rotated"


def _vm(status: str, address: str | None, cpus: int = 2) -> dict[str, object]:
    return {
        "status": status,
        "arch": "aarch64",
        "cpus": cpus,
        "memory": 4 * GIB,
        "disk": 60 * GIB,
        "vm_type": "vz",
        "runtime": "none",
        "network_address": address is not None,
        "address": address,
        "rosetta": False,
    }


# The user's own Docker VM, a VM without --network-address, and a stopped dev node.
SEED = {
    "default": _vm("Running", None),
    "nonet": _vm("Running", None),
    "dev-stopped": _vm("Stopped", "192.168.64.7", cpus=4),
    "dev-other": _vm("Running", "192.168.64.8"),
}


@dataclass
class FakeColima:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def log_file(self) -> Path:
        return self.root / "colima.log"

    def state(self) -> dict[str, dict[str, dict[str, object]]]:
        return json.loads(self.state_file.read_text())

    def calls(self) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        lines = self.log_file.read_text().splitlines()
        return [json.loads(line)["argv"] for line in lines]

    def subcommands(self) -> list[str]:
        """Subcommands that act (a `--help` only asks which flags this release has)."""
        return [argv[0] for argv in self.calls() if "--help" not in argv]

    def start_calls(self) -> list[list[str]]:
        return [argv for argv in self.calls() if argv[0] == "start" and "--help" not in argv]

    def authorized_keys(self, profile: str) -> list[str]:
        path = self.root / "vms" / profile / "root" / ".ssh" / "authorized_keys"
        return path.read_text().splitlines() if path.exists() else []

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.root / "home"),
            "FAKE_COLIMA_STATE": str(self.state_file),
            "FAKE_COLIMA_LOG": str(self.log_file),
            "ADDRESS_TIMEOUT": "0",
            "POLL_INTERVAL": "0",
        }
        env.update(extra)
        return env


@pytest.fixture
def colima(tmp_path: Path) -> FakeColima:
    fake = FakeColima(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "home").mkdir()
    wrapper = tmp_path / "bin" / "colima"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    fake.state_file.write_text(json.dumps({"profiles": SEED}))
    return fake


def node_env(profile: str = "dev-a", **overrides: str) -> dict[str, str]:
    env = {
        "PROFILE": profile,
        "CPUS": "4",
        "MEMORY_GIB": "6",
        "DISK_GIB": "40",
        "ARCH": "aarch64",
        "VM_TYPE": "vz",
        "ROSETTA": "1",
        "DEPLOY_PUBLIC_KEY": KEY,
    }
    env.update(overrides)
    return env


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Exactly the command line the local.Command runs, from the project directory.
    return subprocess.run(
        ["bash", "-c", local_invocation(script)],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_create_passes_real_colima_flags_and_prints_the_profile_line(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(**node_env()))
    assert result.returncode == 0, result.stderr
    (start,) = colima.start_calls()
    assert start == [
        "start",
        "--profile",
        "dev-a",
        "--vm-type",
        "vz",
        "--arch",
        "aarch64",
        "--cpu",
        "4",
        "--memory",
        "6",
        "--disk",
        "40",
        "--network-address",
        "--runtime",
        "none",
        "--ssh-config=false",
        "--vz-rosetta",
    ]
    host_key, listing = result.stdout.splitlines()
    assert host_key.startswith("host-key ssh-ed25519 "), "colima's chatter must go to stderr"
    vm = parse_colima_list(listing, "dev-a")
    assert vm.address == colima.state()["profiles"]["dev-a"]["address"]
    assert (vm.cpus, vm.memory, vm.disk) == (4, 6 * GIB, 40 * GIB)
    assert colima.authorized_keys("dev-a") == [KEY]
    # The key reaches the VM on stdin, never as an argument.
    assert all(KEY not in arg for argv in colima.calls() for arg in argv)


def test_create_sizes_the_vm_with_root_disk_where_colima_has_it(colima: FakeColima) -> None:
    env = colima.env(FAKE_COLIMA_ROOT_DISK="1", **node_env())
    result = run("colima-create.sh", env)
    assert result.returncode == 0, result.stderr
    (start,) = colima.start_calls()
    assert start[start.index("--root-disk") + 1] == "40"
    assert start[start.index("--disk") + 1] == "40"
    vm = parse_colima_list(last_line(result.stdout), "dev-a")
    assert vm.disk == 40 * GIB, "the VM's own disk has the requested size, not Colima's 20 GiB"


def test_create_without_root_disk_support_sizes_the_vm_with_disk(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(**node_env()))
    assert result.returncode == 0, result.stderr
    (start,) = colima.start_calls()
    assert "--root-disk" not in start, "an older Colima rejects the unknown flag"
    assert ["start", "--help"] in colima.calls()


def test_create_without_rosetta_omits_the_flag(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(**node_env(ROSETTA="0")))
    assert result.returncode == 0, result.stderr
    (start,) = colima.start_calls()
    assert "--vz-rosetta" not in start
    assert colima.state()["profiles"]["dev-a"]["rosetta"] is False


def test_create_again_is_idempotent(colima: FakeColima) -> None:
    first = run("colima-create.sh", colima.env(**node_env()))
    second = run("colima-create.sh", colima.env(**node_env()))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert colima.subcommands().count("start") == 1
    assert first.stdout.splitlines()[-1] == second.stdout.splitlines()[-1]
    assert colima.authorized_keys("dev-a") == [KEY]


def test_create_with_a_new_key_adds_it_once(colima: FakeColima) -> None:
    assert run("colima-create.sh", colima.env(**node_env())).returncode == 0
    env = colima.env(**node_env(DEPLOY_PUBLIC_KEY=OTHER_KEY))
    assert run("colima-create.sh", env).returncode == 0
    assert run("colima-create.sh", env).returncode == 0
    assert colima.authorized_keys("dev-a") == [KEY, OTHER_KEY]


def test_create_starts_a_stopped_profile_with_its_saved_settings(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(**node_env("dev-stopped")))
    assert result.returncode == 0, result.stderr
    assert ["start", "--profile", "dev-stopped"] in colima.calls()
    vm = parse_colima_list(last_line(result.stdout), "dev-stopped")
    assert (vm.status, vm.address, vm.cpus) == ("Running", "192.168.64.7", 4)


def test_create_fails_clearly_when_the_profile_has_no_address(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(**node_env("nonet")))
    assert result.returncode == 1
    assert "no address" in result.stderr and "--network-address" in result.stderr
    assert "start" not in colima.subcommands()
    assert colima.authorized_keys("nonet") == []


def test_create_fails_when_colima_start_fails(colima: FakeColima) -> None:
    result = run("colima-create.sh", colima.env(FAKE_COLIMA_FAIL="start", **node_env()))
    assert result.returncode == 1
    assert "colima start --profile dev-a failed" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ARCH": "x86_64"}, "ARCH must be aarch64"),
        ({"VM_TYPE": "qemu"}, "VM_TYPE must be vz"),
        ({"PROFILE": "default"}, "reserved"),
        ({"PROFILE": "colima-dev"}, "reserved"),
        ({"PROFILE": "Dev A"}, "PROFILE must be"),
        ({"CPUS": "0"}, "CPUS must be a positive integer"),
        ({"MEMORY_GIB": "4.5"}, "MEMORY_GIB must be a positive integer"),
        ({"ROSETTA": "yes"}, "ROSETTA must be 0 or 1"),
        ({"DEPLOY_PUBLIC_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----"}, "DEPLOY_PUBLIC_KEY"),
        ({"DEPLOY_PUBLIC_KEY": KEY + "\n" + OTHER_KEY}, "DEPLOY_PUBLIC_KEY"),
    ],
)
def test_create_refuses_bad_environment_before_calling_colima(
    colima: FakeColima, overrides: dict[str, str], message: str
) -> None:
    result = run("colima-create.sh", colima.env(**node_env(**overrides)))
    assert result.returncode == 2
    assert message in result.stderr
    assert colima.calls() == []


def test_delete_removes_only_its_profile(colima: FakeColima) -> None:
    assert run("colima-create.sh", colima.env(**node_env())).returncode == 0
    result = run("colima-delete.sh", colima.env(**node_env()))
    assert result.returncode == 0, result.stderr
    assert ["delete", "--profile", "dev-a", "--force"] in colima.calls()
    assert sorted(colima.state()["profiles"]) == sorted(SEED)
    assert colima.state()["profiles"]["dev-stopped"] == SEED["dev-stopped"]
    deletes = [argv for argv in colima.calls() if argv[0] == "delete"]
    assert deletes == [["delete", "--profile", "dev-a", "--force"]]


def test_delete_of_an_already_deleted_profile_succeeds(colima: FakeColima) -> None:
    result = run("colima-delete.sh", colima.env(PROFILE="dev-gone"))
    assert result.returncode == 0, result.stderr
    assert "already gone" in result.stderr
    assert "delete" not in colima.subcommands()
    assert sorted(colima.state()["profiles"]) == sorted(SEED)


def test_delete_fails_when_colima_delete_fails(colima: FakeColima) -> None:
    env = colima.env(FAKE_COLIMA_FAIL="delete", PROFILE="dev-other")
    result = run("colima-delete.sh", env)
    assert result.returncode == 1
    assert "dev-other" in colima.state()["profiles"]


@pytest.mark.parametrize("profile", ["default", "colima", "colima-dev-other", ""])
def test_delete_refuses_the_users_own_profiles(colima: FakeColima, profile: str) -> None:
    result = run("colima-delete.sh", colima.env(PROFILE=profile))
    assert result.returncode == 2
    assert colima.calls() == []
    assert sorted(colima.state()["profiles"]) == sorted(SEED)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    paths = [str(script_path(name)) for name in ("colima-create.sh", "colima-delete.sh")]
    result = subprocess.run(["shellcheck", *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_create_reads_the_vms_host_key_through_colima_ssh(colima: FakeColima) -> None:
    # The install's first connection (over the VM's network address) pins this key; it comes
    # through `colima ssh`, Lima's own channel into the VM, not over that network.
    result = run("colima-create.sh", colima.env(**node_env()))
    assert result.returncode == 0, result.stderr
    pub = colima.state_file.parent / "vms/dev-a/etc/ssh/ssh_host_ed25519_key.pub"
    expected = " ".join(pub.read_text().split()[:2])
    assert vm_host_key(result.stdout) == expected
    assert [
        "ssh", "--profile", "dev-a", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub",
    ] in colima.calls()  # fmt: skip
    again = run("colima-create.sh", colima.env(**node_env()))
    assert vm_host_key(again.stdout) == expected, "the same VM keeps its key"
