"""The stack file, checked whole: the config package's own checks plus those of the modules
above it (the Hetzner firewall's rules, Cilium's chart values), so the config package imports
none of them.

`load_config` is what the Pulumi program calls; `parse_cluster` is the same check for raw data.
"""

from __future__ import annotations

from typing import Any

from components.config import load
from components.config.schema import ClusterConfig
from components.k8s import cilium
from components.machines import hetzner

EXTRA_CHECKS: tuple[load.ExtraCheck, ...] = (hetzner.stack_problems, cilium.stack_problems)


def parse_cluster(data: Any, source: str = "nixos-k3s:cluster") -> ClusterConfig:
    """Validate raw stack data; raise ConfigError listing every problem."""
    return load.parse_cluster(data, source, EXTRA_CHECKS)


def load_config() -> load.StackConfig:
    """The validated stack config and its secrets; raises ConfigError."""
    return load.load_config(EXTRA_CHECKS)
