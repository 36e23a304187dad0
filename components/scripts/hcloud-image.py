#!/usr/bin/env python3
"""hcloud-image.py: the Hetzner NixOS image of one architecture
(components/machines/hetzner_image.py).

Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root), standard
library only:
  python3 components/scripts/hcloud-image.py create   build the image, print its id
  python3 components/scripts/hcloud-image.py keep     print the current id (PULUMI_COMMAND_STDOUT)
                                                      after checking the snapshot still exists
  python3 components/scripts/hcloud-image.py delete   delete this cluster's snapshots of ARCH that
                                                      no server of the project was created from
Env:
  HCLOUD_TOKEN     API token, when stdin has no @hcloud-token record (the operator's own
                   environment; never on a command line, never printed)
  HCLOUD_ENDPOINT  API base URL (https://api.hetzner.cloud/v1)
  CLUSTER_NAME, ARCH (x86_64|arm64), IMAGE_KEY: labels of the snapshot (required)
  create only: BUILDER_TYPE, LOCATION, STOCK_IMAGE, SSH_KEY_NAME (the deploy key's Hetzner name),
    FIREWALL_ID (the cluster's firewall: SSH only from its admin sources; optional),
    HOST_NAME, HOST_JSON (the image's base configuration), NIXOS_SOURCE_DIR (nixos);
    INSTALL_SCRIPT (components/scripts/install.sh), POLL_SECONDS (2), POLL_LIMIT (900)
Stdin: records `<name>\t<mode>\t<base64>` (install.sh's bundle format): `@hcloud-token`, the
  API token (the Pulumi secret hcloud:token), and `@deploy-key`, the deploy SSH private key the
  builder is installed with (create only; it lives only in a 0600 temp file).
create: a snapshot labelled with this IMAGE_KEY that exists already is reused (a re-run after a
  failure half-way). Otherwise a builder server boots STOCK_IMAGE, install.sh puts the image's
  system on it with nixos-anywhere (with a throwaway host key), its host keys and machine id are
  removed, it is powered off and snapshotted, and deleted whatever happened. Last, superseded
  snapshots (another key) that no server uses are deleted.
Exit codes: 0 done; 1 API or build failure (the message says which step); 2 bad environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROG = "hcloud-image.py"
ARCHES = ("x86_64", "arm64")
MANAGED = {"managed-by": "nixos-k3s"}
SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS_DIR.parent.parent))  # the project root: components.machines.userdata
from components.hosts.bundle import BUNDLE_FORMAT, secret_bundle  # noqa: E402  (standard library only)
from components.machines.userdata import host_key_user_data  # noqa: E402  (standard library only)


class Failure(Exception):
    """A step failed; the message says which."""


class BadInput(Exception):
    """The environment is incomplete or malformed."""


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise BadInput(f"environment variable {name} is required")
    return value


class Api:
    """The few Hetzner Cloud API calls the image needs; the token goes in a header only."""

    def __init__(self, endpoint: str, token: str, poll_seconds: float, poll_limit: int):
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.poll_seconds = poll_seconds
        self.poll_limit = poll_limit

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body, sort_keys=True).encode()
        request = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise Failure(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise Failure(f"{method} {path}: {exc.reason}") from None
        return json.loads(text) if text.strip() else {}

    def pages(self, path: str, key: str, query: dict[str, str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page = 1
        while page:
            q = urllib.parse.urlencode({**query, "page": str(page), "per_page": "50"})
            reply = self.call("GET", f"{path}?{q}")
            items += reply.get(key, [])
            page = ((reply.get("meta") or {}).get("pagination") or {}).get("next_page") or 0
        return items

    def wait(self, what: str, check: Callable[[], bool]) -> None:
        for _ in range(self.poll_limit):
            if check():
                return
            time.sleep(self.poll_seconds)
        raise Failure(f"timed out waiting for {what}")

    def wait_action(self, action: dict[str, Any], what: str) -> None:
        def done() -> bool:
            current = self.call("GET", f"/actions/{action['id']}")["action"]
            if current["status"] == "error":
                error = current.get("error") or {}
                raise Failure(f"{what} failed: {error.get('code')}: {error.get('message')}")
            return current["status"] == "success"

        self.wait(what, done)


def selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def image_labels(cluster: str, arch: str) -> dict[str, str]:
    return {**MANAGED, "cluster": cluster, "nixos-k3s-image": arch}


def snapshots(api: Api, cluster: str, arch: str) -> list[dict[str, Any]]:
    query = {"type": "snapshot", "label_selector": selector(image_labels(cluster, arch))}
    return sorted(api.pages("/images", "images", query), key=lambda i: i["id"])


def images_in_use(api: Api) -> set[int]:
    """Ids of the images the project's servers were created from (any cluster)."""
    return {
        s["image"]["id"] for s in api.pages("/servers", "servers", {}) if s.get("image") is not None
    }


def sweep(api: Api, cluster: str, arch: str, keep_key: str | None) -> None:
    """Delete this cluster's snapshots of `arch` not labelled keep_key that no server uses."""
    used = images_in_use(api)
    for image in snapshots(api, cluster, arch):
        if keep_key is not None and image["labels"].get("image-key") == keep_key:
            continue
        if image["id"] in used:
            log(f"keeping snapshot {image['id']}: a server was created from it")
            continue
        log(f"deleting snapshot {image['id']} ({image['labels'].get('image-key', '?')})")
        api.call("DELETE", f"/images/{image['id']}")


def ssh_base(work: Path, known_hosts_line: str) -> list[str]:
    (work / "known_hosts").write_text(known_hosts_line + "\n")
    return [
        "ssh", "-F", "none", "-T", "-i", str(work / "deploy-key"),
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "HostKeyAlias=nixos-k3s-image",
        "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def build_on(api: Api, server: dict[str, Any], work: Path) -> None:
    """nixos-anywhere onto the builder (install.sh), clean it, power it off."""
    address = server["public_net"]["ipv4"]["ip"]
    key = work / "host-key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)], check=True
    )
    public = (work / "host-key.pub").read_text().split()
    records = secret_bundle(
        {}, {"@deploy-key": (work / "deploy-key").read_text(), "@host-key": key.read_text()}
    )
    install_env = {
        **os.environ,
        "TARGET_HOST": address,
        "HOST_PUBLIC_KEY": f"{public[0]} {public[1]}",
        "STOCK_HOST_PUBLIC_KEY": " ".join((work / "stock-host-key.pub").read_text().split()[:2]),
    }
    script = os.environ.get("INSTALL_SCRIPT") or str(SCRIPTS_DIR / "install.sh")
    log(f"installing the image's system on builder {server['id']} ({address})")
    installed = subprocess.run(["bash", script], input=records.encode(), env=install_env)
    if installed.returncode != 0:
        raise Failure(f"install.sh failed on the builder (exit {installed.returncode})")
    ssh = ssh_base(work, f"nixos-k3s-image {public[0]} {public[1]}")
    port = os.environ.get("TARGET_PORT", "22")
    # Every server made from the image gets its own host key (from its user data) and its own
    # machine id (systemd makes one at the first boot when the file is empty). NIXOS_K3S_ROOT
    # is unset on a real builder (the tests point it into their fake host).
    clean = (
        'r=${NIXOS_K3S_ROOT:-}; rm -f "$r"/etc/ssh/ssh_host_* && : >"$r"/etc/machine-id'
        ' && rm -rf "$r"/var/lib/nixos-k3s/secrets && sync && systemctl poweroff --no-block'
    )
    done = subprocess.run([*ssh, "-p", port, f"root@{address}", clean], stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise Failure(f"cleaning the builder failed (ssh exit {done.returncode})")

    def off() -> bool:
        return api.call("GET", f"/servers/{server['id']}")["server"]["status"] == "off"

    api.wait("the builder to power off", off)


def read_stdin() -> dict[str, bytes]:
    """The verified records of the bundle on stdin: a short, altered or overlong one is refused."""
    text = sys.stdin.read()
    if not text:
        return {}
    header, _, body = text.partition("\n")
    fields = header.rsplit(" ", 2)
    if len(fields) != 3 or fields[0] != BUNDLE_FORMAT or not fields[1].isdigit():
        raise BadInput(f"stdin: want a '{BUNDLE_FORMAT} COUNT SHA256' header")
    lines = body.splitlines()
    if len(lines) != int(fields[1]) or hashlib.sha256(body.encode()).hexdigest() != fields[2]:
        raise BadInput("stdin: the bundle does not match its header (cut short or altered)")
    records: dict[str, bytes] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ("@hcloud-token", "@deploy-key"):
            raise BadInput("stdin: want @hcloud-token / @deploy-key records")
        try:
            records[parts[0]] = base64.b64decode(parts[2], validate=True)
        except ValueError:
            raise BadInput(f"stdin: {parts[0]} is not base64") from None
    return records


def firewalls() -> dict[str, Any]:
    value = os.environ.get("FIREWALL_ID", "")
    if not value:
        return {}
    if not value.isdigit():
        raise BadInput(f"FIREWALL_ID must be a numeric id: {value}")
    return {"firewalls": [{"firewall": int(value)}]}


def create(api: Api, deploy_key: bytes) -> str:
    cluster, arch, key = env("CLUSTER_NAME"), env("ARCH"), env("IMAGE_KEY")
    for name in ("BUILDER_TYPE", "LOCATION", "STOCK_IMAGE", "SSH_KEY_NAME", "HOST_NAME"):
        env(name)
    env("HOST_JSON")
    existing = [i for i in snapshots(api, cluster, arch) if i["labels"].get("image-key") == key]
    if existing:
        log(f"snapshot {existing[0]['id']} with key {key} exists; reusing it")
        sweep(api, cluster, arch, keep_key=key)
        return str(existing[0]["id"])
    work = Path(tempfile.mkdtemp(prefix="nixos-k3s-image."))
    os.chmod(work, 0o700)
    server_id: int | None = None
    try:
        deploy = work / "deploy-key"
        deploy.touch(mode=0o600)
        deploy.write_bytes(deploy_key)
        name = env("HOST_NAME")
        for old in api.pages("/servers", "servers", {"name": name}):
            log(f"deleting builder {old['id']} left by an earlier run")
            api.wait_action(api.call("DELETE", f"/servers/{old['id']}")["action"], "delete")
        # The builder's stock image gets a throwaway host key through its user data, so the
        # install's first contact pins it (install.sh's STOCK_HOST_PUBLIC_KEY), as for servers.
        stock = work / "stock-host-key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(stock)], check=True
        )
        reply = api.call(
            "POST",
            "/servers",
            {
                "name": name,
                "user_data": host_key_user_data(
                    stock.read_text(), (work / "stock-host-key.pub").read_text()
                ),
                "server_type": env("BUILDER_TYPE"),
                "image": env("STOCK_IMAGE"),
                "location": env("LOCATION"),
                "ssh_keys": [env("SSH_KEY_NAME")],
                "labels": {**MANAGED, "cluster": cluster, "nixos-k3s-role": "image-builder"},
                "public_net": {"enable_ipv4": True, "enable_ipv6": False},
                "start_after_create": True,
                **firewalls(),
            },
        )
        server_id = reply["server"]["id"]
        api.wait_action(reply["action"], "creating the builder server")
        build_on(api, api.call("GET", f"/servers/{server_id}")["server"], work)
        reply = api.call(
            "POST",
            f"/servers/{server_id}/actions/create_image",
            {
                "type": "snapshot",
                "description": f"nixos-k3s {cluster} {arch} {key}",
                "labels": {**image_labels(cluster, arch), "image-key": key},
            },
        )
        api.wait_action(reply["action"], "the snapshot")
        image_id = str(reply["image"]["id"])
        log(f"snapshot {image_id} ready")
    finally:
        if server_id is not None:
            log(f"deleting builder {server_id}")
            api.call("DELETE", f"/servers/{server_id}")
        shutil.rmtree(work, ignore_errors=True)
    sweep(api, cluster, arch, keep_key=key)
    return image_id


def keep(api: Api, _: bytes) -> str:
    image_id = os.environ.get("PULUMI_COMMAND_STDOUT", "").strip()
    if not image_id.isdigit():
        raise Failure("no image id from the previous run (PULUMI_COMMAND_STDOUT)")
    image = api.call("GET", f"/images/{image_id}")["image"]
    if image["labels"].get("image-key") != env("IMAGE_KEY"):
        raise Failure(f"snapshot {image_id} does not carry image key {env('IMAGE_KEY')}")
    return image_id


def delete(api: Api, _: bytes) -> str:
    sweep(api, env("CLUSTER_NAME"), env("ARCH"), keep_key=None)
    return ""


def main(argv: list[str]) -> int:
    actions = {"create": create, "keep": keep, "delete": delete}
    try:
        if len(argv) != 1 or argv[0] not in actions:
            raise BadInput(f"usage: {PROG} create|keep|delete")
        if env("ARCH") not in ARCHES:
            raise BadInput(f"ARCH must be one of {', '.join(ARCHES)}: {os.environ['ARCH']}")
        records = read_stdin()
        token = records.get("@hcloud-token", b"").decode().strip() or env("HCLOUD_TOKEN")
        deploy_key = records.get("@deploy-key", b"")
        if argv[0] == "create" and not deploy_key.strip():
            raise BadInput("stdin has no @deploy-key record")
        api = Api(
            os.environ.get("HCLOUD_ENDPOINT") or "https://api.hetzner.cloud/v1",
            token,
            float(os.environ.get("POLL_SECONDS") or 2),
            int(os.environ.get("POLL_LIMIT") or 900),
        )
        out = actions[argv[0]](api, deploy_key)
    except BadInput as exc:
        log(str(exc))
        return 2
    except Failure as exc:
        log(str(exc))
        return 1
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
