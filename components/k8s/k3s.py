"""k3s bring-up gates, scale-down, kubeconfig and Cilium.

Order (the dependency graph says exactly this; components/k8s/bringup.py):
  bootstrap push -> every other server's push and every agent's push (in parallel) -> joined
  bootstrap push -> api-ready gate -> kubeconfig -> Cilium release
  -> nodes-Ready gate (after every push)
etcd admits one learner at a time: the servers' joins queue in k3s itself, not in the graph
(their rolls go one at a time). The bootstrap push confirms k3s.service, which a k3s server
reports active only once its API server is ready, so the other pushes need no API gate.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.config import ClusterConfig, Taint
from components.k8s import cilium, helm
from components.scripts import local_invocation, remote_invocation

NODE_JOIN_TIMEOUT_SECONDS = 600


def gate_options(parent: pulumi.Resource, after: list[pulumi.Resource]) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, depends_on=after)


def api_ready_gate(
    name: str, conn: command.remote.ConnectionArgs, timeout: int, opts: pulumi.ResourceOptions
) -> command.remote.Command:
    return command.remote.Command(
        f"{name}-api-ready",
        connection=conn,
        create=remote_invocation("api-ready.sh", str(timeout)),
        add_previous_output_in_env=False,
        opts=opts,
    )


def node_markings(labels: Mapping[str, str], taints: Sequence[Taint]) -> list[str]:
    """node-gate.sh's `label:K=V` / `taint:K[=V]:EFFECT` arguments, in a stable order."""
    return [f"label:{k}={v}" for k, v in sorted(labels.items())] + [
        f"taint:{taint.render()}" for taint in taints
    ]


@dataclass(frozen=True)
class GateTarget:
    """The server node gates run on (the bootstrap server), reached from the operator."""

    ssh_host: pulumi.Input[str]
    ssh_user: str
    host_public_key: pulumi.Input[str]
    deploy_private_key: pulumi.Output[str]  # marked secret; shared by every gate

    @functools.cached_property
    def _environments(self) -> dict[bool, pulumi.Output[dict[str, str]]]:
        # One environment Output per kind of gate, shared by all gates of that kind.
        def environment(bootstrap: bool) -> pulumi.Output[dict[str, str]]:
            return pulumi.Output.all(self.ssh_host, self.host_public_key).apply(
                lambda v: {
                    "TARGET_HOST": v[0],
                    "TARGET_USER": self.ssh_user,
                    "HOST_PUBLIC_KEY": v[1],
                    "NODE_GATE_BOOTSTRAP": "1" if bootstrap else "0",
                }
            )

        return {False: environment(False), True: environment(True)}

    def environment(self, bootstrap: bool) -> pulumi.Output[dict[str, str]]:
        return self._environments[bootstrap]

    @functools.cached_property
    def roll_environment(self) -> dict[str, pulumi.Input[str]]:
        """The same server as GATE_* variables, for node-roll.sh (whose TARGET_* is the node)."""
        return {
            "GATE_HOST": self.ssh_host,
            "GATE_USER": self.ssh_user,
            "GATE_HOST_PUBLIC_KEY": self.host_public_key,
        }


def node_gate(
    node: str,
    target: GateTarget,
    *,
    machine_id: pulumi.Input[str],
    bootstrap: bool,
    markings: Sequence[str] = (),
    opts: pulumi.ResourceOptions,
) -> command.local.Command:
    """Waits for `node` to register; on delete drains it and deletes the node object.

    Deleting a server's node object makes k3s remove its etcd member. The bootstrap server's
    gate refuses removal while other servers are still registered: another server must take
    over bootstrap duty (k3s.bootstrapHost) in an earlier `pulumi up`.

    It runs from the operator's machine (node-gate-client.sh, over SSH to the bootstrap
    server) so that a destroy whose bootstrap server is already gone finds nothing to drain
    instead of failing. A replaced machine replaces its gate, old first: the old Node object is
    drained and deleted before the new machine registers under the same name.

    `markings` (see node_markings) are applied once the node is registered: k3s sets labels and
    taints only at registration, so a changed label in the stack re-runs this and updates the
    node.
    """
    return command.local.Command(
        f"{node}-joined",
        create=local_invocation(
            "node-gate-client.sh", "wait", node, str(NODE_JOIN_TIMEOUT_SECONDS), *markings
        ),
        delete=local_invocation("node-gate-client.sh", "remove", node),
        environment=target.environment(bootstrap),
        stdin=target.deploy_private_key,
        triggers=[machine_id],
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(delete_before_replace=True)),
    )


def kubeconfig_command(
    name: str,
    conn: command.remote.ConnectionArgs,
    endpoint: pulumi.Input[str],
    cluster_name: str,
    opts: pulumi.ResourceOptions,
) -> command.remote.Command:
    """Reads k3s.yaml on the bootstrap server, rewritten for `endpoint`; output is secret."""
    create = pulumi.Output.from_input(endpoint).apply(
        lambda ep: remote_invocation("kubeconfig.sh", ep, cluster_name)
    )
    return command.remote.Command(
        f"{name}-kubeconfig",
        connection=conn,
        create=create,
        logging=command.remote.Logging.NONE,
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["stdout", "stderr"])
        ),
    )


@dataclass(frozen=True)
class CiliumRelease:
    provider: k8s.Provider
    release: k8s.helm.v3.Release


def kubernetes_provider(
    name: str, cfg: ClusterConfig, kubeconfig: pulumi.Output[str], opts: pulumi.ResourceOptions
) -> k8s.Provider:
    """The provider every Helm release and Kubernetes object of the cluster goes through."""
    return k8s.Provider(
        f"{name}-k8s",
        kubeconfig=kubeconfig,
        # A new kubeconfig (e.g. rotated client cert) must not replace everything under it.
        cluster_identifier=cfg.name,
        # When the servers are already gone (destroy after a failed up), the releases go with
        # them instead of blocking `pulumi destroy`.
        delete_unreachable=True,
        opts=opts,
    )


def cilium_release(
    name: str,
    cfg: ClusterConfig,
    provider: k8s.Provider,
    api_host: pulumi.Input[str],
    node_count: int,
    opts: pulumi.ResourceOptions,
) -> CiliumRelease:
    values = pulumi.Output.from_input(api_host).apply(
        lambda host: cilium.render_values(cilium.cilium_settings(cfg, host, node_count))
    )
    release = helm.chart_release(
        f"{name}-cilium",
        chart=cilium.CHART_NAME,
        repo=cilium.CHART_REPO,
        version=cfg.cilium.version,
        namespace=cilium.NAMESPACE,
        values=values,
        provider=provider,
        opts=opts,
    )
    return CiliumRelease(provider=provider, release=release)


def teardown_marker(
    name: str, target: GateTarget, opts: pulumi.ResourceOptions
) -> command.local.Command:
    """Tells the node gates whether the whole stack is being destroyed.

    It depends on every gate (opts), so `pulumi destroy` deletes it first: its delete leaves a
    marker on the operator's machine, and the gates deleted after it may then take an unreachable
    bootstrap server (or API) as "the cluster is gone". Its create (`pulumi up`) removes the
    marker. In a scale-down it stays, and a removal that cannot reach the cluster fails, so the
    machine is kept instead of dropping a server that is still an etcd member.
    """
    return command.local.Command(
        f"{name}-teardown-marker",
        create=local_invocation("node-gate-client.sh", "in-service"),
        delete=local_invocation("node-gate-client.sh", "teardown"),
        environment=target.environment(False),
        add_previous_output_in_env=False,
        opts=opts,
    )


def nodes_ready_gate(
    name: str,
    conn: command.remote.ConnectionArgs,
    expected: int,
    timeout: int,
    opts: pulumi.ResourceOptions,
) -> command.remote.Command:
    return command.remote.Command(
        f"{name}-nodes-ready",
        connection=conn,
        create=remote_invocation("nodes-ready.sh", str(expected), str(timeout)),
        add_previous_output_in_env=False,
        opts=opts,
    )
