"""nixos-k3s: a k3s cluster on NixOS from one stack file.

Hetzner Cloud servers (prod) or Colima VMs on a Mac (dev) get NixOS, their rendered
configuration, k3s with embedded etcd and Cilium; the stack exports a kubeconfig.
"""

import pulumi

from components.cluster import Cluster, ClusterArgs
from components.stack import load_config

stack = load_config()
cluster = Cluster(
    stack.cluster.name,
    ClusterArgs(
        config=stack.cluster,
        tailscale_auth_key=stack.tailscale_auth_key,
        hcloud_token=stack.hcloud_token,
        etcd_s3_credentials=stack.etcd_s3_credentials,
    ),
)

pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("apiEndpoint", cluster.api_endpoint)
pulumi.export("hostAddresses", cluster.host_addresses)
pulumi.export("configHashes", cluster.config_hashes)
pulumi.export("bootstrapHost", cluster.bootstrap_host)
