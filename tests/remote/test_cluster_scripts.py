"""kubeconfig.sh, api-ready.sh, node-gate.sh and nodes-ready.sh on the fake host over real SSH."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components.scripts import PROJECT_DIR, local_invocation, remote_invocation
from tests.remote.harness import FakeHost

# What k3s writes to /etc/rancher/k3s/k3s.yaml (base64 payloads shortened).
K3S_YAML = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJkekNDQVIy
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrVENDQVRl
    client-key-data: LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCk1IY0NBUUVFSUd5
"""

FAST = {"POLL_INTERVAL": "0.1"}
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherClusterKeyOtherClusterKeyOtherClust"


def set_nodes(host: FakeHost, nodes: dict[str, str]) -> None:
    directory = host.root / "k3s/nodes"
    directory.mkdir(parents=True, exist_ok=True)
    for name, ready in nodes.items():
        (directory / name).write_text(ready)


def write_k3s_yaml(host: FakeHost) -> None:
    path = host.root / "etc/rancher/k3s/k3s.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(K3S_YAML)
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("endpoint", "server"),
    [
        ("10.0.0.5", "https://10.0.0.5:6443"),
        ("api.example.com:443", "https://api.example.com:443"),
        ("https://lb.example.com:6443", "https://lb.example.com:6443"),
        ("[2001:db8::1]", "https://[2001:db8::1]:6443"),
    ],
)
def test_kubeconfig_points_at_endpoint_and_renames(
    host: FakeHost, endpoint: str, server: str
) -> None:
    write_k3s_yaml(host)
    result = host.server.ssh(remote_invocation("kubeconfig.sh", endpoint, "prod"))
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    original = yaml.safe_load(K3S_YAML)
    assert config["clusters"] == [
        {
            "name": "prod",
            "cluster": {
                "server": server,
                "certificate-authority-data": original["clusters"][0]["cluster"][
                    "certificate-authority-data"
                ],
            },
        }
    ]
    assert config["contexts"] == [{"name": "prod", "context": {"cluster": "prod", "user": "prod"}}]
    assert config["current-context"] == "prod"
    assert config["users"] == [{"name": "prod", "user": original["users"][0]["user"]}]
    assert "default" not in result.stdout


def test_kubeconfig_fails_clearly_without_k3s_yaml(host: FakeHost) -> None:
    result = host.server.ssh(remote_invocation("kubeconfig.sh", "10.0.0.5", "prod"))
    assert result.returncode == 1
    assert "k3s.yaml not found" in result.stderr
    assert result.stdout == ""


def test_kubeconfig_rejects_a_bad_endpoint(host: FakeHost) -> None:
    write_k3s_yaml(host)
    result = host.server.ssh(remote_invocation("kubeconfig.sh", "10.0.0.5|evil", "prod"))
    assert result.returncode == 2
    assert "invalid API endpoint" in result.stderr


def test_api_ready_succeeds_when_readyz_is_ok(host: FakeHost) -> None:
    result = host.server.ssh(remote_invocation("api-ready.sh", "5", env=FAST))
    assert result.returncode == 0, result.stderr
    assert host.calls("k3s") == ["kubectl --request-timeout=5s get --raw=/readyz"]


def test_api_ready_timeout_names_host_and_last_answer(host: FakeHost) -> None:
    # Timeout 0: one try, then the verdict; nothing depends on how fast the machine is.
    (host.root / "k3s").mkdir()
    (host.root / "k3s/readyz").write_text("[-]etcd failed: reason withheld")
    result = host.server.ssh(remote_invocation("api-ready.sh", "0", env=FAST))
    assert result.returncode == 1
    assert f"API on {os.uname().nodename} not ready after 0s" in result.stderr
    assert "[-]etcd failed: reason withheld" in result.stderr
    assert host.calls("k3s") == ["kubectl --request-timeout=5s get --raw=/readyz"]


def test_api_ready_polls_until_readyz_is_ok(host: FakeHost) -> None:
    # The API answers "not ready" three times, then ok: the gate must keep asking. The timeout
    # is far above what three polls take, so only the answers decide the outcome.
    (host.root / "k3s").mkdir()
    (host.root / "k3s/readyz").write_text("[-]etcd failed: reason withheld")
    (host.root / "k3s/readyz-failures").write_text("3\n")
    result = host.server.ssh(remote_invocation("api-ready.sh", "600", env=FAST))
    assert result.returncode == 0, result.stderr
    assert len(host.calls("k3s")) == 4, "three failed polls, then ok"


def test_node_gate_wait_until_registered(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True"})
    ok = host.server.ssh(remote_invocation("node-gate.sh", "wait", "server-1", "5", env=FAST))
    assert ok.returncode == 0, ok.stderr
    missing = host.server.ssh(remote_invocation("node-gate.sh", "wait", "agent-9", "1", env=FAST))
    assert missing.returncode == 1
    assert "node agent-9 not registered" in missing.stderr
    assert 'nodes "agent-9" not found' in missing.stderr


def test_node_gate_remove_drains_and_deletes(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "server-2": "True"})
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "server-2", env=FAST))
    assert result.returncode == 0, result.stderr
    assert not (host.root / "k3s/nodes/server-2").exists()
    assert (host.root / "k3s/nodes/server-1").exists()
    calls = host.calls("k3s")
    assert (
        "kubectl --request-timeout=10s drain server-2 --ignore-daemonsets --delete-emptydir-data"
        " --force --timeout=120s" in calls
    )
    assert (
        "kubectl --request-timeout=10s delete node server-2 --ignore-not-found --wait=true"
        " --timeout=60s" in calls
    )
    assert "node server-2 deleted" in result.stderr


def test_node_gate_remove_deletes_even_when_drain_times_out(host: FakeHost) -> None:
    set_nodes(host, {"agent-1": "True"})
    (host.root / "k3s/drain-fails").touch()
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "agent-1", env=FAST))
    assert result.returncode == 0, result.stderr
    assert "drain of agent-1 did not finish" in result.stderr
    assert not (host.root / "k3s/nodes/agent-1").exists()


def test_node_gate_remove_of_a_gone_node_succeeds(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True"})
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "agent-7", env=FAST))
    assert result.returncode == 0, result.stderr
    assert "node agent-7 is not registered; nothing to remove" in result.stderr
    assert not [c for c in host.calls("k3s") if " drain " in c or " delete " in c]


def test_node_gate_remove_with_the_api_gone_succeeds_in_a_teardown(host: FakeHost) -> None:
    (host.root / "k3s").mkdir()
    (host.root / "k3s/api-down").touch()
    teardown = {**FAST, "NODE_GATE_TEARDOWN": "1", "NODE_GATE_API_TIMEOUT": "2"}
    started = time.monotonic()
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "agent-1", env=teardown))
    assert result.returncode == 0, result.stderr
    assert "is gone" in result.stderr and "the stack is being destroyed" in result.stderr
    assert "does not answer after 2s; last answer: " in result.stderr
    assert "connection to the server 127.0.0.1:6443 was refused" in result.stderr
    assert len(host.calls("k3s")) >= 3, "it retried until the deadline before giving up"
    assert time.monotonic() - started >= 1, "it gave up before the deadline"


def test_node_gate_remove_fails_when_the_api_is_down_in_a_scale_down(host: FakeHost) -> None:
    # k3s restarting (or etcd without quorum) on the bootstrap server while server-3 goes:
    # dropping it undrained would leave its etcd member behind.
    set_nodes(host, {"server-1": "True", "server-3": "True"})
    (host.root / "k3s/api-down").touch()
    env = {**FAST, "NODE_GATE_API_TIMEOUT": "1"}
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "server-3", env=env))
    assert result.returncode == 1
    assert "does not answer after 1s" in result.stderr
    assert "refusing to drop server-3 without draining it" in result.stderr
    assert (host.root / "k3s/nodes/server-3").exists()


def test_node_gate_remove_polls_the_api_until_it_answers(host: FakeHost) -> None:
    # k3s restarting on the bootstrap server: /readyz fails a while, then answers in time.
    set_nodes(host, {"server-1": "True", "agent-1": "True"})
    (host.root / "k3s/readyz").write_text("[-]etcd failed: reason withheld")
    (host.root / "k3s/readyz-failures").write_text("5\n")
    env = {**FAST, "NODE_GATE_API_TIMEOUT": "20"}
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "agent-1", env=env))
    assert result.returncode == 0, result.stderr
    readyz = [c for c in host.calls("k3s") if c.endswith("get --raw=/readyz")]
    assert len(readyz) == 6
    assert not (host.root / "k3s/nodes/agent-1").exists()


def test_node_gate_remove_rejects_a_bad_api_timeout(host: FakeHost) -> None:
    env = {"NODE_GATE_API_TIMEOUT": "soon"}
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "agent-1", env=env))
    assert result.returncode == 2
    assert "NODE_GATE_API_TIMEOUT must be a positive integer: soon" in result.stderr
    assert host.calls("k3s") == []


def mark_servers(host: FakeHost, *names: str) -> None:
    (host.root / "k3s/control-plane").mkdir(parents=True, exist_ok=True)
    for name in names:
        (host.root / "k3s/control-plane" / name).touch()


def test_node_gate_refuses_bootstrap_server_while_other_servers_remain(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "server-2": "True", "agent-1": "True"})
    mark_servers(host, "server-1", "server-2")
    boot = {**FAST, "NODE_GATE_BOOTSTRAP": "1"}
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "server-1", env=boot))
    assert result.returncode == 1
    assert "refusing to remove server-1" in result.stderr and "server-2" in result.stderr
    assert "k3s.bootstrapHost" in result.stderr
    assert (host.root / "k3s/nodes/server-1").exists()
    assert not [c for c in host.calls("k3s") if " drain " in c or " delete " in c]


def test_node_gate_removes_bootstrap_server_last(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "agent-1": "True"})
    mark_servers(host, "server-1")
    boot = {**FAST, "NODE_GATE_BOOTSTRAP": "1"}
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "server-1", env=boot))
    assert result.returncode == 0, result.stderr
    assert not (host.root / "k3s/nodes/server-1").exists()


def test_node_gate_rejects_option_like_node_names(host: FakeHost) -> None:
    result = host.server.ssh(remote_invocation("node-gate.sh", "remove", "--all"))
    assert result.returncode == 2
    assert host.calls("k3s") == []


def test_nodes_ready_counts_ready_nodes(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "server-2": "True", "agent-1": "False"})
    ok = host.server.ssh(remote_invocation("nodes-ready.sh", "2", "5", env=FAST))
    assert ok.returncode == 0, ok.stderr
    short = host.server.ssh(remote_invocation("nodes-ready.sh", "3", "1", env=FAST))
    assert short.returncode == 1
    assert "only 2 of 3 nodes Ready" in short.stderr
    assert "agent-1=False" in short.stderr


CNI_NOT_READY = (
    "False\nKubeletNotReady\ncontainer runtime network not ready: NetworkReady=false "
    "reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
)


def test_nodes_ready_names_each_not_ready_node_with_reason_and_message(host: FakeHost) -> None:
    set_nodes(
        host,
        {
            "server-1": "True\nKubeletReady\nkubelet is posting ready status",
            "agent-1-edge": CNI_NOT_READY,
            "agent-2": "Unknown\nNodeStatusUnknown\nKubelet stopped posting node status.",
            "agent-3": "",
        },
    )
    failed = host.server.ssh(remote_invocation("nodes-ready.sh", "5", "1", env=FAST))
    assert failed.returncode == 1
    lines = failed.stderr.splitlines()
    assert lines[0].startswith("nodes-ready.sh: only 1 of 5 nodes Ready on "), failed.stderr
    assert (
        "  agent-1-edge: Ready=False (KubeletNotReady: container runtime network not ready: "
        "NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: "
        "cni plugin not initialized)"
    ) in lines
    assert (
        "  agent-2: Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting node status.)"
        in lines
    )
    assert "  agent-3: Ready=Unknown (no reason reported: no message)" in lines
    assert "  1 of 5 expected nodes never registered" in lines
    # The Ready node is counted, not explained.
    assert not any(line.startswith("  server-1:") for line in lines)


def test_nodes_ready_reports_an_unreachable_api_without_node_lines(host: FakeHost) -> None:
    (host.root / "k3s").mkdir(parents=True, exist_ok=True)
    (host.root / "k3s" / "api-down").touch()
    failed = host.server.ssh(remote_invocation("nodes-ready.sh", "1", "1", env=FAST))
    assert failed.returncode == 1
    assert "was refused" in failed.stderr
    assert "never registered" not in failed.stderr


def test_nodes_ready_waits_for_the_cloud_controller(host: FakeHost) -> None:
    uninitialized = "node.cloudprovider.kubernetes.io/uninitialized"
    control_plane = "node-role.kubernetes.io/control-plane"
    set_nodes(
        host,
        {
            "server-1": f"True\nKubeletReady\nready\n{control_plane}",
            "agent-1": f"True\nKubeletReady\nready\n{control_plane} {uninitialized}",
        },
    )
    short = host.server.ssh(remote_invocation("nodes-ready.sh", "2", "1", env=FAST))
    assert short.returncode == 1
    assert "only 1 of 2 nodes Ready" in short.stderr
    assert "agent-1=True(uninitialized)" in short.stderr
    assert f"  agent-1: not initialised by the cloud controller (taint {uninitialized})" in (
        short.stderr.splitlines()
    )
    set_nodes(host, {"agent-1": "True\nKubeletReady\nready\nnode.kubernetes.io/unschedulable"})
    ok = host.server.ssh(remote_invocation("nodes-ready.sh", "2", "5", env=FAST))
    assert ok.returncode == 0, ok.stderr


def test_nodes_ready_reads_empty_fields_in_place(host: FakeHost) -> None:
    """A node that has not reported yet has taints but no Ready status, reason or message:
    the empty fields must not shift the taint keys into the status."""
    set_nodes(host, {"agent-1": "\n\n\nnode.kubernetes.io/not-ready"})
    failed = host.server.ssh(remote_invocation("nodes-ready.sh", "1", "1", env=FAST))
    assert failed.returncode == 1
    assert "  agent-1: Ready=Unknown (no reason reported: no message)" in failed.stderr.splitlines()


def gate_client(
    host: FakeHost, *args: str, port: int | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """node-gate-client.sh exactly as the node gate's local.Command runs it."""
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "TARGET_HOST": "127.0.0.1",
        "TARGET_PORT": str(port or host.server.port),
        "TARGET_USER": "root",
        "HOST_PUBLIC_KEY": host.server.host_public_key(),
        "SSH_CONNECT_TIMEOUT": "3",
        "SSH_CONNECT_ATTEMPTS": "2",
        "SSH_RETRY_DELAY": "0.1",
        "NIXOS_K3S_STATE_HOME": str(host.root / "operator-state"),
        **env,
    }
    return subprocess.run(
        local_invocation("node-gate-client.sh", *args),
        shell=True,
        cwd=PROJECT_DIR,
        env=full_env,
        input=host.server.client_key.read_text(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gate_client_waits_and_removes_over_pinned_ssh(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "agent-1": "True"})
    waited = gate_client(host, "wait", "agent-1", "5")
    assert waited.returncode == 0, waited.stderr
    removed = gate_client(host, "remove", "agent-1")
    assert removed.returncode == 0, removed.stderr
    assert not (host.root / "k3s/nodes/agent-1").exists()


def test_gate_client_passes_the_bootstrap_refusal_on(host: FakeHost) -> None:
    set_nodes(host, {"server-1": "True", "server-2": "True"})
    mark_servers(host, "server-1", "server-2")
    result = gate_client(host, "remove", "server-1", NODE_GATE_BOOTSTRAP="1")
    assert result.returncode == 1
    assert "refusing to remove server-1" in result.stderr
    assert (host.root / "k3s/nodes/server-1").exists()


def test_gate_client_remove_fails_when_unreachable_in_a_scale_down(host: FakeHost) -> None:
    # The stack is not being destroyed (the teardown marker is in service): an unreachable
    # bootstrap server is a network problem, not a gone cluster. The removal fails, so Pulumi
    # keeps the machine.
    set_nodes(host, {"server-1": "True", "server-3": "True"})
    assert gate_client(host, "in-service").returncode == 0
    result = gate_client(host, "remove", "server-3", port=closed_port())
    assert result.returncode == 1
    assert "unreachable, and the stack is not being destroyed" in result.stderr
    assert "server-3 was not drained nor removed from etcd, so its machine stays" in result.stderr
    assert (host.root / "k3s/nodes/server-3").exists()
    assert host.calls("k3s") == []


def test_gate_client_remove_succeeds_when_the_stack_is_destroyed(host: FakeHost) -> None:
    marker_dir = host.root / "operator-state"
    assert gate_client(host, "in-service").returncode == 0
    torn = gate_client(host, "teardown")
    assert torn.returncode == 0, torn.stderr
    (marker,) = marker_dir.glob("teardown-*")
    result = gate_client(host, "remove", "agent-1", port=closed_port())
    assert result.returncode == 0, result.stderr
    assert "unreachable and the stack is being destroyed: nothing to drain for agent-1" in (
        result.stderr
    )
    # Reachable but with the API gone: also fine in a teardown, passed on to node-gate.sh.
    (host.root / "k3s").mkdir(exist_ok=True)
    (host.root / "k3s/api-down").touch()
    api_gone = gate_client(host, "remove", "agent-1", NODE_GATE_API_TIMEOUT="1")
    assert api_gone.returncode == 0, api_gone.stderr
    assert "the stack is being destroyed" in api_gone.stderr
    assert "does not answer after 1s" in api_gone.stderr  # the deadline reached node-gate.sh

    # Another cluster (another bootstrap key) is not torn down by this marker.
    other = gate_client(host, "remove", "agent-1", port=closed_port(), HOST_PUBLIC_KEY=OTHER_KEY)
    assert other.returncode == 1

    # A stale marker (a destroy interrupted long ago) counts for nothing.
    old = time.time() - 7 * 3600
    os.utime(marker, (old, old))
    stale = gate_client(host, "remove", "agent-1", port=closed_port())
    assert stale.returncode == 1

    # The next `pulumi up` (the marker's create) puts the cluster back in service.
    os.utime(marker)
    assert gate_client(host, "in-service").returncode == 0
    assert list(marker_dir.glob("teardown-*")) == []
    again = gate_client(host, "remove", "agent-1", port=closed_port())
    assert again.returncode == 1


def test_gate_client_wait_fails_when_the_server_is_unreachable(host: FakeHost) -> None:
    result = gate_client(host, "wait", "agent-1", "5", port=closed_port())
    assert result.returncode == 1
    assert "cannot reach the bootstrap server" in result.stderr


def test_gate_client_refuses_a_wrong_host_key(host: FakeHost, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = other.with_suffix(".pub").read_text().strip()
    set_nodes(host, {"agent-1": "True"})
    for args in (("wait", "agent-1", "5"), ("remove", "agent-1")):
        result = gate_client(host, *args, HOST_PUBLIC_KEY=wrong)
        assert result.returncode == 1, args
        assert "is not the pinned bootstrap server" in result.stderr
    assert host.calls("k3s") == []
    assert (host.root / "k3s/nodes/agent-1").exists()


def test_node_gate_wait_applies_labels_and_taints(host: FakeHost) -> None:
    set_nodes(host, {"agent-1": "True"})
    result = host.server.ssh(
        remote_invocation(
            "node-gate.sh",
            "wait",
            "agent-1",
            "5",
            "label:pool=workers",
            "label:tier=",
            "taint:dedicated=batch:NoExecute",
            env=FAST,
        )
    )
    assert result.returncode == 0, result.stderr
    assert (host.root / "k3s/labels/agent-1").read_text().split() == ["pool=workers", "tier="]
    assert (host.root / "k3s/taints/agent-1").read_text().split() == ["dedicated=batch:NoExecute"]


@pytest.mark.parametrize("marking", ["label:a b=c", "label:x", "taint:k=v:Sometimes", "--all"])
def test_node_gate_refuses_malformed_markings(host: FakeHost, marking: str) -> None:
    set_nodes(host, {"agent-1": "True"})
    result = host.server.ssh(remote_invocation("node-gate.sh", "wait", "agent-1", "5", marking))
    assert result.returncode == 2
    assert host.calls("k3s") == []
