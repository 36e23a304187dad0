"""Shell scripts under components/scripts/ and how commands invoke them.

Scripts that run on the operator's machine are started by path (Pulumi runs programs from the
project directory), so their text never lands in Pulumi state. Scripts that run on a host travel
inside the remote command itself, because the host has no copy of this repository.
"""

from __future__ import annotations

import functools
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


def local_invocation(name: str, *args: str) -> str:
    """Command line for a local.Command: the script by its path relative to the project."""
    relative = script_path(name).relative_to(PROJECT_DIR)
    return shlex.join(["bash", str(relative), *args])


def remote_invocation(name: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Command line for a remote.Command (or a plain `ssh host CMD`): the script inline.

    The script becomes `bash -c '<text>' <name> <args...>`, so stdin stays free for secrets.
    Environment variables are set with `env` in the command itself, because sshd drops
    variables sent over the protocol unless AcceptEnv allows them. Only non-secret values
    may go into `args` or `env`: the command line is stored in state and visible in `ps`.
    """
    assignments = [f"{key}={value}" for key, value in sorted((env or {}).items())]
    argv = ["bash", "-c", script_text(name), name, *args]
    if assignments:
        argv = ["env", *assignments, *argv]
    return shlex.join(argv)
