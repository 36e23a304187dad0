"""Test harness: a real OpenSSH server on 127.0.0.1 and a fake NixOS host behind it.

sshd (Debian's /usr/sbin/sshd) runs with its own config, host key and authorized key; its
sessions get a PATH that puts the stand-ins of tests/remote/fakebin first (nixos-rebuild,
systemctl, systemd-run, k3s) and env vars that point the scripts' state, /run/current-system and
the system profile into a per-test directory. The stand-ins log their argv to
$FAKE_ROOT/calls.log; their behaviour comes from files (see each stand-in's header).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.scripts import PROJECT_DIR, local_invocation

HERE = Path(__file__).parent
FAKEBIN = HERE / "fakebin"
FAKE_SWITCH = HERE / "fake-system" / "switch-to-configuration"
SSHD = Path("/usr/sbin/sshd")
HOST_NAME = "node1"
ROLLBACK_UNIT = "nixos-k3s-rollback"


def _skip_reason() -> str | None:
    if not SSHD.exists():
        return f"{SSHD} missing (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "sshd needs root for privilege separation; run these tests as root"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "OpenSSH client missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


def public_key_of(private_key: Path) -> str:
    """'ssh-ed25519 AAAA...' without the comment."""
    fields = Path(f"{private_key}.pub").read_text(encoding="utf-8").split()
    return f"{fields[0]} {fields[1]}"


@dataclass
class SshServer:
    """The sshd process and the files it uses."""

    root: Path
    port: int
    client_key: Path
    stock_host_key: Path
    host_key: Path
    authorized_keys: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> Path:
        return self.root / "host"

    def host_public_key(self) -> str:
        return public_key_of(self.host_key)

    def session_env(self) -> dict[str, str]:
        return {
            "PATH": f"{FAKEBIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "FAKE_ROOT": str(self.host),
            "FAKE_AUTHORIZED_KEYS": str(self.authorized_keys),
            "NIXOS_K3S_STATE_DIR": str(self.host / "var/lib/nixos-k3s"),
            "NIXOS_K3S_CURRENT_SYSTEM": str(self.host / "run/current-system"),
            "NIXOS_K3S_SYSTEM_PROFILE": str(self.host / "nix/var/nix/profiles/system"),
            "K3S_KUBECONFIG": str(self.host / "etc/rancher/k3s/k3s.yaml"),
            "NIXOS_K3S_ETC_DIR": str(self.host / "etc/nixos-k3s"),
            "K3S_DATA_DIR": str(self.host / "var/lib/rancher/k3s"),
            # hcloud-image.py's clean step on the image builder, install.sh's key change.
            "NIXOS_K3S_ROOT": str(self.host),
            # The fake systemctl's `restart sshd.service` makes this sshd take the new key.
            "FAKE_SSHD_HOST_KEY": str(self.host_key),
            "FAKE_SSHD_PIDFILE": str(self.root / "sshd.pid"),
        }

    def ssh(
        self, command: str, stdin: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command line on the fake host the way remote.Command does: one SSH exec."""
        known_hosts = self.root / "client_known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_public_key()}\n")
        argv = [*self.ssh_argv(known_hosts), command]
        result = subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(
            argv, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    def ssh_argv(self, known_hosts: Path) -> list[str]:
        return [
            "ssh", "-F", "none", "-T", "-p", str(self.port), "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "LogLevel=ERROR", "root@127.0.0.1",
        ]  # fmt: skip

    def swap_host_key(self, private_key: Path) -> None:
        """Makes sshd present another host key, as a reinstalled host would."""
        shutil.copyfile(private_key, self.host_key)
        shutil.copyfile(f"{private_key}.pub", f"{self.host_key}.pub")
        self.host_key.chmod(0o600)
        assert self.process is not None, "sshd is not running"
        self.process.send_signal(signal.SIGHUP)
        wait_for_host_key(self.port, self.host_public_key())


def wait_for_host_key(port: int, expected: str, attempts: int = 100) -> None:
    for _ in range(attempts):
        scan = subprocess.run(
            ["ssh-keyscan", "-T", "2", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
            capture_output=True,
            text=True,
        )
        if expected in scan.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"sshd on port {port} does not present {expected}")


def _write_sshd_config(server_root: Path, port: int, env: Mapping[str, str]) -> Path:
    setenv = " ".join(f"{key}={value}" for key, value in sorted(env.items()))
    config = server_root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {server_root / 'ssh_host_ed25519_key'}",
                f"PidFile {server_root / 'sshd.pid'}",
                f"AuthorizedKeysFile {server_root / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 50",
                "LogLevel VERBOSE",
                f"SetEnv {setenv}",
                "",
            ]
        )
    )
    return config


def start_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("sshd")
    root.chmod(0o755)
    client_key = root / "client_key"
    stock_host_key = root / "stock_host_key"
    _keygen(client_key, "deploy@test")
    _keygen(stock_host_key, "stock@test")
    host_key = root / "ssh_host_ed25519_key"
    shutil.copyfile(stock_host_key, host_key)
    shutil.copyfile(f"{stock_host_key}.pub", f"{host_key}.pub")
    host_key.chmod(0o600)
    authorized_keys = root / "authorized_keys"
    port = _free_port()
    server = SshServer(root, port, client_key, stock_host_key, host_key, authorized_keys)
    config = _write_sshd_config(root, port, server.session_env())
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    log = (root / "sshd.log").open("wb")
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=log)
    server.process = process
    try:
        wait_for_host_key(port, server.host_public_key())
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@dataclass
class FakeHost:
    """The per-test fake NixOS host reached through `sshd`."""

    server: SshServer

    @property
    def root(self) -> Path:
        return self.server.host

    @property
    def state(self) -> Path:
        return self.root / "var/lib/nixos-k3s"

    @property
    def initial_system(self) -> Path:
        return self.root / "nix/store/00000000000000000000000000000000-nixos-system-initial"

    def current_system(self) -> Path:
        return (self.root / "run/current-system").resolve()

    def boot_profile(self) -> Path:
        return (self.root / "nix/var/nix/profiles/system").resolve()

    def calls(self, program: str | None = None) -> list[str]:
        path = self.root / "calls.log"
        lines = path.read_text().splitlines() if path.exists() else []
        if program is None:
            return lines
        prefix = f"{program}\t"
        return [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]

    def timer(self, unit: str = ROLLBACK_UNIT) -> Path:
        return self.root / "timers" / f"{unit}.timer"

    def fire_timer(self, unit: str = ROLLBACK_UNIT) -> subprocess.CompletedProcess[str]:
        """Runs what systemd would run when the transient timer elapses."""
        timer = self.timer(unit)
        # The machine-wide facts systemd would pass on; the rest must come from --setenv.
        env = {
            key: value
            for key, value in self.server.session_env().items()
            if key in ("FAKE_ROOT", "FAKE_AUTHORIZED_KEYS")
        }
        argv: list[str] = []
        for line in timer.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "env":
                name, _, val = value.partition("=")
                env[name] = val
            elif key == "arg":
                argv.append(value)
        timer.rename(timer.with_name(timer.name + ".elapsed"))
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "run").mkdir(parents=True)
        (self.root / "nix/var/nix/profiles").mkdir(parents=True)
        (self.initial_system / "bin").mkdir(parents=True)
        shutil.copy(FAKE_SWITCH, self.initial_system / "bin")
        (self.initial_system / "behavior").mkdir()
        (self.initial_system / "behavior/units").write_text("k3s.service active\n")
        (self.root / "run/current-system").symlink_to(self.initial_system)
        (self.root / "nix/var/nix/profiles/system").symlink_to(self.initial_system)
        (self.root / "units").mkdir()
        (self.root / "units/k3s.service").write_text("active\n")
        self.server.authorized_keys.write_text(public_key_of(self.server.client_key) + "\n")
        Path(f"{self.server.authorized_keys}.off").unlink(missing_ok=True)
        if self.server.host_public_key() != public_key_of(self.server.stock_host_key):
            self.server.swap_host_key(self.server.stock_host_key)


def make_nixos_source(root: Path, behavior: Mapping[str, str] | None = None) -> Path:
    """A small static nixos/ tree; `behavior` files steer the fake build and activation."""
    source = root / "nixos"
    (source / "modules").mkdir(parents=True)
    (source / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (source / "modules/base.nix").write_text("{ ... }: { }\n")
    files = {"units": "k3s.service active\n", **(behavior or {})}
    (source / "fake-behavior").mkdir()
    for name, content in files.items():
        (source / "fake-behavior" / name).write_text(content)
    return source


def release_id_of(source: Path, host_json: str) -> str:
    digest = hashlib.sha256(host_json.encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def host_json(name: str = HOST_NAME) -> str:
    return json.dumps({"name": name, "role": "server", "addresses": ["10.0.0.2"]}, sort_keys=True)


def deploy_env(server: SshServer, source: Path, **overrides: str) -> dict[str, str]:
    data = host_json()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TARGET_HOST": "127.0.0.1",
        "TARGET_PORT": str(server.port),
        "TARGET_USER": "root",
        "HOST_NAME": HOST_NAME,
        "HOST_PUBLIC_KEY": server.host_public_key(),
        "HOST_JSON": data,
        "NIXOS_SOURCE_DIR": str(source),
        "RELEASE_ID": release_id_of(source, data),
        "ROLLBACK_TIMEOUT": "60",
        "HEALTH_UNITS": "k3s.service",
        "HEALTH_TIMEOUT": "2",
        "SSH_CONNECT_TIMEOUT": "5",
        "SSH_CONNECT_ATTEMPTS": "2",
        "SSH_RETRY_DELAY": "0.2",
    }
    env.update(overrides)
    return env


def run_operator_script(
    name: str, env: Mapping[str, str], stdin: bytes, timeout: float = 120, args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs an operator-side script exactly as a local.Command would (shell, project cwd)."""
    result = subprocess.run(
        local_invocation(name, *args),
        shell=True,
        cwd=PROJECT_DIR,
        env=dict(env),
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def release_tarball(source: Path) -> bytes:
    """The tar stream deploy.sh sends: the nixos/ tree plus hosts/<name>.json."""
    flake = source.parent / "assembled"
    shutil.copytree(source, flake, dirs_exist_ok=True)
    (flake / "hosts").mkdir(exist_ok=True)
    (flake / f"hosts/{HOST_NAME}.json").write_text(host_json() + "\n")
    path = source.parent / "release.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(flake, arcname=".")
    return path.read_bytes()
