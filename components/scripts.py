"""Shell scripts under components/scripts/ and how commands invoke them.

Scripts that run on the operator's machine are started by path (Pulumi runs programs from the
project directory), so their text never lands in Pulumi state. Scripts that run on a host travel
inside the remote command itself, because the host has no copy of this repository. Such a script
may use functions of operator-lib.sh: in a checkout it sources the lib with a line that names
them (`source ".../operator-lib.sh" # inline on hosts: poll_until one_line`), and the text sent
to a host has their definitions in place of that line (operator-lib.sh's inline_script does the
same for the scripts the operator-side scripts send).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

SCRIPTS_DIR = Path(__file__).parent / "scripts"
PROJECT_DIR = Path(__file__).parent.parent


def script_path(name: str) -> Path:
    """Absolute path of a script shipped in components/scripts/."""
    path = SCRIPTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"no script {name!r} in {SCRIPTS_DIR}")
    return path


@functools.cache
def script_text(name: str) -> str:
    return script_path(name).read_text(encoding="utf-8")


LIB = "operator-lib.sh"
_INLINE_MARKER = re.compile(r'^source .*/operator-lib\.sh" # inline on hosts: (.+)$', re.MULTILINE)


def lib_function(name: str) -> str:
    """The definition of function NAME in operator-lib.sh: `NAME() {` up to the first `}` line."""
    match = re.search(rf"^{re.escape(name)}\(\) {{\n(?:.*\n)*?}}\n", script_text(LIB), re.MULTILINE)
    if match is None:
        raise ValueError(f"{LIB} has no function {name!r}")
    return match.group(0)


@functools.cache
def inline_script(name: str) -> str:
    """The text of a host-side script as it travels: the lib functions it names put in place."""
    return _INLINE_MARKER.sub(
        lambda marker: "".join(lib_function(f) for f in marker.group(1).split()).removesuffix("\n"),
        script_text(name),
    )


@functools.cache
def relative_script_path(name: str) -> str:
    """A script's path relative to the project, as local commands run it.

    Cached because every host and node gate builds its command lines from the same few
    scripts: the file check and the path arithmetic are done once per script, not per command.
    """
    return str(script_path(name).relative_to(PROJECT_DIR))


def local_invocation(name: str, *args: str) -> str:
    """Command line for a local.Command: the script by its path relative to the project."""
    return shlex.join(["bash", relative_script_path(name), *args])


def remote_invocation(name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Command line for a remote.Command (or a plain `ssh host CMD`): the script inline.

    The script becomes `bash -c '<text>' <name> <args...>`, so stdin stays free for secrets.
    Environment variables are set with `env` in the command itself, because sshd drops
    variables sent over the protocol unless AcceptEnv allows them. Only non-secret values
    may go into `args` or `env`: the command line is stored in state and visible in `ps`.
    """
    assignments = [f"{key}={value}" for key, value in sorted((env or {}).items())]
    argv = ["bash", "-c", inline_script(name), name, *args]
    if assignments:
        argv = ["env", *assignments, *argv]
    return shlex.join(argv)
