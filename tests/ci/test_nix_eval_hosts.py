""".ci/nix-eval-hosts.sh: every host of every stack, `nix eval`uated against the pinned flake.

The script runs for real here with the real offline plan; `nix` is a stand-in
(tests/ci/fakebin/nix) that accepts only the exact call and checks the flake it is given. One
test runs the script's exact `nix eval` call with the real Nix (Debian nix-bin) on a small
self-contained flake laid out like nixos/, so the flags, the `path:` URL and the attribute path
are the ones Nix understands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT_DIR / ".ci" / "nix-eval-hosts.sh"
FAKE_BIN = Path(__file__).resolve().parent / "fakebin"
DRV = re.compile(r"/nix/store/[0-9a-z]{32}-nixos-system-[a-z0-9-]+-25\.11\.drv")
KNOWN_WARNING = "k3s: agentToken and agentToken should not be set if role is 'agent'"
DEV_HOSTS = ["dev-agent-1", "dev-server-1"]
PROD_HOSTS = [
    "prod-control-1",
    "prod-control-2",
    "prod-control-3",
    "prod-workers-1",
    "prod-workers-2",
]


def run_script(
    tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = tmp_path / "nix-calls"
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir(exist_ok=True)
    full_env = {
        "PATH": f"{FAKE_BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "FAKE_NIX_LOG": str(log),
        "RUNNER_TEMP": str(runner_temp),
        **env,
    }
    result = subprocess.run(
        [str(SCRIPT), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert list(runner_temp.iterdir()) == []  # the rendered flakes are removed
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def installable(call: str) -> str:
    return call.split(" ")[-1]


def test_every_host_of_every_stack_is_evaluated_against_the_pinned_flake(
    tmp_path: Path,
) -> None:
    summary = tmp_path / "summary.md"

    result, calls = run_script(tmp_path, GITHUB_STEP_SUMMARY=str(summary))

    assert result.returncode == 0, result.stdout + result.stderr
    ok = [line.split(" ") for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert [(stack, host) for _, stack, host, _ in ok] == [
        *(("dev", host) for host in DEV_HOSTS),
        *(("prod", host) for host in PROD_HOSTS),
    ]
    assert all(DRV.fullmatch(drv) for *_, drv in ok)
    evals, listings = calls[0::2], calls[1::2]
    for call, (_, stack, host, _) in zip(evals, ok, strict=True):
        assert re.fullmatch(
            "--extra-experimental-features nix-command flakes eval --raw --no-update-lock-file "
            + re.escape(f"path:{tmp_path}/runner-temp/nix-eval-hosts.")
            + r"\w{6}"
            + re.escape(
                f"/flakes/{stack}#nixosConfigurations.{host}.config.system.build.toplevel.drvPath"
            ),
            call,
        ), call
    # each stack's flake holds exactly that stack's hosts
    assert (
        listings
        == [f"hosts: {' '.join(f'{h}.json' for h in DEV_HOSTS)}"] * 2
        + [f"hosts: {' '.join(f'{h}.json' for h in PROD_HOSTS)}"] * 5
    )
    assert "::error::" not in result.stdout
    assert KNOWN_WARNING in result.stderr  # shown, and allowed
    assert not (PROJECT_DIR / "nixos" / "hosts").exists()  # the checkout is left as it was
    text = summary.read_text()
    assert text.startswith("## NixOS evaluation of every host\n")
    assert "| `prod` | `prod-workers-2` | `/nix/store/" in text


def test_the_flake_is_a_copy_of_nixos_with_the_plans_host_files(tmp_path: Path) -> None:
    """The stand-in copies the flake it was given aside; compare it with nixos/ and the plan."""
    keep = tmp_path / "kept"
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "nix").write_text(
        "#!/usr/bin/env bash\n"
        "flake=${6#path:}; flake=${flake%%#*}\n"
        f'[ -e "{keep}" ] || cp -R "$flake" "{keep}"\n'
        f'exec "{FAKE_BIN}/nix" "$@"\n'
    )
    (spy / "nix").chmod(0o755)

    result, _ = run_script(tmp_path, "dev", PATH=f"{spy}:{FAKE_BIN}:{os.environ['PATH']}")

    assert result.returncode == 0, result.stderr
    plan = tmp_path / "plan"
    done = subprocess.run(
        [sys.executable, "-m", "tooling", "plan", "--stack", "dev", "--out", str(plan)],
        cwd=PROJECT_DIR,
        capture_output=True,
        check=True,
    )
    assert done.returncode == 0
    for source in sorted((PROJECT_DIR / "nixos").rglob("*")):
        if source.is_file():
            copied = keep / source.relative_to(PROJECT_DIR / "nixos")
            assert copied.read_bytes() == source.read_bytes(), source
    for host in DEV_HOSTS:
        rendered = (keep / "hosts" / f"{host}.json").read_text()
        assert rendered == (plan / "hosts" / f"{host}.json").read_text()
        assert json.loads(rendered)["name"] == host


def test_a_host_that_does_not_evaluate_fails_and_the_others_are_still_tried(
    tmp_path: Path,
) -> None:
    result, calls = run_script(tmp_path, "prod", FAKE_NIX_FAIL_HOST="prod-control-2")

    assert result.returncode == 1
    assert (
        "::error::stack prod: host prod-control-2 does not evaluate (nix exit 1); "
        "see the log above" in result.stdout
    )
    assert "The option `services.k3s.nodeExternalIP' does not exist." in result.stderr
    assert len(calls[0::2]) == 5
    assert "ok prod prod-control-3 " in result.stdout


WARNING_PREFIXES = [
    "evaluation warning: ",  # builtins.warn, Nix 2.23 and later
    "trace: evaluation warning: ",  # nixpkgs lib.warn on older Nix
    "trace: \x1b[1;35mevaluation warning:\x1b[0m ",  # the same on a terminal
    "trace: warning: ",  # older nixpkgs
]


@pytest.mark.parametrize("prefix", WARNING_PREFIXES)
def test_a_warning_other_than_the_known_upstream_one_fails(tmp_path: Path, prefix: str) -> None:
    warning = "The option `services.foo' defined in `k3s.nix' has been renamed"

    result, _ = run_script(
        tmp_path, "dev", FAKE_NIX_WARNING=warning, FAKE_NIX_WARNING_PREFIX=prefix
    )

    assert result.returncode == 1
    for host in DEV_HOSTS:
        assert f"::error::stack dev: host {host}: NixOS warning: {warning}" in result.stdout
    assert KNOWN_WARNING not in result.stdout  # the known one is never an error


@pytest.mark.parametrize("prefix", WARNING_PREFIXES)
def test_the_known_warning_passes_and_nix_about_itself_is_no_nixos_warning(
    tmp_path: Path, prefix: str
) -> None:
    result, _ = run_script(
        tmp_path,
        "dev",
        FAKE_NIX_WARNING_PREFIX=prefix,
        FAKE_NIX_CLI_WARNING="ignoring untrusted substituter 'https://example.invalid'",
    )

    assert result.returncode == 0, result.stdout
    assert KNOWN_WARNING in result.stderr and "ignoring untrusted substituter" in result.stderr


def test_a_stack_whose_plan_fails_fails(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, "dev", PYTHON="false")

    assert result.returncode == 1
    assert "::error::the offline plan of stack dev fails" in result.stdout
    assert calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no stack file Pulumi.nope.yaml in"),
        (["../prod"], "not a stack name: '../prod'"),
        (["--stack=dev"], "not a stack name: '--stack=dev'"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result, calls = run_script(tmp_path, *args)

    assert result.returncode == 2
    assert message in result.stderr and "usage: nix-eval-hosts.sh [STACK...]" in result.stderr
    assert calls == []


@pytest.mark.parametrize("path", [SCRIPT, FAKE_BIN / "nix"], ids=lambda p: p.name)
def test_shellcheck_clean(path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# -- the same call against the real Nix -------------------------------------------------------

STUB_FLAKE = """{
  outputs = { self }:
    let
      hostsDir = ./hosts;
      names = map (builtins.replaceStrings [ ".json" ] [ "" ])
        (builtins.attrNames (builtins.readDir hostsDir));
      mkHost = name:
        let host = builtins.fromJSON (builtins.readFile (hostsDir + "/${name}.json"));
        in {
          config.system.build.toplevel =
            (if host.role == "agent" then builtins.trace "warning: WARNING" else (x: x))
            (derivation {
              name = "nixos-system-${host.name}-25.11";
              system = "x86_64-linux";
              builder = "/bin/sh";
            });
        };
    in {
      nixosConfigurations =
        builtins.listToAttrs (map (n: { name = n; value = mkHost n; }) names);
    };
}
"""

STUB_PYTHON = """#!/usr/bin/env bash
# stand-in for `python -m tooling plan --stack STACK --out DIR --quiet`
set -euo pipefail
[ "$1 $2 $3 $4 $6 $8" = "-m tooling plan --stack --out --quiet" ] || exit 99
mkdir -p "$7/hosts"
printf '{\\n  "name": "%s-server-1",\\n  "role": "server"\\n}\\n' "$5" >"$7/hosts/$5-server-1.json"
printf '{\\n  "name": "%s-agent-1",\\n  "role": "agent"\\n}\\n' "$5" >"$7/hosts/$5-agent-1.json"
"""


@pytest.mark.parametrize(
    ("warning", "expected"), [(KNOWN_WARNING, 0), ("services.x is deprecated", 1)]
)
def test_the_nix_call_works_with_the_real_nix(tmp_path: Path, warning: str, expected: int) -> None:
    if shutil.which("nix") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nix is not installed (Debian nix-bin)")
        pytest.skip("nix is not installed (Debian nix-bin)")
    project = tmp_path / "project"
    (project / ".ci").mkdir(parents=True)
    shutil.copy2(SCRIPT, project / ".ci" / SCRIPT.name)
    (project / "nixos").mkdir()
    (project / "nixos" / "flake.nix").write_text(STUB_FLAKE.replace("WARNING", warning))
    (project / "nixos" / "flake.lock").write_text(
        '{"nodes": {"root": {}}, "root": "root", "version": 7}\n'
    )
    (project / "Pulumi.t.yaml").write_text("config: {}\n")
    python = tmp_path / "python"
    python.write_text(STUB_PYTHON)
    python.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": str(python),
        "TMPDIR": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }

    result = subprocess.run(
        [str(project / ".ci" / SCRIPT.name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == expected, result.stdout + result.stderr
    if expected == 0:
        ok = sorted(result.stdout.splitlines())
        assert [line.rsplit(" ", 1)[0] for line in ok] == ["ok t t-agent-1", "ok t t-server-1"]
        assert all(DRV.fullmatch(line.rsplit(" ", 1)[1]) for line in ok)
    else:
        assert f"::error::stack t: host t-agent-1: NixOS warning: {warning}" in result.stdout
        assert "ok t t-server-1 /nix/store/" in result.stdout
