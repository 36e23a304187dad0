"""nixos/: every file parses, bad host data is named by field, Nix reads only schema fields."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.hosts import hostspec

ROOT = Path(__file__).resolve().parents[2]
NIXOS = ROOT / "nixos"
HERE = Path(__file__).parent
FIXTURE_FILES = sorted((HERE / "fixtures").glob("*.json"))
# The host documents the program renders for the dev and prod stacks, exactly as pushed.
GOLDEN_FILES = sorted((ROOT / "tests" / "golden").glob("*/*.json"))
HOST_FILES = FIXTURE_FILES + GOLDEN_FILES
NIX_FILES = sorted(NIXOS.rglob("*.nix"))
NIX_INSTANTIATE = shutil.which("nix-instantiate")

needs_nix = pytest.mark.skipif(
    NIX_INSTANTIATE is None, reason="nix-instantiate not installed (Debian package nix-bin)"
)


def nix(*args: str) -> subprocess.CompletedProcess[str]:
    assert NIX_INSTANTIATE is not None
    return subprocess.run(
        [NIX_INSTANTIATE, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_the_nixos_tree_is_complete() -> None:
    relative = {path.relative_to(NIXOS).as_posix() for path in NIX_FILES}
    expected = {
        "flake.nix",
        "configuration.nix",
        "lib/host-check.nix",
        "hardware/hetzner-cloud.nix",
        "disko/hetzner.nix",
        *(
            f"modules/{name}.nix"
            for name in (
                "base",
                "k3s",
                "cilium-host",
                "firewall",
                "tailscale",
                "k3s-containers",
                "persistence",
                "private-network",
            )
        ),
    }
    assert expected <= relative


@needs_nix
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(NIXOS).as_posix())
def test_nix_file_parses(path: Path) -> None:
    result = nix("--parse", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(NIXOS).as_posix())
def test_module_style(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "with lib;" not in text
    assert text.startswith("# "), "one-line header comment first"
    assert "services.k3s.token " not in text and "services.k3s.token=" not in text


def test_flake_lock_matches_flake_pins() -> None:
    lock = json.loads((NIXOS / "flake.lock").read_text(encoding="utf-8"))
    flake = (NIXOS / "flake.nix").read_text(encoding="utf-8")
    for name in ("nixpkgs", "disko"):
        locked = lock["nodes"][name]["locked"]
        assert f"github:{locked['owner']}/{locked['repo']}/{locked['rev']}" in flake
        assert locked["narHash"].startswith("sha256-")
    assert lock["nodes"]["disko"]["inputs"]["nixpkgs"] == ["nixpkgs"]


# host-check.nix: the schema-driven validation configuration.nix runs first.

CHECK = """
{ hostFile, patch }:
import ./nixos/lib/host-check.nix {
  schema = builtins.fromJSON (builtins.readFile ./nixos/host.schema.json);
  host = (import patch) (builtins.fromJSON (builtins.readFile hostFile));
}
"""


def host_check(tmp_path: Path, fixture: Path, patch: str = "h: h") -> list[str]:
    expression = tmp_path / "check.nix"
    expression.write_text(CHECK.replace("./nixos", str(NIXOS)), encoding="utf-8")
    patch_file = tmp_path / "patch.nix"
    patch_file.write_text(patch, encoding="utf-8")
    result = nix(
        "--eval",
        "--strict",
        "--json",
        str(expression),
        "--arg",
        "hostFile",
        str(fixture),
        "--arg",
        "patch",
        str(patch_file),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def host_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_golden_hosts_cover_both_profiles() -> None:
    profiles = {json.loads(path.read_text())["hardware"]["profile"] for path in GOLDEN_FILES}
    assert profiles == {"hetzner-cloud", "colima-vz"}


@needs_nix
@pytest.mark.parametrize("fixture", HOST_FILES, ids=host_id)
def test_host_check_accepts_fixtures(tmp_path: Path, fixture: Path) -> None:
    assert host_check(tmp_path, fixture) == []


@needs_nix
@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ('h: removeAttrs h [ "k3s" ]', "host.k3s: missing"),
        ('h: h // { k3s = removeAttrs h.k3s [ "tokenFile" ]; }', "host.k3s.tokenFile: missing"),
        ("h: h // { schemaVersion = 2; }", "host.schemaVersion: must be 1, got 2"),
        ('h: h // { k3s = h.k3s // { role = "boss"; }; }', 'host.k3s.role: "boss" is not one of'),
        (
            "h: h // { firewall = h.firewall // { publicTcpPorts = [ 22 70000 ]; }; }",
            "host.firewall.publicTcpPorts[1]: 70000 is above 65535",
        ),
        (
            'h: h // { network = h.network // { mtu = "1450"; }; }',
            "host.network.mtu: expected integer",
        ),
        ("h: h // { surprise = true; }", "host.surprise: unknown field"),
        (
            "h: h // { network = h.network // { privateGateway = 10; }; }",
            "host.network.privateGateway: 10 matches none",
        ),
        (
            "h: h // { containers = [ ((builtins.head h.containers)"
            " // { nameservers = [ ]; }) ]; }",
            "host.containers[0].nameservers: needs at least 1 item(s)",
        ),
        (
            "h: h // { k3s = h.k3s // { nodeLabels = { a = 1; }; }; }",
            "host.k3s.nodeLabels.a: expected string, got integer",
        ),
    ],
)
def test_host_check_names_the_bad_field(tmp_path: Path, patch: str, expected: str) -> None:
    errors = host_check(tmp_path, HERE / "fixtures" / "hetzner-containers.json", patch)
    assert any(expected in error for error in errors), errors


# configuration.nix evaluated against a builtins-only lib stand-in.


def eval_configuration(fixture: Path) -> subprocess.CompletedProcess[str]:
    return nix(
        "--eval",
        "--strict",
        "--json",
        str(HERE / "eval-configuration.nix"),
        "--arg",
        "hostFile",
        str(fixture),
    )


def evaluated(fixture: Path) -> dict[str, Any]:
    result = eval_configuration(fixture)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def merged_config(fixture: Path) -> dict[str, Any]:
    config = evaluated(fixture)["config"]
    merged: dict[str, Any] = {}
    for part in config["contents"]:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


@needs_nix
@pytest.mark.parametrize("fixture", HOST_FILES, ids=host_id)
def test_configuration_reads_only_existing_host_fields(fixture: Path) -> None:
    # --strict forces every host field configuration.nix reads: a stale read fails here.
    config = merged_config(fixture)
    assert config["nixosK3s"]["base"]["hostName"] == json.loads(fixture.read_text())["name"]


@needs_nix
def test_configuration_maps_host_data() -> None:
    fixture = HERE / "fixtures" / "hetzner-containers.json"
    host = json.loads(fixture.read_text(encoding="utf-8"))
    result = evaluated(fixture)
    assert result["imports"][-5:] == [
        "inputs.disko.nixosModules.disko",
        str(NIXOS / "hardware" / "hetzner-cloud.nix"),
        str(NIXOS / "disko" / "hetzner.nix"),
        str(NIXOS / "modules" / "hetzner-host-key.nix"),
        str(NIXOS / "modules" / "hetzner-grow-root.nix"),
    ]
    config = merged_config(fixture)
    k3s = config["nixosK3s"]["k3s"]
    assert k3s["package"] == "pkgs.k3s"
    assert k3s["tokenFile"] == host["k3s"]["tokenFile"]
    assert k3s["vpnAuthFile"] == host["k3s"]["vpnAuthFile"]
    assert config["nixosK3s"]["hetznerCloud"]["publicIpv6"] == host["network"]["publicIpv6"]
    assert config["nixosK3s"]["disk"]["device"] == "/dev/sda"
    containers = config["nixosK3s"]["k3sContainers"]
    assert containers["enable"] is True
    agent = containers["containers"]["k3s-agent-1"]
    assert agent["credentials"]["tailscaleAuthKey"].endswith("k3s-agent-1-vpn-auth")
    assert agent["k3s"]["role"] == "agent"
    assert config["nixosK3s"]["firewall"]["privateTcpPortRanges"] == [{"from": 2379, "to": 2380}]


@needs_nix
def test_colima_profile_imports_only_its_hardware() -> None:
    result = evaluated(HERE / "fixtures" / "colima-server.json")
    assert result["imports"][-1] == str(NIXOS / "hardware" / "colima-vz.nix")
    assert not any("disko" in path for path in result["imports"])
    config = merged_config(HERE / "fixtures" / "colima-server.json")
    assert "hetznerCloud" not in config["nixosK3s"]
    assert config["nixosK3s"]["privateNetwork"]["enable"] is False


@needs_nix
def test_configuration_stops_bad_host_data_naming_the_field(tmp_path: Path) -> None:
    data = json.loads((HERE / "fixtures" / "hetzner-agent.json").read_text(encoding="utf-8"))
    del data["k3s"]["nodeIp"]
    data["hardware"]["profile"] = "bare-metal"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    result = eval_configuration(bad)
    assert result.returncode != 0
    assert "invalid host data for prod-agent-1" in result.stderr
    assert "host.k3s.nodeIp: missing" in result.stderr
    assert 'host.hardware.profile: "bare-metal" is not one of' in result.stderr


# Static check: every host field path configuration.nix and flake.nix mention is in the schema.

ALIASES = {"host": (), "h": (), "net": ("network",), "c": ("containers", "[]"), "range": None}


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] if "#" in line else line for line in text.splitlines())


def mentioned_host_paths(text: str) -> set[tuple[str, ...]]:
    text = _strip_comments(text)
    paths: set[tuple[str, ...]] = set()
    reads = r"(?<![\w/.-])(host|h|net|c)\.([a-zA-Z]\w*(?:\.[a-zA-Z]\w*)*)"
    for alias, fields in re.findall(reads, text):
        base = ALIASES[alias]
        assert base is not None
        paths.add((*base, *fields.split(".")))
    for alias, sub, names in re.findall(
        r"inherit \((host|h|net|c)((?:\.[\w]+)*)\)\s*([^;]*);", text
    ):
        base = ALIASES[alias]
        assert base is not None
        prefix = (*base, *[part for part in sub.split(".") if part])
        for name in names.split():
            paths.add((*prefix, name))
    for field in re.findall(r"\brange\.(\w+)", text):
        paths.add(("firewall", "privateTcpPortRanges", "[]", field))
    return paths


def schema_has(path: tuple[str, ...]) -> bool:
    schema = hostspec.host_schema()
    defs = schema["$defs"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        for alternative in node.get("anyOf", []):
            if alternative.get("type") == "object" or "$ref" in alternative:
                return resolve(alternative)
        return node

    node = resolve(schema)
    for part in path:
        if part == "[]":
            node = resolve(node["items"])
        elif part in node.get("properties", {}):
            node = resolve(node["properties"][part])
        else:
            return False
    return True


def test_alias_definitions_match_the_checked_table() -> None:
    text = (NIXOS / "configuration.nix").read_text(encoding="utf-8")
    assert re.search(r"\bnet = h\.network;", text)
    assert "map (c: {" in text and "}) h.containers" in text
    assert (
        "portRange = range: {" in text and "map portRange h.firewall.privateTcpPortRanges" in text
    )
    # No other alias of host data: every `= h.` binding is one of the above.
    assert re.findall(r"^  (\w+) = h\.[\w.]+;", text, re.MULTILINE) == ["net"]


def reads_host(path: Path) -> bool:
    """Files that take host data: the flake, the entry module, and any module with a `host` arg."""
    header = _strip_comments(path.read_text(encoding="utf-8")).split(":", 1)[0]
    return path.name == "flake.nix" or bool(re.search(r"\bhost\b", header))


HOST_READERS = [path for path in NIX_FILES if reads_host(path) and path.name != "host-check.nix"]


def test_host_readers_include_the_entry_points() -> None:
    names = {path.relative_to(NIXOS).as_posix() for path in HOST_READERS}
    assert {"configuration.nix", "flake.nix"} <= names


@pytest.mark.parametrize("path", HOST_READERS, ids=lambda p: p.relative_to(NIXOS).as_posix())
def test_every_host_field_read_exists_in_schema(path: Path) -> None:
    name = path.name
    paths = mentioned_host_paths(path.read_text(encoding="utf-8"))
    if name == "configuration.nix":
        # Whole sections (h.k3s, h.firewall) go to the modules, whose options check each field.
        assert ("k3s", "package") in paths and ("network", "privateGateway") in paths
    missing = sorted(".".join(path) for path in paths if not schema_has(path))
    assert missing == []


def test_path_extraction_sees_a_stale_field() -> None:
    paths = mentioned_host_paths("x = h.k3s.tokenFyle; inherit (net) mtuu;")
    assert not schema_has(("k3s", "tokenFyle")) and ("k3s", "tokenFyle") in paths
    assert ("network", "mtuu") in paths and not schema_has(("network", "mtuu"))
