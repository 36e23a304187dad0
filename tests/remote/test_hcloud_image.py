"""Drill of hcloud-image.py (the Hetzner NixOS image) against a fake Hetzner Cloud API.

The fake API (an HTTP server in this process) keeps servers, images and actions in memory and
answers the calls of https://docs.hetzner.cloud the script makes. The builder "server" is the
real sshd of the harness: install.sh runs for real with the stand-in nixos-anywhere (which makes
sshd present the throwaway host key it staged), and the clean step runs over SSH pinned to that
key. The token and the deploy key must never reach an argv, a log line or the output.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from components.hosts.bundle import secret_bundle
from components.scripts import PROJECT_DIR
from tests.remote.harness import FAKEBIN, FakeHost, make_nixos_source

TOKEN = "hcloud-drill-token-0123456789abcdefSECRET"
SCRIPT = "components/scripts/hcloud-image.py"


class FakeCloud:
    """In-memory Hetzner Cloud: every action succeeds at once unless told otherwise."""

    def __init__(self, fake_root: Path, cloud_init: Callable[[str], None] | None = None):
        self.fake_root = fake_root
        self.cloud_init = cloud_init  # what the new server's cloud-init does with its user data
        self.servers: dict[int, dict[str, Any]] = {}
        self.images: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.auth: set[str] = set()
        self.fail_create_image = False
        self.created: list[dict[str, Any]] = []
        self.actions: dict[int, dict[str, Any]] = {}
        self.next_id = 1000

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def action(self, status: str = "success", error: str | None = None) -> dict[str, Any]:
        action_id = self.new_id()
        entry = {"id": action_id, "status": status, "error": None}
        if error:
            entry["error"] = {"code": "image_create_failed", "message": error}
        self.actions[action_id] = entry
        return entry

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        url = urlparse(path)
        parts = url.path.strip("/").split("/")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append(f"{method} {url.path}")
        if parts == ["servers"] and method == "POST":
            self.created.append(body)
            if self.cloud_init is not None and body.get("user_data"):
                self.cloud_init(body["user_data"])
            server_id = self.new_id()
            self.servers[server_id] = {
                "id": server_id,
                "name": body["name"],
                "status": "running",
                "labels": body["labels"],
                "image": {"id": 1, "name": body["image"]},
                "public_net": {"ipv4": {"ip": "127.0.0.1"}},
                "request": body,
            }
            return 201, {"server": self.servers[server_id], "action": self.action()}
        if parts == ["servers"] and method == "GET":
            servers = [s for s in self.servers.values() if query.get("name") in (None, s["name"])]
            return 200, {"servers": servers, "meta": {"pagination": {"next_page": None}}}
        if parts[0] == "servers" and len(parts) == 2:
            server = self.servers[int(parts[1])]
            if method == "DELETE":
                del self.servers[server["id"]]
                return 200, {"action": self.action()}
            log = self.fake_root / "calls.log"
            if log.exists() and "systemctl\tpoweroff" in log.read_text():
                server["status"] = "off"
            return 200, {"server": server}
        if parts[0] == "servers" and parts[2:] == ["actions", "create_image"]:
            server = self.servers[int(parts[1])]
            assert server["status"] == "off", "snapshot of a running builder"
            if self.fail_create_image:
                return 201, {"image": {"id": 0}, "action": self.action("error", "disk broke")}
            image_id = self.new_id()
            self.images[image_id] = {
                "id": image_id,
                "type": body["type"],
                "description": body["description"],
                "labels": body["labels"],
            }
            return 201, {"image": self.images[image_id], "action": self.action()}
        if parts[0] == "actions":
            return 200, {"action": self.actions[int(parts[1])]}
        if parts == ["images"] and method == "GET":
            wanted = dict(kv.split("=") for kv in query["label_selector"].split(","))
            images = [
                i
                for i in self.images.values()
                if i["type"] == query["type"]
                and all(i["labels"].get(k) == v for k, v in wanted.items())
            ]
            return 200, {"images": images, "meta": {"pagination": {"next_page": None}}}
        if parts[0] == "images" and len(parts) == 2:
            image_id = int(parts[1])
            if method == "DELETE":
                del self.images[image_id]
                return 204, None
            return 200, {"image": self.images[image_id]}
        return 404, {"error": {"code": "not_found", "message": path}}


@pytest.fixture
def cloud(host: FakeHost) -> Iterator[tuple[FakeCloud, str]]:
    def cloud_init(user_data: str) -> None:
        """cc_ssh on the stock image: the user data's `ssh_keys` become sshd's host key."""
        lines = user_data.splitlines()
        assert lines[:3] == ["#cloud-config", "ssh_deletekeys: true", "ssh_keys:"], lines[:3]
        private = [line[4:] for line in lines if line.startswith("    ")]
        public = next(line.split(": ", 1)[1] for line in lines if "ed25519_public:" in line)
        key = host.root / "cloud-init-host-key"
        key.write_text("\n".join(private) + "\n")
        key.chmod(0o600)
        Path(f"{key}.pub").write_text(public + "\n")
        host.server.swap_host_key(key)

    fake = FakeCloud(host.root, cloud_init)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            fake.auth.add(self.headers.get("Authorization", ""))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, reply = fake.handle(self.command, self.path.removeprefix("/v1"), body)
            data = b"" if reply is None else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def image_env(host: FakeHost, endpoint: str, source: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{FAKEBIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "HCLOUD_ENDPOINT": endpoint,
        "POLL_SECONDS": "0.05",
        "POLL_LIMIT": "200",
        "CLUSTER_NAME": "drill",
        "ARCH": "x86_64",
        "IMAGE_KEY": "key-one",
        "BUILDER_TYPE": "cpx12",
        "LOCATION": "nbg1",
        "STOCK_IMAGE": "ubuntu-24.04",
        "SSH_KEY_NAME": "drill-deploy",
        "FIREWALL_ID": "4711",
        "HOST_NAME": "drill-image-x86-64",
        "HOST_JSON": json.dumps({"name": "drill-image-x86-64"}),
        "NIXOS_SOURCE_DIR": str(source),
        # install.sh and the stand-in nixos-anywhere (see test_install.py)
        "NIXOS_ANYWHERE": str(FAKEBIN / "nixos-anywhere"),
        "FAKE_ROOT": str(host.root),
        "FAKE_SSHD_HOST_KEY": str(host.server.host_key),
        "FAKE_SSHD_PIDFILE": str(host.server.root / "sshd.pid"),
        "TARGET_PORT": str(host.server.port),
        "SSH_CONNECT_TIMEOUT": "5",
        "SSH_CONNECT_ATTEMPTS": "20",
        "SSH_RETRY_DELAY": "0.2",
        **extra,
    }


def stdin_of(host: FakeHost, token: str | None = TOKEN) -> bytes:
    records = {"@deploy-key": host.server.client_key.read_text()}
    if token is not None:
        records["@hcloud-token"] = token
    return secret_bundle({}, records).encode()  # what the program sends (hetzner_image.py)


def run(action: str, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["python3", SCRIPT, action],
        cwd=PROJECT_DIR,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=180,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def prepare_builder(host: FakeHost) -> None:
    (host.root / "etc/ssh").mkdir(parents=True)
    (host.root / "etc/ssh/ssh_host_ed25519_key").write_text("builder key\n")
    (host.root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")


def assert_no_secret(host: FakeHost, *texts: str) -> None:
    deploy_body = host.server.client_key.read_text().splitlines()[1]
    log = (host.root / "calls.log").read_text()
    for text in (*texts, log):
        assert TOKEN not in text and base64.b64encode(TOKEN.encode()).decode() not in text
        assert deploy_body not in text


def test_create_builds_snapshots_and_deletes_the_builder(
    host: FakeHost, cloud: tuple[FakeCloud, str], tmp_path: Path
) -> None:
    fake, endpoint = cloud
    prepare_builder(host)
    env = image_env(host, endpoint, make_nixos_source(tmp_path))
    done = run("create", env, stdin_of(host))
    assert done.returncode == 0, done.stderr
    (image_id,) = fake.images
    assert done.stdout == f"{image_id}\n"
    image = fake.images[image_id]
    assert image["type"] == "snapshot"
    assert image["labels"] == {
        "cluster": "drill",
        "image-key": "key-one",
        "managed-by": "nixos-k3s",
        "nixos-k3s-image": "x86_64",
    }
    # The builder booted the stock image with the deploy key, and is gone again.
    # The builder's first contact is pinned too: a throwaway host key in its user data (the
    # fake's cloud-init made sshd present it; install.sh would refuse any other key).
    user_data = fake.created[0].pop("user_data")
    assert user_data.startswith("#cloud-config\nssh_deletekeys: true\nssh_keys:\n")
    assert fake.created == [
        {
            "name": "drill-image-x86-64",
            "server_type": "cpx12",
            "image": "ubuntu-24.04",
            "location": "nbg1",
            "ssh_keys": ["drill-deploy"],
            "labels": {
                "cluster": "drill",
                "managed-by": "nixos-k3s",
                "nixos-k3s-role": "image-builder",
            },
            "public_net": {"enable_ipv4": True, "enable_ipv6": False},
            "start_after_create": True,
            "firewalls": [{"firewall": 4711}],
        }
    ]
    assert fake.servers == {}
    assert fake.calls.index("POST /servers") < fake.calls.index(
        next(c for c in fake.calls if c.endswith("/actions/create_image"))
    )
    assert fake.auth == {f"Bearer {TOKEN}"}
    # install.sh ran the real flow (nixos-anywhere against the builder), then the clean step
    # removed the host keys and emptied the machine id before the power-off.
    (call,) = host.calls("nixos-anywhere")
    assert "#drill-image-x86-64" in call and "--build-on remote" in call
    assert not list((host.root / "etc/ssh").glob("ssh_host_*"))
    assert (host.root / "etc/machine-id").read_text() == ""
    assert any(c.startswith("poweroff") for c in host.calls("systemctl"))
    assert_no_secret(host, done.stdout, done.stderr)


def test_create_reuses_a_snapshot_with_the_same_key(
    host: FakeHost, cloud: tuple[FakeCloud, str], tmp_path: Path
) -> None:
    fake, endpoint = cloud
    labels = {"cluster": "drill", "managed-by": "nixos-k3s", "nixos-k3s-image": "x86_64"}
    fake.images[77] = {"id": 77, "type": "snapshot", "labels": {**labels, "image-key": "key-one"}}
    done = run("create", image_env(host, endpoint, make_nixos_source(tmp_path)), stdin_of(host))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "77\n" and "POST /servers" not in fake.calls


def test_a_failed_snapshot_still_deletes_the_builder(
    host: FakeHost, cloud: tuple[FakeCloud, str], tmp_path: Path
) -> None:
    fake, endpoint = cloud
    fake.fail_create_image = True
    prepare_builder(host)
    env = image_env(host, endpoint, make_nixos_source(tmp_path))
    done = run("create", env, stdin_of(host))
    assert done.returncode == 1
    assert "the snapshot failed: image_create_failed: disk broke" in done.stderr
    assert fake.servers == {} and fake.images == {}
    assert_no_secret(host, done.stdout, done.stderr)


def test_new_key_sweeps_unused_old_snapshots_and_destroy_deletes_all(
    host: FakeHost, cloud: tuple[FakeCloud, str], tmp_path: Path
) -> None:
    fake, endpoint = cloud
    labels = {"cluster": "drill", "managed-by": "nixos-k3s", "nixos-k3s-image": "x86_64"}
    fake.images[50] = {"id": 50, "type": "snapshot", "labels": {**labels, "image-key": "old"}}
    fake.images[51] = {"id": 51, "type": "snapshot", "labels": {**labels, "image-key": "older"}}
    other = {**labels, "cluster": "other", "image-key": "x"}
    fake.images[52] = {"id": 52, "type": "snapshot", "labels": other}
    # A live server was created from snapshot 51: a replacement of it would need it again.
    fake.servers[9] = {"id": 9, "name": "drill-control-1", "image": {"id": 51}, "labels": {}}
    prepare_builder(host)
    env = image_env(host, endpoint, make_nixos_source(tmp_path))
    done = run("create", env, stdin_of(host))
    assert done.returncode == 0, done.stderr
    new = int(done.stdout)
    assert sorted(fake.images) == sorted([51, 52, new])
    assert "keeping snapshot 51: a server was created from it" in done.stderr

    # `keep` (an update that changes nothing in the image) prints the id again.
    kept = run("keep", {**env, "PULUMI_COMMAND_STDOUT": str(new)}, stdin_of(host))
    assert kept.returncode == 0 and kept.stdout == f"{new}\n"

    # Destroy: the servers are gone first, then the delete step removes every snapshot of
    # this cluster and architecture, and nothing of another cluster.
    del fake.servers[9]
    gone = run("delete", {**env, "PULUMI_COMMAND_STDOUT": str(new)}, stdin_of(host))
    assert gone.returncode == 0, gone.stderr
    assert sorted(fake.images) == [52]
    assert_no_secret(host, done.stderr, kept.stderr, gone.stderr)


def test_token_from_the_operators_environment(
    host: FakeHost, cloud: tuple[FakeCloud, str], tmp_path: Path
) -> None:
    fake, endpoint = cloud
    env = image_env(host, endpoint, make_nixos_source(tmp_path), HCLOUD_TOKEN=TOKEN)
    done = run("delete", env, stdin_of(host, token=None))
    assert done.returncode == 0, done.stderr
    assert fake.auth == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("env_change", "stdin", "message"),
    [
        ({"ARCH": "sparc"}, None, "ARCH must be one of x86_64, arm64"),
        ({"CLUSTER_NAME": ""}, None, "CLUSTER_NAME is required"),
        ({}, b"garbage\n", "stdin: want a 'nixos-k3s-bundle v1 COUNT SHA256' header"),
        (
            {},
            secret_bundle({}, {"@deploy-key": "k"}).replace("v1 1 ", "v1 2 ").encode(),
            "stdin: the bundle does not match its header",
        ),
        ({}, secret_bundle({}, {"@other": "x"}).encode(), "want @hcloud-token / @deploy-key"),
        ({}, b"", "HCLOUD_TOKEN is required"),
    ],
)
def test_bad_input_exits_2(
    host: FakeHost,
    cloud: tuple[FakeCloud, str],
    tmp_path: Path,
    env_change: dict[str, str],
    stdin: bytes | None,
    message: str,
) -> None:
    _, endpoint = cloud
    env = {**image_env(host, endpoint, make_nixos_source(tmp_path)), **env_change}
    done = run("create", env, stdin_of(host) if stdin is None else stdin)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_host_key_unit_installs_the_key_from_user_data(tmp_path: Path) -> None:
    """The first-boot script of nixos/modules/hetzner-host-key.nix on the user data the
    program renders (components/machines/hetzner_image.py), with a stand-in curl."""
    from components.machines.userdata import host_key_user_data

    text = (PROJECT_DIR / "nixos/modules/hetzner-host-key.nix").read_text()
    script = re.search(r"script = ''\n(.*?)\n      '';", text, re.S)
    assert script
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    user_data = tmp_path / "user-data"
    user_data.write_text(host_key_user_data(key.read_text(), public))
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "curl").write_text(f"#!/bin/sh\ncat {user_data}\n")
    (fakebin / "curl").chmod(0o755)
    target = tmp_path / "etc/ssh/ssh_host_ed25519_key"
    target.parent.mkdir(parents=True)
    body = (
        script.group(1)
        .replace("${keyFile}", str(target))
        .replace("${lib.escapeShellArg cfg.metadataUrl}", "http://169.254.169.254/x")
    )
    assert "${lib." not in body and "${keyFile}" not in body
    env = {"PATH": f"{fakebin}:/usr/bin:/bin"}
    done = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == key.read_text()
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert target.with_suffix(".pub").read_text() == public + "\n"

    # A key that does not match its public half is refused, and nothing is left behind.
    target.unlink()
    target.with_suffix(".pub").unlink()
    other = tmp_path / "o"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(other)])
    user_data.write_text(host_key_user_data(other.read_text(), public))
    done = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "does not match" in done.stderr
    assert not list(target.parent.iterdir())
