"""One NixOS host: install once, deliver secret files, build, then push and activate.

install  nixos-anywhere (kexec + disko) from the operator's machine; runs again only when the
         machine is replaced. It installs the host's final system, with k3s held back until
         the push releases it (nixosK3s.k3s.holdUntil). Carries the deploy key and the
         pre-generated SSH host key only, so every later connection pins it instead of trusting
         on first use. A server booted from the Hetzner NixOS image is not installed: its
         install swaps the first-boot host key for the pinned one and needs no host document,
         so it runs while the private network is attached.
secrets  the host's 0600 secret files (k3s token, tailscale key), written on the host from
         stdin over the pinned connection.
build    upload nixos/ + the host JSON and build the system on the host, activating nothing.
         Depends only on the machine being installed, so every host builds at once; on a
         first deploy it finds the install's system already built.
push     activate the built release with an on-host rollback timer, confirm over a fresh
         connection (and release k3s on its first run); the only step the deploy's gates
         order. Build and push are replaced (re-run) only when the host's content hash changes.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command
import pulumi_tls as tls
from pulumi.resource import DependencyResource

from components.hosts.bundle import secret_bundle
from components.hosts.inventory import Host
from components.hosts.machineview import WakeCommand
from components.scripts import local_invocation, remote_invocation

# The install runs once per machine (its trigger is the machine's id). Later changes to its
# inputs (host data, secrets) run this instead: the push and the secrets step carry them.
# (ignore_changes would be wrong here: a replaced machine's install would reuse the old inputs.)
ALREADY_INSTALLED = "echo 'nixos-k3s: already installed; changes go through the push'"

# Dial retries that outlast a reboot or kexec (about 5 minutes in all).
DIAL_ERROR_LIMIT = 30
PER_DIAL_TIMEOUT = 10


@dataclass(frozen=True)
class DeployKey:
    """The operator's key, as every host and gate uses it: one Output each, shared."""

    public_openssh: pulumi.Output[str]  # without the trailing newline
    private_openssh: pulumi.Output[str]  # marked secret

    @staticmethod
    def of(key: tls.PrivateKey) -> DeployKey:
        return DeployKey(
            public_openssh=key.public_key_openssh.apply(str.strip),
            private_openssh=pulumi.Output.secret(key.private_key_openssh),
        )


@dataclass(frozen=True)
class HostKey:
    """A host's pre-generated SSH host key: the public half pins connections to the host."""

    public_openssh: pulumi.Output[str]  # without the trailing newline
    private_openssh: pulumi.Output[str]

    @staticmethod
    def of(key: tls.PrivateKey) -> HostKey:
        return HostKey(
            public_openssh=key.public_key_openssh.apply(str.strip),
            private_openssh=key.private_key_openssh,
        )


@dataclass(frozen=True)
class SecretSet:
    """A set of secret files (path -> content) and its stdin bundle, shared by the hosts
    that carry the same set: one Output each, however many hosts use them."""

    files: pulumi.Output[Mapping[str, str]]  # marked secret
    bundle: pulumi.Output[str]  # marked secret

    @staticmethod
    def of(files: pulumi.Output[Mapping[str, str]]) -> SecretSet:
        files = pulumi.Output.secret(files)
        return SecretSet(files=files, bundle=pulumi.Output.secret(files.apply(secret_bundle)))


@dataclass
class NixosHostArgs:
    host_name: str
    ssh_host: pulumi.Input[str]
    ssh_user: str
    install_user: str
    host_key: HostKey
    deploy_key: DeployKey
    host_json: pulumi.Input[str]
    content_hash: pulumi.Input[str]
    secrets: SecretSet
    machine_id: pulumi.Input[str]
    health_units: Sequence[str]
    rollback_timeout_seconds: int
    # The push that first starts k3s on the host gets this long instead (a server's etcd join).
    join_timeout_seconds: int
    push_after: Sequence[pulumi.Resource] = field(default_factory=list)
    wake: WakeCommand | None = None
    # Public host key of the machine before the install (stock image and kexec installer): the
    # install's first contact pins it. Required by install.sh (nothing is trusted on first use).
    stock_host_key: pulumi.Input[str] | None = None
    roll: RollArgs | None = None
    from_image: bool = False  # booted the Hetzner NixOS image: the install only waits for it


# The first word of the line before the key on a roll step's stdout (node-roll.sh RECORD_PREFIX).
ROLL_RECORD_PREFIX = "container-nodes:"


@dataclass(frozen=True)
class RollArgs:
    """The host's place in a rolling upgrade (see NixosHost.roll)."""

    key: str  # changes only with the k3s package or the nixpkgs pin
    gate_environment: Mapping[str, pulumi.Input[str]]  # GATE_* of the server that drains
    after: Sequence[pulumi.Resource]  # the rolls of the previous batch
    drain_timeout_seconds: int
    ready_timeout_seconds: int
    # Servers, and hosts with container nodes: every new release is pushed by the roll, one at
    # a time along the chain (etcd quorum; container nodes drained before their container stops).
    every_release: bool
    # (container, its node) for each nspawn container node the host carries
    container_nodes: tuple[tuple[str, str], ...] = ()


def connection(
    ssh_host: pulumi.Input[str], user: str, host_key: HostKey, deploy_key: DeployKey
) -> command.remote.ConnectionArgs:
    """SSH connection with the host key pinned and dial retries that survive a reboot."""
    return command.remote.ConnectionArgs(
        host=ssh_host,
        user=user,
        private_key=deploy_key.private_openssh,
        host_key=host_key.public_openssh,
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT,
    )


class NixosHost(pulumi.ComponentResource):
    TYPE = "nixos-k3s:index:NixosHost"

    install: command.local.Command
    secrets: command.remote.Command
    build: command.local.Command
    push: command.local.Command
    connection: command.remote.ConnectionArgs
    roll: command.local.Command | None = None

    def __init__(self, name: str, args: NixosHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(NixosHost.TYPE, name, None, opts)
        base_env = {
            "TARGET_HOST": args.ssh_host,
            "HOST_NAME": args.host_name,
            "HOST_PUBLIC_KEY": args.host_key.public_openssh,
            "NIXOS_SOURCE_DIR": "nixos",
        }

        # Only what the install needs; the secret files come with the secrets step, over the
        # connection that pins the installed host key.
        install_stdin = pulumi.Output.all(
            deploy=args.deploy_key.private_openssh,
            host=args.host_key.private_openssh,
        ).apply(lambda v: secret_bundle({}, {"@deploy-key": v["deploy"], "@host-key": v["host"]}))
        self.install = command.local.Command(
            f"{name}-install",
            create=local_invocation("install.sh"),
            environment={
                **base_env,
                "TARGET_USER": args.install_user,
                **(
                    {}
                    if args.stock_host_key is None
                    else {"STOCK_HOST_PUBLIC_KEY": args.stock_host_key}
                ),
                # The image booted already: the install only swaps its host key and builds
                # nothing, so it does not wait for the host document (on Hetzner, for the
                # private network's attach and its MAC); the build does.
                **(
                    {"FROM_IMAGE": "1"}
                    if args.from_image
                    # The final system, built once here; k3s is held back until the push
                    # releases it, in the order the gates set (nixos/modules/k3s.nix, holdUntil).
                    else {"HOST_JSON": args.host_json}
                ),
            },
            stdin=pulumi.Output.secret(install_stdin),
            update=ALREADY_INSTALLED,
            triggers=[args.machine_id],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self, additional_secret_outputs=["stdout", "stderr"]
            ),
        )

        installed: pulumi.Resource = self.install
        if args.wake is not None:
            installed = command.local.Command(
                f"{name}-wake",
                create=args.wake.create,
                environment=dict(args.wake.environment),
                update=ALREADY_INSTALLED,
                triggers=[args.machine_id],
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.install]),
            )

        self.connection = connection(args.ssh_host, args.ssh_user, args.host_key, args.deploy_key)
        self.secrets = command.remote.Command(
            f"{name}-secrets",
            connection=self.connection,
            create=remote_invocation("install-secrets.sh"),
            stdin=args.secrets.bundle,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[installed],
                additional_secret_outputs=["stdout", "stderr"],
            ),
        )

        release_env: dict[str, pulumi.Input[str]] = {
            **base_env,
            "TARGET_USER": args.ssh_user,
            "HOST_JSON": args.host_json,
            "RELEASE_ID": args.content_hash,
        }
        # Not gated: every host builds as soon as it is installed (a no-op on a first deploy).
        self.build = command.local.Command(
            f"{name}-build",
            create=local_invocation("deploy.sh", "build"),
            environment=release_env,
            stdin=args.deploy_key.private_openssh,
            triggers=[args.content_hash],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[installed], additional_secret_outputs=["stderr"]
            ),
        )

        push_env: dict[str, pulumi.Input[str]] = {
            **release_env,
            "HEALTH_UNITS": " ".join(args.health_units),
            "ROLLBACK_TIMEOUT": str(args.rollback_timeout_seconds),
            "JOIN_TIMEOUT": str(args.join_timeout_seconds),
        }
        push_after = list(args.push_after)
        if args.roll is not None:
            self.roll = self._roll(name, args.roll, push_env, args.deploy_key)
            push_after.append(self.roll)
        self.push = command.local.Command(
            f"{name}-push",
            create=local_invocation("deploy.sh"),
            environment=push_env,
            stdin=args.deploy_key.private_openssh,
            triggers=[args.content_hash],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.secrets, self.build, *push_after],
                additional_secret_outputs=["stderr"],
            ),
        )
        self.register_outputs({"contentHash": args.content_hash})

    def _roll(
        self,
        name: str,
        roll: RollArgs,
        push_env: Mapping[str, pulumi.Input[str]],
        deploy_key: DeployKey,
    ) -> command.local.Command:
        """Drain, push, wait for Ready, uncordon: only when ROLL_KEY changes (an upgrade).

        Created with the host (its create only records the key, after the host's container
        nodes). Any change of its environment runs its update, node-roll.sh, which compares
        ROLL_KEY with the key it printed last time (pulumi-command hands the previous stdout over
        as PULUMI_COMMAND_STDOUT): the same key means no upgrade, and the push does the work as
        usual; a new key rolls this node. The push waits for it (and then finds its release
        active), and the next batch's rolls wait for this one, so an upgrade goes through the
        nodes in order and stops at the first one that fails. The roll of a server or of a host
        with container nodes (every_release) also pushes a new release without an upgrade: the
        servers' activations, which may restart k3s, go one at a time so that etcd keeps its
        quorum, and the container nodes whose containers the activation stops are drained first
        (an upgrade drains the host's node and all its container nodes). So does the roll of a
        host whose previous run recorded container nodes: the node of a container the release
        removes, its last one too, is drained (by its recorded name) before the push stops it.
        A first deploy is unchanged: the create only records, and the servers join together.
        Its environment is the push's plus the draining server's: not secret.
        """
        environment = {
            **push_env,
            **roll.gate_environment,
            "ROLL_KEY": roll.key,
            "DRAIN_TIMEOUT": str(roll.drain_timeout_seconds),
            "READY_TIMEOUT": str(roll.ready_timeout_seconds),
            "ROLL_EVERY_RELEASE": "1" if roll.every_release else "0",
        }
        # The create records what node-roll.sh prints when done: the container nodes (read back
        # by the next run, which drains a removed container's node by its recorded name), then
        # the key. See node-roll.sh's header for the format.
        create = f"echo {roll.key}"
        if roll.container_nodes:
            pairs = " ".join(f"{c}={n}" for c, n in roll.container_nodes)
            environment["CONTAINER_NODES"] = pairs
            create = f"echo {shlex.quote(f'{ROLL_RECORD_PREFIX} {pairs}')} && {create}"
        return command.local.Command(
            f"{name}-roll",
            create=create,
            update=local_invocation("node-roll.sh"),
            environment=environment,
            stdin=deploy_key.private_openssh,
            add_previous_output_in_env=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[once_registered(after) for after in roll.after],
                additional_secret_outputs=["stderr"],
            ),
        )


def once_registered(resource: pulumi.Resource) -> pulumi.Output[pulumi.Resource]:
    """`resource` as a depends_on entry: the SDK's stand-in for it, made once it is registered.

    The engine gets the same request: it lists `resource`'s URN, and the dependent is registered
    only after `resource` is, as with `resource` itself in depends_on. What changes is the SDK's
    own cycle check. For each dependency it walks everything upstream of it, one nested
    generator per level (pulumi/runtime/resource_cycle_breaker.py), so on the chain of roll
    steps through every host each walk costs about the square of the chain's length, and every
    push, node gate, the nodes-Ready gate and the teardown marker walked it (3.3 million
    generator steps for a plan of 300 nodes, 0.18 million with the stand-in). The stand-in
    (pulumi.resource.DependencyResource, the SDK's reference to a resource by its URN, not
    registered) has nothing upstream, so those walks stop at the roll step. The check no
    longer sees through this edge; a roll step depends only on the rolls of earlier batches,
    which cannot close a cycle.
    """

    async def stand_in() -> pulumi.Resource:
        urn = await resource.urn.future()
        assert urn is not None  # a registered resource always has its URN
        return DependencyResource(urn)

    return pulumi.Output.from_input(stand_in())


@dataclass(frozen=True)
class MovedFrom:
    """Where the stages' resources sat before the stages existed: directly under the Cluster,
    a component at the top of the stack. Each keeps the URN it had there as an alias, so an
    existing stack keeps the resource instead of replacing it.

    The alias is that URN as a string, as the engine formed it: the Cluster's type (a child of
    the stack's root resource has no parent type in its URN), `$`, the resource's type, `::`,
    its name (pulumi/pulumi pkg/resource/deploy/step_generator.go, the alias of a resource with
    a parent: resource.CreateURN with the parent's type chain). Not `Alias(parent=cluster)`,
    which names the same URN: the SDK resolves such an alias through a chain of Outputs for every
    resource (runtime/resource.py collapse_alias_to_urn, create_alias_spec): 2% of the
    program's time in a plan of 100 nodes, 8% at 300 (bench/README.md); a string costs it a
    couple of Outputs.
    """

    parent_type: str  # the Cluster's type, which the moved resources' old URNs carry

    def aliases(self, type_: str, name: str) -> list[pulumi.Input[str | pulumi.Alias]]:
        stack, project = pulumi.get_stack(), pulumi.get_project()
        return [f"urn:pulumi:{stack}::{project}::{self.parent_type}${type_}::{name}"]

    def transformation(
        self, args: pulumi.ResourceTransformationArgs
    ) -> pulumi.ResourceTransformationResult:
        """For options shared by resources of different types and names (bringup.py): adds
        each one's alias when it is constructed, before the SDK reads its aliases."""
        moved = pulumi.ResourceOptions(aliases=self.aliases(args.type_, args.name))
        return pulumi.ResourceTransformationResult(
            args.props, pulumi.ResourceOptions.merge(args.opts, moved)
        )


class NixosHosts(pulumi.ComponentResource):
    """The hosts stage: every host's NixOS lifecycle (install, secrets, build, push, roll), one
    NixosHost each. Hosts are added in the order the k3s bring-up decides (add), because a
    host's push waits for gates that in turn wait for earlier pushes. The NixosHosts sat
    directly under the Cluster before this stage existed: each carries an alias to it."""

    def __init__(self, name: str, was: MovedFrom, opts: pulumi.ResourceOptions):
        super().__init__("nixos-k3s:nixos:Hosts", name, None, opts)
        self._was = was
        self.hosts: dict[str, NixosHost] = {}

    def add(self, host: Host, args: NixosHostArgs) -> NixosHost:
        pushed = NixosHost(
            host.name,
            args,
            opts=pulumi.ResourceOptions(
                parent=self, aliases=self._was.aliases(NixosHost.TYPE, host.name)
            ),
        )
        self.hosts[host.name] = pushed
        return pushed

    def done(self) -> None:
        self.register_outputs({"hosts": sorted(self.hosts)})
