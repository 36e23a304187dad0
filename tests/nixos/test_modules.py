"""Module bodies evaluated with a lib stand-in: choices that real nixpkgs evaluation depends on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NIXOS = ROOT / "nixos"
STUB_LIB = Path(__file__).parent / "stub-lib.nix"
NIX_INSTANTIATE = shutil.which("nix-instantiate")

needs_nix = pytest.mark.skipif(
    NIX_INSTANTIATE is None, reason="nix-instantiate not installed (Debian package nix-bin)"
)

# nixpkgs' own sysctl defaults are mkDefault (priority 1000); a sysctl key accepts one definition
# at the winning priority (lib.mergeOneOption), so ours must sit above it.
NIXPKGS_DEFAULT_PRIORITY = 1000


def nix_eval(expression: str) -> Any:
    assert NIX_INSTANTIATE is not None
    result = subprocess.run(
        [NIX_INSTANTIATE, "--eval", "--strict", "--json", "--expr", expression],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def module_config(path: str, config: str, is_x86: bool, select: str) -> Any:
    """`select` applied to the `config` attribute of nixos/<path> called with stub arguments."""
    expression = f"""
      let
        module = import {NIXOS / path} {{
          lib = import {STUB_LIB};
          config = {config};
          pkgs = {{ stdenv.hostPlatform.isx86 = {str(is_x86).lower()}; }};
          modulesPath = "/modules";
        }};
      in
      module.config{select}
    """
    return nix_eval(expression)


DISK = '{ nixosK3s.disk.device = "/dev/sda"; }'


@needs_nix
def test_hetzner_x86_layout_has_bios_boot_and_esp() -> None:
    parts = module_config("disko/hetzner.nix", DISK, True, ".content.disko.devices.disk.main")
    partitions = parts["content"]["partitions"]
    assert parts["device"] == "/dev/sda"
    assert partitions["boot"] == {"size": "1M", "type": "EF02", "priority": 1}
    assert partitions["ESP"]["type"] == "EF00"
    assert partitions["ESP"]["content"]["mountpoint"] == "/boot"
    assert partitions["root"]["size"] == "100%"


@needs_nix
def test_hetzner_arm64_layout_has_no_bios_boot_partition() -> None:
    # An EF02 partition makes disko add the disk to boot.loader.grub.devices, and GRUB's
    # installer then demands a BIOS target, which arm64 has not.
    parts = module_config("disko/hetzner.nix", DISK, False, ".content.disko.devices.disk.main")
    partitions = parts["content"]["partitions"]
    assert set(partitions) == {"ESP", "root"}
    assert all(part.get("type") != "EF02" for part in partitions.values())


HETZNER = (
    "{ nixosK3s.hetznerCloud = { enable = true; publicIpv6 = null;"
    " publicIpv6PrefixLength = 64; }; }"
)


@pytest.mark.parametrize(("is_x86", "nodev"), [(True, False), (False, True)])
@needs_nix
def test_grub_installs_efi_only_on_arm64(is_x86: bool, nodev: bool) -> None:
    grub = module_config("hardware/hetzner-cloud.nix", HETZNER, is_x86, ".content.boot.loader.grub")
    assert grub["enable"] and grub["efiSupport"] and grub["efiInstallAsRemovable"]
    assert grub["devices"] == {"_type": "if", "condition": nodev, "content": ["nodev"]}


SYSCTL_MODULES = {
    "modules/cilium-host.nix": "{ nixosK3s.ciliumHost.enable = true; }",
    "modules/k3s-containers.nix": (
        '{ nixosK3s.k3sContainers = { enable = true; containers = { }; package = "k3s"; }; }'
    ),
}


@needs_nix
@pytest.mark.parametrize("path", sorted(SYSCTL_MODULES))
def test_sysctls_outrank_nixpkgs_defaults_but_not_hosts(path: str) -> None:
    sysctl = module_config(path, SYSCTL_MODULES[path], True, ".content.boot.kernel.sysctl")
    assert sysctl
    for key, value in sysctl.items():
        assert value.get("_type") == "override", key
        assert 100 < value["priority"] < NIXPKGS_DEFAULT_PRIORITY, key


@needs_nix
def test_inotify_limits_not_below_nixpkgs_defaults() -> None:
    sysctl = module_config(
        "modules/cilium-host.nix",
        SYSCTL_MODULES["modules/cilium-host.nix"],
        True,
        ".content.boot.kernel.sysctl",
    )
    # nixpkgs' sysctl.nix defaults both to 524288; an override must not lower them.
    assert sysctl["fs.inotify.max_user_instances"]["content"] >= 524288
    assert sysctl["fs.inotify.max_user_watches"]["content"] >= 524288


SYSCTL_MKDEFAULT = re.compile(
    r"boot\.kernel\.sysctl(?:\.\"[^\"]+\")?\s*=\s*(?:lib\.)?mkDefault"
    r"|boot\.kernel\.sysctl\s*=\s*\{[^}]*mkDefault",
    re.DOTALL,
)


@pytest.mark.parametrize(
    "path", sorted(NIXOS.rglob("*.nix")), ids=lambda p: p.relative_to(NIXOS).as_posix()
)
def test_no_sysctl_at_mkdefault_priority(path: Path) -> None:
    assert SYSCTL_MKDEFAULT.search(path.read_text(encoding="utf-8")) is None


def test_sysctl_pattern_sees_mkdefault() -> None:
    assert SYSCTL_MKDEFAULT.search('boot.kernel.sysctl."vm.x" = lib.mkDefault 1;')
    assert SYSCTL_MKDEFAULT.search('boot.kernel.sysctl = {\n  "a" = lib.mkDefault 1;\n};')
    assert not SYSCTL_MKDEFAULT.search('boot.kernel.sysctl."vm.x" = lib.mkOverride 900 1;')


BASE = (
    '{ nixosK3s.base = { enable = true; hostName = "h"; rootAuthorizedKeys = [ ];'
    ' adminUsers = [ ]; journalMaxUse = "2G"; }; }'
)


@needs_nix
def test_journald_limits_go_through_the_journald_module() -> None:
    # journald.conf's text is journald's restart trigger in nixpkgs; a journald.conf.d drop-in
    # would change on disk without journald reading it until the next reboot.
    content = module_config("modules/base.nix", BASE, True, ".content")
    assert "SystemMaxUse=2G" in content["services"]["journald"]["extraConfig"].splitlines()
    assert "environment" not in content
