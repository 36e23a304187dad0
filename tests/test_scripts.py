"""components/scripts.py: host-side scripts travel with the operator-lib.sh functions they name."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.scripts import LIB, SCRIPTS_DIR, inline_script, lib_function, script_text

SCRIPTS = sorted(path.name for path in SCRIPTS_DIR.glob("*.sh") if path.name != LIB)
LIB_FUNCTIONS = re.findall(r"^([a-z_]+)\(\) \{$", script_text(LIB), re.MULTILINE)
MARKER = re.compile(r'^source .*/operator-lib\.sh" # inline on hosts: (.+)$', re.MULTILINE)


def inlined_names(name: str) -> list[str]:
    return [f for marker in MARKER.findall(script_text(name)) for f in marker.split()]


def test_host_side_scripts_name_lib_functions() -> None:
    users = {name for name in SCRIPTS if inlined_names(name)}
    assert {
        "api-ready.sh",
        "host-activate.sh",
        "install-secrets.sh",
        "node-gate.sh",
        "nodes-ready.sh",
    } <= users


@pytest.mark.parametrize("name", SCRIPTS)
def test_inline_text_defines_every_lib_function_it_calls(name: str) -> None:
    text = inline_script(name)
    if not inlined_names(name):
        assert text == script_text(name)
        return
    assert 'operator-lib.sh" # inline on hosts' not in text
    for function in LIB_FUNCTIONS:
        called = re.search(rf"(^|[\s;|&(]){function}(\s|$)", script_text(name), re.MULTILINE)
        if called:
            assert lib_function(function) in text, f"{name} calls {function}: name it inline"


def test_lib_function_is_the_definition_only() -> None:
    text = lib_function("sha256_stdin")
    assert text.startswith("sha256_stdin() {\n") and text.endswith("\n}\n")
    assert text.count("\n}\n") == 1
    with pytest.raises(ValueError, match="no function"):
        lib_function("no_such_function")


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_operator_side_sends_the_same_text(name: str) -> None:
    # operator-lib.sh's inline_script (deploy.sh, node-gate-client.sh, etcd-restore.sh) must send
    # what remote_invocation sends; `$(...)` drops the trailing newline.
    result = subprocess.run(
        [
            "bash",
            "-c",
            'set -euo pipefail; PROG=test SCRIPT_DIR=$1; source "$1/operator-lib.sh"; '
            'text=$(inline_script "$2"); printf %s "$text"',
            "test",
            str(SCRIPTS_DIR),
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == inline_script(name).rstrip("\n")


def wait_for_ssh(answer_on: int, attempts: int = 3, deadline: str = "") -> tuple[int, str, int]:
    """operator-lib.sh's wait_for_ssh with an `ssh` stand-in that answers on try `answer_on`
    (0: never); returns the exit code, stderr and the number of dials."""
    result = subprocess.run(
        [
            "bash",
            "-c",
            'set -euo pipefail; PROG=test; source "$1/operator-lib.sh"; dials=0 answer_on=$2; '
            "ssh() { dials=$((dials + 1)); ((dials == answer_on)); }; "
            "SSH_OPTS=() TARGET=root@h TARGET_HOST=h TARGET_PORT=22 SSH_CONNECT_TIMEOUT=1 "
            "SSH_CONNECT_ATTEMPTS=$3 SSH_RETRY_DELAY=0.01; status=0; "
            'wait_for_ssh "$4" || status=$?; echo "$status $dials"',
            "test",
            str(SCRIPTS_DIR),
            str(answer_on),
            str(attempts),
            deadline,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    status, dials = result.stdout.split()
    return int(status), result.stderr, int(dials)


def test_wait_for_ssh_dials_until_the_host_answers() -> None:
    status, stderr, dials = wait_for_ssh(answer_on=2)
    assert (status, dials) == (0, 2)
    assert stderr == "test: h:22 not reachable yet (attempt 1/3)\n"


def test_wait_for_ssh_gives_up_after_its_attempts() -> None:
    status, stderr, dials = wait_for_ssh(answer_on=0, attempts=3)
    assert (status, dials) == (1, 3)
    assert stderr.splitlines() == [
        f"test: h:22 not reachable yet (attempt {n}/3)" for n in (1, 2, 3)
    ]


def test_wait_for_ssh_gives_up_at_its_deadline() -> None:
    status, stderr, dials = wait_for_ssh(answer_on=0, attempts=30, deadline="1")
    assert (status, dials) == (1, 1)
    assert stderr.splitlines()[-1] == "test: h:22 not reachable after 0s"
