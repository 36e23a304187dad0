"""The k3s bring-up: the stage after the NixOS hosts that orders their activations and gates
the joins.

A component, so `pulumi preview` shows machines -> hosts -> k3s -> Cilium. Its resources sat
directly under the Cluster before; each carries its old URN as an alias (MovedFrom), so an
existing stack keeps them (the engine matches the old URN) instead of replacing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_command as command

from components.config import ClusterConfig
from components.hosts.inventory import Host
from components.hosts.machineview import MachineView
from components.hosts.nixos_host import MovedFrom, NixosHost
from components.hosts.render import container_node_name
from components.k8s import k3s

# host, what its push waits for, what its roll waits for -> the host's NixosHost
HostFactory = Callable[[Host, list[pulumi.Resource], Sequence[pulumi.Resource]], NixosHost]


@dataclass(frozen=True)
class BringUpArgs:
    prefix: str  # the cluster's resource name, in front of the gates' names
    config: ClusterConfig
    hosts: list[Host]
    machines: dict[str, MachineView]
    gate_target: k3s.GateTarget
    admin: command.remote.ConnectionArgs  # to the bootstrap server, host key pinned
    endpoint_url: pulumi.Input[str]
    add_host: HostFactory


class K3sBringUp(pulumi.ComponentResource):
    """The order in which k3s comes up, and the gates that hold it.

    The bootstrap server's push, then every other host's push at once (the servers' etcd joins
    queue in k3s, see cluster.py), one node gate per node; the API-ready gate after the
    bootstrap push, and the kubeconfig once the API answers. The pushes wait for the bootstrap
    push, not for the API-ready gate: that push confirms k3s.service, and a k3s server is
    Type=notify and sends READY=1 only once its API server is ready and its etcd runs
    (k3s pkg/cli/server/server.go), so the gate's SSH round trip is off their path. `finish`
    adds the nodes-Ready gate after the CNI and add-ons, and the teardown marker. Rolling
    upgrades go the bootstrap server, the other servers one at a time, then the agents in
    batches of deploy.maxUnavailable (see NixosHost._roll).
    """

    api_ready: command.remote.Command
    kubeconfig: command.remote.Command
    gates: list[pulumi.Resource]
    pushes: list[pulumi.Resource]

    def __init__(self, name: str, args: BringUpArgs, was: MovedFrom, opts: pulumi.ResourceOptions):
        super().__init__("nixos-k3s:k3s:BringUp", name, None, opts)
        self._name, self._args, self._was = args.prefix, args, was
        self.endpoint_url = args.endpoint_url
        cfg, machines, target = args.config, args.machines, args.gate_target
        bootstrap = next(h for h in args.hosts if h.is_bootstrap)

        first = args.add_host(bootstrap, [], [])
        self.pushes = [first.push]
        last_rolls: list[pulumi.Resource] = [_rolled(first)]
        self.api_ready = k3s.api_ready_gate(
            self._name, args.admin, cfg.deploy.api_ready_timeout_seconds, self._after([first.push])
        )
        bootstrap_gate = k3s.node_gate(
            bootstrap.name,
            target,
            machine_id=machines[bootstrap.name].machine_id,
            bootstrap=True,
            markings=k3s.node_markings(bootstrap.pool.labels, bootstrap.pool.taints),
            opts=self._after([self.api_ready]),
        )
        self.gates = [bootstrap_gate]
        self._container_gates(bootstrap, [bootstrap_gate])
        # The other servers join at once, once the bootstrap server runs, as hetzner-k3s joins its
        # additional masters (set_up_additional_masters: one fiber each). etcd admits one
        # learner at a time: a join that finds another learner is refused (ErrTooManyLearners)
        # and retried, by k3s itself in its newest pkg/etcd/etcd.go, else by systemd 5 s after
        # k3s exits (nixpkgs k3s module: Restart=always, RestartSec=5s), until the leader has
        # promoted the one before; each push's confirm
        # waits for its k3s.service, under the rollback deadline as before. Their rolls (an
        # upgrade drains a running server) still go one at a time.
        for server in (h for h in args.hosts if h.role == "server" and not h.is_bootstrap):
            pushed = args.add_host(server, [first.push], last_rolls)
            self.pushes.append(pushed.push)
            last_rolls = [_rolled(pushed)]
            self._join_gates(server, pushed, bootstrap_gate)
        agents = [h for h in args.hosts if h.role == "agent"]
        batch_size = cfg.deploy.max_unavailable
        for start in range(0, len(agents), batch_size):
            batch = agents[start : start + batch_size]
            pushed_batch = [args.add_host(agent, [first.push], last_rolls) for agent in batch]
            for agent, pushed in zip(batch, pushed_batch, strict=True):
                self.pushes.append(pushed.push)
                self._join_gates(agent, pushed, bootstrap_gate)
            last_rolls = [_rolled(pushed) for pushed in pushed_batch]

        self.kubeconfig = k3s.kubeconfig_command(
            self._name, args.admin, args.endpoint_url, cfg.name, self._after([self.api_ready])
        )

    def _after(self, after: list[pulumi.Resource]) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=self, depends_on=after, transformations=[self._was.transformation]
        )

    def _container_gates(self, host: Host, after: list[pulumi.Resource]) -> None:
        """One node gate per nspawn agent the host carries (they join with the host)."""
        for slot in host.containers:
            self.gates.append(
                k3s.node_gate(
                    container_node_name(host.name, slot.config.name),
                    self._args.gate_target,
                    machine_id=self._args.machines[host.name].machine_id,
                    bootstrap=False,
                    markings=k3s.node_markings(slot.config.labels, slot.config.taints),
                    opts=self._after(after),
                )
            )

    def _join_gates(self, host: Host, pushed: NixosHost, bootstrap_gate: pulumi.Resource) -> None:
        """The host's node gate, and its containers'."""
        after: list[pulumi.Resource] = [pushed.push, bootstrap_gate]
        self.gates.append(
            k3s.node_gate(
                host.name,
                self._args.gate_target,
                machine_id=self._args.machines[host.name].machine_id,
                bootstrap=False,
                markings=k3s.node_markings(host.pool.labels, host.pool.taints),
                opts=self._after(after),
            )
        )
        self._container_gates(host, after)

    def finish(self, node_count: int, after: Sequence[pulumi.Resource]) -> None:
        """The nodes-Ready gate, once the CNI and add-ons are released and every host is
        activated, and the teardown marker; then the stage's outputs.

        The gate follows the pushes, not the node gates: it polls until node_count nodes are
        Ready, and a node is Ready only once registered, so it waits for every registration
        itself and a node gate's SSH round trip is off its path. Nothing needs it after the
        gates' labels and taints: a first registration carries them already (k3s
        --node-label/--node-taint from the host data), the releases do not wait for it, and the
        deploy still waits for every gate. The teardown marker stays after the gates."""
        cfg = self._args.config
        k3s.nodes_ready_gate(
            self._name,
            self._args.admin,
            node_count,
            cfg.deploy.nodes_ready_timeout_seconds,
            self._after([*after, *self.pushes]),
        )
        k3s.teardown_marker(self._name, self._args.gate_target, self._after(list(self.gates)))
        self.register_outputs({"kubeconfig": pulumi.Output.secret(self.kubeconfig.stdout)})


def _rolled(host: NixosHost) -> pulumi.Resource:
    assert host.roll is not None  # every host of a cluster has its roll step
    return host.roll
