"""The Helm releases of a cluster (Cilium, the Hetzner cloud controller and CSI driver).

Every release is installed the same way; only the chart, its values and its place in the
dependency graph differ.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s


def chart_release(
    resource_name: str,
    *,
    chart: str,
    repo: str,
    version: str,
    namespace: str,
    values: pulumi.Input[dict[str, Any]],
    provider: k8s.Provider,
    opts: pulumi.ResourceOptions,
) -> k8s.helm.v3.Release:
    """A helm.v3.Release of CHART from REPO, named after the chart, through PROVIDER.

    helm.v3.Release because it previews before the cluster exists (helm.v4.Chart does not,
    pulumi-kubernetes#3027).
    """
    return k8s.helm.v3.Release(
        resource_name,
        name=chart,
        chart=chart,
        version=version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo),
        namespace=namespace,
        values=values,
        # Nodes stay NotReady until Cilium runs and the add-ons' pods start only after that:
        # no release may wait for its pods. The nodes-Ready gate after them waits instead.
        skip_await=True,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider)),
    )
