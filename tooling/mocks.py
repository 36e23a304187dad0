"""Deterministic stand-ins for the providers, and a monitor that records every registration.

The offline plan and the tests run the real program against these. Fake outputs come from
documentation address ranges (RFC 5737, RFC 3849) and numeric string IDs like the real hcloud
provider returns; every value is a function of the resource's type and name only, so two runs
give the same plan whatever order the SDK registers resources in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import ipaddress
import json
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pulumi
from google.protobuf import struct_pb2
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.sync_await import _ensure_event_loop

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
SIG_KEY = "4dabf18193072939515e22adb298388d"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
REDACTED = "[secret]"

DOC_IPV4 = [
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
]


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def fake_id(typ: str, name: str) -> str:
    return str(int.from_bytes(_digest("id", typ, name)[:4], "big") % 90_000_000 + 10_000_000)


def fake_ipv4(name: str) -> str:
    n = int.from_bytes(_digest("ipv4", name)[:4], "big")
    net = DOC_IPV4[n % 3]
    return str(net.network_address + 2 + (n >> 2) % 250)


def fake_ipv6_network(name: str) -> str:
    d = _digest("ipv6", name)
    return f"2001:db8:{int.from_bytes(d[:2], 'big'):x}:{int.from_bytes(d[2:4], 'big'):x}::/64"


def fake_ssh_public_key(name: str) -> str:
    # The wire form of an ed25519 key: string "ssh-ed25519" + 32 key bytes (from the name).
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + _digest("ed25519", name)
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + "\n"


def fake_private_key(name: str) -> str:
    body = base64.b64encode(b"mock-private-key:" + _digest("private", name)).decode()
    # Recognisably fake, and without PEM armour so no scanner mistakes it for a real key.
    return f"mock-openssh-private-key {body}\n"


def fake_random(name: str, length: int) -> str:
    return ("mock" + _digest("random", name).hex())[:length]


def fake_kubeconfig(server: str, cluster: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
        "    certificate-authority-data: TU9DSw==\n"
        f"    server: {server}\n  name: {cluster}\ncontexts:\n- context:\n"
        f"    cluster: {cluster}\n    user: {cluster}\n  name: {cluster}\n"
        f"current-context: {cluster}\nusers:\n- name: {cluster}\n  user:\n"
        "    client-certificate-data: TU9DSw==\n    client-key-data: TU9DSw==\n"
    )


def fake_colima_line(profile: str) -> str:
    n = int.from_bytes(_digest("colima", profile)[:2], "big") % 250 + 2
    return json.dumps(
        {
            "name": profile,
            "status": "Running",
            "arch": "aarch64",
            "cpus": 4,
            "memory": 8589934592,
            "disk": 64424509440,
            "runtime": "containerd",
            "address": f"192.168.64.{n}",
        }
    )


class FakeProviders(pulumi.runtime.Mocks):
    """Provider outputs for every resource type the program creates."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        typ, name, inputs = args.typ, args.name, dict(args.inputs)
        state = dict(inputs)
        if typ == "hcloud:index/server:Server":
            network = fake_ipv6_network(name)
            state.update(
                ipv4Address=fake_ipv4(name),
                ipv6Network=network,
                ipv6Address=network.replace("::/64", "::1"),
                status="running",
            )
        elif typ == "hcloud:index/loadBalancer:LoadBalancer":
            network = fake_ipv6_network(name)
            state.update(ipv4=fake_ipv4(name), ipv6=network.replace("::/64", "::1"))
        elif typ == "hcloud:index/serverNetwork:ServerNetwork":
            mac = _digest("mac", name)[:3].hex(":")
            state.update(macAddress=f"86:00:00:{mac}")
        elif typ == "tls:index/privateKey:PrivateKey":
            state.update(
                publicKeyOpenssh=fake_ssh_public_key(name),
                privateKeyOpenssh=fake_private_key(name),
                privateKeyPem=fake_private_key(name),
            )
        elif typ == "random:index/randomPassword:RandomPassword":
            length = int(inputs.get("length", 32))
            state.update(result=fake_random(name, length))
        elif typ.startswith("command:"):
            state.update(stdout=self._command_stdout(name, inputs), stderr="")
        return fake_id(typ, name), state

    @staticmethod
    def _command_stdout(name: str, inputs: dict[str, Any]) -> str:
        env = inputs.get("environment") or {}
        if name.endswith("-kubeconfig"):
            return fake_kubeconfig(
                "https://[api-endpoint]:6443", str(env.get("CLUSTER_NAME", "k3s"))
            )
        if name.endswith("-vm") and "PROFILE" in env:
            # What colima-create.sh prints: the VM's host key (read through `colima ssh`), then
            # its `colima ls --json` line.
            host_key = fake_ssh_public_key(f"{env['PROFILE']}-vm-host-key").strip()
            return f"host-key {host_key}\n" + fake_colima_line(str(env["PROFILE"])) + "\n"
        if "IMAGE_KEY" in env:
            # hcloud-image.py prints the snapshot's numeric id; a new key is a new snapshot.
            return f"{int.from_bytes(_digest('image', str(env['IMAGE_KEY']))[:4], 'big')}\n"
        return ""

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, None


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str | None
    depends_on: list[str]
    inputs: Any
    secret_paths: dict[str, Any]
    provider: str | None
    # Resource options the engine would act on (in-process only, not written to plan.json).
    delete_before_replace: bool = False
    additional_secret_outputs: tuple[str, ...] = ()
    # Input paths the engine keeps from the state once the resource exists (ignore_changes);
    # written to plan.json, where the diff leaves them out.
    ignore_changes: tuple[str, ...] = ()
    # The URNs the engine also takes as this resource (its aliases, and those it inherits from
    # an aliased parent), so that a moved resource is the same resource; written to plan.json.
    aliases: tuple[str, ...] = ()


ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


def engine_urn(stack: str, project: str, parent: str, type_: str, name: str) -> str:
    """The URN the Pulumi engine gives a resource (pulumi/pulumi Deployment.generateURN).

    The parent's *qualified* type (every ancestor's type joined by `$`, the third `::` part of
    its URN) is put in front of the resource's type, except when the parent is the root stack:
    `urn:pulumi:dev::nixos-k3s::nixos-k3s:index:Cluster$nixos-k3s:colima:Machine$
    command:local:Command::dev-server-1-vm`. The SDK's MockMonitor keeps only the parent's last
    type and keeps the root stack's, so none of its URNs below the stack is the engine's.
    """
    type_path = type_
    if parent:
        parent_type = parent.split("::", 3)[2]
        if parent_type != ROOT_STACK_TYPE:
            type_path = f"{parent_type}${type_}"
    return f"urn:pulumi:{stack}::{project}::{type_path}::{name}"


def alias_urns(request: Any, urn: str, parent_aliases: Sequence[str]) -> tuple[str, ...]:
    """The URNs the engine takes as this resource besides its own: each alias (a URN or a spec:
    unset parts are the resource's own, pulumi/pulumi's alias resolution) and, for each alias of
    its parent, the URN it had under that parent (the engine's inherited child aliases)."""
    stack, project = pulumi.get_stack(), pulumi.get_project()
    found = set()
    for alias in request.aliases:
        if alias.WhichOneof("alias") == "urn":
            found.add(alias.urn)
            continue
        spec = alias.spec
        parent = "" if spec.noParent else (spec.parentUrn or request.parent)
        found.add(
            engine_urn(
                spec.stack or stack,
                spec.project or project,
                parent,
                spec.type or request.type,
                spec.name or request.name,
            )
        )
    for parent_alias in parent_aliases:
        found.add(engine_urn(stack, project, parent_alias, request.type, request.name))
    return tuple(sorted(found - {urn}))


class RecordingMonitor(MockMonitor):
    """MockMonitor that also keeps each request's parent, dependencies and raw inputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.registrations: dict[str, Registration] = {}
        self._lock = threading.Lock()

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        # Every URN the mock hands back (RegisterResource, ReadResource) is the engine's.
        return engine_urn(pulumi.get_stack(), pulumi.get_project(), parent, type_, name)

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        raw = struct_to_dict(request.object)
        secrets: dict[str, Any] = {}
        inputs = redact(raw, "", secrets)
        depends = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            depends.update(deps.urns)
        # A provider reference is "<provider urn>::<provider id>".
        provider = request.provider.rsplit("::", 1)[0] if request.provider else None
        with self._lock:
            parent = self.registrations.get(request.parent)
        registration = Registration(
            aliases=alias_urns(request, response.urn, parent.aliases if parent else ()),
            urn=response.urn,
            type=request.type,
            name=request.name,
            custom=bool(request.custom),
            parent=request.parent or None,
            depends_on=sorted(depends - {request.parent}),
            inputs=inputs,
            secret_paths=secrets,
            provider=provider,
            delete_before_replace=bool(request.deleteBeforeReplace),
            additional_secret_outputs=tuple(sorted(request.additionalSecretOutputs)),
            ignore_changes=tuple(sorted(request.ignoreChanges)),
        )
        with self._lock:
            self.registrations[response.urn] = registration
        return response


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A protobuf Struct (a request's inputs) as plain data, as json_format.MessageToDict gives it.

    Written out because MessageToDict looks up field descriptors for every value, which made it
    most of the recording's cost (tests/test_plan.py holds the two to the same results).
    """
    return {key: _struct_value(item) for key, item in struct.fields.items()}


def _struct_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_struct_value(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value" and not math.isfinite(value.number_value):
        # MessageToDict refuses these too (JSON has no such numbers).
        raise ValueError(f"a resource input holds the number {value.number_value}")
    return getattr(value, kind)  # string_value, number_value (a float) or bool_value


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def redact(value: Any, path: str, secrets: dict[str, Any]) -> Any:
    """Plain data from a serialized property value, secrets replaced by REDACTED.

    `secrets` receives each secret's dotted path and its (unredacted) value, for fingerprints
    only: it never leaves the process.
    """
    if isinstance(value, dict):
        sig = value.get(SIG_KEY)
        if sig == SECRET_SIG:
            secrets[path] = value.get("value")
            return REDACTED
        if sig == RESOURCE_SIG:
            return {"urn": value.get("urn")}
        if sig == OUTPUT_SIG:
            if value.get("secret"):
                secrets[path] = value.get("value")
                return REDACTED
            return redact(value.get("value", UNKNOWN), path, secrets)
        return {
            key: redact(item, f"{path}.{key}" if path else key, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, f"{path}[{i}]", secrets) for i, item in enumerate(value)]
    if isinstance(value, float):
        return _number(value)
    if value == UNKNOWN:
        return "[unknown]"
    return value


# Threads per degree of --parallel in Pulumi's Python language host (pulumi/pulumi#20362).
LANGUAGE_HOST_THREADS_PER_WORKER = 4


@contextlib.contextmanager
def monitor_threads(parallel: int | None = None) -> Iterator[None]:
    """Run the SDK's monitor calls on threads whose event loops are closed afterwards.

    The SDK calls the monitor from its event loop's default executor, and the mock monitor
    gives each of those threads an event loop of its own that nothing ever closes. Left to
    interpreter shutdown, such a loop can be finalized after its self-pipe sockets and print
    "Exception ignored in BaseEventLoop.__del__" with a traceback. Here every executor thread
    gets its loop when it starts, and the loops are closed once the threads are done.

    `parallel` sizes the pool as Pulumi's Python language host does for `--parallel P`
    (pulumi-language-python-exec, `_set_default_executor`: max(P, 1) * 4 threads); a blocking
    RegisterResource holds one thread until the engine has created the resource.
    """
    loops: list[asyncio.AbstractEventLoop] = []
    lock = threading.Lock()

    def start() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        with lock:
            loops.append(loop)

    # The same pool the event loop would make itself (asyncio's default size), plus the loops.
    workers = None if parallel is None else max(parallel, 1) * LANGUAGE_HOST_THREADS_PER_WORKER
    executor = ThreadPoolExecutor(workers, thread_name_prefix="mock-monitor", initializer=start)
    _ensure_event_loop().set_default_executor(executor)
    try:
        yield
    finally:
        executor.shutdown(wait=True)
        for loop in loops:
            loop.close()


@contextlib.contextmanager
def frozen_collector() -> Iterator[None]:
    """Freeze the cyclic collector's view of everything alive now, for the duration.

    Modules, pydantic schemas and the SDK live as long as a program run; freezing them keeps
    every full collection from walking them again while the SDK churns through Outputs and
    tasks. The benchmark runs its baseline, floor and replay inside this too (bench/child.py),
    so the plan and what it is compared with share one GC setup. Afterwards everything is
    collectable again: the process goes on (writing the plan, or another run in tests).
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
