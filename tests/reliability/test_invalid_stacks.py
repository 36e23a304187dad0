"""Every invalid stack file stops the plan with exit 2 and a message naming the bad field.

Each file in invalid/ starts with `# expect: <field path>` (or, where no field is to blame, the
start of the message). All run through the CLI's own entry point, one after another in one
fresh interpreter; a few also run as real subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_DIR
from tests.reliability.isolated import (
    CliRun,
    config_problems,
    in_fresh_process,
    run_cli_in_process,
)
from tooling import plan
from tooling.__main__ import EXIT_CONFIG_ERROR

INVALID_DIR = Path(__file__).parent / "invalid"
INVALID_FILES = sorted(INVALID_DIR.glob("*.yaml"))
PLAN_CLI = (sys.executable, "-m", "tooling", "plan")
TAILSCALE_STACK = Path(__file__).parent / "stacks" / "Pulumi.tailscale.yaml"
# Files run as real subprocesses too (the rest only in-process, to keep the suite fast).
SUBPROCESS_FILES = (
    "bad-yaml",
    "unknown-provider",
    "cilium-mtu-as-string",
    "even-server-count",
    "typo-top-level-key",
)
# Enum-like fields: the message must list what is allowed.
ALLOWED_VALUES = {
    "unknown-provider": ["'hetzner'", "'colima'"],
    "bad-taint-effect": ["'NoSchedule'", "'PreferNoSchedule'", "'NoExecute'"],
    "unknown-location": ["'fsn1'", "'nbg1'", "'hel1'", "'ash'", "'hil'", "'sin'"],
    "cilium-unknown-tunnel-protocol": ["'vxlan'", "'geneve'"],
    "unknown-disable-component": ["'coredns'", "'traefik'"],
    "flannel-in-disable": ["coredns", "local-storage", "metrics-server", "servicelb", "traefik"],
    "unknown-server-type": ["cx23", "cpx12", "cax11", "ccx13"],
    "deprecated-server-type": ["'cx23'"],
    "bad-cilium-version": ["1.18.12", "1.19.6", "1.20.0"],
    "typo-nested-key": ["did you mean 'version'", "routingMode", "hubble"],
    "typo-pool-key": ["did you mean 'serverType'", "locations", "taints"],
    "server-type-not-in-location": ["offered in: fsn1, nbg1, hel1"],
    "location-outside-network-zone": ["its locations: fsn1, nbg1, hel1"],
    "admin-user-root": ["nixbld*", "systemd-network"],
    "api-endpoint-ipv6-unbracketed": ["[https://]HOST[:PORT]", "[2001:db8::1]"],
    "colima-host-name-too-long": ["macOS allows 103", "at most 40 characters"],
    "unknown-cni": ["'cilium'", "'flannel'"],
    "unknown-container-mode": ["'host-users'", "'user-namespace'"],
    "cilium-user-namespace-container": ["EPERM", "allowed with cilium: 'host-users'"],
    "hcloud-poll-function-unknown": ["'constant'", "'exponential'"],
    "hcloud-poll-interval-no-unit": ["'500ms'", "'5s'"],
    "hcloud-constant-polling-too-fast": ["at least '23s'", "'exponential'"],
}
# Colima limits depend on where Lima keeps its instances: the corpus runs with a typical Mac's.
LIMA_HOME = "/Users/operator/.colima/_lima"


def expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <path>'"
    return first.removeprefix("# expect: ").strip()


def problem_lines(stderr: str) -> list[str]:
    """The per-problem lines of a config error (after the 'invalid stack config' header)."""
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: invalid stack config"), stderr
    return [line.strip() for line in lines[1:] if line.startswith("  ")]


def names_field(lines: list[str], expected: str) -> bool:
    """A problem line starts with the field path; path-less problems with the message."""
    if " " in expected:  # a message, not a field path (field paths hold no spaces)
        return any(line.startswith(expected) for line in lines)
    return any(line.startswith(f"{expected}: ") for line in lines)


def test_corpus_is_large_and_every_file_names_its_field() -> None:
    assert len(INVALID_FILES) >= 40
    assert all(expectation(path) for path in INVALID_FILES)
    assert set(SUBPROCESS_FILES) <= {p.stem for p in INVALID_FILES}
    assert set(ALLOWED_VALUES) <= {p.stem for p in INVALID_FILES}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliRun]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LIMA_HOME", LIMA_HOME)  # the fresh process inherits it
        return in_fresh_process(run_cli_in_process, INVALID_FILES, tmp_path_factory.mktemp("plans"))


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_stack_exits_2_naming_the_field(path: Path, cli_runs: dict[str, CliRun]) -> None:
    run = cli_runs[path.stem]
    assert run.code == EXIT_CONFIG_ERROR, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    lines = problem_lines(run.stderr)
    expected = expectation(path)
    assert names_field(lines, expected), f"no problem names {expected!r}:\n{run.stderr}"
    for value in ALLOWED_VALUES.get(path.stem, []):
        assert value in run.stderr, f"message does not list allowed value {value}"
    assert not run.wrote_plan, "a failed plan must not write plan.json"


@pytest.mark.parametrize("name", SUBPROCESS_FILES)
def test_invalid_stack_via_real_cli(name: str, tmp_path: Path) -> None:
    path = INVALID_DIR / f"{name}.yaml"
    done = subprocess.run(
        [*PLAN_CLI, "--config-file", str(path), "--out", str(tmp_path / "plan"), "--quiet"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG_ERROR, done.stderr
    assert "Traceback" not in done.stderr
    assert names_field(problem_lines(done.stderr), expectation(path)), done.stderr
    assert done.stdout == ""


def tailscale_stack() -> plan.StackFile:
    cluster = yaml.safe_load(TAILSCALE_STACK.read_text(encoding="utf-8"))
    cluster = cluster["config"]["nixos-k3s:cluster"]
    return plan.StackFile(
        stack="test",
        config={"nixos-k3s:cluster": cluster, "hcloud:token": "token-for-tailscale-test"},
        secret_keys=frozenset({"hcloud:token"}),
    )


def test_tailscale_without_auth_key_is_refused_by_load_config() -> None:
    # The CLI stands in a placeholder for every unset secret, so only a stack run without the
    # placeholder (as `pulumi up` does) reaches this check.
    paths, message = in_fresh_process(config_problems, tailscale_stack())
    assert paths == ["nixos-k3s:tailscaleAuthKey"]
    assert "pulumi config set --secret nixos-k3s:tailscaleAuthKey" in message
