"""The resource graph of the Cluster component under mocks (issues: machines, deploy, k3s)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

from components.hosts import hostspec
from components.hosts.render import TOKEN_FILE
from components.scripts import PROJECT_DIR
from tests.conftest import Plan, stack_data
from tooling.mocks import (
    fake_id,
    fake_ipv4,
    fake_private_key,
    fake_random,
    fake_ssh_public_key,
)

HOSTS = ["prod-control-1", "prod-control-2", "prod-control-3", "prod-workers-1", "prod-workers-2"]


def test_hetzner_resource_counts(prod_plan: Plan) -> None:
    assert len(prod_plan.of_type("hcloud:index/server:Server")) == 5
    assert len(prod_plan.of_type("hcloud:index/network:Network")) == 1
    assert len(prod_plan.of_type("hcloud:index/networkSubnet:NetworkSubnet")) == 1
    assert len(prod_plan.of_type("hcloud:index/firewall:Firewall")) == 1
    assert len(prod_plan.of_type("hcloud:index/placementGroup:PlacementGroup")) == 2
    assert len(prod_plan.of_type("hcloud:index/serverNetwork:ServerNetwork")) == 5


def test_servers_labelled_protected_and_spread(prod_plan: Plan) -> None:
    server = prod_plan["prod-control-2"].inputs
    assert server["labels"] == {
        "cluster": "prod",
        "managed-by": "nixos-k3s",
        "pool": "control",
        "role": "server",
    }
    assert server["serverType"] == "cx33" and server["location"] == "nbg1"
    assert server["deleteProtection"] is True and server["rebuildProtection"] is True
    assert isinstance(server["placementGroupId"], int)
    assert all(isinstance(i, int) for i in server["firewallIds"])
    assert server["userData"] == "[secret]", "the stock host key (see test_first_contact.py)"
    # hetzner.nixosImage: the host key for the image's first boot, a secret.
    assert "userData" in prod_plan["prod-control-2"].secret_paths


def test_private_ips_are_fixed_per_host(prod_plan: Plan) -> None:
    ips = {n: prod_plan[f"{n}-private"].inputs["ip"] for n in HOSTS}
    assert ips == {
        "prod-control-1": "10.0.1.10",
        "prod-control-2": "10.0.1.11",
        "prod-control-3": "10.0.1.12",
        "prod-workers-1": "10.0.1.42",
        "prod-workers-2": "10.0.1.43",
    }


def test_firewall_rules(prod_plan: Plan) -> None:
    rules = prod_plan["prod-hetzner-firewall"].inputs["rules"]
    by_port = {(r["protocol"], r.get("port")): r["sourceIps"] for r in rules}
    assert by_port[("tcp", "22")] == ["198.51.100.0/24", "2001:db8:1234::/48"]
    assert by_port[("tcp", "6443")] == ["198.51.100.0/24", "2001:db8:1234::/48"]
    assert ("icmp", None) in by_port
    assert len(rules) == 3  # nothing else public without ingress


def test_ingress_opens_80_and_443(plan_of) -> None:
    data = stack_data("prod")
    data["firewall"]["ingress"] = True
    plan = plan_of(data, stack="prod")
    ports = {r.get("port") for r in plan["prod-hetzner-firewall"].inputs["rules"]}
    assert {"80", "443"} <= ports


def test_every_remote_connection_pins_the_host_key(prod_plan: Plan) -> None:
    host_keys = {r.name: r for r in prod_plan.of_type("tls:index/privateKey:PrivateKey")}
    for reg in prod_plan.of_type("command:remote:Command"):
        conn = reg.secret_paths["connection"]
        assert conn["hostKey"].startswith("ssh-ed25519 "), reg.name
        assert conn["user"] == "root" and conn["dialErrorLimit"] >= 10
        assert conn["privateKey"] == fake_private_key("prod-deploy-key")
    assert "prod-control-1-host-key" in host_keys


def test_push_triggered_by_content_hash_only(prod_plan: Plan) -> None:
    for host in HOSTS:
        push = prod_plan[f"{host}-push"].inputs
        content = push["environment"]["HOST_JSON"]
        assert push["triggers"] == [hostspec.content_hash(content)]
        assert push["addPreviousOutputInEnv"] is False
        assert push["stdin"] == "[secret]"


def test_install_runs_once_per_server(prod_plan: Plan) -> None:
    install = prod_plan["prod-control-1-install"]
    server = prod_plan["prod-control-1"]
    assert server.urn in install.depends_on
    assert install.inputs["stdin"] == "[secret]"
    assert len(install.inputs["triggers"]) == 1


def test_servers_join_together_once_the_bootstrap_server_runs(prod_plan: Plan) -> None:
    """The bootstrap push confirms k3s.service, active only once k3s's API server is ready
    (Type=notify, READY=1 after APIServerReady): the joins need no API gate's SSH round trip."""
    deps = prod_plan.deps
    assert "prod-control-1-push" in deps("prod-api-ready")
    for server, other in (
        ("prod-control-2", "prod-control-3"),
        ("prod-control-3", "prod-control-2"),
    ):
        assert "prod-control-1-push" in deps(f"{server}-push")
        assert not prod_plan.reaches(f"{server}-push", "prod-api-ready")
        assert not prod_plan.reaches(f"{server}-push", f"{other}-push")
    # An upgrade still drains and rolls one server at a time.
    assert prod_plan.reaches("prod-control-3-roll", "prod-control-2-roll")


def test_every_push_carries_the_stack_s_rollback_and_join_timeouts(plan_of) -> None:
    """The first start of k3s (a server's etcd join) gets deploy.joinTimeoutSeconds on the
    host (host-activate.sh); later pushes rollbackTimeoutSeconds."""
    data = stack_data("prod")
    data["deploy"] = {"rollbackTimeoutSeconds": 240, "joinTimeoutSeconds": 900}
    plan = plan_of(data, stack="prod")
    for host in HOSTS:
        env = plan[f"{host}-push"].inputs["environment"]
        assert (env["ROLLBACK_TIMEOUT"], env["JOIN_TIMEOUT"]) == ("240", "900"), host


def test_agents_wait_only_for_the_bootstrap_server(prod_plan: Plan) -> None:
    for agent in ("prod-workers-1", "prod-workers-2"):
        assert "prod-control-1-push" in prod_plan.deps(f"{agent}-push")
        assert not prod_plan.reaches(f"{agent}-push", "prod-api-ready")
        assert not prod_plan.reaches(f"{agent}-push", "prod-control-2-push")
        assert not prod_plan.reaches(
            f"{agent}-push", "prod-workers-1-push" if agent.endswith("2") else "prod-workers-2-push"
        )


def test_secrets_delivered_before_push(prod_plan: Plan) -> None:
    for host in HOSTS:
        assert f"{host}-secrets" in prod_plan.deps(f"{host}-push")
        assert f"{host}-install" in prod_plan.deps(f"{host}-secrets")


def bundle(stdin: str) -> dict[str, str]:
    header, body = stdin.split("\n", 1)
    records = [line.split("\t") for line in body.splitlines()]
    digest = hashlib.sha256(body.encode()).hexdigest()
    assert header == f"nixos-k3s-bundle v1 {len(records)} {digest}", "count and checksum"
    return {path: base64.b64decode(data).decode() for path, mode, data in records}


def test_token_delivered_as_0600_file_never_in_plain_inputs(prod_plan: Plan) -> None:
    token = fake_random("prod-k3s-token", 48)
    stdin = prod_plan["prod-control-1-secrets"].secret_paths["stdin"]
    assert bundle(stdin) == {TOKEN_FILE: token}
    assert all(line.split("\t")[1] == "0600" for line in stdin.splitlines()[1:])
    plain = json.dumps([r.inputs for r in prod_plan.result.registrations])
    assert token not in plain and token not in json.dumps(prod_plan.result.outputs)
    host = json.loads(prod_plan["prod-control-1-push"].inputs["environment"]["HOST_JSON"])
    assert host["k3s"]["tokenFile"] == TOKEN_FILE


def test_kubeconfig_is_secret_and_not_logged(prod_plan: Plan) -> None:
    read = prod_plan["prod-kubeconfig"]
    assert read.inputs["logging"] == "none"
    assert "prod-api-ready" in prod_plan.deps("prod-kubeconfig")
    assert prod_plan.result.outputs["kubeconfig"] == "[secret]"
    assert "apiVersion: v1" in prod_plan.result.output_secrets["kubeconfig"]


def test_cilium_release_and_nodes_ready_gate(prod_plan: Plan) -> None:
    release = prod_plan["prod-cilium"].inputs
    assert release["chart"] == "cilium" and release["version"] == "1.19.6"
    assert release["repositoryOpts"] == {"repo": "https://helm.cilium.io"}
    assert release["skipAwait"] is True
    values = release["values"]
    assert values["MTU"] == 1450 and values["kubeProxyReplacement"] is True
    # The API load balancer's private address (the subnet's last usable one).
    assert values["k8sServiceHost"] == "10.0.1.254"
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["10.42.0.0/16"]
    assert values["operator"]["replicas"] == 2
    provider = prod_plan["prod-k8s"]
    assert provider.inputs["clusterIdentifier"] == "prod"
    gate = prod_plan.deps("prod-nodes-ready")
    assert "prod-cilium" in gate and {f"{h}-push" for h in HOSTS} <= gate
    # After the pushes, not the node gates: it polls for registered, Ready nodes itself.
    assert not any(dep.endswith("-joined") for dep in gate)
    assert "prod-nodes-ready" not in prod_plan.deps("prod-cilium")
    # The teardown marker still follows every gate (destroy deletes it first).
    assert {f"{h}-joined" for h in HOSTS} <= prod_plan.deps("prod-teardown-marker")


def test_scale_down_drains_before_the_machine_goes(prod_plan: Plan) -> None:
    bootstrap_key = fake_ssh_public_key("prod-control-1-host-key").strip()
    for host in HOSTS:
        gate = prod_plan[f"{host}-joined"]
        assert gate.inputs["create"].startswith(
            f"bash components/scripts/node-gate-client.sh wait {host} 600"
        )
        assert gate.inputs["delete"] == f"bash components/scripts/node-gate-client.sh remove {host}"
        # Run from the operator against the bootstrap server, its host key pinned.
        env = gate.inputs["environment"]
        assert env["TARGET_HOST"] == fake_ipv4("prod-control-1")
        assert env["HOST_PUBLIC_KEY"] == bootstrap_key
        assert gate.inputs["stdin"] == "[secret]"
        # Pulumi deletes dependents first: the gate (drain) before the push and the server.
        assert prod_plan.reaches(f"{host}-joined", host)
    assert prod_plan["prod-control-1-joined"].inputs["environment"]["NODE_GATE_BOOTSTRAP"] == "1"
    assert prod_plan["prod-control-2-joined"].inputs["environment"]["NODE_GATE_BOOTSTRAP"] == "0"
    for host in HOSTS[1:]:
        assert "prod-control-1-joined" in prod_plan.deps(f"{host}-joined")


def test_one_pool_change_touches_only_that_pool(prod_plan: Plan, plan_of) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["labels"] = {"node.example.com/pool": "changed"}
    changed = plan_of(data, stack="prod")
    differ = {
        host
        for host in HOSTS
        if changed[f"{host}-push"].inputs["triggers"]
        != prod_plan[f"{host}-push"].inputs["triggers"]
    }
    assert differ == {"prod-workers-1", "prod-workers-2"}


def test_dev_stack_graph(dev_plan: Plan) -> None:
    vms = [r for r in dev_plan.of_type("command:local:Command") if r.name.endswith("-vm")]
    assert sorted(r.name for r in vms) == ["dev-agent-1-vm", "dev-server-1-vm"]
    assert not dev_plan.of_type("hcloud:index/server:Server")
    host = json.loads(dev_plan["dev-agent-1-push"].inputs["environment"]["HOST_JSON"])
    assert host["system"] == "aarch64-linux" and host["hardware"]["profile"] == "colima-vz"
    assert host["hardware"]["rosetta"] is True
    assert host["k3s"]["serverAddr"].startswith("https://192.168.64.")
    assert "MTU" not in dev_plan["dev-cilium"].inputs["values"]


def test_install_is_not_rerun_by_config_changes(prod_plan: Plan) -> None:
    install = prod_plan["prod-control-1-install"].inputs
    # A changed host JSON or secret runs `update` (a no-op); only a new machine id re-installs.
    assert "already installed" in install["update"]
    assert install["triggers"] == [fake_id("hcloud:index/server:Server", "prod-control-1")]


def test_tunnel_port_follows_the_tunnel_protocol(plan_of) -> None:
    data = stack_data("prod")
    data["cilium"]["tunnelProtocol"] = "geneve"
    plan = plan_of(data, stack="prod")
    host = json.loads(plan["prod-workers-1-push"].inputs["environment"]["HOST_JSON"])
    assert host["firewall"]["privateUdpPorts"] == [6081]


def test_install_puts_the_final_system_on_the_disk_with_k3s_held(plan_of) -> None:
    # Build once: the stock image's install (nixos-anywhere) gets the pushed host data; k3s
    # waits for the ordered pushes. (The NixOS image carries k3s held back the same way and
    # installs nothing: tests/test_hetzner_image.py.)
    data = stack_data("prod")
    data["hetzner"] = {**data["hetzner"], "nixosImage": False}
    stock: Plan = plan_of(data, stack="prod")
    for host in HOSTS:
        installed = stock[f"{host}-install"].inputs["environment"]["HOST_JSON"]
        pushed = stock[f"{host}-push"].inputs["environment"]["HOST_JSON"]
        assert installed == pushed
        assert json.loads(installed)["k3s"]["enable"] is True
    # The hold: k3s.service needs the file host-activate.sh writes when it releases k3s.
    nix = (PROJECT_DIR / "nixos" / "configuration.nix").read_text(encoding="utf-8")
    assert 'holdUntil = "/var/lib/nixos-k3s/k3s-released";' in nix
    module = (PROJECT_DIR / "nixos" / "modules" / "k3s.nix").read_text(encoding="utf-8")
    assert "ConditionPathExists = cfg.holdUntil;" in module
    script = (PROJECT_DIR / "components" / "scripts" / "host-activate.sh").read_text()
    assert "readonly STATE=${NIXOS_K3S_STATE_DIR:-/var/lib/nixos-k3s}" in script
    assert "readonly RELEASED=$STATE/k3s-released" in script


def test_replacements_delete_first(prod_plan: Plan) -> None:
    # Hetzner server names are unique, and a node name can register only once.
    assert prod_plan["prod-control-2"].delete_before_replace
    gate = prod_plan["prod-workers-1-joined"]
    assert gate.delete_before_replace
    assert gate.inputs["triggers"] == [fake_id("hcloud:index/server:Server", "prod-workers-1")]


def test_geneve_overlay_device_is_trusted(plan_of) -> None:
    data = stack_data("prod")
    data["cilium"]["tunnelProtocol"] = "geneve"
    data["tailscale"] = {"enabled": True}
    plan = plan_of(
        data,
        stack="prod",
        extra={"nixos-k3s:tailscaleAuthKey": "tskey-auth-x"},
        secret_keys=frozenset({"nixos-k3s:tailscaleAuthKey"}),
    )
    host = json.loads(plan["prod-control-1-push"].inputs["environment"]["HOST_JSON"])
    assert host["firewall"]["trustedInterfaces"] == [
        "cilium_host",
        "cilium_net",
        "cilium_geneve",
        "lxc+",
        "tailscale0",
    ]


def test_label_changes_reach_existing_nodes(prod_plan: Plan) -> None:
    # k3s applies --node-label only at registration: the gate re-applies them when they change.
    create = prod_plan["prod-workers-1-joined"].inputs["create"]
    assert create.endswith("wait prod-workers-1 600 label:node.example.com/pool=workers")
    control = prod_plan["prod-control-2-joined"].inputs["create"]
    assert control.endswith("taint:node-role.kubernetes.io/control-plane:NoSchedule")


def test_public_ipv6_reaches_host_data_only_when_enabled(
    prod_plan: Plan, plan_of: Callable[..., Plan]
) -> None:
    with_v6 = json.loads(prod_plan.result.hosts["prod-control-1"][0])
    assert with_v6["network"]["publicIpv6"].startswith("2001:db8:")
    cluster = stack_data("prod")
    cluster["hetzner"] = {**cluster.get("hetzner", {}), "ipv6": False}
    without = json.loads(plan_of(cluster, stack="prod").result.hosts["prod-control-1"][0])
    assert without["network"].get("publicIpv6") is None


def test_install_carries_only_the_keys_it_needs(prod_plan: Plan) -> None:
    # The k3s token and the tailscale key come with the pinned secrets step, not the install.
    for host in HOSTS:
        install = bundle(prod_plan[f"{host}-install"].secret_paths["stdin"])
        assert sorted(install) == ["@deploy-key", "@host-key"], host
        assert install["@host-key"] == fake_private_key(f"{host}-host-key")


def test_teardown_marker_is_deleted_before_every_gate(prod_plan: Plan) -> None:
    marker = prod_plan["prod-teardown-marker"]
    assert marker.inputs["create"] == "bash components/scripts/node-gate-client.sh in-service"
    assert marker.inputs["delete"] == "bash components/scripts/node-gate-client.sh teardown"
    assert "stdin" not in marker.inputs, "no secret: it only writes a marker on this machine"
    bootstrap_key = fake_ssh_public_key("prod-control-1-host-key").strip()
    assert marker.inputs["environment"]["HOST_PUBLIC_KEY"] == bootstrap_key
    # Pulumi deletes dependents first: in a destroy the marker goes before any gate.
    assert {f"{h}-joined" for h in HOSTS} <= prod_plan.deps("prod-teardown-marker")
