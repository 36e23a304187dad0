"""One owner per rule: the stack check, the host document, the Cilium settings and the Colima
machine layer ask the same function, so they accept and refuse the same values."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from components import catalog, profiles
from components.config import ClusterConfig, ConfigError
from components.hosts import hostspec
from components.k8s import cilium
from components.machines.colima import ColimaMachineArgs, check_public_key, validate_machine_args
from components.stack import parse_cluster
from tests.conftest import stack_data

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1bW9ja2tleWZvcnRlc3Rz ops@example.com"


def stack_problems(data: Any) -> list[str]:
    try:
        parse_cluster(data)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        (KEY, True),
        ("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t", True),
        ("ssh-ed25519 AAAA=== x", True),
        ("ssh-ed25519 AAAA==== x", False),
        ("sk-foo AAAA", False),
        ("ssh-dss AAAAB3NzaC1kc3M", False),
        (KEY + "\n" + KEY, False),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", False),
    ],
)
def test_ssh_public_key_is_one_rule_for_stack_host_and_colima(key: str, valid: bool) -> None:
    data = stack_data("prod")
    data["sshKeys"] = [key]
    stack_ok = not stack_problems(data)
    try:
        TypeAdapter(hostspec.PublicKey).validate_python(key)
        host_ok = True
    except ValidationError:
        host_ok = False
    try:
        check_public_key(key)
        colima_ok = True
    except ValueError:
        colima_ok = False
    assert (stack_ok, host_ok, colima_ok) == (valid, valid, valid)


def colima_args(memory_gib: int, **changes: Any) -> ColimaMachineArgs:
    return ColimaMachineArgs(
        profile="dev-a",
        cpus=2,
        memory_gib=memory_gib,
        disk_gib=40,
        deploy_public_key=KEY,
        **changes,
    )


@pytest.mark.parametrize("memory_gib", [1, 2, 3, 4, 8])
def test_colima_memory_floor_is_the_catalogs_for_stack_and_machine(memory_gib: int) -> None:
    data = stack_data("dev")
    data["colima"]["memoryGib"] = memory_gib
    stack_ok = not stack_problems(data)
    try:
        validate_machine_args(colima_args(memory_gib))
        machine_ok = True
    except ValueError:
        machine_ok = False
    expected = memory_gib >= catalog.MIN_COLIMA_MEMORY_GIB
    assert (stack_ok, machine_ok) == (expected, expected)


def test_x86_64_on_vz_is_refused_alike_by_stack_and_machine() -> None:
    data = stack_data("dev")
    data["colima"]["arch"] = "x86_64"
    [stack] = stack_problems(data)
    with pytest.raises(ValueError) as machine:
        validate_machine_args(colima_args(8, arch="x86_64"))
    assert stack.startswith("colima.arch: ")
    assert str(machine.value).endswith(stack.removeprefix("colima.arch: "))


def test_hubble_ui_without_hubble_is_refused_alike_by_stack_and_settings() -> None:
    data = stack_data("prod")
    data["cilium"]["hubble"] = {"ui": True}
    assert [p.split(":")[0] for p in stack_problems(data)] == ["cilium.hubble.ui"]
    with pytest.raises(ValueError, match=cilium.hubble_ui_refusal(False, True) or "-"):
        cilium.CiliumSettings(
            api_host="10.0.1.2", cluster_cidr="10.42.0.0/16", node_count=3, hubble_ui=True
        )


@pytest.mark.parametrize(("replicas", "refused"), [(5, False), (6, True)])
def test_operator_replicas_bound_alike_for_field_values_and_settings(
    replicas: int, refused: bool
) -> None:
    """prod has 5 nodes; the field, the raw chart value and the settings share the bound."""
    for key, value in (
        ("operatorReplicas", replicas),
        ("values", {"operator": {"replicas": replicas}}),
    ):
        data = stack_data("prod")
        data["cilium"][key] = value
        assert bool(stack_problems(data)) == refused, key
    why = cilium.operator_replicas_refusal(replicas, 5)
    assert (why is not None) == refused


def test_k8s_service_host_in_values_is_refused_even_as_the_first_hosts_address() -> None:
    """The placeholder the values are checked with is no host's address: setting the key to
    the first host's real address (10.0.1.10 in prod) is refused like any other value."""
    data = stack_data("prod")
    data["cilium"]["values"] = {"k8sServiceHost": "10.0.1.10"}
    assert [p.split(":")[0] for p in stack_problems(data)] == ["cilium.values.k8sServiceHost"]
    assert cilium.PLACEHOLDER_API_HOST.startswith("192.0.2.")


def test_every_provider_of_the_schema_has_a_profile_with_a_hardware_module() -> None:
    providers = get_args(ClusterConfig.model_fields["provider"].annotation)
    assert set(providers) == set(profiles.PROFILES)
    allowed = get_args(hostspec.Hardware.model_fields["profile"].annotation)
    for profile in profiles.PROFILES.values():
        assert profile.hardware_profile in allowed, profile.name
        assert (hostspec.NIXOS_DIR / "hardware" / f"{profile.hardware_profile}.nix").is_file()
