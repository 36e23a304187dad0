"""Every command in the ```sh blocks of README.md, docs/*.md and bench/README.md copy-pastes.

The commands that need no cloud, no Pulumi CLI and no Mac (make plan, the offline plan and diff)
run, block by block and in order, in a scratch copy of the project (its `.venv` a link to this
one's), with `/tmp/...` paths moved into pytest's tmp directory; each must exit 0, or the code a
trailing `# exit N` comment documents. Every other command is recognised by its start and listed
in SKIPPED with the reason; a command that is neither fails the test until it is classified.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]

# Commands that run here (prefix of the command after `/tmp/` is rewritten).
RUN = (
    "make plan",
    ".venv/bin/python -m tooling plan ",
    ".venv/bin/python -m tooling diff ",
)
# Commands that cannot run here, by their start, with the reason.
SKIPPED = {
    "pulumi ": "needs the Pulumi CLI, a backend and (prod) the Hetzner API",
    "export PULUMI_CONFIG_PASSPHRASE=": "sets the passphrase of a Pulumi backend",
    "components/scripts/etcd-restore.sh ": "needs SSH to the cluster's servers",
    "git switch ": "changes the checkout; the scratch copy has one commit's files only",
    "make test": "runs this test suite itself (and installs Debian packages)",
    "make bench": "the benchmark takes minutes",
    ".venv/bin/python -m bench": "the benchmark takes minutes (make bench)",
    "colima ": "needs a Mac with Colima",
    "nix ": "needs Nix and the network",
    "ssh ": "needs a host",
}


@dataclass(frozen=True)
class Command:
    doc: str
    block: int
    text: str
    expected_exit: int


def _blocks(path: Path) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def _commands(path: Path) -> list[Command]:
    commands: list[Command] = []
    for number, block in enumerate(_blocks(path)):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            text, _, comment = line.partition(" #")
            exit_code = re.match(r"\s*exit (\d+)", comment)
            commands.append(
                Command(
                    doc=str(path.relative_to(ROOT)),
                    block=number,
                    text=text.strip(),
                    expected_exit=int(exit_code.group(1)) if exit_code else 0,
                )
            )
    return commands


ALL = [command for path in DOCS for command in _commands(path)]


def _skip_reason(text: str) -> str | None:
    for prefix, reason in SKIPPED.items():
        if text == prefix.strip() or text.startswith(prefix):
            return reason
    return None


def test_every_command_is_run_or_skipped_by_name() -> None:
    assert ALL, "no ```sh blocks found"
    unclassified = [
        f"{c.doc}: {c.text}"
        for c in ALL
        if not c.text.startswith(RUN) and _skip_reason(c.text) is None
    ]
    assert not unclassified, "classify these commands in RUN or SKIPPED:\n" + "\n".join(
        unclassified
    )


def test_no_command_needs_an_activated_venv() -> None:
    bare = [f"{c.doc}: {c.text}" for c in ALL if re.match(r"(python3?|pytest|ruff) ", c.text)]
    assert not bare, bare


def test_the_skipped_commands_are_the_expected_kinds() -> None:
    """What is skipped, by doc, so a reader of the test output sees it."""
    skipped = {(c.doc, c.text.split()[0]) for c in ALL if _skip_reason(c.text)}
    assert ("README.md", "pulumi") in skipped
    for doc, first in sorted(skipped):
        print(f"skipped in {doc}: {first} ...")


def _plan_target(text: str) -> tuple[str | None, str | None]:
    """The stack and output directory of a plan command (`make plan` plans dev into build/dev)."""
    if text == "make plan":
        return "dev", "build/dev"
    words = shlex.split(text)
    if words[:4] != [".venv/bin/python", "-m", "tooling", "plan"]:
        return None, None
    args = [word for word in words[4:] if word != "--quiet"]
    options = dict(zip(args[::2], args[1::2], strict=False))
    if len(args) % 2 or not set(options) <= {"--stack", "--out"}:
        return None, None  # run it as written
    stack = options.get("--stack", "dev")
    return stack, options.get("--out", f"build/{stack}")


def _scratch_copy(tmp: Path) -> Path:
    copy = tmp / "project"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "node_modules", "__pycache__")
    shutil.copytree(ROOT, copy, ignore=ignore, symlinks=True)
    venv = (ROOT / ".venv").resolve()
    (copy / ".venv").symlink_to(venv)
    stamp = venv / ".installed"
    if stamp.exists():  # make plan must not reinstall the shared venv
        older = stamp.stat().st_mtime - 60
        for name in ("requirements.txt", "requirements-dev.txt"):
            os.utime(copy / name, (older, older))
    return copy


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv")
def test_the_commands_that_need_no_cloud_run(tmp_path: Path) -> None:
    project = _scratch_copy(tmp_path)
    dry = subprocess.run(
        ["make", "-n", "plan"], cwd=project, capture_output=True, text=True, check=True
    )
    if "pip install" in dry.stdout:
        pytest.skip(".venv/.installed is older than the requirements: make plan would reinstall")
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    ran: set[str] = set()
    planned: dict[str, Path] = {}  # stack -> the directory its plan went to
    failures: list[str] = []
    for command in ALL:
        if not command.text.startswith(RUN):
            continue
        text = command.text.replace("/tmp/", f"{scratch_tmp}/")
        if text in ran:
            continue
        ran.add(text)
        stack, out = _plan_target(text)
        if stack is not None and stack in planned and out is not None:
            # Plans are deterministic (tests/test_plan.py): the same stack planned again would
            # give the same files, so copy them instead of spending a plan.
            target = project / out
            if target != planned[stack]:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(planned[stack], target)
            continue
        result = subprocess.run(
            ["bash", "-c", text],
            cwd=project,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            timeout=300,
        )
        if result.returncode != command.expected_exit:
            failures.append(
                f"{command.doc}: {shlex.quote(command.text)} exited {result.returncode}, "
                f"documented {command.expected_exit}\n{result.stderr[-2000:]}"
            )
        elif stack is not None and out is not None:
            planned[stack] = project / out
    assert ran, "no runnable commands found"
    assert not failures, "\n".join(failures)
    assert (project / "build" / "dev" / "plan.json").exists()  # make plan
    assert (project / "build" / "base" / "prod" / "plan.json").exists()  # the diff's base


if __name__ == "__main__":  # list the classification
    for c in ALL:
        print(f"{c.doc}: {'run' if c.text.startswith(RUN) else 'skip'}: {c.text}", file=sys.stderr)
