"""parse_colima_list over `colima ls --json` output and the argument checks of ColimaMachine."""

from __future__ import annotations

import pytest

from components.machines.colima import (
    ColimaError,
    ColimaMachineArgs,
    ColimaVm,
    last_line,
    parse_colima_list,
    short_profile_name,
    sizing_triggers,
    validate_machine_args,
    vm_host_key,
)

# As Colima prints it: json.Encoder, one object per line, omitempty (no address/runtime
# unless running; no address without --network-address), sizes in bytes.
LISTING = "\n".join(
    [
        '{"name":"default","status":"Running","arch":"aarch64","cpus":2,"memory":2147483648,'
        '"disk":107374182400,"runtime":"docker"}',
        "",
        '{"name":"dev-a","status":"Running","arch":"aarch64","cpus":4,"memory":6442450944,'
        '"disk":42949672960,"address":"192.168.64.3","runtime":"none"}',
        "   ",
        '{"name":"dev-b","status":"Stopped","arch":"aarch64","cpus":2,"memory":4294967296,'
        '"disk":42949672960}',
        '{"name":"nonet","status":"Running","arch":"aarch64","cpus":2,"memory":4294967296,'
        '"disk":42949672960,"runtime":"none"}',
        '{"name":"floaty","status":"Running","arch":"aarch64","cpus":2,"memory":2.6843546e+09,'
        '"disk":21474836480,"address":"192.168.64.9","runtime":"none"}',
    ]
)


def test_parses_the_profile_among_several() -> None:
    assert parse_colima_list(LISTING, "dev-a") == ColimaVm(
        name="dev-a",
        status="Running",
        arch="aarch64",
        cpus=4,
        memory=6 * 1024**3,
        disk=40 * 1024**3,
        address="192.168.64.3",
    )


def test_float_memory_from_newer_colima() -> None:
    assert parse_colima_list(LISTING, "floaty").memory == 2684354600


def test_colima_prefixed_name_means_the_same_profile() -> None:
    assert parse_colima_list(LISTING, "colima-dev-a").name == "dev-a"
    assert short_profile_name("colima") == "default"
    assert short_profile_name("") == "default"


def test_absent_profile() -> None:
    with pytest.raises(ColimaError, match=r"'dev-z' does not exist.*--network-address"):
        parse_colima_list(LISTING, "dev-z")


def test_stopped_profile() -> None:
    with pytest.raises(ColimaError, match=r"'dev-b' is Stopped.*colima start --profile dev-b"):
        parse_colima_list(LISTING, "dev-b")


def test_profile_without_address() -> None:
    with pytest.raises(ColimaError, match=r"'nonet' has no reachable address.*--network-address"):
        parse_colima_list(LISTING, "nonet")


def test_empty_listing() -> None:
    with pytest.raises(ColimaError, match="does not exist"):
        parse_colima_list("\n\n", "dev-a")


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ("not json", "line 1 is not JSON"),
        ('\n["dev-a"]', "line 2 has no name"),
        ('{"name":"dev-a","status":"Running","cpus":"four"}', "cpus of 'dev-a'"),
    ],
)
def test_malformed_listing(listing: str, message: str) -> None:
    with pytest.raises(ColimaError, match=message):
        parse_colima_list(listing, "dev-a")


def test_last_line_skips_trailing_blank_lines() -> None:
    assert last_line("starting\n{}\n\n") == "{}"
    with pytest.raises(ColimaError, match="printed nothing"):
        last_line("\n")


def _args(**changes: object) -> ColimaMachineArgs:
    values: dict[str, object] = {
        "profile": "dev-a",
        "cpus": 2,
        "memory_gib": 4,
        "disk_gib": 40,
        "deploy_public_key": "ssh-ed25519 AAAA",
    }
    values.update(changes)
    return ColimaMachineArgs(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "x86_64"}, "vz boots only aarch64"),
        ({"vm_type": "qemu"}, "only 'vz'"),
        ({"profile": "default"}, "user's own Colima"),
        ({"profile": "colima-x"}, "user's own Colima"),
        ({"profile": "Dev_A"}, "lowercase"),
        ({"cpus": 0}, "cpus 0 < 1"),
        ({"memory_gib": 3}, "memory_gib: 3 GiB is below the 4 GiB"),
        ({"disk_gib": 10}, "disk_gib 10 < 20"),
    ],
)
def test_validate_refuses(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_machine_args(_args(**changes))


def test_validate_accepts_a_sized_node() -> None:
    validate_machine_args(_args(rosetta=True))


def test_every_sizing_input_is_a_trigger() -> None:
    base = sizing_triggers(_args())
    for change in (
        {"cpus": 3},
        {"memory_gib": 8},
        {"disk_gib": 60},
        {"rosetta": True},
        {"profile": "dev-b"},
    ):
        assert sizing_triggers(_args(**change)) != base, change
    assert sizing_triggers(_args(deploy_public_key="ssh-ed25519 BBBB")) == base


def test_vm_host_key_takes_exactly_one_ed25519_line() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeVmHostKeyForTestsOnly0123456789abcd"
    assert vm_host_key(f"host-key {key}\n{{}}\n") == key
    for bad in ("{}\n", f"host-key {key}\nhost-key {key}\n", "host-key ssh-rsa AAAA\n"):
        with pytest.raises(ColimaError, match="host-key ssh-ed25519"):
            vm_host_key(bad)
