"""The Cluster component: the only thing __main__.py builds.

stack config -> machines (Hetzner or Colima) -> host data -> NixOS hosts (install, secrets,
build, push) -> k3s gates -> kubeconfig -> Cilium -> nodes-Ready gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from components import catalog, config, hostspec, inventory, k3s, render
from components.colima import ColimaMachine, ColimaMachineArgs
from components.config import ClusterConfig
from components.hetzner import HetznerMachines, HetznerMachinesArgs
from components.hetzner_image import host_key_user_data
from components.hostspec import HostSpec
from components.inventory import Host
from components.nixos_host import (
    DeployKey,
    HostKey,
    NixosHost,
    NixosHostArgs,
    SecretSet,
    WakeCommand,
    connection,
)
from components.scripts import local_invocation


@dataclass(frozen=True)
class ClusterArgs:
    config: ClusterConfig
    tailscale_auth_key: pulumi.Input[str] | None = None


@dataclass(frozen=True)
class MachineView:
    """What the NixOS layer needs of a machine, whatever made it."""

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
    from_image: bool = False

    def spec(
        self, extra: Sequence[pulumi.Input[Any]], render_spec: Callable[..., HostSpec]
    ) -> pulumi.Output[HostSpec]:
        """render_spec(facts, *extra values) in one apply over the facts and `extra`."""
        k = len(self.fact_inputs)
        return pulumi.Output.all(*self.fact_inputs, *extra).apply(
            lambda v: render_spec(self.facts_of(v[:k]), *v[k:])
        )


def vpn_auth_content(auth_key: str) -> str:
    """k3s --vpn-auth-file format: k3s runs `tailscale up` with the join key itself."""
    return f"name=tailscale,joinKey={auth_key}"


def colima_machine_args(
    cfg: ClusterConfig, host: Host, deploy_public_key: pulumi.Input[str]
) -> ColimaMachineArgs:
    """The Colima VM of a host: its profile is the host name, <cluster>-<pool>-<n>."""
    return ColimaMachineArgs(
        profile=host.name,
        cpus=cfg.colima.cpus,
        memory_gib=cfg.colima.memory_gib,
        disk_gib=cfg.colima.disk_gib,
        deploy_public_key=deploy_public_key,
        arch=cfg.colima.arch,
        vm_type=cfg.colima.vm_type,
        rosetta=cfg.colima.rosetta,
    )


class Cluster(pulumi.ComponentResource):
    kubeconfig: pulumi.Output[str]
    api_endpoint: pulumi.Output[str]
    host_addresses: pulumi.Output[dict[str, str]]
    config_hashes: pulumi.Output[dict[str, str]]
    bootstrap_host: str

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nixos-k3s:index:Cluster", name, None, opts)
        cfg = args.config
        hosts = inventory.hosts(cfg)
        child = pulumi.ResourceOptions(parent=self)

        deploy_key = DeployKey.of(
            tls.PrivateKey(f"{name}-deploy-key", algorithm="ED25519", opts=child)
        )
        token = random.RandomPassword(f"{name}-k3s-token", length=48, special=False, opts=child)
        host_keys = {
            h.name: HostKey.of(
                tls.PrivateKey(f"{h.name}-host-key", algorithm="ED25519", opts=child)
            )
            for h in hosts
        }
        deploy_public = deploy_key.public_openssh
        machines = self._machines(name, cfg, hosts, deploy_public, deploy_key, host_keys)

        bootstrap = next(h for h in hosts if h.is_bootstrap)
        self.bootstrap_host = bootstrap.name
        bootstrap_ip = machines[bootstrap.name].private_ipv4
        secrets = self._secret_contents(cfg, token, args.tailscale_auth_key)
        secret_sets: dict[tuple[str, ...], SecretSet] = {}

        def secret_set(host: Host) -> SecretSet:
            paths = tuple(render.secret_files(cfg, host))
            if paths not in secret_sets:
                secret_sets[paths] = SecretSet.of(
                    pulumi.Output.all(**{p: secrets[p] for p in paths})
                )
            return secret_sets[paths]

        specs: dict[str, pulumi.Output[HostSpec]] = {
            host.name: machines[host.name].spec(
                [deploy_public, bootstrap_ip],
                lambda facts, deploy, server_ip, host=host: render.host_spec(
                    cfg,
                    host,
                    facts,
                    bootstrap_ip=server_ip,
                    authorized_keys=[deploy, *cfg.ssh_keys],
                ),
            )
            for host in hosts
        }
        host_json = {n: spec.apply(hostspec.host_json) for n, spec in specs.items()}
        content_hash = hostspec.content_hasher()
        hashes = {n: text.apply(content_hash) for n, text in host_json.items()}

        def nixos_host(host: Host, after: list[pulumi.Resource]) -> NixosHost:
            machine = machines[host.name]
            return NixosHost(
                host.name,
                NixosHostArgs(
                    host_name=host.name,
                    ssh_host=machine.ssh_host,
                    ssh_user=machine.ssh_user,
                    install_user=machine.install_user,
                    host_key=host_keys[host.name],
                    deploy_key=deploy_key,
                    host_json=host_json[host.name],
                    content_hash=hashes[host.name],
                    secrets=secret_set(host),
                    machine_id=machine.machine_id,
                    health_units=["k3s.service"],
                    rollback_timeout_seconds=cfg.deploy.rollback_timeout_seconds,
                    push_after=after,
                    wake=machine.wake,
                    from_image=machine.from_image,
                ),
                opts=child,
            )

        first = nixos_host(bootstrap, [])
        admin = connection(
            machines[bootstrap.name].ssh_host,
            machines[bootstrap.name].ssh_user,
            host_keys[bootstrap.name],
            deploy_key,
        )
        gate_target = k3s.GateTarget(
            ssh_host=machines[bootstrap.name].ssh_host,
            ssh_user=machines[bootstrap.name].ssh_user,
            host_public_key=host_keys[bootstrap.name].public_openssh,
            deploy_private_key=deploy_key.private_openssh,
        )
        api_ready = k3s.api_ready_gate(
            name,
            admin,
            cfg.deploy.api_ready_timeout_seconds,
            k3s.gate_options(self, [first.push]),
        )
        bootstrap_gate = k3s.node_gate(
            bootstrap.name,
            gate_target,
            machine_id=machines[bootstrap.name].machine_id,
            bootstrap=True,
            markings=k3s.node_markings(bootstrap.pool.labels, bootstrap.pool.taints),
            opts=k3s.gate_options(self, [api_ready]),
        )
        gates: list[pulumi.Resource] = [bootstrap_gate]

        def container_gates(host: Host, after: list[pulumi.Resource]) -> None:
            """One node gate per nspawn agent the host carries (they join with the host)."""
            for slot in host.containers:
                node = render.container_node_name(host.name, slot.config.name)
                gates.append(
                    k3s.node_gate(
                        node,
                        gate_target,
                        machine_id=machines[host.name].machine_id,
                        bootstrap=False,
                        markings=k3s.node_markings(slot.config.labels, slot.config.taints),
                        opts=k3s.gate_options(self, after),
                    )
                )

        def join_gates(host: Host, pushed: NixosHost) -> pulumi.Resource:
            """The host's node gate (what the next server waits for), and its containers'."""
            after: list[pulumi.Resource] = [pushed.push, bootstrap_gate]
            gate = k3s.node_gate(
                host.name,
                gate_target,
                machine_id=machines[host.name].machine_id,
                bootstrap=False,
                markings=k3s.node_markings(host.pool.labels, host.pool.taints),
                opts=k3s.gate_options(self, after),
            )
            gates.append(gate)
            container_gates(host, after)
            return gate

        container_gates(bootstrap, [bootstrap_gate])
        previous: pulumi.Resource = api_ready
        for server in (h for h in hosts if h.role == "server" and not h.is_bootstrap):
            previous = join_gates(server, nixos_host(server, [previous]))
        for agent in (h for h in hosts if h.role == "agent"):
            join_gates(agent, nixos_host(agent, [api_ready]))

        endpoint_url = (
            pulumi.Output.from_input(render.api_endpoint(cfg).url)
            if cfg.api_endpoint
            else machines[bootstrap.name].ssh_host.apply(
                lambda address: render.api_endpoint(cfg, address).url
            )
        )
        kubeconfig_cmd = k3s.kubeconfig_command(
            name, admin, endpoint_url, cfg.name, k3s.gate_options(self, [api_ready])
        )
        self.kubeconfig = pulumi.Output.secret(kubeconfig_cmd.stdout)
        node_count = config.node_count(cfg)
        release = k3s.cilium_release(name, cfg, self.kubeconfig, bootstrap_ip, node_count, child)
        k3s.nodes_ready_gate(
            name,
            admin,
            node_count,
            cfg.deploy.nodes_ready_timeout_seconds,
            k3s.gate_options(self, [release.release, *gates]),
        )

        self.api_endpoint = endpoint_url
        self.host_addresses = pulumi.Output.all(
            **{n: m.ssh_host for n, m in machines.items()}
        ).apply(dict)
        self.config_hashes = pulumi.Output.all(**hashes).apply(dict)
        self.register_outputs(
            {
                "kubeconfig": self.kubeconfig,
                "apiEndpoint": self.api_endpoint,
                "hostAddresses": self.host_addresses,
                "configHashes": self.config_hashes,
            }
        )

    def _machines(
        self,
        name: str,
        cfg: ClusterConfig,
        hosts: list[Host],
        deploy_public: pulumi.Output[str],
        deploy_key: DeployKey,
        host_keys: dict[str, HostKey],
    ) -> dict[str, MachineView]:
        if cfg.provider == "hetzner":
            image_json: dict[catalog.Arch, pulumi.Output[str]] = {}
            user_data: dict[str, pulumi.Output[str]] = {}
            if cfg.hetzner.nixos_image:
                arches: list[catalog.Arch] = sorted({h.arch for h in hosts})
                for arch in arches:
                    image_json[arch] = deploy_public.apply(
                        lambda key, a=arch: hostspec.host_json(
                            render.image_spec(cfg, a, [key, *cfg.ssh_keys])
                        )
                    )
                user_data = {
                    h.name: pulumi.Output.secret(
                        pulumi.Output.all(
                            host_keys[h.name].public_openssh, host_keys[h.name].private_openssh
                        ).apply(lambda v: host_key_user_data(v[0], v[1]))
                    )
                    for h in hosts
                }
            hetzner = HetznerMachines(
                f"{name}-hetzner",
                HetznerMachinesArgs(
                    config=cfg,
                    hosts=hosts,
                    deploy_public_key=deploy_public,
                    image_host_json=image_json,
                    deploy_private_key=deploy_key.private_openssh,
                    hcloud_token=pulumi.Config("hcloud").get_secret("token"),
                    user_data=user_data,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            views = {}
            for host in hosts:
                m = hetzner.machines[host.name]
                private_ip = host.private_ip or ""
                views[host.name] = MachineView(
                    ssh_host=m.ssh_host,
                    ssh_user="root",
                    install_user="root",
                    machine_id=m.server.id,
                    fact_inputs=(
                        m.public_ipv4,
                        m.private_mac_address,
                        *([] if m.public_ipv6 is None else [m.public_ipv6]),
                    ),
                    facts_of=lambda v, ip=private_ip: render.MachineFacts(
                        private_ipv4=ip,
                        private_cidr=cfg.network.ip_range,
                        public_ipv4=v[0],
                        private_mac_address=v[1],
                        public_ipv6=(v[2] or None) if len(v) > 2 else None,
                    ),
                    private_ipv4=private_ip,
                    from_image=host.arch in hetzner.images,
                )
            return views
        views = {}
        for host in hosts:
            vm = ColimaMachine(
                host.name,
                colima_machine_args(cfg, host, deploy_public),
                opts=pulumi.ResourceOptions(parent=self),
            )
            views[host.name] = MachineView(
                ssh_host=vm.address,
                ssh_user="root",
                install_user="root",
                machine_id=vm.machine_id,
                wake=WakeCommand(local_invocation("colima-create.sh"), vm.environment),
                fact_inputs=(vm.address,),
                facts_of=lambda v: render.MachineFacts(
                    private_ipv4=v[0], private_cidr=render.COLIMA_NETWORK
                ),
                private_ipv4=vm.address,
            )
        return views

    @staticmethod
    def _secret_contents(
        cfg: ClusterConfig, token: random.RandomPassword, tailscale_key: pulumi.Input[str] | None
    ) -> dict[str, pulumi.Output[str]]:
        contents = {render.TOKEN_FILE: pulumi.Output.secret(token.result)}
        if tailscale_key is not None:
            contents[render.VPN_AUTH_FILE] = pulumi.Output.secret(
                pulumi.Output.from_input(tailscale_key).apply(vpn_auth_content)
            )
        return contents
