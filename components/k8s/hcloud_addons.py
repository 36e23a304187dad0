"""Hetzner add-ons inside the cluster: the cloud controller manager and the CSI driver.

Values are pure functions of the stack config, checked against the pinned charts' schemas
(components/data/hcloud/): the CSI chart's own values.schema.json, and for the cloud
controller, whose chart ships none, a strict schema derived from its values.yaml by
components/k8s/chartschema.py.
The releases share the Cilium release's Kubernetes provider.

Routing: the cloud controller runs with the private network (node InternalIPs, load balancers
targeting private IPs) but with its route controller off. Cilium here tunnels pod traffic
(VXLAN/Geneve; native routing is refused on Hetzner) and hands out pod ranges itself
(cluster-pool IPAM), so routes for the nodes' spec.podCIDR would point at ranges no pod uses.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import ClusterConfig
from components.k8s import helm, valuesschema

# Helm drops keys set to null before it validates; paths are shown as for Cilium's values.
from components.k8s.cilium import _format_path, _without_nulls

CHART_REPO = "https://charts.hetzner.cloud"
NAMESPACE = "kube-system"
CCM_CHART = "hcloud-cloud-controller-manager"
CCM_VERSION = "1.35.0"
CSI_CHART = "hcloud-csi"
CSI_VERSION = "2.22.1"
# The Secret both charts read by default: key `token` (CCM env HCLOUD_TOKEN and CSI
# controller.hcloudToken.existingSecret) and key `network` (CCM networking.network).
TOKEN_SECRET = "hcloud"
STORAGE_CLASS = "hcloud-volumes"
SCHEMA_DIR = Path(__file__).parents[1] / "data" / "hcloud"
# Set by the cloud controller on every node it initialised as a Hetzner Cloud server.
PROVIDED_BY_LABEL = "instance.hetzner.cloud/provided-by"


class HcloudValuesError(ValueError):
    """Values a chart's schema rejects; `problems` holds one line per violation, sorted."""

    def __init__(self, chart: str, problems: Iterable[str]) -> None:
        self.chart = chart
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{chart} values: {problem}" for problem in self.problems))


def schema_path(chart: str, version: str) -> Path:
    return SCHEMA_DIR / f"{chart}-{version}.values.schema.json"


@functools.cache
def _schema(chart: str, version: str) -> dict[str, Any]:
    schema = json.loads(schema_path(chart, version).read_text(encoding="utf-8"))
    valuesschema.check_schema(schema)
    return schema


def validate(values: Mapping[str, Any], chart: str, version: str) -> None:
    """Raise HcloudValuesError naming the path of every value the chart's schema rejects."""
    problems = sorted(
        f"{_format_path(problem.path)}: {problem.message}"
        for problem in valuesschema.problems(_without_nulls(values), _schema(chart, version))
    )
    if problems:
        raise HcloudValuesError(chart, problems)


def _env(value: str) -> dict[str, str]:
    return {"value": value}


def ccm_values(cfg: ClusterConfig) -> dict[str, Any]:
    """hcloud-cloud-controller-manager values: private network on, routes off, LBs private."""
    values: dict[str, Any] = {
        # HCLOUD_NETWORK from the `network` key of the token Secret, node InternalIPs from the
        # network, and hostNetwork (it must run before Cilium makes nodes Ready).
        "networking": {"enabled": True, "clusterCIDR": cfg.k3s.cluster_cidr},
        "env": {
            "HCLOUD_NETWORK_ROUTES_ENABLED": _env("false"),
            "HCLOUD_LOAD_BALANCERS_USE_PRIVATE_IP": _env("true"),
            # Services need no location annotation: their load balancers are created in the
            # private network's zone (and attached to the network).
            "HCLOUD_LOAD_BALANCERS_NETWORK_ZONE": _env(cfg.network.zone),
        },
        # On the servers (k3s labels them; the chart tolerates the control-plane taint).
        "nodeSelector": {"node-role.kubernetes.io/control-plane": "true"},
    }
    validate(values, CCM_CHART, CCM_VERSION)
    return values


def csi_values(cfg: ClusterConfig) -> dict[str, Any]:
    """hcloud-csi values: one default StorageClass; node plugin on Hetzner servers only."""
    values: dict[str, Any] = {
        "storageClasses": [
            {
                "name": STORAGE_CLASS,
                "defaultStorageClass": True,
                "reclaimPolicy": cfg.hetzner.csi_reclaim_policy,
            }
        ],
        # Hetzner labels on every volume, to find what a destroyed cluster left behind.
        "controller": {
            "volumeExtraLabels": {"cluster": cfg.name, "managed-by": "nixos-k3s"},
        },
        "node": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    # The chart's own terms (no dedicated Robot servers) ...
                                    {
                                        "key": "instance.hetzner.cloud/is-root-server",
                                        "operator": "NotIn",
                                        "values": ["true"],
                                    },
                                    # ... narrowed to Hetzner Cloud servers: nspawn k3s agents
                                    # cannot attach or mount volumes.
                                    {
                                        "key": PROVIDED_BY_LABEL,
                                        "operator": "In",
                                        "values": ["cloud"],
                                    },
                                ]
                            }
                        ]
                    }
                }
            }
        },
    }
    validate(values, CSI_CHART, CSI_VERSION)
    return values


@dataclass(frozen=True)
class HcloudAddons:
    token_secret: k8s.core.v1.Secret
    ccm: k8s.helm.v3.Release | None
    csi: k8s.helm.v3.Release | None

    @property
    def releases(self) -> list[pulumi.Resource]:
        return [r for r in (self.ccm, self.csi) if r is not None]


def hcloud_addons(
    name: str,
    cfg: ClusterConfig,
    *,
    provider: k8s.Provider,
    token: pulumi.Input[str],
    network_id: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> HcloudAddons:
    """The token Secret and the releases the stack asks for (at least one of them)."""
    in_cluster = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider))
    secret = k8s.core.v1.Secret(
        f"{name}-hcloud-token",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=TOKEN_SECRET, namespace=NAMESPACE),
        type="Opaque",
        string_data={
            "token": pulumi.Output.secret(token),
            "network": pulumi.Output.from_input(network_id),
        },
        opts=in_cluster,
    )
    after_secret = pulumi.ResourceOptions.merge(
        in_cluster, pulumi.ResourceOptions(depends_on=[secret])
    )

    def release(
        suffix: str, chart: str, version: str, values: dict[str, Any]
    ) -> k8s.helm.v3.Release:
        return helm.chart_release(
            f"{name}-{suffix}",
            chart=chart,
            repo=CHART_REPO,
            version=version,
            namespace=NAMESPACE,
            values=values,
            provider=provider,
            opts=after_secret,
        )

    ccm = (
        release("hcloud-ccm", CCM_CHART, CCM_VERSION, ccm_values(cfg))
        if cfg.hetzner.cloud_controller_manager
        else None
    )
    csi = (
        release("hcloud-csi", CSI_CHART, CSI_VERSION, csi_values(cfg)) if cfg.hetzner.csi else None
    )
    return HcloudAddons(token_secret=secret, ccm=ccm, csi=csi)
