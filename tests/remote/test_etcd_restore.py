"""Restore drill: etcd-restore.sh against three fake k3s servers, each behind its own real sshd.

Each server gets what nixos/modules/k3s.nix and install-secrets.sh put there: the token file, the
0600 S3 key file and /etc/nixos-k3s/etcd-restore.env. The stand-in `k3s server --cluster-reset`
checks the flags k3s would need and records which S3 key variables reached it (as hashes), the
stand-in `systemctl` keeps k3s.service's state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.scripts import PROJECT_DIR, local_invocation
from tests.remote.harness import FakeHost, SshServer, start_sshd

ACCESS_KEY = "AKIAEXAMPLEKEYID0001"
SECRET_KEY = "s3cr3t/EXAMPLE+value=0002"
S3_FLAGS = (
    "--etcd-s3 --etcd-s3-endpoint=fsn1.your-objectstorage.com --etcd-s3-bucket=prod-etcd "
    "--etcd-s3-folder=prod --etcd-s3-region=fsn1"
)
SNAPSHOT = "etcd-snapshot-prod-control-1-1764748800"
NAMES = ("server1", "server2", "server3")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SshServer]]:
    with contextlib.ExitStack() as stack:
        sshd = contextlib.contextmanager(start_sshd)
        yield {name: stack.enter_context(sshd(tmp_path_factory)) for name in NAMES}


@pytest.fixture
def hosts(servers: dict[str, SshServer], tmp_path: Path) -> dict[str, FakeHost]:
    fakes = {}
    for name, server in servers.items():
        fake = FakeHost(server)
        fake.reset()
        prepare_server(fake, s3=True)
        fakes[name] = fake
    return fakes


def prepare_server(host: FakeHost, s3: bool) -> None:
    secrets = host.state / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "k3s-token").write_text("K10token\n")
    env_file = secrets / "etcd-s3.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n")
    env_file.chmod(0o600)
    etc = host.root / "etc/nixos-k3s"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "etcd-restore.env").write_text(
        f"TOKEN_FILE={secrets / 'k3s-token'}\n"
        f'S3_FLAGS="{S3_FLAGS if s3 else ""}"\n'
        f"S3_ENVIRONMENT_FILE={env_file if s3 else ''}\n"
    )
    db = host.root / "var/lib/rancher/k3s/server/db/etcd"
    db.mkdir(parents=True, exist_ok=True)
    (db / "member").write_text("old member data\n")


def ssh_config(servers: dict[str, SshServer], path: Path) -> Path:
    known = path.parent / "known_hosts"
    known.write_text(
        "".join(f"[127.0.0.1]:{s.port} {s.host_public_key()}\n" for s in servers.values())
    )
    path.write_text(
        "".join(
            f"Host {name}\n  HostName 127.0.0.1\n  Port {s.port}\n  User root\n"
            f"  IdentityFile {s.client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
            for name, s in servers.items()
        )
    )
    return path


def restore(
    servers: dict[str, SshServer], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "SSH_CONFIG": str(ssh_config(servers, tmp_path / "ssh_config")),
        "REMOTE_SUDO": "",
    }
    return subprocess.run(
        local_invocation("etcd-restore.sh", *args),
        shell=True,
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def unit_state(host: FakeHost) -> str:
    return (host.root / "units/k3s.service").read_text().strip()


def db_present(host: FakeHost) -> bool:
    return (host.root / "var/lib/rancher/k3s/server/db/etcd/member").exists()


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_restore_from_s3_resets_the_bootstrap_server_then_the_others_rejoin(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path
) -> None:
    result = restore(servers, tmp_path, SNAPSHOT, *NAMES)

    assert result.returncode == 0, result.stderr
    steps = [
        line.removeprefix("etcd-restore.sh: ")
        for line in result.stderr.splitlines()
        if line.startswith("etcd-restore.sh: server")
    ]
    assert steps == [
        "server2: stop",
        "server3: stop",
        "server1: stop",
        f"server1: reset {SNAPSHOT}",
        "server2: rejoin",
        "server3: rejoin",
    ]
    first, second, third = (hosts[name] for name in NAMES)
    [reset_call] = [c for c in first.calls("k3s") if c.startswith("server")]
    token = first.state / "secrets/k3s-token"
    assert reset_call.split() == [
        "server",
        "--cluster-reset",
        f"--cluster-reset-restore-path={SNAPSHOT}",
        f"--token-file={token}",
        *S3_FLAGS.split(),
    ]
    # the keys reached k3s through its environment, and nowhere else
    assert (first.root / "k3s/reset").read_text().splitlines() == [
        SNAPSHOT,
        f"AWS_ACCESS_KEY_ID sha256:{sha(ACCESS_KEY)}",
        f"AWS_SECRET_ACCESS_KEY sha256:{sha(SECRET_KEY)}",
    ]
    for host in hosts.values():
        assert unit_state(host) == "active"
        log = "\n".join(host.calls())
        assert ACCESS_KEY not in log and SECRET_KEY not in log
    assert first.calls("systemctl") == ["stop k3s.service", "is-active --quiet k3s.service",
                                        "start k3s.service"]  # fmt: skip
    assert db_present(first)  # the bootstrap server keeps (the restored) etcd
    assert not db_present(second) and not db_present(third)
    assert ACCESS_KEY not in result.stderr + result.stdout
    assert SECRET_KEY not in result.stderr + result.stdout
    assert "etcd restored from" in result.stderr and "2 other server(s) rejoined" in result.stderr


def test_restore_from_a_local_file_needs_no_s3(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path
) -> None:
    first = hosts["server1"]
    prepare_server(first, s3=False)
    snapshot = first.root / "var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-1"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text("snapshot\n")

    result = restore(servers, tmp_path, str(snapshot), "server1")

    assert result.returncode == 0, result.stderr
    [reset_call] = [c for c in first.calls("k3s") if c.startswith("server")]
    assert "--etcd-s3" not in reset_call
    assert (first.root / "k3s/reset").read_text().splitlines() == [str(snapshot)]
    # the single server was not asked to rejoin; the others were not touched
    assert hosts["server2"].calls() == [] and hosts["server3"].calls() == []


def test_a_failed_reset_stops_the_restore_with_the_others_untouched(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path
) -> None:
    (hosts["server1"].root / "k3s").mkdir()
    (hosts["server1"].root / "k3s/reset-fails").write_text("")

    result = restore(servers, tmp_path, SNAPSHOT, *NAMES)

    assert result.returncode == 1
    assert "reset on server1 failed; k3s is stopped on every server" in result.stderr
    assert "k3s --cluster-reset failed" in result.stderr
    for host in hosts.values():
        assert unit_state(host) == "inactive"
        assert db_present(host)
    assert "rejoin" not in result.stderr


def test_the_first_server_that_cannot_rejoin_stops_the_run(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path
) -> None:
    failing = hosts["server2"].root / "start-fails"
    failing.mkdir()
    (failing / "k3s.service").write_text("")

    result = restore(servers, tmp_path, SNAPSHOT, *NAMES)

    assert result.returncode == 1
    assert "server2 did not rejoin" in result.stderr
    assert unit_state(hosts["server1"]) == "active"
    assert unit_state(hosts["server3"]) == "inactive" and db_present(hosts["server3"])
    assert "server3: rejoin" not in result.stderr


def test_a_snapshot_name_without_s3_is_refused_on_the_server(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path
) -> None:
    prepare_server(hosts["server1"], s3=False)

    result = restore(servers, tmp_path, SNAPSHOT, "server1")

    assert result.returncode == 1
    assert "S3 is not configured here: give a file path" in result.stderr
    assert [c for c in hosts["server1"].calls("k3s") if c.startswith("server")] == []


@pytest.mark.parametrize(
    "args",
    [("only-a-snapshot",), ("bad name; rm -rf /", "server1"), ("relative/path", "server1")],
)
def test_bad_arguments_exit_2_before_any_host_is_touched(
    servers: dict[str, SshServer], hosts: dict[str, FakeHost], tmp_path: Path, args: tuple[str]
) -> None:
    result = restore(servers, tmp_path, *args)

    assert result.returncode == 2
    assert "etcd-restore.sh:" in result.stderr
    assert all(host.calls() == [] for host in hosts.values())
