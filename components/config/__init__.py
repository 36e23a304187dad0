"""The stack config, at the bottom of the import graph.

- `schema`: the pydantic models of `nixos-k3s:cluster` (a leaf: pydantic, the standard library,
  catalog, rules)
- `errors`: Problem, ConfigError and the formatting of validation errors
- `derived`: what the rest of the program reads off a valid stack (addresses, node counts)
- `checks`: the semantic checks of the whole stack
- `load`: the Pulumi config and secrets; its `parse_cluster` and `load_config` take the checks of
  the modules above the config as an argument, so the whole check is `components.stack`'s
  (not re-exported here, so that no caller runs the partial one by mistake)

Nothing here imports the modules that consume the config (cilium, hostspec, render, inventory,
k3s, cluster, the machine layers); checks that belong to them are handed in (components/stack.py).
The names below are re-exported so `from components.config import X` keeps working.
"""

from components.config.checks import semantic_problems, semantic_warnings
from components.config.derived import (
    container_mode,
    has_nested_nodes,
    load_balancer_private_ip,
    needs_tailscale_key,
    node_count,
    pool_offsets,
    uses_cloud_controller,
    uses_csi,
    uses_load_balancer,
)
from components.config.errors import ConfigError, Problem, Warning_, problems_from_validation
from components.config.load import (
    ETCD_S3_ACCESS_KEY,
    ETCD_S3_SECRET_KEY,
    HCLOUD_TOKEN,
    REQUIRED_SECRET_HINT,
    TAILSCALE_KEY,
    EtcdS3Credentials,
    StackConfig,
)
from components.config.schema import (
    CiliumConfig,
    ClusterConfig,
    ColimaConfig,
    ContainerConfig,
    ContainerModeName,
    DeployConfig,
    EtcdS3,
    EtcdSnapshots,
    FirewallConfig,
    FirewallRule,
    GracefulShutdown,
    HetznerConfig,
    HubbleConfig,
    K3sConfig,
    NetworkConfig,
    NodePool,
    TailscaleConfig,
    Taint,
)

__all__ = [
    "ETCD_S3_ACCESS_KEY",
    "ETCD_S3_SECRET_KEY",
    "HCLOUD_TOKEN",
    "REQUIRED_SECRET_HINT",
    "TAILSCALE_KEY",
    "CiliumConfig",
    "ClusterConfig",
    "ColimaConfig",
    "ConfigError",
    "ContainerConfig",
    "ContainerModeName",
    "DeployConfig",
    "EtcdS3",
    "EtcdS3Credentials",
    "EtcdSnapshots",
    "FirewallConfig",
    "FirewallRule",
    "GracefulShutdown",
    "HetznerConfig",
    "HubbleConfig",
    "K3sConfig",
    "NetworkConfig",
    "NodePool",
    "Problem",
    "StackConfig",
    "TailscaleConfig",
    "Taint",
    "Warning_",
    "container_mode",
    "has_nested_nodes",
    "load_balancer_private_ip",
    "needs_tailscale_key",
    "node_count",
    "pool_offsets",
    "problems_from_validation",
    "semantic_problems",
    "semantic_warnings",
    "uses_cloud_controller",
    "uses_csi",
    "uses_load_balancer",
]
