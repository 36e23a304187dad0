"""deploy.sh + host-activate.sh against a real sshd and a fake NixOS host."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from components.scripts import PROJECT_DIR, local_invocation, remote_invocation
from tests.remote.harness import (
    HOST_NAME,
    FakeHost,
    deploy_env,
    make_nixos_source,
    release_tarball,
    run_operator_script,
)


def deploy(host: FakeHost, source: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = deploy_env(host.server, source, **overrides)
    key = host.server.client_key.read_bytes()
    return run_operator_script("deploy.sh", env, key)


def release_of(host: FakeHost, source: Path) -> str:
    return deploy_env(host.server, source)["RELEASE_ID"]


def built_system(host: FakeHost, release: str) -> Path:
    return (host.state / "releases" / release / "result").resolve()


def timers_armed(host: FakeHost) -> list[str]:
    return [call for call in host.calls("systemd-run") if "--on-active=" in call]


def assert_deployed(host: FakeHost, source: Path) -> None:
    release = release_of(host, source)
    built = built_system(host, release)
    assert built.name.endswith(f"-nixos-system-{HOST_NAME}")
    assert host.current_system() == built
    assert host.boot_profile() == built
    assert (host.state / "current-release").read_text().strip() == release
    assert not (host.state / "pending").exists()
    assert not host.timer().exists(), "rollback timer left armed after confirmation"


def assert_rolled_back(host: FakeHost) -> None:
    assert host.current_system() == host.initial_system
    assert host.boot_profile() == host.initial_system
    assert not (host.state / "pending").exists()
    assert not host.timer().exists()
    assert not (host.state / "current-release").exists()


def test_success_pushes_activates_confirms_and_persists(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)
    release = release_of(host, source)
    flake = host.state / "releases" / release / "flake"
    assert (flake / f"hosts/{HOST_NAME}.json").read_text().strip() == deploy_env(
        host.server, source
    )["HOST_JSON"]
    assert (flake / "modules/base.nix").is_file()

    flake_ref = f"path:{flake}#{HOST_NAME}"
    # One evaluation (the build); activation and persisting use the built system itself.
    assert host.calls("nixos-rebuild") == [f"build --no-reexec --flake {flake_ref}"]
    built = built_system(host, release)
    assert host.calls("switch-to-configuration") == [f"{built} test", f"{built} boot"]
    assert host.calls("nix-env") == [
        f"--profile {host.root / 'nix/var/nix/profiles/system'} --set {built}"
    ]
    (arm,) = timers_armed(host)
    assert "--unit=nixos-k3s-rollback" in arm
    assert "--on-active=60s" in arm
    assert arm.endswith(f"{host.state}/host-activate.sh rollback {release}")
    assert "systemctl\tstop nixos-k3s-rollback.timer" in host.calls()
    order = [line.replace("\t", " ") for line in host.calls()]
    test = order.index(f"switch-to-configuration {built} test")
    persist = order.index(f"switch-to-configuration {built} boot")
    arm_at = next(i for i, c in enumerate(order) if c.startswith("systemd-run --unit=nixos-k3s"))
    assert arm_at < test
    disarm = (
        len(order)
        - 1
        - next(i for i, c in enumerate(reversed(order)) if c.startswith("systemctl stop"))
    )
    health = next(i for i, c in enumerate(order) if c.startswith("systemctl is-active"))
    assert test < health < disarm < persist

    key_text = host.server.client_key.read_text()
    for path in [host.root / "calls.log", host.state / "deploy.log"]:
        assert key_text.splitlines()[1] not in path.read_text()


def test_rerun_of_a_deployed_release_changes_nothing(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    assert deploy(host, source).returncode == 0
    calls_before = len(host.calls())
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)
    new_calls = host.calls()[calls_before:]
    assert not [c for c in new_calls if c.startswith(("nixos-rebuild", "systemd-run"))]
    assert "already present" in result.stderr


def test_build_failure_activates_nothing(host: FakeHost, tmp_path: Path) -> None:
    broken = make_nixos_source(tmp_path / "broken", {"build-fails": ""})
    result = deploy(host, broken)
    assert result.returncode == 1
    assert "build of release" in result.stderr
    assert "builder for" in result.stderr, "the on-host log tail is printed"
    assert host.current_system() == host.initial_system
    assert host.calls("systemd-run") == []
    assert [c.split()[0] for c in host.calls("nixos-rebuild")] == ["build"]
    assert not (host.state / "pending").exists()

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_activation_failure_rolls_back_immediately(host: FakeHost, tmp_path: Path) -> None:
    broken = make_nixos_source(tmp_path / "broken", {"activation-exit": "4"})
    result = deploy(host, broken)
    assert result.returncode == 1
    assert "activation of release" in result.stderr
    assert_rolled_back(host)
    built = next(c.split()[0] for c in host.calls("switch-to-configuration"))
    assert built != str(host.initial_system)
    assert f"switch-to-configuration\t{host.initial_system} test" in host.calls()
    assert "nixos-rebuild" not in "".join(c for c in host.calls() if "switch --no-reexec" in c)

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_health_failure_rolls_back(host: FakeHost, tmp_path: Path) -> None:
    unhealthy = make_nixos_source(tmp_path / "unhealthy", {"units": "k3s.service failed\n"})
    result = deploy(host, unhealthy)
    assert result.returncode == 1
    assert "health check" in result.stderr
    assert "k3s.service=failed" in result.stderr
    assert_rolled_back(host)
    assert not [c for c in host.calls("nixos-rebuild") if c.startswith("switch")]
    # This was the host's first, k3s-releasing push: the rollback holds k3s again (stopped).
    assert (host.root / "units/k3s.service").read_text().strip() == "inactive"

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_failed_persist_after_a_healthy_confirm_rolls_back(host: FakeHost, tmp_path: Path) -> None:
    flaky = make_nixos_source(tmp_path / "flaky", {"switch-exit": "4"})
    result = deploy(host, flaky)
    assert result.returncode == 1
    assert "persisting release" in result.stderr and "rolled back" in result.stderr
    # The persist step had already moved the boot profile: it points at the old generation again.
    assert_rolled_back(host)
    profile = host.root / "nix/var/nix/profiles/system"
    new = built_system(host, release_of(host, flaky))
    assert host.calls("nix-env") == [
        f"--profile {profile} --set {new}",
        f"--profile {profile} --set {host.initial_system}",
    ]

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_lost_ssh_after_activation_leaves_rollback_to_the_timer(
    host: FakeHost, tmp_path: Path
) -> None:
    locked_out = make_nixos_source(tmp_path / "locked-out", {"breaks-ssh": ""})
    result = deploy(host, locked_out, ROLLBACK_TIMEOUT="3")
    assert result.returncode == 1
    assert "rolls itself back" in result.stderr
    new_system = built_system(host, release_of(host, locked_out))
    assert host.current_system() == new_system, "deploy.sh cannot reach the host to roll back"
    assert host.timer().exists(), "the on-host timer is still armed"

    fired = host.fire_timer()
    assert fired.returncode == 0, fired.stderr
    assert_rolled_back(host)
    assert host.server.ssh("true").returncode == 0, "rollback restored SSH access"
    assert "rolled back to" in (host.state / "deploy.log").read_text()

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_confirm_after_timer_fired_fails_without_switching(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    release = release_of(host, source)
    push = deploy(host, source, HEALTH_UNITS="")
    assert push.returncode == 0
    # A second release activated but never confirmed: fire its timer, then try to confirm.
    second = make_nixos_source(tmp_path / "second", {"marker": "second"})
    second_release = release_of(host, second)
    tarball = release_tarball(second)
    sha = hashlib.sha256(tarball).hexdigest()
    received = host.server.ssh(
        remote_invocation("host-activate.sh", "receive", second_release, sha), tarball
    )
    assert received.returncode == 0, received.stderr
    activated = host.server.ssh(
        remote_invocation("host-activate.sh", "activate", second_release, HOST_NAME, "60")
    )
    assert activated.returncode == 0, activated.stderr
    assert host.fire_timer().returncode == 0
    confirmed = host.server.ssh(
        remote_invocation("host-activate.sh", "confirm", second_release, HOST_NAME, "2")
    )
    assert confirmed.returncode == 6
    assert "rollback timer already fired" in confirmed.stderr
    assert host.current_system() == built_system(host, release)
    assert (host.state / "current-release").read_text().strip() == release


def test_interrupted_activation_is_rearmed_and_converges(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    release = release_of(host, source)
    tarball = release_tarball(source)
    sha = hashlib.sha256(tarball).hexdigest()
    assert (
        host.server.ssh(
            remote_invocation("host-activate.sh", "receive", release, sha), tarball
        ).returncode
        == 0
    )
    # Activated, then the operator vanished: the timer stays armed, nothing is confirmed.
    assert (
        host.server.ssh(
            remote_invocation("host-activate.sh", "activate", release, HOST_NAME, "60")
        ).returncode
        == 0
    )
    assert host.timer().exists()
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)
    assert len(timers_armed(host)) == 2


def test_cut_upload_leaves_no_release_and_rerun_converges(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    release = release_of(host, source)
    tarball = release_tarball(source)
    sha = hashlib.sha256(tarball).hexdigest()
    receive = remote_invocation("host-activate.sh", "receive", release, sha)

    cut = host.server.ssh(receive, tarball[: len(tarball) // 2])
    assert cut.returncode == 1
    assert "incomplete or corrupt" in cut.stderr
    releases = host.state / "releases"
    assert not (releases / release).exists()
    assert list(releases.iterdir()) == []

    # The client dies mid-stream: the host must notice the short stream and clean up.
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{host.server.port} {host.server.host_public_key()}\n")
    client = subprocess.Popen(
        [*host.server.ssh_argv(known_hosts), receive], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert client.stdin is not None
    client.stdin.write(tarball[:10240])
    client.stdin.flush()
    time.sleep(0.5)
    client.kill()
    client.wait()
    log = host.state / "deploy.log"
    for _ in range(100):
        if log.read_text().count("incomplete or corrupt") == 2 and not list(releases.iterdir()):
            break
        time.sleep(0.1)
    assert log.read_text().count("incomplete or corrupt") == 2
    assert list(releases.iterdir()) == []

    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)


def test_old_releases_are_pruned(host: FakeHost, tmp_path: Path) -> None:
    releases = []
    for index in range(4):
        source = make_nixos_source(tmp_path / str(index), {"marker": str(index)})
        assert deploy(host, source).returncode == 0
        releases.append(release_of(host, source))
    kept = sorted(p.name for p in (host.state / "releases").iterdir())
    assert kept == sorted(releases[-3:])


def test_connection_lost_during_activation_is_confirmed_over_a_new_one(
    host: FakeHost, tmp_path: Path
) -> None:
    source = make_nixos_source(tmp_path, {"drops-session": ""})
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert "connection lost during activation" in result.stderr
    log = (host.state / "deploy.log").read_text()
    assert "activation output after the session is gone" in log
    assert "activated; waiting for confirmation" in log, "activate finished without its client"
    assert_deployed(host, source)


def test_status_reports_releases_and_log(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    assert deploy(host, source).returncode == 0
    status = host.server.ssh(remote_invocation("host-activate.sh", "status"))
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    release = release_of(host, source)
    assert f"current-release: {release}" in lines
    assert f"current-system: {built_system(host, release)}" in lines
    assert "pending-release: " in lines
    assert any(line.endswith(f"release {release} confirmed and persisted") for line in lines)


def test_failed_activation_without_its_client_is_not_confirmed(
    host: FakeHost, tmp_path: Path
) -> None:
    source = make_nixos_source(tmp_path, {"drops-session": "", "activation-exit": "4"})
    result = deploy(host, source)
    assert result.returncode == 1
    assert "connection lost during activation" in result.stderr
    assert_rolled_back(host)
    assert not [c for c in host.calls("nixos-rebuild") if c.startswith("switch")]


def build_only(host: FakeHost, source: Path) -> subprocess.CompletedProcess[str]:
    env = deploy_env(host.server, source)
    key = host.server.client_key.read_bytes()
    return run_operator_script("deploy.sh", env, key, args=["build"])


def test_build_mode_builds_and_activates_nothing(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    result = build_only(host, source)
    assert result.returncode == 0, result.stderr
    assert "built" in result.stderr
    release = release_of(host, source)
    assert built_system(host, release).name.endswith(f"-nixos-system-{HOST_NAME}")
    assert host.current_system() == host.initial_system
    assert host.boot_profile() == host.initial_system
    assert [c.split()[0] for c in host.calls("nixos-rebuild")] == ["build"]
    assert host.calls("systemd-run") == []
    assert not (host.state / "pending").exists()
    assert not (host.state / "k3s-released").exists(), "a build must not release k3s"


def test_the_push_after_a_build_only_activates(host: FakeHost, tmp_path: Path) -> None:
    """Build once: the gated push reuses the build step's result."""
    source = make_nixos_source(tmp_path)
    assert build_only(host, source).returncode == 0
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert "already built" in result.stderr
    assert_deployed(host, source)
    assert [c.split()[0] for c in host.calls("nixos-rebuild")] == ["build"]
    built = built_system(host, release_of(host, source))
    assert host.calls("switch-to-configuration") == [f"{built} test", f"{built} boot"]


def test_build_mode_failure_activates_nothing(host: FakeHost, tmp_path: Path) -> None:
    broken = make_nixos_source(tmp_path / "broken", {"build-fails": ""})
    result = build_only(host, broken)
    assert result.returncode == 1
    assert "build of release" in result.stderr and "nothing was activated" in result.stderr
    assert host.current_system() == host.initial_system
    assert host.calls("systemd-run") == []


def test_first_push_releases_the_held_k3s(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    assert deploy(host, source).returncode == 0
    assert_deployed(host, source)
    assert release_of(host, source) in (host.state / "k3s-released").read_text()
    assert not (host.state / "k3s-release-pending").exists()
    calls = host.calls()
    test = next(
        i for i, c in enumerate(calls) if c.startswith("switch-to-configuration") and "test" in c
    )
    start = calls.index("systemctl\tstart --no-block k3s.service")
    assert test < start < next(i for i, c in enumerate(calls) if "is-active" in c)


def test_rollback_of_the_releasing_push_holds_k3s_again(host: FakeHost, tmp_path: Path) -> None:
    """As strong as before: the host goes back to where it was, k3s held and stopped."""
    unhealthy = make_nixos_source(tmp_path / "unhealthy", {"units": "k3s.service failed\n"})
    result = deploy(host, unhealthy)
    assert result.returncode == 1
    assert_rolled_back(host)
    assert not (host.state / "k3s-released").exists()
    assert not (host.state / "k3s-release-pending").exists()
    assert "systemctl\tstop k3s.service" in host.calls()


def test_rollback_of_a_later_push_keeps_k3s_released(host: FakeHost, tmp_path: Path) -> None:
    good = make_nixos_source(tmp_path / "good")
    assert deploy(host, good).returncode == 0
    released = (host.state / "k3s-released").read_text()
    unhealthy = make_nixos_source(tmp_path / "unhealthy", {"units": "k3s.service failed\n"})
    assert deploy(host, unhealthy).returncode == 1
    assert (host.state / "k3s-released").read_text() == released
    assert "systemctl\tstop k3s.service" not in host.calls()
    assert host.current_system() == built_system(host, release_of(host, good))


def test_timer_rollback_of_the_releasing_push_holds_k3s_again(
    host: FakeHost, tmp_path: Path
) -> None:
    """Connection lost after activation: the on-host timer rolls back and holds k3s again."""
    source = make_nixos_source(tmp_path, {"breaks-ssh": ""})
    result = deploy(host, source, ROLLBACK_TIMEOUT="3")
    assert result.returncode == 1
    if host.timer().exists():
        assert host.fire_timer().returncode == 0
    assert host.current_system() == host.initial_system
    assert not (host.state / "k3s-released").exists()


def delay_start(host: FakeHost, unit: str, seconds: int) -> None:
    """`systemctl start UNIT` leaves it activating for `seconds` (a server joining etcd)."""
    (host.root / "start-delay").mkdir(exist_ok=True)
    (host.root / "start-delay" / unit).write_text(f"{seconds}\n")


def test_the_push_that_first_starts_k3s_waits_for_the_join_past_the_health_timeout(
    host: FakeHost, tmp_path: Path
) -> None:
    """A joining server's k3s.service is active only once it has joined etcd, which can take
    minutes (other servers ahead in etcd's learner queue): its first push arms JOIN_TIMEOUT
    and waits for k3s until that deadline, not HEALTH_TIMEOUT (2 s here)."""
    delay_start(host, "k3s.service", 6)
    source = make_nixos_source(tmp_path, {"units": "k3s.service inactive\n"})
    result = deploy(host, source, ROLLBACK_TIMEOUT="30", JOIN_TIMEOUT="45")
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)
    assert "--on-active=45s" in timers_armed(host)[-1]
    assert "rollback timeout 45s (join timeout)" in result.stderr
    waited = re.search(r"health check: k3s.service \(up to ([0-9]+)s\)", result.stderr)
    assert waited and int(waited.group(1)) > 10, "the join deadline, not HEALTH_TIMEOUT (2 s)"


def test_a_first_start_that_never_joins_rolls_back_at_the_join_deadline(
    host: FakeHost, tmp_path: Path
) -> None:
    """As strong as before, only later: k3s that does not come up by JOIN_TIMEOUT rolls the
    host back and holds k3s again."""
    delay_start(host, "k3s.service", 600)
    source = make_nixos_source(tmp_path, {"units": "k3s.service inactive\n"})
    result = deploy(host, source, ROLLBACK_TIMEOUT="3", JOIN_TIMEOUT="9")
    assert result.returncode == 1
    assert "health check of release" in result.stderr
    assert "k3s.service=activating" in result.stderr
    assert "--on-active=9s" in timers_armed(host)[-1]
    assert_rolled_back(host)
    assert not (host.state / "k3s-released").exists()


def test_a_later_push_keeps_the_health_timeout_and_rollback_timeout(
    host: FakeHost, tmp_path: Path
) -> None:
    """Once k3s has run on the host, JOIN_TIMEOUT no longer applies."""
    first = make_nixos_source(tmp_path / "first")
    assert deploy(host, first, JOIN_TIMEOUT="45").returncode == 0
    slow = make_nixos_source(tmp_path / "slow", {"units": "k3s.service activating\n"})
    result = deploy(host, slow, ROLLBACK_TIMEOUT="30", JOIN_TIMEOUT="45")
    assert result.returncode == 1
    assert "health check: k3s.service (up to 2s)" in result.stderr
    assert "--on-active=30s" in timers_armed(host)[-1]
    assert host.current_system() == built_system(host, release_of(host, first))


def test_an_unknown_mode_is_refused_before_anything_runs(host: FakeHost, tmp_path: Path) -> None:
    env = deploy_env(host.server, make_nixos_source(tmp_path))
    result = run_operator_script("deploy.sh", env, host.server.client_key.read_bytes(), args=["x"])
    assert result.returncode == 2
    assert "unknown mode x" in result.stderr
    assert host.calls() == []


def test_a_host_deployed_before_the_hold_gets_released_and_keeps_k3s(
    host: FakeHost, tmp_path: Path
) -> None:
    """A host with a confirmed release but no release file (deployed before k3s was held):
    its next push creates the file, or the new system's k3s.service would be skipped, and a
    rollback of that push does not stop k3s."""
    old = make_nixos_source(tmp_path / "old")
    assert deploy(host, old).returncode == 0
    (host.state / "k3s-released").unlink()
    unhealthy = make_nixos_source(tmp_path / "unhealthy", {"units": "k3s.service failed\n"})
    assert deploy(host, unhealthy).returncode == 1
    assert (host.state / "k3s-released").exists()
    assert "systemctl\tstop k3s.service" not in host.calls()
    (host.state / "k3s-released").unlink()
    new = make_nixos_source(tmp_path / "new", {"note": "a release other than old"})
    assert deploy(host, new).returncode == 0
    assert_deployed(host, new)
    assert release_of(host, new) in (host.state / "k3s-released").read_text()
    assert not (host.state / "k3s-release-pending").exists()


def fire_timer_when_due(
    host: FakeHost, limit: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Fires the rollback timer when systemd would: on_active seconds after it was armed.
    Returns what it ran and when the timer was armed."""
    timer = host.timer()
    deadline = time.monotonic() + limit
    while not timer.exists():
        assert time.monotonic() < deadline, "the rollback timer was never armed"
        time.sleep(0.05)
    on_active = timer.read_text().splitlines()[0].removeprefix("on_active=")
    armed_at = timer.stat().st_mtime
    due = armed_at + float(on_active.removesuffix("s"))
    time.sleep(max(0.0, due - time.time()))
    return host.fire_timer(), armed_at


def assert_process_gone(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} of the hung activation is still running")


# Drill: a `nixos-rebuild test` that never returns (a k3s server that waits for its etcd peers).
ROLLBACK_DRILL_TIMEOUT = 6
STOP_GRACE = 5  # host-activate.sh STOP_GRACE
MARGIN = 8


def test_hung_activation_is_stopped_at_its_deadline_and_rolled_back(
    host: FakeHost, tmp_path: Path
) -> None:
    hung = make_nixos_source(tmp_path / "hung", {"activation-hangs": ""})
    started = time.monotonic()
    result = deploy(host, hung, ROLLBACK_TIMEOUT=str(ROLLBACK_DRILL_TIMEOUT))
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < ROLLBACK_DRILL_TIMEOUT + MARGIN, elapsed
    assert "did not finish within 4s" in result.stderr, "two thirds of the rollback timeout"
    assert "--- last 30 lines of" in result.stderr, "the operator sees the host's log"
    assert "waiting for etcd peers" in result.stderr
    assert_rolled_back(host)
    assert_process_gone(host.root / "hung-activation.pid")
    assert list((host.root / "services").glob("*.pid")) == [], "switch unit stopped"
    assert "systemctl\tstop nixos-rebuild-switch-to-configuration*.service" in host.calls()

    fixed = make_nixos_source(tmp_path / "fixed")
    assert deploy(host, fixed).returncode == 0
    assert_deployed(host, fixed)


def test_rollback_timer_stops_a_stuck_activation_instead_of_waiting(
    host: FakeHost, tmp_path: Path
) -> None:
    # The activate step itself stops responding (SIGSTOP) while `nixos-rebuild test` hangs, so
    # its own deadline cannot act: the rollback timer must stop it rather than wait on its lock.
    hung = make_nixos_source(tmp_path / "hung", {"activation-hangs": ""})
    env = deploy_env(host.server, hung, ROLLBACK_TIMEOUT=str(ROLLBACK_DRILL_TIMEOUT))
    with host.server.client_key.open("rb") as key:
        operator = subprocess.Popen(
            local_invocation("deploy.sh"), shell=True, cwd=PROJECT_DIR, env=env,
            stdin=key, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    hung_pid = host.root / "hung-activation.pid"
    for _ in range(300):
        if hung_pid.exists():
            break
        time.sleep(0.05)
    owner = dict(
        line.split("=", 1) for line in (host.state / "lock.owner").read_text().splitlines()
    )
    assert owner["command"] == "activate" and "activation" in owner
    os.kill(int(owner["pid"]), signal.SIGSTOP)

    fired, armed_at = fire_timer_when_due(host)
    assert fired.returncode == 0, fired.stderr
    assert time.time() - armed_at < ROLLBACK_DRILL_TIMEOUT + STOP_GRACE + MARGIN
    assert host.current_system() == host.initial_system
    assert host.boot_profile() == host.initial_system
    assert not (host.state / "pending").exists()
    assert_process_gone(hung_pid)
    log = (host.state / "deploy.log").read_text()
    assert "still holds" in log and "stopping it" in log and "rolled back to" in log

    _, stderr = operator.communicate(timeout=60)
    assert operator.returncode == 1
    assert "--- last 30 lines of" in stderr.decode(), "the operator sees the host's log"
    assert "rolled back to" in stderr.decode()


# --- the early download of the CNI images (host-activate.sh start_early_fetch) ------------------


def install_fetch_tool(host: FakeHost) -> Path:
    """The running system's nixos-k3s-cni-fetch: records its arguments, one run a line."""
    record = host.root / "cni-fetch-runs"
    tool = host.initial_system / "sw/bin/nixos-k3s-cni-fetch"
    tool.parent.mkdir(parents=True)
    tool.write_text(f'#!/usr/bin/env bash\necho "$*" >>{record}\n')
    tool.chmod(0o755)
    return record


def wait_for_file(path: Path, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_a_build_starts_the_early_download_of_the_cni_images(
    host: FakeHost, tmp_path: Path
) -> None:
    record = install_fetch_tool(host)
    source = make_nixos_source(tmp_path)
    result = build_only(host, source)
    assert result.returncode == 0, result.stderr
    release = release_of(host, source)
    host_json = host.state / "releases" / release / "flake" / f"hosts/{HOST_NAME}.json"
    (start,) = host.calls("systemd-run")
    assert start.startswith("--unit=k3s-cni-fetch-early --collect --no-block ")
    assert start.endswith(
        f"{host.root}/run/current-system/sw/bin/nixos-k3s-cni-fetch --host-json {host_json}"
    )
    # Started before the build, run outside the SSH session as a transient unit.
    order = [line.split("\t")[0] for line in host.calls()]
    assert order.index("systemd-run") < order.index("nixos-rebuild")
    assert wait_for_file(record) == f"--host-json {host_json}\n"

    # The push reuses the build: nothing is built, nothing downloaded again.
    assert deploy(host, source).returncode == 0
    assert_deployed(host, source)
    assert [c for c in host.calls("systemd-run") if "k3s-cni-fetch" in c] == [start]


def test_a_build_goes_on_when_the_early_download_cannot_start(
    host: FakeHost, tmp_path: Path
) -> None:
    record = install_fetch_tool(host)
    (host.root / "systemd-run-fails.k3s-cni-fetch-early").touch()
    source = make_nixos_source(tmp_path)
    result = deploy(host, source)
    assert result.returncode == 0, result.stderr
    assert_deployed(host, source)
    assert "could not start the early download of the CNI images" in result.stderr
    assert not record.exists()


def test_without_the_tool_a_build_starts_no_download(host: FakeHost, tmp_path: Path) -> None:
    source = make_nixos_source(tmp_path)
    assert build_only(host, source).returncode == 0
    assert not [c for c in host.calls("systemd-run") if "k3s-cni-fetch" in c]
    assert "early download" not in (host.state / "deploy.log").read_text()
