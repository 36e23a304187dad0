"""The Cluster component: the only thing __main__.py builds.

Its stages: machines (Hetzner or Colima, each layer returns a MachineView per host) -> host
data (render, one HostSpec per host) -> NixOS hosts (install, secrets, build, push; a
NixosHosts component) -> the k3s bring-up that orders the pushes and gates the joins
(K3sBringUp: API-ready, node gates, kubeconfig) -> Cilium and the Hetzner add-ons -> the
nodes-Ready gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import pulumi_tls as tls

from components import catalog, config
from components.config import ClusterConfig, EtcdS3Credentials
from components.hosts import hostspec, inventory, render
from components.hosts.hostspec import HostSpec
from components.hosts.inventory import Host
from components.hosts.machineview import MachineView
from components.hosts.nixos_host import (
    DeployKey,
    HostKey,
    MovedFrom,
    NixosHost,
    NixosHostArgs,
    NixosHosts,
    RollArgs,
    SecretSet,
    connection,
)
from components.k8s import cilium, hcloud_addons, k3s
from components.k8s.bringup import BringUpArgs, K3sBringUp
from components.machines.colima import ColimaMachine, ColimaMachineArgs
from components.machines.hetzner import ApiLoadBalancer, HetznerMachines, HetznerMachinesArgs
from components.machines.userdata import host_key_user_data


@dataclass(frozen=True)
class ClusterArgs:
    config: ClusterConfig
    tailscale_auth_key: pulumi.Input[str] | None = None
    # Hetzner API token for the in-cluster cloud controller and CSI driver (a Pulumi secret).
    hcloud_token: pulumi.Input[str] | None = None
    etcd_s3_credentials: EtcdS3Credentials | None = None


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


@dataclass(frozen=True)
class _Keys:
    """The cluster's keys: the operator's deploy key, the k3s token, each host's SSH host key."""

    deploy: DeployKey
    token: random.RandomPassword
    hosts: dict[str, HostKey]

    @staticmethod
    def of(name: str, hosts: list[Host], child: pulumi.ResourceOptions) -> _Keys:
        return _Keys(
            deploy=DeployKey.of(
                tls.PrivateKey(f"{name}-deploy-key", algorithm="ED25519", opts=child)
            ),
            token=random.RandomPassword(f"{name}-k3s-token", length=48, special=False, opts=child),
            hosts={
                h.name: HostKey.of(
                    tls.PrivateKey(f"{h.name}-host-key", algorithm="ED25519", opts=child)
                )
                for h in hosts
            },
        )


@dataclass(frozen=True)
class _HostData:
    """Each host's rendered data (host JSON) and its content hash, the push's only trigger."""

    json: dict[str, pulumi.Output[str]]
    hashes: dict[str, pulumi.Output[str]]

    @staticmethod
    def of(
        cfg: ClusterConfig,
        hosts: list[Host],
        machines: dict[str, MachineView],
        deploy: DeployKey,
        bootstrap_ip: pulumi.Input[str],
        lb: ApiLoadBalancer | None,
    ) -> _HostData:
        # The servers' certificates also name the API load balancer's addresses.
        lb_sans: list[pulumi.Input[str]] = (
            [lb.private_ip, *([lb.public_ipv4] if lb.public_ipv4 is not None else [])] if lb else []
        )
        images = cilium.node_images(cfg)
        specs: dict[str, pulumi.Output[HostSpec]] = {
            host.name: machines[host.name].spec(
                [deploy.public_openssh, bootstrap_ip, *(lb_sans if host.role == "server" else [])],
                lambda facts, key, server_ip, *sans, host=host: render.host_spec(
                    cfg,
                    host,
                    facts,
                    bootstrap_ip=server_ip,
                    authorized_keys=[key, *cfg.ssh_keys],
                    api_sans=sans,
                    node_images=images,
                ),
            )
            for host in hosts
        }
        host_json = {n: spec.apply(hostspec.host_json) for n, spec in specs.items()}
        content_hash = hostspec.content_hasher()
        return _HostData(host_json, {n: text.apply(content_hash) for n, text in host_json.items()})


class Cluster(pulumi.ComponentResource):
    TYPE = "nixos-k3s:index:Cluster"

    kubeconfig: pulumi.Output[str]
    api_endpoint: pulumi.Output[str]
    host_addresses: pulumi.Output[dict[str, str]]
    config_hashes: pulumi.Output[dict[str, str]]
    bootstrap_host: str

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(Cluster.TYPE, name, None, opts)
        cfg = args.config
        hosts = inventory.hosts(cfg)
        child = pulumi.ResourceOptions(parent=self)
        keys = _Keys.of(name, hosts, child)
        self._hetzner: HetznerMachines | None = None
        machines = self._machines(name, cfg, hosts, keys.deploy, child)
        lb = self._hetzner.api_load_balancer if self._hetzner else None
        bootstrap = next(h for h in hosts if h.is_bootstrap)
        self.bootstrap_host = bootstrap.name
        bootstrap_ip = machines[bootstrap.name].private_ipv4
        data = _HostData.of(cfg, hosts, machines, keys.deploy, bootstrap_ip, lb)

        # The hosts and gates sat directly under the Cluster, a top-level resource (__main__.py),
        # whose type alone is in their old URNs.
        if opts is not None and opts.parent is not None:
            raise ValueError("Cluster is a top-level resource: its moved resources' aliases say so")
        moved = MovedFrom(Cluster.TYPE)
        nixos_hosts = NixosHosts(f"{name}-hosts", moved, child)
        bring_up = K3sBringUp(
            f"{name}-k3s",
            self._bring_up_args(name, args, hosts, machines, keys, data, nixos_hosts, lb),
            was=moved,
            opts=child,
        )
        nixos_hosts.done()
        self.kubeconfig = pulumi.Output.secret(bring_up.kubeconfig.stdout)
        node_count = config.node_count(cfg)
        released = self._cni_and_addons(name, args, lb, bootstrap_ip, node_count)
        bring_up.finish(node_count, released)

        self.api_endpoint = pulumi.Output.from_input(bring_up.endpoint_url)
        self.host_addresses = pulumi.Output.all(
            **{n: m.ssh_host for n, m in machines.items()}
        ).apply(dict)
        self.config_hashes = pulumi.Output.all(**data.hashes).apply(dict)
        self.register_outputs(
            {
                "kubeconfig": self.kubeconfig,
                "apiEndpoint": self.api_endpoint,
                "hostAddresses": self.host_addresses,
                "configHashes": self.config_hashes,
            }
        )

    def _bring_up_args(
        self,
        name: str,
        args: ClusterArgs,
        hosts: list[Host],
        machines: dict[str, MachineView],
        keys: _Keys,
        data: _HostData,
        nixos_hosts: NixosHosts,
        lb: ApiLoadBalancer | None,
    ) -> BringUpArgs:
        """What the k3s bring-up needs: the gates' way to the bootstrap server, and how to add
        a host's NixOS lifecycle once the bring-up knows what its push waits for."""
        cfg = args.config
        bootstrap_name = next(h.name for h in hosts if h.is_bootstrap)
        bootstrap, bootstrap_key = machines[bootstrap_name], keys.hosts[bootstrap_name]
        gate_target = k3s.GateTarget(
            ssh_host=bootstrap.ssh_host,
            ssh_user=bootstrap.ssh_user,
            host_public_key=bootstrap_key.public_openssh,
            deploy_private_key=keys.deploy.private_openssh,
        )
        secrets = self._secret_contents(
            cfg, keys.token, args.tailscale_auth_key, args.etcd_s3_credentials
        )
        secret_sets: dict[tuple[str, ...], SecretSet] = {}

        def secret_set(host: Host) -> SecretSet:
            paths = tuple(render.secret_files(cfg, host))
            if paths not in secret_sets:
                secret_sets[paths] = SecretSet.of(
                    pulumi.Output.all(**{p: secrets[p] for p in paths})
                )
            return secret_sets[paths]

        roll_key = render.roll_key(cfg)

        def add_host(
            host: Host, after: list[pulumi.Resource], roll_after: Sequence[pulumi.Resource]
        ) -> NixosHost:
            machine = machines[host.name]
            return nixos_hosts.add(
                host,
                NixosHostArgs(
                    host_name=host.name,
                    ssh_host=machine.ssh_host,
                    ssh_user=machine.ssh_user,
                    install_user=machine.install_user,
                    host_key=keys.hosts[host.name],
                    deploy_key=keys.deploy,
                    host_json=data.json[host.name],
                    content_hash=data.hashes[host.name],
                    secrets=secret_set(host),
                    machine_id=machine.machine_id,
                    health_units=["k3s.service"],
                    rollback_timeout_seconds=cfg.deploy.rollback_timeout_seconds,
                    join_timeout_seconds=cfg.deploy.join_timeout_seconds,
                    push_after=after,
                    wake=machine.wake,
                    stock_host_key=machine.stock_host_key,
                    roll=RollArgs(
                        key=roll_key,
                        gate_environment=gate_target.roll_environment,
                        after=roll_after,
                        drain_timeout_seconds=cfg.deploy.drain_timeout_seconds,
                        ready_timeout_seconds=cfg.deploy.node_ready_timeout_seconds,
                        every_release=host.role == "server" or bool(host.containers),
                        container_nodes=tuple(
                            (
                                slot.config.name,
                                render.container_node_name(host.name, slot.config.name),
                            )
                            for slot in host.containers
                        ),
                    ),
                    from_image=machine.from_image,
                ),
            )

        return BringUpArgs(
            prefix=name,
            config=cfg,
            hosts=hosts,
            machines=machines,
            gate_target=gate_target,
            admin=connection(bootstrap.ssh_host, bootstrap.ssh_user, bootstrap_key, keys.deploy),
            endpoint_url=self._endpoint_url(cfg, lb, bootstrap.ssh_host),
            add_host=add_host,
        )

    def _cni_and_addons(
        self,
        name: str,
        args: ClusterArgs,
        lb: ApiLoadBalancer | None,
        bootstrap_ip: pulumi.Input[str],
        node_count: int,
    ) -> list[pulumi.Resource]:
        """The Kubernetes provider, the Cilium release and the Hetzner add-ons: what the
        nodes-Ready gate waits for."""
        cfg = args.config
        # Cilium's agents reach the API through the load balancer when there is one, so they
        # keep it while any one server (the bootstrap server too) is down.
        k8s_opts = k3s.gate_options(self, lb.ready) if lb else pulumi.ResourceOptions(parent=self)
        provider = k3s.kubernetes_provider(name, cfg, self.kubeconfig, k8s_opts)
        # Nodes turn Ready once their CNI runs: Cilium from its release, flannel inside k3s.
        cni_ready: list[pulumi.Resource] = []
        if cfg.k3s.cni == "cilium":
            release = k3s.cilium_release(
                name, cfg, provider, lb.private_ip if lb else bootstrap_ip, node_count, k8s_opts
            )
            cni_ready.append(release.release)
        addons = self._hcloud_addons(name, cfg, args.hcloud_token, provider, cni_ready)
        return [*cni_ready, *addons]

    @staticmethod
    def _endpoint_url(
        cfg: ClusterConfig, lb: ApiLoadBalancer | None, bootstrap_address: pulumi.Output[str]
    ) -> pulumi.Output[str]:
        """URL of apiEndpoint, else of the API load balancer's public IPv4, else of the bootstrap
        server's address. A private-only load balancer is no default: the operator's machine
        (Pulumi's Kubernetes provider, kubectl) must reach the endpoint."""
        if cfg.api_endpoint:
            return pulumi.Output.from_input(render.api_endpoint(cfg).url)
        address = lb.public_ipv4 if lb is not None and lb.public_ipv4 is not None else None
        return (address or bootstrap_address).apply(
            lambda value: render.api_endpoint(cfg, value).url
        )

    def _hcloud_addons(
        self,
        name: str,
        cfg: ClusterConfig,
        token: pulumi.Input[str] | None,
        provider: k8s.Provider,
        cni_ready: list[pulumi.Resource],
    ) -> list[pulumi.Resource]:
        """The cloud controller and CSI releases (after the CNI), if the stack has them."""
        if not (config.uses_cloud_controller(cfg) or config.uses_csi(cfg)):
            return []
        if token is None or self._hetzner is None:
            raise ValueError("the Hetzner add-ons need ClusterArgs.hcloud_token on hetzner")
        addons = hcloud_addons.hcloud_addons(
            name,
            cfg,
            provider=provider,
            token=token,
            network_id=self._hetzner.network_id,
            opts=k3s.gate_options(self, cni_ready or [provider]),
        )
        return addons.releases

    def _machines(
        self,
        name: str,
        cfg: ClusterConfig,
        hosts: list[Host],
        deploy_key: DeployKey,
        child: pulumi.ResourceOptions,
    ) -> dict[str, MachineView]:
        deploy_public = deploy_key.public_openssh
        if cfg.provider == "hetzner":
            # Each server's user data carries a throwaway host key that its first SSH contact
            # pins (cloud-config `ssh_keys`; Hetzner's API stores it and the metadata service
            # hands it to any process on the server). cloud-init installs it on the stock
            # image, nixos/modules/hetzner-host-key.nix at the NixOS image's first boot. It is
            # retired by the install: nixos-anywhere writes the NixOS host key, or on the image
            # install.sh replaces it over a connection pinned to it.
            image_json: dict[catalog.Arch, pulumi.Output[str]] = {}
            if cfg.hetzner.nixos_image:
                arches: list[catalog.Arch] = sorted({h.arch for h in hosts})
                for arch in arches:
                    image_json[arch] = deploy_public.apply(
                        lambda key, a=arch: hostspec.host_json(
                            render.image_spec(cfg, a, [key, *cfg.ssh_keys])
                        )
                    )
            stock_keys = {
                h.name: tls.PrivateKey(f"{h.name}-stock-host-key", algorithm="ED25519", opts=child)
                for h in hosts
            }
            hetzner = self._hetzner = HetznerMachines(
                f"{name}-hetzner",
                HetznerMachinesArgs(
                    config=cfg,
                    hosts=hosts,
                    deploy_public_key=deploy_public,
                    user_data={
                        n: pulumi.Output.secret(
                            pulumi.Output.all(k.private_key_openssh, k.public_key_openssh).apply(
                                lambda keys: host_key_user_data(keys[0], keys[1])
                            )
                        )
                        for n, k in stock_keys.items()
                    },
                    image_host_json=image_json,
                    deploy_private_key=deploy_key.private_openssh,
                    hcloud_token=pulumi.Config("hcloud").get_secret("token"),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            return hetzner.views(
                cfg,
                {n: k.public_key_openssh.apply(str.strip) for n, k in stock_keys.items()},
            )
        return {
            host.name: ColimaMachine(
                host.name,
                colima_machine_args(cfg, host, deploy_public),
                opts=pulumi.ResourceOptions(parent=self),
            ).view()
            for host in hosts
        }

    @staticmethod
    def _secret_contents(
        cfg: ClusterConfig,
        token: random.RandomPassword,
        tailscale_key: pulumi.Input[str] | None,
        s3: EtcdS3Credentials | None = None,
    ) -> dict[str, pulumi.Output[str]]:
        contents = {render.TOKEN_FILE: pulumi.Output.secret(token.result)}
        if tailscale_key is not None:
            contents[render.VPN_AUTH_FILE] = pulumi.Output.secret(
                pulumi.Output.from_input(tailscale_key).apply(vpn_auth_content)
            )
        if s3 is not None:
            contents[render.ETCD_S3_ENV_FILE] = pulumi.Output.secret(
                pulumi.Output.all(s3.access_key_id, s3.secret_access_key).apply(
                    lambda keys: render.etcd_s3_environment(keys[0], keys[1])
                )
            )
        return contents
