"""The Hetzner NixOS image: a snapshot of a server that already runs the hosts' base system.

One `NixosImage` per architecture the stack's servers use. Its command builds the image once
per key (the nixpkgs pin in nixos/flake.lock, the architecture and the image's base
configuration): a throwaway builder server gets NixOS with nixos-anywhere (install.sh), is
cleaned of its host keys and machine id, powered off and snapshotted through the Hetzner API,
then deleted (components/scripts/hcloud-image.py). A new key replaces the command: the old
command's delete step runs first and deletes the snapshots of this cluster and architecture that
no server was created from, then the new image is built (delete_before_replace). `pulumi
destroy` deletes the servers first (they depend on the image), then every snapshot.

Servers take the snapshot's id as their image and ignore later changes of it (a new pin does not
replace a running server: the push brings it to the new pin). A snapshot a live server was
created from is kept until that server is gone, so a server replaced later, which Pulumi creates
again from the image id in its state, still finds it.

First contact: the image has no SSH host key. The server's user data carries the host's
pre-generated key as cloud-config `ssh_keys`; nixos/modules/hetzner-host-key.nix installs it from
the metadata service before sshd starts, so the first connection already pins it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command

from components import catalog
from components.hosts.bundle import secret_bundle
from components.scripts import PROJECT_DIR, relative_script_path

FLAKE_LOCK = PROJECT_DIR / "nixos" / "flake.lock"
IMAGE_SCRIPT = "hcloud-image.py"


def image_key(arch: str, image_host_json: str, flake_lock: Path = FLAKE_LOCK) -> str:
    """What makes one image differ from another: pin, architecture, base configuration.

    The nixos/ modules are not part of it: a module change reaches every host through its push,
    and remaking the image for it would put a builder run in front of every later deploy.
    """
    digest = hashlib.sha256()
    for part in (flake_lock.read_bytes(), arch.encode(), image_host_json.encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:32]


def image_invocation(action: str) -> str:
    return f"python3 {relative_script_path(IMAGE_SCRIPT)} {action}"


@dataclass(frozen=True)
class NixosImageArgs:
    cluster_name: str
    arch: catalog.Arch
    location: str
    stock_image: str
    image_host_name: str
    image_host_json: pulumi.Input[str]
    image_key: pulumi.Input[str]
    ssh_key_name: pulumi.Input[str]
    firewall_id: pulumi.Input[str]  # the builder gets the cluster's firewall
    deploy_private_key: pulumi.Output[str]  # marked secret
    hcloud_token: pulumi.Output[str] | None  # marked secret; None: the operator's HCLOUD_TOKEN


class NixosImage(pulumi.ComponentResource):
    """One snapshot per key; its id is `image_id`."""

    image_id: pulumi.Output[str]

    def __init__(self, name: str, args: NixosImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("nixos-k3s:hetzner:NixosImage", name, None, opts)
        environment: dict[str, pulumi.Input[str]] = {
            "CLUSTER_NAME": args.cluster_name,
            "ARCH": args.arch,
            "IMAGE_KEY": args.image_key,
            "BUILDER_TYPE": catalog.IMAGE_BUILDER_TYPES[args.arch],
            "LOCATION": args.location,
            "STOCK_IMAGE": args.stock_image,
            "SSH_KEY_NAME": args.ssh_key_name,
            "FIREWALL_ID": args.firewall_id,
            "HOST_NAME": args.image_host_name,
            "HOST_JSON": args.image_host_json,
            "NIXOS_SOURCE_DIR": "nixos",
        }
        # Secrets go on stdin (pulumi-command gives create, update and delete the same stdin):
        # the deploy key for the builder and the token, unless the operator exports
        # HCLOUD_TOKEN, which the command then inherits.
        secrets: dict[str, pulumi.Input[str]] = {"deploy": args.deploy_private_key}
        if args.hcloud_token is not None:
            secrets["token"] = args.hcloud_token
        stdin = pulumi.Output.secret(
            pulumi.Output.all(**secrets).apply(
                lambda v: secret_bundle(
                    {},
                    {
                        "@deploy-key": v["deploy"],
                        **({"@hcloud-token": v["token"]} if "token" in v else {}),
                    },
                )
            )
        )
        self.snapshot = command.local.Command(
            f"{name}-snapshot",
            create=image_invocation("create"),
            # Inputs that do not change the image (the location, a rotated token) only check
            # that the snapshot still exists and print its id again.
            update=image_invocation("keep"),
            delete=image_invocation("delete"),
            environment=environment,
            stdin=stdin,
            triggers=[args.image_key],
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                additional_secret_outputs=["stderr"],
            ),
        )
        self.image_id = self.snapshot.stdout.apply(lambda out: out.strip())
        self.register_outputs({"imageId": self.image_id})
