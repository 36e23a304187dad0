"""Stack config: valid stacks parse, every kind of mistake names its field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from components import rules
from components.config import ConfigError, pool_offsets, semantic_warnings
from components.k8s.cilium import cilium_settings
from components.stack import parse_cluster
from tests.conftest import stack_data


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_cluster(data)
    return [str(p) for p in info.value.problems]


def one_problem(data: Any) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_shipped_stacks_are_valid(stack: str) -> None:
    cfg = parse_cluster(stack_data(stack))
    assert cfg.provider == ("colima" if stack == "dev" else "hetzner")


def test_prod_is_a_real_ha_cluster() -> None:
    cfg = parse_cluster(stack_data("prod"))
    servers = [p for p in cfg.node_pools if p.role == "server"]
    assert sum(p.count for p in servers) == 3
    assert set(servers[0].locations) == {"fsn1", "nbg1", "hel1"}
    assert cfg.firewall is not None and cfg.firewall.ssh_sources


def test_models_are_frozen() -> None:
    cfg = parse_cluster(stack_data("prod"))
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen error type is internal)
        cfg.name = "other"  # type: ignore[misc]


def test_unknown_key_names_path_and_suggests() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["serverTyp"] = "cx33"
    message = " ".join(problems(data))
    assert "nodePools[1].serverTyp" in message
    assert "did you mean 'serverType'" in message


def test_enum_lists_allowed_values() -> None:
    data = stack_data("prod")
    data["provider"] = "aws"
    message = one_problem(data)
    assert message.startswith("provider:")
    assert "'hetzner'" in message and "'colima'" in message and "'aws'" in message


def test_deprecated_server_type_names_replacement() -> None:
    data = stack_data("prod")
    data["nodePools"][0]["serverType"] = "cx22"
    message = one_problem(data)
    assert message.startswith("nodePools[0].serverType:")
    assert "cx23" in message


def test_server_type_not_in_location() -> None:
    data = stack_data("prod")
    data["network"]["zone"] = "us-east"
    data["nodePools"][0]["locations"] = ["ash"]
    data["nodePools"][0]["serverType"] = "cax11"
    data["nodePools"][1]["locations"] = ["ash"]
    data["nodePools"][1]["serverType"] = "cpx32"
    assert one_problem(data).startswith("nodePools[0].locations[0]: server type 'cax11'")


def test_location_outside_network_zone() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["locations"] = ["ash"]
    data["nodePools"][1]["serverType"] = "cpx32"
    assert "not in network zone 'eu-central'" in one_problem(data)


@pytest.mark.parametrize("count", [2, 4])
def test_even_server_counts(count: int) -> None:
    data = stack_data("prod")
    data["nodePools"][0]["count"] = count
    if count == 4:
        assert "odd number" in one_problem(data)
    else:
        warnings = semantic_warnings(parse_cluster(data))
        assert len(warnings) == 1 and "use 1 or 3" in str(warnings[0])


def test_agents_without_servers_refused() -> None:
    data = stack_data("prod")
    data["nodePools"] = [data["nodePools"][1]]
    assert "no server" in one_problem(data)


@pytest.mark.parametrize(
    ("field", "value", "clash"),
    [
        ("clusterCidr", "10.0.0.0/8", "network.ipRange"),
        ("serviceCidr", "10.42.0.0/16", "k3s.clusterCidr"),
    ],
)
def test_overlapping_cidrs(field: str, value: str, clash: str) -> None:
    data = stack_data("prod")
    data["k3s"][field] = value
    found = " ".join(problems(data))
    assert clash in found and "overlaps" in found


def test_invalid_cidr_is_named() -> None:
    data = stack_data("prod")
    data["network"]["subnet"] = "10.0.1.1/24"
    assert one_problem(data).startswith("network.subnet: '10.0.1.1/24' is not a CIDR")


def test_cluster_dns_inside_service_cidr() -> None:
    data = stack_data("prod")
    data["k3s"]["clusterDns"] = "10.42.0.10"
    assert "k3s.clusterDns" in " ".join(problems(data))


def test_flannel_is_not_a_disable_component() -> None:
    data = stack_data("prod")
    data["k3s"]["disable"] = ["traefik", "flannel"]
    assert "--flannel-backend=none" in one_problem(data)


def test_managed_flags_refused() -> None:
    data = stack_data("prod")
    data["k3s"]["extraFlags"] = ["--disable-kube-proxy=false"]
    assert "set by nixos-k3s" in one_problem(data)


def test_flags_with_spaces_refused() -> None:
    data = stack_data("prod")
    data["k3s"]["extraFlags"] = ["--kubelet-arg max-pods=200"]
    assert "without whitespace" in one_problem(data)


def test_colima_x86_on_vz_refused_with_reason() -> None:
    data = stack_data("dev")
    data["colima"]["arch"] = "x86_64"
    message = one_problem(data)
    assert message.startswith("colima.arch:") and "aarch64" in message


def test_qemu_refused_and_rosetta_needs_vz() -> None:
    data = stack_data("dev")
    data["colima"]["vmType"] = "qemu"
    paths = sorted(p.split(":")[0] for p in problems(data))
    assert paths == ["colima.rosetta", "colima.vmType"]


def test_first_server_pool_at_zero_needs_an_explicit_bootstrap_host() -> None:
    data = stack_data("prod")
    data["nodePools"].insert(
        0,
        {"name": "old", "role": "server", "count": 0, "serverType": "cx33", "locations": ["fsn1"]},
    )
    assert one_problem(data).startswith("k3s.bootstrapHost: required while the first server")
    data["k3s"]["bootstrapHost"] = "prod-control-1"
    parse_cluster(data)


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"kubeProxyReplacement": False}, "cilium.values.kubeProxyReplacement"),
        ({"k8sServiceHost": "127.0.0.1"}, "cilium.values.k8sServiceHost"),
        ({"operator": {"replicas": 9}}, "cilium.values.operator.replicas"),
    ],
)
def test_cilium_values_cannot_break_the_cluster(values: dict[str, Any], path: str) -> None:
    data = stack_data("prod")
    data["cilium"]["values"] = values
    assert one_problem(data).startswith(f"{path}:")


def test_colima_memory_floor() -> None:
    data = stack_data("dev")
    data["colima"]["memoryGib"] = 2
    assert one_problem(data).startswith("colima.memoryGib:")


def test_hetzner_needs_type_location_and_firewall() -> None:
    data = stack_data("prod")
    del data["nodePools"][0]["serverType"]
    del data["firewall"]
    found = problems(data)
    assert any(p.startswith("nodePools[0].serverType: required") for p in found)
    assert any(p.startswith("firewall: required") for p in found)


def test_duplicate_pool_names() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["name"] = "control"
    assert any("already used" in p for p in problems(data))


def test_dns_label_names() -> None:
    data = stack_data("prod")
    data["name"] = "Prod_Cluster"
    assert one_problem(data).startswith("name: 'Prod_Cluster' is not a DNS-1123 label")


def test_too_many_hosts_for_a_network() -> None:
    data = stack_data("prod")
    data["network"]["subnet"] = "10.0.0.0/16"
    data["network"]["poolBlockSize"] = 128
    data["nodePools"][1]["count"] = 100
    data["nodePools"][1]["locations"] = ["fsn1"]
    assert any("at most 100" in p for p in problems(data))


def test_too_many_firewall_rules() -> None:
    data = stack_data("prod")
    rule = {"protocol": "tcp", "port": "30000", "sources": ["0.0.0.0/0"]}
    data["firewall"]["extraRules"] = [rule] * 48
    assert one_problem(data).startswith("firewall.extraRules: 51 rules")


def test_native_routing_refused_on_hetzner() -> None:
    data = stack_data("prod")
    data["cilium"]["routingMode"] = "native"
    data["cilium"]["nativeRoutingCidr"] = "10.42.0.0/16"
    assert one_problem(data).startswith("cilium.routingMode:")


def test_cilium_version_must_have_a_schema() -> None:
    data = stack_data("prod")
    data["cilium"]["version"] = "1.16.0"
    message = one_problem(data)
    assert message.startswith("cilium.version:") and "1.19.6" in message


def test_cilium_values_checked_against_chart_schema() -> None:
    data = stack_data("prod")
    data["cilium"]["values"] = {"MTU": "1450"}
    message = one_problem(data)
    assert message.startswith("cilium.values:") and "MTU" in message


def test_bootstrap_host_must_be_a_server() -> None:
    data = stack_data("prod")
    data["k3s"]["bootstrapHost"] = "prod-workers-1"
    assert one_problem(data).startswith("k3s.bootstrapHost:")


def test_not_a_mapping() -> None:
    assert "expected a mapping" in one_problem(["not", "a", "mapping"])


def test_pool_blocks_never_renumber_existing_hosts() -> None:
    data = stack_data("prod")
    before = pool_offsets(parse_cluster(data))
    data["nodePools"][0]["count"] = 5
    data["nodePools"].append(
        {"name": "extra", "role": "agent", "count": 1, "serverType": "cx23", "locations": ["fsn1"]}
    )
    after = pool_offsets(parse_cluster(data))
    assert after[: len(before)] == before


def test_cilium_mtu_on_hetzner_only() -> None:
    prod = cilium_settings(parse_cluster(stack_data("prod")), "10.0.1.10", 5)
    dev = cilium_settings(parse_cluster(stack_data("dev")), "192.168.106.2", 2)
    assert prod.mtu == 1450 and dev.mtu is None


def test_allowed_keys_are_spelled_as_in_the_stack_file() -> None:
    data = stack_data("prod")
    data["k3ss"] = {}
    message = one_problem(data)
    assert "did you mean 'k3s'" in message and "k3S" not in message


@pytest.mark.parametrize(
    ("cilium", "path"),
    [
        ({"hubble": {"ui": True}}, "cilium.hubble.ui"),
        ({"operatorReplicas": 10}, "cilium.operatorReplicas"),
    ],
)
def test_cilium_mistakes_reported_once(cilium: dict[str, Any], path: str) -> None:
    data = stack_data("prod")
    data["cilium"].update(cilium)
    assert one_problem(data).startswith(f"{path}:")


def test_missing_enum_field_lists_allowed_values() -> None:
    data = stack_data("prod")
    del data["provider"]
    assert one_problem(data) == "provider: required field is missing (allowed: 'hetzner', 'colima')"


def test_cilium_mtu_follows_the_node_link() -> None:
    data = stack_data("prod")
    data["tailscale"] = {"enabled": True}
    assert cilium_settings(parse_cluster(data), "10.0.1.10", 5).mtu == 1280


# --- values the host data carries: the stack check refuses what hosts would refuse -----------


@pytest.mark.parametrize("user", ["root", "nobody", "sshd", "nixbld1", "systemd-network"])
def test_reserved_admin_users_refused(user: str) -> None:
    data = stack_data("prod")
    data["adminUsers"] = ["ops", user]
    assert one_problem(data).startswith(f"adminUsers[1]: {user!r} is a user NixOS creates")


@pytest.mark.parametrize("user", ["1ops", "ops-", "Ops", "a" * 32])
def test_admin_users_are_login_names(user: str) -> None:
    data = stack_data("prod")
    data["adminUsers"] = [user]
    assert one_problem(data).startswith(f"adminUsers[0]: {user!r} is not a login name")


def test_admin_user_of_31_characters_accepted() -> None:
    data = stack_data("prod")
    data["adminUsers"] = ["a" * 31]
    assert parse_cluster(data).admin_users == ["a" * 31]


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 */6 * *", "4 field(s)"),
        ("a b c d e", "minute 'a'"),
        ("60 * * * *", "minute '60' is outside 0-59"),
        ("0 24 * * *", "hour '24' is outside 0-23"),
        ("0 0 0 * *", "day of month '0' is outside 1-31"),
        ("0 0 * 13 *", "month '13' is outside 1-12"),
        ("0 0 * * 7", "day of week '7' is outside 0-6"),
        ("*/0 * * * *", "step must be at least 1"),
        ("30-10 * * * *", "runs backwards"),
        ("@daily", "1 field(s)"),
        ("0 0 * JAN *", "month 'JAN'"),
    ],
)
def test_cron_is_checked_field_by_field(cron: str, why: str) -> None:
    data = stack_data("prod")
    data["k3s"]["etcdSnapshots"] = {"scheduleCron": cron}
    message = one_problem(data)
    assert message.startswith("k3s.etcdSnapshots.scheduleCron: ")
    assert why in message


def test_cron_accepts_ranges_lists_steps_and_extra_spaces() -> None:
    data = stack_data("prod")
    data["k3s"]["etcdSnapshots"] = {"scheduleCron": "5,35  1-23/2 1-31 */3 0-6"}
    cfg = parse_cluster(data)
    assert cfg.k3s.etcd_snapshots.schedule_cron == "5,35 1-23/2 1-31 */3 0-6"


@pytest.mark.parametrize(
    ("san", "stored"),
    [("API.example.com", "api.example.com"), ("2001:DB8::1", "2001:db8::1"), ("10.0.0.1", None)],
)
def test_tls_sans_are_names_or_addresses(san: str, stored: str | None) -> None:
    data = stack_data("prod")
    data["k3s"]["tlsSans"] = [san]
    assert parse_cluster(data).k3s.tls_sans == [stored or san]


@pytest.mark.parametrize("san", ["Bad_Name!", "*.example.com", "[2001:db8::1]", "fe80::1%eth0"])
def test_tls_san_refused(san: str) -> None:
    data = stack_data("prod")
    data["k3s"]["tlsSans"] = ["ok.example.com", san]
    assert one_problem(data).startswith("k3s.tlsSans[1]: ")


@pytest.mark.parametrize("flag", ["--Foo=1", "--node-label=a=$(id)", "--x='a'", "-v", "--a b"])
def test_extra_flags_are_single_lowercase_flags(flag: str) -> None:
    data = stack_data("prod")
    data["k3s"]["extraFlags"] = [flag]
    assert one_problem(data).startswith("k3s.extraFlags[0]: ")


@pytest.mark.parametrize("value", ["a b", "-a", "a" * 64, "x/y"])
def test_taint_values_are_label_values(value: str) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["taints"] = [{"key": "k", "value": value, "effect": "NoSchedule"}]
    assert one_problem(data).startswith("nodePools[1].taints[0].value: ")


def test_container_node_name_fits_a_label() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["name"] = "w" * 50  # host prod-www...-2: 57 characters
    data["nodePools"][1]["containers"] = [{"name": "edge"}, {"name": "e"}]
    # prod-<50>-2-edge is 62 characters: fine; the longest host name counts.
    assert parse_cluster(data)
    data["nodePools"][1]["containers"] = [{"name": "edgeagent"}]
    assert one_problem(data).startswith("nodePools[1].containers[0].name: node name")


def test_colima_cluster_may_not_be_named_colima() -> None:
    data = stack_data("dev")
    data["name"] = "colima"
    assert one_problem(data).startswith("name: 'colima': host names would start with 'colima-'")


def test_colima_profile_length_follows_lima_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    lima = "/Users/operator/.colima/_lima"  # 29 characters: profiles up to 40
    monkeypatch.setenv("LIMA_HOME", lima)
    data = stack_data("dev")
    data["nodePools"][0]["name"] = "s" * 34  # dev-sss...-1: 40 characters
    assert parse_cluster(data)
    socket = rules.lima_socket_path("dev-" + "s" * 34 + "-1", lima)
    assert len(socket) == rules.MACOS_UNIX_PATH_MAX - 1
    data["nodePools"][0]["name"] = "s" * 35
    message = one_problem(data)
    assert message.startswith("nodePools[0].name: colima profile 'dev-sss")
    assert "macOS allows 103" in message and "at most 40 characters" in message


def test_lima_home_as_colima_finds_it() -> None:
    def exists(*dirs: str) -> Callable[[str], bool]:
        return lambda path: path in dirs

    env = {"HOME": "/Users/o"}
    assert rules.lima_home(env, exists(), platform="darwin") == "/Users/o/.colima/_lima"
    assert rules.lima_home({**env, "LIMA_HOME": "/l"}, exists(), platform="darwin") == "/l"
    assert (
        rules.lima_home({**env, "COLIMA_HOME": "/c"}, exists("/c"), platform="darwin") == "/c/_lima"
    )
    # COLIMA_HOME counts only when it exists (Colima config/files.go).
    assert (
        rules.lima_home({**env, "COLIMA_HOME": "/c"}, exists(), platform="darwin")
        == "/Users/o/.colima/_lima"
    )
    xdg = {**env, "XDG_CONFIG_HOME": "/x"}
    assert rules.lima_home(xdg, exists(), platform="darwin") == "/x/colima/_lima"
    assert (
        rules.lima_home(xdg, exists("/Users/o/.colima"), platform="darwin")
        == "/Users/o/.colima/_lima"
    )
    # Lima resolves symlinks in its directory: the socket path is the resolved one's.
    resolved = rules.lima_home(
        env, exists("/Users/o/.colima/_lima"), lambda p: "/Volumes/x" + p, platform="darwin"
    )
    assert resolved == "/Volumes/x/Users/o/.colima/_lima"


def test_lima_home_off_the_mac_is_a_reference_mac_home() -> None:
    """A plan on a CI runner or a Linux laptop accepts the same stacks as on a Mac: the socket
    rule is checked against a typical Mac home unless Lima's directory is given."""
    env = {"HOME": "/tmp/pytest-of-root/a/very/long/home/directory/that/would/refuse/everything"}
    assert rules.lima_home(env, platform="linux") == "/Users/operator/.colima/_lima"
    assert rules.lima_home({**env, "LIMA_HOME": "/l"}, platform="linux") == "/l"


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("default", "user's own Colima"),
        ("colima", "user's own Colima"),
        ("colima-dev", "user's own Colima"),
        ("Dev", "lowercase"),
        ("d" * 70, "longer than 76"),
    ],
)
def test_colima_profile_rules(profile: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rules.colima_profile(profile, "/l")
