"""Synthetic offline plans in the format `python -m tooling plan` writes, for diff tests.

A ClusterSpec describes a small k3s cluster on Hetzner; write_plan turns it into DIR/plan.json
and DIR/hosts/*.json the way the real plan command lays them out (sorted resources, secrets as
"[secret]" plus a keyed fingerprint, host files with a sha256 content hash). Tests change one
thing in the spec and compare the two plans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PROJECT = "nixos-k3s"
FINGERPRINT_KEY = b"test-fingerprint-key"


def fingerprint(value: str) -> str:
    return hmac.new(FINGERPRINT_KEY, value.encode(), hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class ClusterSpec:
    stack: str = "prod"
    servers: int = 3
    agents: int = 2
    server_type: str = "cx33"
    image: str = "debian-12"
    location: str = "fsn1"
    cilium_version: str = "1.18.1"
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    k3s_token: str = "K10-token-value-0001"
    deploy_key: str = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAkey0001\n-----END"
    push_script: str = 'set -euo pipefail\nrsync -a "$SRC" "$DST"\nnixos-rebuild switch\n'
    host_padding: int = 0
    leak_secret_into_inputs: bool = False

    def with_(self, **changes: Any) -> ClusterSpec:
        return dataclasses.replace(self, **changes)

    def host_names(self) -> list[str]:
        servers = [f"{self.stack}-server-{i}" for i in range(1, self.servers + 1)]
        agents = [f"{self.stack}-agent-{i}" for i in range(1, self.agents + 1)]
        return servers + agents


class _Builder:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.resources: list[dict[str, Any]] = []
        self.fingerprints: dict[str, dict[str, str]] = {}
        self.cluster = self._urn("nixos-k3s:index:Cluster", f"{spec.stack}")
        self.resources.append(self._resource(self.cluster, "nixos-k3s:index:Cluster", None, {}))

    def _urn(self, type_: str, name: str, parent_type: str | None = None) -> str:
        qualified = f"{parent_type}${type_}" if parent_type else type_
        return f"urn:pulumi:{self.spec.stack}::{PROJECT}::{qualified}::{name}"

    def _resource(
        self,
        urn: str,
        type_: str,
        parent: str | None,
        inputs: dict[str, Any],
        depends_on: list[str] | None = None,
        provider: str | None = None,
    ) -> dict[str, Any]:
        return {
            "urn": urn,
            "type": type_,
            "name": urn.rsplit("::", 1)[-1],
            "custom": not type_.startswith("nixos-k3s:"),
            "parent": parent,
            "dependsOn": sorted(depends_on or []),
            "inputs": inputs,
            "provider": provider,
        }

    def child(
        self,
        type_: str,
        name: str,
        inputs: dict[str, Any],
        depends_on: list[str] | None = None,
        secrets: dict[str, str] | None = None,
        provider: str | None = None,
    ) -> str:
        urn = self._urn(type_, name, "nixos-k3s:index:Cluster")
        self.resources.append(
            self._resource(urn, type_, self.cluster, inputs, depends_on, provider)
        )
        if secrets:
            self.fingerprints[urn] = {path: fingerprint(v) for path, v in secrets.items()}
        return urn


def _host_document(spec: ClusterSpec, host: str, index: int) -> dict[str, Any]:
    role = "server" if "-server-" in host else "agent"
    return {
        "hostname": host,
        "role": role,
        "k3s": {
            "clusterInit": host == f"{spec.stack}-server-1",
            "nodeLabels": [f"{k}={v}" for k, v in sorted(spec.node_labels.get(host, {}).items())],
            "serverAddr": "https://10.0.1.1:6443",
            "tokenFile": "/var/lib/nixos-k3s/k3s-token",
        },
        "network": {"privateAddress": f"10.0.1.{index + 1}", "mtu": 1450},
        "padding": ["filler line for a long host file"] * spec.host_padding,
    }


def write_plan(directory: Path, spec: ClusterSpec) -> Path:
    """Write a plan directory for spec and return it."""
    b = _Builder(spec)
    network = b.child(
        "hcloud:index/network:Network", f"{spec.stack}-net", {"ipRange": "10.0.0.0/16"}
    )
    subnet = b.child(
        "hcloud:index/networkSubnet:NetworkSubnet",
        f"{spec.stack}-subnet",
        {
            "ipRange": "10.0.1.0/24",
            "networkId": 1001,
            "networkZone": "eu-central",
            "type": "cloud",
        },
        [network],
    )
    key = b.child(
        "tls:index/privateKey:PrivateKey", f"{spec.stack}-deploy-key", {"algorithm": "ED25519"}
    )
    ssh_key = b.child(
        "hcloud:index/sshKey:SshKey",
        f"{spec.stack}-ssh-key",
        {"name": f"{spec.stack}-deploy", "publicKey": "ssh-ed25519 AAAApublic"},
        [key],
    )
    token = b.child(
        "random:index/randomPassword:RandomPassword",
        f"{spec.stack}-k3s-token",
        {"length": 48, "special": False},
    )
    hosts: dict[str, dict[str, str]] = {}
    host_dir = directory / "hosts"
    host_dir.mkdir(parents=True, exist_ok=True)
    for index, host in enumerate(spec.host_names()):
        text = json.dumps(_host_document(spec, host, index), sort_keys=True, indent=2) + "\n"
        (host_dir / f"{host}.json").write_text(text, encoding="utf-8")
        content_hash = hashlib.sha256(text.encode()).hexdigest()
        hosts[host] = {"contentHash": content_hash, "file": f"hosts/{host}.json"}
        labels = {"cluster": spec.stack, **spec.node_labels.get(host, {})}
        server = b.child(
            "hcloud:index/server:Server",
            host,
            {
                "image": spec.image,
                "labels": labels,
                "location": spec.location,
                "name": host,
                "serverType": spec.server_type,
                "sshKeys": ["2002"],
            },
            [ssh_key],
        )
        b.child(
            "hcloud:index/serverNetwork:ServerNetwork",
            f"{host}-net",
            {
                "ip": f"10.0.1.{index + 1}",
                "serverId": 3000 + index,
                "subnetId": "1001-10.0.1.0/24",
            },
            [server, subnet],
        )
        b.child("nixos-k3s:index:NixosHost", f"{host}-nixos", {}, [server])
        secret_inputs = {"stdin": spec.k3s_token, "connection.privateKey": spec.deploy_key}
        push_inputs: dict[str, Any] = {
            "create": spec.push_script,
            # as the real push carries it: the host file's text (here without its last newline)
            "environment": {"HOST_JSON": text.rstrip("\n"), "HOST_NAME": host},
            "stdin": "[secret]",
            "connection": {"host": f"203.0.113.{index + 1}", "privateKey": "[secret]"},
            "triggers": [content_hash],
        }
        if spec.leak_secret_into_inputs:
            push_inputs["stdin"] = spec.k3s_token
            push_inputs["connection"]["privateKey"] = spec.deploy_key
        b.child(
            "command:local:Command",
            f"{host}-push",
            push_inputs,
            [server, token, key],
            secrets=secret_inputs,
        )
    provider = b.child(
        "pulumi:providers:kubernetes",
        f"{spec.stack}-k8s",
        {"clusterIdentifier": spec.stack, "kubeconfig": "[secret]"},
        secrets={"kubeconfig": f"kubeconfig-for-{spec.k3s_token}"},
    )
    b.child(
        "kubernetes:helm.sh/v3:Release",
        "cilium",
        {
            "chart": "cilium",
            "name": "cilium",
            "namespace": "kube-system",
            "repositoryOpts": {"repo": "https://helm.cilium.io/"},
            "values": {"MTU": 1450, "k8sServiceHost": "10.0.1.1", "operator": {"replicas": 2}},
            "version": spec.cilium_version,
        },
        provider=provider,
    )
    document = {
        "project": PROJECT,
        "stack": spec.stack,
        "resources": sorted(b.resources, key=lambda r: r["urn"]),
        "outputs": {"apiEndpoint": "https://203.0.113.1:6443", "kubeconfig": "[secret]"},
        "secretFingerprints": b.fingerprints,
        "hosts": hosts,
    }
    text = json.dumps(document, sort_keys=True, indent=2) + "\n"
    (directory / "plan.json").write_text(text, encoding="utf-8")
    return directory


PlanFactory = Callable[[ClusterSpec], Path]


@pytest.fixture
def make_plan(tmp_path: Path) -> PlanFactory:
    """Write each spec to a fresh directory under tmp_path and return that directory."""
    counter = iter(range(1_000_000))

    def make(spec: ClusterSpec) -> Path:
        return write_plan(tmp_path / f"plan-{next(counter)}", spec)

    return make


@pytest.fixture
def base_spec() -> ClusterSpec:
    return ClusterSpec()
