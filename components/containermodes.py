"""How nspawn k3s containers run, read from the data file the NixOS module renders them from.

`nixos/modules/k3s-container-modes.json` holds each mode's privateUsers, capabilities, system
calls, devices and binds, and which CNIs a mode can run. The stack check (config/), the host
data (render.py) and the real-kernel drill (tests/kernel/test_container_drill.py) all read it
here, so they cannot drift from what nixos/modules/k3s-containers.nix renders.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_PATH = Path(__file__).parent.parent / "nixos" / "modules" / "k3s-container-modes.json"
HOST_USERS = "host-users"
USER_NAMESPACE = "user-namespace"


@dataclass(frozen=True)
class ContainerMode:
    name: str
    private_users: str
    cnis: tuple[str, ...]
    capabilities: dict[str, str]
    system_call_filter: dict[str, str]
    devices: dict[str, str]
    binds: dict[str, str]
    bpffs: bool

    @property
    def user_namespaced(self) -> bool:
        return self.private_users != "no"


@functools.cache
def _data() -> dict[str, Any]:
    return json.loads(DATA_PATH.read_text(encoding="utf-8"))


def nspawn_default_capabilities() -> tuple[str, ...]:
    """The bounding set systemd-nspawn keeps before --capability= adds to it."""
    return tuple(_data()["nspawnDefaultCapabilities"]["capabilities"])


def modes() -> dict[str, ContainerMode]:
    return {
        name: ContainerMode(
            name=name,
            private_users=mode["privateUsers"],
            cnis=tuple(mode["cnis"]),
            capabilities=dict(mode["capabilities"]),
            system_call_filter=dict(mode["systemCallFilter"]),
            devices=dict(mode["devices"]),
            binds=dict(mode["binds"]),
            bpffs=bool(mode["bpffs"]),
        )
        for name, mode in sorted(_data()["modes"].items())
    }


def bounding_set(mode: ContainerMode) -> frozenset[str]:
    """Every capability the container's processes can hold: nspawn's default plus the mode's."""
    return frozenset(nspawn_default_capabilities()) | frozenset(mode.capabilities)


def default_mode(cni: str) -> str:
    """A container that does not choose: unprivileged where the CNI allows it (flannel)."""
    return USER_NAMESPACE if cni in modes()[USER_NAMESPACE].cnis else HOST_USERS


def refusal(cni: str, mode: str) -> str | None:
    """Why `mode` cannot run `cni` (None: it can). The reason is the data file's, word for word
    what k3s-containers.nix says when a host document pairs them: every pair a mode does not
    run has one there (tests/test_container_modes.py)."""
    if cni in modes()[mode].cnis:
        return None
    return str(_data()["refusals"][f"{cni}/{mode}"])
