"""The GitHub workflows: schema-valid, least privilege, no secret printed, guarded destroy.

Shell embedded in the workflows is run for real here: the destroy guard, the nightly stack
selection (against a stand-in `pulumi`), and the preview's plan-and-diff step (in a throwaway git
repository, against a stand-in `python` whose `components diff` is the real one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ClusterSpec

PROJECT_DIR = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = PROJECT_DIR / ".github" / "workflows"
WORKFLOWS = ("preview.yml", "deploy.yml", "destroy.yml")


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    # YAML 1.1 reads the key `on` as the boolean true
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def all_steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def step_named(workflow: dict[str, Any], job: str, name: str) -> dict[str, Any]:
    [step] = [step for step in steps(workflow, job) if step.get("name") == name]
    return step


def pulumi_action_steps(workflow: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [
        step
        for step in all_steps(workflow)
        if str(step.get("uses", "")).startswith("pulumi/actions@")
        and step.get("with", {}).get("command") == command
    ]


def bash(
    script: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a `run:` block the way GitHub's `shell: bash` does."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- every workflow -----------------------------------------------------------------------------


def test_workflows_validate_against_the_github_workflow_schema() -> None:
    checker = shutil.which("check-jsonschema") or str(
        Path(sys.executable).with_name("check-jsonschema")
    )
    if not Path(checker).exists():
        pytest.skip("check-jsonschema is not installed")
    paths = [str(WORKFLOWS_DIR / name) for name in WORKFLOWS]
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("preview.yml", {"contents": "read", "pull-requests": "write"}),
        ("deploy.yml", {"contents": "read"}),
        ("destroy.yml", {"contents": "read"}),
    ],
)
def test_every_workflow_sets_least_privilege_permissions(
    name: str, expected: dict[str, str]
) -> None:
    workflow = load(name)

    assert workflow["permissions"] == expected
    for job in workflow["jobs"].values():
        assert "permissions" not in job  # no job widens the workflow's grant


@pytest.mark.parametrize("name", WORKFLOWS)
def test_no_step_prints_secrets_or_the_kubeconfig(name: str) -> None:
    text = (WORKFLOWS_DIR / name).read_text(encoding="utf-8")
    workflow = load(name)

    assert "--show-secrets" not in text
    assert not re.search(r"echo[^\n]*\$\{\{\s*secrets\.", text)
    for step in all_steps(workflow):
        run = step.get("run", "")
        # expressions reach shell only through env: no injection, no secret in a script body
        assert "${{" not in run, step
        assert "stack output" not in run, step
        assert "kubeconfig" not in run.lower(), step
    for step in all_steps(workflow):
        if str(step.get("uses", "")).startswith("pulumi/actions@") and "with" in step:
            assert step["with"].get("suppress-outputs") is True, step


@pytest.mark.parametrize("name", WORKFLOWS)
def test_actions_are_pinned_to_a_major_version_or_a_commit(name: str) -> None:
    for step in all_steps(load(name)):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", step["uses"])


# The inputs each action's action.yml declares (upstream, at the major version the workflows use).
# An undeclared `with:` key is only a warning on GitHub and the setting is silently lost.
# fmt: off
ACTION_INPUTS: dict[str, frozenset[str]] = {
    "actions/checkout@v4": frozenset((
        "repository", "ref", "token", "ssh-key", "ssh-known-hosts", "ssh-strict", "ssh-user",
        "persist-credentials", "path", "clean", "filter", "sparse-checkout",
        "sparse-checkout-cone-mode", "fetch-depth", "fetch-tags", "show-progress", "lfs",
        "submodules", "set-safe-directory", "github-server-url",
    )),
    "actions/setup-python@v5": frozenset((
        "python-version", "python-version-file", "cache", "architecture", "check-latest", "token",
        "cache-dependency-path", "update-environment", "allow-prereleases",
    )),
    "pulumi/actions@v6": frozenset((
        "command", "stack-name", "pulumi-version", "pulumi-version-file", "work-dir",
        "comment-on-pr", "comment-on-pr-number", "comment-on-summary", "github-token",
        "cloud-url", "secrets-provider", "parallel", "message", "config-map",
        "expect-no-changes", "diff", "replace", "target", "target-dependents", "policyPacks",
        "policyPackConfigs", "refresh", "upsert", "remove", "edit-pr-comment", "color",
        "exclude-protected", "plan", "suppress-outputs", "suppress-progress",
        "always-include-summary",
    )),
    "marocchino/sticky-pull-request-comment@v2": frozenset((
        "header", "append", "recreate", "delete", "only_create", "only_update", "hide_details",
        "hide", "hide_and_recreate", "hide_classify", "message", "path", "ignore_empty",
        "skip_unchanged", "follow_symbolic_links", "number", "owner", "repo", "GITHUB_TOKEN",
    )),
    "cachix/install-nix-action@v31": frozenset((
        "install_url", "install_options", "nix_path", "extra_nix_config",
    )),
}
# fmt: on
PULUMI_ACTION_COMMANDS = {"up", "update", "preview", "destroy", "refresh"}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_action_input_is_declared_by_the_action(name: str) -> None:
    for step in all_steps(load(name)):
        if "uses" not in step:
            continue
        assert step["uses"] in ACTION_INPUTS, f"no recorded inputs for {step['uses']}"
        unknown = set(step.get("with", {})) - ACTION_INPUTS[step["uses"]]
        assert not unknown, f"{name}: {step['uses']} has no input {sorted(unknown)}"
        if step["uses"].startswith("pulumi/actions@") and "with" in step:
            assert step["with"]["command"] in PULUMI_ACTION_COMMANDS, step


def test_nixos_anywhere_can_run_where_pulumi_up_runs() -> None:
    """install.sh runs nixos-anywhere through `nix run` (flakes): the deploy job needs Nix."""
    deploy = load("deploy.yml")
    uses = [step.get("uses", "") for step in steps(deploy, "deploy")]
    nix = next(i for i, use in enumerate(uses) if use.startswith("cachix/install-nix-action@"))
    up = next(
        i
        for i, step in enumerate(steps(deploy, "deploy"))
        if step.get("with", {}).get("command") == "up"
    )
    assert nix < up
    config = steps(deploy, "deploy")[nix]["with"]["extra_nix_config"]
    assert "experimental-features = nix-command flakes" in config


@pytest.mark.parametrize("name", WORKFLOWS)
def test_run_blocks_pass_shellcheck(name: str, tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    workflow = load(name)
    assert workflow["defaults"]["run"]["shell"] == "bash"
    for index, step in enumerate(all_steps(workflow)):
        if "run" not in step:
            continue
        script = tmp_path / f"step-{index}.sh"
        script.write_text("#!/usr/bin/env bash\n" + step["run"], encoding="utf-8")
        result = subprocess.run(
            ["shellcheck", "--shell=bash", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{step.get('name')}:\n{result.stdout}"


# -- preview ------------------------------------------------------------------------------------


def test_preview_runs_per_pull_request_with_tests_before_the_plans() -> None:
    workflow = load("preview.yml")

    assert workflow["on"] == {"pull_request": {"branches": ["main"]}}
    assert workflow["concurrency"] == {
        "group": "preview-${{ github.event.pull_request.number }}",
        "cancel-in-progress": True,
    }
    names = [step.get("name") or step.get("uses") for step in steps(workflow, "plan-diff")]
    assert names.index("Tests") < names.index("Offline plans of base and head, and their diff")
    setup = [s for s in steps(workflow, "plan-diff") if s.get("uses") == "actions/setup-python@v5"]
    assert setup[0]["with"]["python-version"] == "3.11"
    assert step_named(workflow, "plan-diff", "Tests")["run"] == "make test"
    comment = step_named(workflow, "plan-diff", "Sticky pull request comment")
    assert comment["uses"].startswith("marocchino/sticky-pull-request-comment@")
    assert comment["with"]["header"] == "nixos-k3s-plan-diff"
    assert "head.repo.full_name == github.repository" in comment["if"]


def test_preview_runs_pulumi_preview_of_prod_only_where_secrets_exist() -> None:
    workflow = load("preview.yml")
    job = workflow["jobs"]["pulumi-preview"]

    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    [preview] = pulumi_action_steps(workflow, "preview")
    assert preview["with"]["stack-name"] == "prod"
    assert preview["with"]["comment-on-pr"] is True
    assert preview["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert preview["env"]["HCLOUD_TOKEN"] == "${{ secrets.HCLOUD_TOKEN }}"
    assert preview["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert preview["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert "HCLOUD_TOKEN" not in workflow["jobs"]["plan-diff"].get("env", {})
    assert not any("secrets." in json.dumps(step) for step in steps(workflow, "plan-diff"))


FAKE_PYTHON = """#!/usr/bin/env bash
# stand-in for python: `tooling plan` copies this commit's fake-plans/<stack> (a commit without
# tooling/ plans with the older `components plan`), `tooling diff` is the real one
set -euo pipefail
case "$1 $2 $3" in
  "-m tooling plan" | "-m components plan")
    stack="$5" out="$7"
    want=tooling
    [ -d tooling ] || want=components
    if [ "$2" != "$want" ]; then
      echo "$2 is not this commit's CLI ($want)" >&2
      exit 99
    fi
    if [ ! -d "fake-plans/$stack" ]; then
      echo "usage: python -m tooling {plan}: no such command here" >&2
      exit 2
    fi
    rm -rf "$out" && mkdir -p "$out" && cp -R "fake-plans/$stack/." "$out/"
    echo "resource tree of $stack" ;;
  "-m tooling diff")
    shift 3
    exec "$REAL_PYTHON" -c "$DIFF_MAIN" "$@" ;;
  *) echo "unexpected python call: $*" >&2; exit 99 ;;
esac
"""
DIFF_MAIN = "import sys; from tooling.diff import main; sys.exit(main(sys.argv[1:]))"


class PreviewRepo:
    """A git repository with a base and a head commit, each carrying its own fake plans."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.repo.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip()

    def commit(self, stacks: list[str], plans: dict[str, Path], tooling: bool = True) -> str:
        """A commit with these stack files and fake plans; tooling=False: from before the
        offline tooling left components/ (its CLI was `python -m components`)."""
        shutil.rmtree(self.repo / "fake-plans", ignore_errors=True)
        shutil.rmtree(self.repo / "tooling", ignore_errors=True)
        if tooling:
            (self.repo / "tooling").mkdir()
            (self.repo / "tooling" / "README").write_text("a marker: this commit has tooling/\n")
        for path in self.repo.glob("Pulumi.*.yaml"):
            path.unlink()
        for stack in stacks:
            (self.repo / f"Pulumi.{stack}.yaml").write_text("config: {}\n")
        for stack, plan in plans.items():
            shutil.copytree(plan, self.repo / "fake-plans" / stack)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "state")
        return self.git("rev-parse", "HEAD")

    def run_step(
        self, base: str, head: str
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
        fake_bin = self.root / "bin"
        fake_bin.mkdir(exist_ok=True)
        python = fake_bin / "python"
        python.write_text(FAKE_PYTHON)
        python.chmod(0o755)
        runner_temp = self.root / "runner-temp"
        shutil.rmtree(runner_temp, ignore_errors=True)
        runner_temp.mkdir()
        output, summary = self.root / "output", self.root / "summary"
        output.write_text("")
        summary.write_text("")
        env = {
            "PATH": f"{fake_bin}:{os.environ['PATH']}",
            "HOME": str(self.root),
            "REAL_PYTHON": sys.executable,
            "DIFF_MAIN": DIFF_MAIN,
            "PYTHONPATH": str(PROJECT_DIR),
            "RUNNER_TEMP": str(runner_temp),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            "BASE_SHA": base,
            "HEAD_SHA": head,
        }
        script = step_named(
            load("preview.yml"), "plan-diff", "Offline plans of base and head, and their diff"
        )["run"]
        result = bash(script, env, cwd=self.repo)
        outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
        outputs["summary"] = summary.read_text()
        return result, outputs


def test_preview_diff_step_builds_one_comment_for_every_stack(
    tmp_path: Path, make_plan: Any, base_spec: ClusterSpec
) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    repo = PreviewRepo(tmp_path)
    prod_old = make_plan(base_spec)
    prod_new = make_plan(base_spec.with_(cilium_version="1.18.2"))
    dev = make_plan(base_spec.with_(stack="dev", servers=1, agents=0))
    # the base predates the dev stack, so it has no plan of dev, and the move of the offline
    # tooling out of components/ (it plans with `python -m components`)
    base = repo.commit(["prod"], {"prod": prod_old}, tooling=False)
    head = repo.commit(["dev", "prod"], {"dev": dev, "prod": prod_new})

    result, outputs = repo.run_step(base, head)

    assert result.returncode == 0, result.stderr
    assert outputs["failed"] == "0"
    body = Path(outputs["body"]).read_text()
    assert outputs["summary"] == body
    assert body.startswith(f"## Offline plan diff\n\nBase `{base[:12]}` against this PR")
    dev_section, prod_section = body.split("### Plan diff: `prod`")
    assert "The base has no offline plan of `dev`: everything shows as added." in dev_section
    assert "### Plan diff: `dev`" in dev_section
    assert "| 12 | 0 | 0 | 0 | 0 | 1 |" in dev_section  # the whole dev cluster, one host
    assert "| 0 | 0 | 0 | 1 | 0 |" in prod_section  # the Cilium bump
    assert '    version: "1.18.1" -> "1.18.2"' in prod_section
    assert len(body) < 65_536


def test_preview_diff_step_records_a_failing_head_plan_and_still_writes_the_comment(
    tmp_path: Path, make_plan: Any, base_spec: ClusterSpec
) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    repo = PreviewRepo(tmp_path)
    prod = make_plan(base_spec)
    broken = make_plan(base_spec.with_(agents=1))
    (broken / "plan.json").write_text("{not json")
    base = repo.commit(["dev", "prod"], {"prod": prod})
    # dev: no plan at head; prod: a plan the diff cannot read
    head = repo.commit(["dev", "prod"], {"prod": broken})

    result, outputs = repo.run_step(base, head)

    assert result.returncode == 0, result.stderr
    assert outputs["failed"] == "1"
    body = Path(outputs["body"]).read_text()
    assert ":x: The offline plan of this stack fails on this pull request" in body
    assert "::error::the offline plan of stack dev fails" in result.stdout
    assert "::error::the plan diff of stack prod failed (exit 2)" in result.stdout
    assert "invalid JSON at line 1" in result.stderr


def test_preview_evaluates_every_host_with_real_nix_against_the_pinned_flake() -> None:
    """.ci/nix-eval-hosts.sh (tested in test_nix_eval_hosts.py) with Nix installed first."""
    workflow = load("preview.yml")
    job = workflow["jobs"]["nix-eval"]
    job_steps = steps(workflow, "nix-eval")
    uses = [step.get("uses", "") for step in job_steps]

    assert "if" not in job  # no secrets: pull requests from forks are evaluated too
    assert not any("secrets." in json.dumps(step) for step in job_steps)
    assert uses[:2] == ["actions/checkout@v4", "actions/setup-python@v5"]
    assert job_steps[1]["with"]["python-version"] == "3.11"
    # the program's requirements only, as `pulumi install` would have them
    packages = step_named(workflow, "nix-eval", "Python packages of the program")
    assert packages["run"] == "python -m pip install -r requirements.txt"
    nix = next(i for i, use in enumerate(uses) if use.startswith("cachix/install-nix-action@"))
    config = job_steps[nix]["with"]["extra_nix_config"]
    assert "experimental-features = nix-command flakes" in config
    evaluate = step_named(workflow, "nix-eval", "nix eval of every host's toplevel")
    assert evaluate["run"] == ".ci/nix-eval-hosts.sh"  # no arguments: every stack
    assert evaluate["env"] == {"PYTHON": "python"}
    assert "continue-on-error" not in evaluate and "if" not in evaluate
    assert job_steps.index(evaluate) > max(nix, job_steps.index(packages))
    # a host that does not evaluate stops the real preview too
    assert "nix-eval" in workflow["jobs"]["pulumi-preview"]["needs"]
    script = PROJECT_DIR / ".ci" / "nix-eval-hosts.sh"
    assert script.is_file() and os.access(script, os.X_OK)


@pytest.mark.parametrize(("name", "command"), [("preview.yml", "preview"), ("deploy.yml", "up")])
def test_pulumi_steps_create_the_stack_where_it_may_not_exist_yet(name: str, command: str) -> None:
    """pulumi/actions: upsert -> LocalWorkspace.createOrSelectStack, else selectStack."""
    [step] = pulumi_action_steps(load(name), command)

    assert step["with"]["upsert"] is True


def test_destroy_never_creates_the_stack_it_is_asked_to_destroy() -> None:
    [destroy] = pulumi_action_steps(load("destroy.yml"), "destroy")

    assert "upsert" not in destroy["with"]


# -- deploy -------------------------------------------------------------------------------------


def test_deploy_runs_up_on_prod_behind_the_production_environment_one_at_a_time() -> None:
    workflow = load("deploy.yml")
    job = workflow["jobs"]["deploy"]

    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert job["needs"] == "test"
    assert job["environment"] == {"name": "production"}
    assert job["concurrency"] == {"group": "deploy-prod", "cancel-in-progress": False}
    [up] = pulumi_action_steps(workflow, "up")
    assert up["with"]["stack-name"] == "prod"
    assert up["with"]["suppress-outputs"] is True
    assert up["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert up["env"]["HCLOUD_TOKEN"] == "${{ secrets.HCLOUD_TOKEN }}"
    assert step_named(workflow, "test", "Tests")["run"] == "make test"


def test_deploy_evaluates_the_prod_hosts_before_pulumi_up() -> None:
    deploy = load("deploy.yml")
    job_steps = steps(deploy, "deploy")
    names = [step.get("name") or step.get("uses") for step in job_steps]
    evaluate = step_named(deploy, "deploy", "nix eval of every prod host's toplevel")
    [up] = pulumi_action_steps(deploy, "up")
    nix = next(i for i, step in enumerate(job_steps) if step.get("uses", "").startswith("cachix/"))

    assert evaluate["run"] == ".ci/nix-eval-hosts.sh prod"
    # the venv `pulumi install` builds from requirements.txt
    assert evaluate["env"] == {"PYTHON": ".venv/bin/python"}
    position = job_steps.index(evaluate)
    assert nix < position
    assert names.index("Program dependencies and provider plugins") < position
    assert position < job_steps.index(up)
    assert "continue-on-error" not in evaluate and "if" not in evaluate


# -- destroy ------------------------------------------------------------------------------------


GUARD = "Refuse anything but an ephemeral stack"


def destroy_env(**extra: str) -> dict[str, str]:
    pattern = load("destroy.yml")["env"]["EPHEMERAL_STACK_PATTERN"]
    return {"PATH": os.environ["PATH"], "EPHEMERAL_STACK_PATTERN": pattern, **extra}


def test_destroy_guard_runs_first_and_before_anything_is_destroyed() -> None:
    workflow = load("destroy.yml")
    job_steps = steps(workflow, "destroy")
    names = [step.get("name") for step in job_steps]

    assert names[0] == GUARD
    assert job_steps[0]["env"] == {
        "STACK": "${{ matrix.stack }}",
        "EVENT": "${{ github.event_name }}",
    }
    [destroy] = pulumi_action_steps(workflow, "destroy")
    assert destroy["with"]["stack-name"] == "${{ matrix.stack }}"
    destructive = [
        index
        for index, step in enumerate(job_steps)
        if step is destroy or re.search(r"pulumi (destroy|stack rm)", step.get("run", ""))
    ]
    assert len(destructive) == 2
    assert min(destructive) > names.index(GUARD)
    assert "continue-on-error" not in job_steps[0]
    assert "if" not in job_steps[0]


@pytest.mark.parametrize("event", ["schedule", "workflow_dispatch"])
@pytest.mark.parametrize(
    "stack",
    [
        "prod",
        "production",
        "acme/prod",
        "acme/nixos-k3s/prod",
        "dev",  # the Colima stack on a Mac, not an ephemeral one
        "dev-x; pulumi destroy --stack prod",
        "--yes",
        "dev-x\nprod",
        "",
        "a/b/c/dev-x",
    ],
)
def test_destroy_guard_refuses(stack: str, event: str) -> None:
    script = step_named(load("destroy.yml"), "destroy", GUARD)["run"]

    result = bash(script, destroy_env(STACK=stack, EVENT=event))

    assert result.returncode != 0
    assert "::error::refusing to destroy stack" in result.stdout


@pytest.mark.parametrize("stack", ["staging", "dev-", "DEV-X", "pr-"])
def test_nightly_guard_refuses_names_off_the_convention(stack: str) -> None:
    script = step_named(load("destroy.yml"), "destroy", GUARD)["run"]

    nightly = bash(script, destroy_env(STACK=stack, EVENT="schedule"))
    by_hand = bash(script, destroy_env(STACK=stack, EVENT="workflow_dispatch"))

    assert nightly.returncode != 0 and "not an ephemeral stack" in nightly.stdout
    assert by_hand.returncode == 0, by_hand.stdout  # any stack but prod may be named by hand


@pytest.mark.parametrize(
    "stack", ["dev-x", "pr-123", "dev-feature-7", "acme/pr-9", "acme/nixos-k3s/dev-x"]
)
def test_destroy_guard_passes_ephemeral_stacks(stack: str) -> None:
    script = step_named(load("destroy.yml"), "destroy", GUARD)["run"]

    result = bash(script, destroy_env(STACK=stack, EVENT="schedule"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stack {stack} is ephemeral" in result.stdout


def test_destroy_guard_fails_closed_without_a_pattern() -> None:
    script = step_named(load("destroy.yml"), "destroy", GUARD)["run"]

    result = bash(
        script, {**destroy_env(STACK="dev-x", EVENT="schedule"), "EPHEMERAL_STACK_PATTERN": ""}
    )

    assert result.returncode != 0


STACK_LIST = [
    {"name": "prod", "current": False, "updateInProgress": False, "resourceCount": 80},
    {"name": "dev", "current": False, "updateInProgress": False, "resourceCount": 12},
    {"name": "staging", "current": False, "updateInProgress": False, "resourceCount": 9},
    {"name": "pr-12", "current": False, "updateInProgress": False, "resourceCount": 20},
    {"name": "dev-alice", "current": True, "updateInProgress": False, "resourceCount": 20},
    {"name": "dev-busy", "current": False, "updateInProgress": True, "resourceCount": 20},
    {"name": "acme/pr-3", "current": False, "updateInProgress": False, "resourceCount": 20},
    {"name": "acme/prod", "current": False, "updateInProgress": False, "resourceCount": 80},
]


def run_selection(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "pulumi-calls"
    listing = tmp_path / "stacks.json"
    listing.write_text(json.dumps(STACK_LIST))
    pulumi = fake_bin / "pulumi"
    pulumi.write_text(
        f'#!/usr/bin/env bash\necho "$*" >>"{calls}"\n'
        f'if [ "$1 $2 $3" = "stack ls --json" ]; then cat "{listing}"; fi\n'
    )
    pulumi.chmod(0o755)
    output = tmp_path / "output"
    output.write_text("")
    script = step_named(load("destroy.yml"), "select", "Stacks to destroy")["run"]
    full_env = destroy_env(GITHUB_OUTPUT=str(output), **env)
    full_env["PATH"] = f"{fake_bin}:{full_env['PATH']}"
    result = bash(script, full_env)
    return result, output.read_text(), calls.read_text() if calls.exists() else ""


def test_nightly_selection_keeps_only_idle_ephemeral_stacks(tmp_path: Path) -> None:
    result, output, calls = run_selection(
        tmp_path, EVENT="schedule", PULUMI_BACKEND_URL="s3://state-bucket"
    )

    assert result.returncode == 0, result.stderr
    assert output == 'stacks=["acme/pr-3","dev-alice","pr-12"]\n'
    assert calls.splitlines() == ["login s3://state-bucket", "stack ls --json"]


def test_nightly_selection_uses_pulumi_cloud_without_a_backend_url(tmp_path: Path) -> None:
    result, _, calls = run_selection(tmp_path, EVENT="schedule", PULUMI_BACKEND_URL="")

    assert result.returncode == 0, result.stderr
    assert calls.splitlines() == ["login", "stack ls --json"]


def test_manual_selection_passes_the_input_on_to_the_guard(tmp_path: Path) -> None:
    result, output, calls = run_selection(
        tmp_path, EVENT="workflow_dispatch", REQUESTED_STACK='prod" ,"x'
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(output.removeprefix("stacks=")) == ['prod" ,"x']
    assert calls == ""  # nothing listed, nothing logged in


def test_destroy_removes_the_stack_only_after_destroying_it() -> None:
    workflow = load("destroy.yml")
    job = workflow["jobs"]["destroy"]

    assert job["if"] == "needs.select.outputs.stacks != '[]'"
    assert job["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.select.outputs.stacks) }}"
    assert job["concurrency"]["cancel-in-progress"] is False
    assert set(workflow["on"]) == {"workflow_dispatch", "schedule"}
    assert workflow["on"]["workflow_dispatch"]["inputs"]["stack"]["required"] is True
    remove = step_named(workflow, "destroy", "Remove the emptied stack")
    assert remove["run"] == 'pulumi stack rm --yes "$STACK"'
    names = [step.get("name") for step in steps(workflow, "destroy")]
    assert names.index("pulumi destroy") < names.index("Remove the emptied stack")
