"""What the NixOS layer needs of a machine, whatever made it: each machine layer (hetzner.py,
colima.py) returns one MachineView per host."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components.hosts import render
from components.hosts.hostspec import HostSpec


@dataclass(frozen=True)
class WakeCommand:
    """Run on the operator's machine after the install, to bring a machine back up.

    A Colima (Virtualization.framework) VM may stop instead of rebooting at the end of the
    install; re-running the idempotent create script starts it and waits for its address.
    """

    create: str
    environment: Mapping[str, pulumi.Input[str]]


@dataclass(frozen=True)
class MachineView:
    """A machine as the NixOS layer sees it."""

    ssh_host: pulumi.Output[str]
    ssh_user: str
    install_user: str
    machine_id: pulumi.Output[str]
    # The machine's facts are built from these Outputs' values, inside the one apply that
    # renders the host (an apply of their own would be one more Output per host to settle).
    fact_inputs: tuple[pulumi.Output[Any], ...]
    facts_of: Callable[[Sequence[Any]], render.MachineFacts]
    private_ipv4: pulumi.Input[str]
    wake: WakeCommand | None = None
    # The host key the machine answers with before NixOS is installed (stock image, installer).
    stock_host_key: pulumi.Input[str] | None = None
    from_image: bool = False

    def spec(
        self, extra: Sequence[pulumi.Input[Any]], render_spec: Callable[..., HostSpec]
    ) -> pulumi.Output[HostSpec]:
        """render_spec(facts, *extra values) in one apply over the facts and `extra`."""
        k = len(self.fact_inputs)
        return pulumi.Output.all(*self.fact_inputs, *extra).apply(
            lambda v: render_spec(self.facts_of(v[:k]), *v[k:])
        )
