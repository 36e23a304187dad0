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
    assert {"api-ready.sh", "install-secrets.sh", "node-gate.sh", "nodes-ready.sh"} <= users


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
