"""Stand-in for the `colima` CLI, driven by a JSON state file.

Behaves like Colima where our scripts depend on it (cmd/list.go, cmd/start.go, cmd/delete.go,
cmd/ssh.go, config/profile.go):
- `list|ls --json` prints one compact JSON object per instance (fields name, status, arch, cpus,
  memory, disk, address, runtime; address and runtime only for running VMs, address only with
  --network-address); `-p P` fails for an absent profile, as `limactl list <absent>` does.
- `start` creates an absent profile from its flags, starts a stopped one with its saved settings,
  and ignores a running one ("already running, ignoring"). `start --help` lists the start flags.
  With $FAKE_COLIMA_ROOT_DISK=1 it is a release with a separate runtime disk: it has
  `--root-disk`, which sizes the VM's disk, and `--disk` sizes only the runtime disk that
  `--runtime none` never creates (app.go createRuntimeDisk, lima newConf). Without it,
  `--root-disk` is an unknown flag and `--disk` sizes the VM.
- `delete` needs --force (it prompts otherwise) and fails for an absent profile.
- `ssh -- CMD...` runs CMD locally with a leading `sudo` dropped and every argument under /root/
  or /etc/ssh/ moved into the VM's directory in the state dir, with stdin passed through. Each
  VM has its own ed25519 host key there (etc/ssh/ssh_host_ed25519_key{,.pub}, made by
  ssh-keygen the first time the VM is reached), as Lima's Ubuntu image has.
Every invocation is appended to $FAKE_COLIMA_LOG as a JSON line {"argv": [...], "stdin": ...}.
$FAKE_COLIMA_FAIL=<subcommand> makes that subcommand fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GIB = 1024**3
DEFAULTS = {"cpu": 2, "memory": 2, "disk": 100, "arch": "aarch64", "vm-type": "vz"}
ROOT_DISK_DEFAULT = 20
VALUE_FLAGS = {
    "-p": "profile",
    "--profile": "profile",
    "-c": "cpu",
    "--cpu": "cpu",
    "-m": "memory",
    "--memory": "memory",
    "-d": "disk",
    "--disk": "disk",
    "-a": "arch",
    "--arch": "arch",
    "-t": "vm-type",
    "--vm-type": "vm-type",
    "-r": "runtime",
    "--runtime": "runtime",
}
BOOL_FLAGS = {
    "--network-address",
    "--vz-rosetta",
    "--force",
    "-f",
    "--json",
    "-j",
    "--ssh-config=false",
    "--help",
    "-h",
}
START_HELP_FLAGS = [
    "-a, --arch string",
    "-c, --cpu int",
    "-d, --disk int",
    "-m, --memory float32",
    "    --network-address",
    "-r, --runtime string",
    "    --ssh-config",
    "-t, --vm-type string",
    "    --vz-rosetta",
]


def has_root_disk() -> bool:
    return os.environ.get("FAKE_COLIMA_ROOT_DISK") == "1"


def value_flags() -> dict[str, str]:
    if has_root_disk():
        return {**VALUE_FLAGS, "--root-disk": "root-disk"}
    return VALUE_FLAGS


def parse(argv: list[str]) -> tuple[str, dict[str, str], set[str], list[str]]:
    flags = value_flags()
    command = ""
    values: dict[str, str] = {}
    switches: set[str] = set()
    rest: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest = argv[index + 1 :]
            break
        name, _, inline = arg.partition("=")
        if name in flags:
            if inline:
                values[flags[name]] = inline
            else:
                index += 1
                values[flags[name]] = argv[index]
        elif arg in BOOL_FLAGS:
            switches.add(arg)
        elif arg.startswith("-"):
            sys.exit(f"fake colima: unknown flag {arg}")
        elif not command:
            command = arg
        else:
            rest.append(arg)
        index += 1
    return command, values, switches, rest


def short_name(profile: str) -> str:
    return "default" if profile in ("", "colima", "default") else profile.removeprefix("colima-")


class Fake:
    def __init__(self) -> None:
        self.state_path = Path(os.environ["FAKE_COLIMA_STATE"])
        self.state = json.loads(self.state_path.read_text())
        self.fail = os.environ.get("FAKE_COLIMA_FAIL", "")

    def save(self) -> None:
        self.state_path.write_text(json.dumps(self.state, indent=2, sort_keys=True))

    @property
    def vms(self) -> dict[str, dict[str, object]]:
        return self.state["profiles"]

    def line(self, name: str) -> str:
        vm = self.vms[name]
        record: dict[str, object] = {
            "name": name,
            "status": vm["status"],
            "arch": vm["arch"],
            "cpus": vm["cpus"],
            "memory": vm["memory"],
            "disk": vm["disk"],
        }
        if vm["status"] == "Running":
            if vm.get("address"):
                record["address"] = vm["address"]
            record["runtime"] = vm.get("runtime", "docker")
        return json.dumps(record, separators=(",", ":"))

    def list(self, values: dict[str, str]) -> int:
        names = sorted(self.vms)
        if "profile" in values:
            wanted = short_name(values["profile"])
            if wanted not in self.vms:
                print(f"FATA[0000] No instance matching colima-{wanted} found.", file=sys.stderr)
                return 1
            names = [wanted]
        for name in names:
            print(self.line(name))
        return 0

    def address(self) -> str:
        self.state["next_host"] = int(self.state.get("next_host", 2)) + 1
        return f"192.168.64.{self.state['next_host']}"

    def start(self, values: dict[str, str], switches: set[str]) -> int:
        name = short_name(values.get("profile", "default"))
        vm = self.vms.get(name)
        if vm is None:
            settings = {key: values.get(key, str(value)) for key, value in DEFAULTS.items()}
            vm = {
                "status": "Stopped",
                "arch": settings["arch"],
                "cpus": int(settings["cpu"]),
                "memory": int(settings["memory"]) * GIB,
                "disk": self.vm_disk_gib(values) * GIB,
                "vm_type": settings["vm-type"],
                "runtime": values.get("runtime", "docker"),
                "network_address": "--network-address" in switches,
                "rosetta": "--vz-rosetta" in switches,
            }
            self.vms[name] = vm
        elif vm["status"] == "Running":
            print('level=warning msg="already running, ignoring"', file=sys.stderr)
            return 0
        vm["status"] = "Running"
        if vm.get("network_address") and not vm.get("address"):
            vm["address"] = self.address()
        print(f"INFO[0000] starting colima [profile={name}]", file=sys.stderr)
        return 0

    @staticmethod
    def vm_disk_gib(values: dict[str, str]) -> int:
        if not has_root_disk():
            return int(values.get("disk", str(DEFAULTS["disk"])))
        return int(values.get("root-disk", str(ROOT_DISK_DEFAULT)))

    @staticmethod
    def start_help() -> int:
        flags = START_HELP_FLAGS + (["    --root-disk int"] if has_root_disk() else [])
        print("Usage:\n  colima start [profile] [flags]\n\nFlags:")
        for flag in sorted(flags, key=lambda line: line.split("--")[1]):
            print(f"  {flag}")
        return 0

    def delete(self, values: dict[str, str], switches: set[str]) -> int:
        name = short_name(values.get("profile", "default"))
        if not switches & {"--force", "-f"}:
            print("fake colima: delete would prompt without --force", file=sys.stderr)
            return 1
        if name not in self.vms:
            print(f"FATA[0000] instance 'colima-{name}' does not exist", file=sys.stderr)
            return 1
        del self.vms[name]
        return 0

    def ssh(self, values: dict[str, str], command: list[str], stdin: bytes) -> int:
        name = short_name(values.get("profile", "default"))
        if self.vms.get(name, {}).get("status") != "Running":
            print(f"FATA[0000] colima [profile={name}] not running", file=sys.stderr)
            return 1
        if command[:1] == ["sudo"]:
            command = command[1:]
        vm = self.state_path.parent / "vms" / name
        host_key = vm / "etc/ssh/ssh_host_ed25519_key"
        if not host_key.exists():
            host_key.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(host_key)],
                check=True,
            )
        command = [
            str(vm / a.removeprefix("/")) if a.startswith(("/root/", "/etc/ssh/")) else a
            for a in command
        ]
        return subprocess.run(command, input=stdin, check=False).returncode

    def run(self, argv: list[str]) -> int:
        command, values, switches, rest = parse(argv)
        stdin = sys.stdin.buffer.read() if command == "ssh" else b""
        with open(os.environ["FAKE_COLIMA_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"argv": argv, "stdin": stdin.decode()}) + "\n")
        if command and command == self.fail:
            print(f"fake colima: {command} told to fail", file=sys.stderr)
            return 1
        if command in ("list", "ls"):
            return self.list(values)
        if command == "start" and switches & {"--help", "-h"}:
            return self.start_help()
        if command == "start":
            code = self.start(values, switches)
        elif command == "delete":
            code = self.delete(values, switches)
        elif command == "ssh":
            return self.ssh(values, rest, stdin)
        else:
            print(f"fake colima: unsupported command {command!r}", file=sys.stderr)
            return 1
        self.save()
        return code


if __name__ == "__main__":
    sys.exit(Fake().run(sys.argv[1:]))
