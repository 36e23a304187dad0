"""One host contract: HostSpec describes every host field once, the NixOS modules choose nothing
the document already says, and each shared rule or list has one owner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from components import catalog, config, rules
from components.hosts import hostspec, render

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
KIT = Path(os.environ.get("NIXLITE", ROOT.parent / "shared" / "nixlite"))
NIX_INSTANTIATE = shutil.which("nix-instantiate")


def models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """root and every model nested in its fields (through lists, dicts and optionals)."""
    seen: list[type[BaseModel]] = []

    def visit(annotation: Any) -> None:
        model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if model and annotation not in seen:
            seen.append(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for argument in get_args(annotation):
            visit(argument)

    visit(root)
    return seen


def test_every_host_field_is_required() -> None:
    optional = [
        f"{model.__name__}.{name}"
        for model in models(hostspec.HostSpec)
        for name, field in model.model_fields.items()
        if not field.is_required()
    ]
    assert len(models(hostspec.HostSpec)) > 10
    assert optional == []


def test_schema_requires_every_field_and_declares_no_default() -> None:
    def walk(node: Any) -> list[str]:
        if isinstance(node, list):
            return [problem for item in node for problem in walk(item)]
        if not isinstance(node, dict):
            return []
        problems = [f"default in {node.get('title')}"] if "default" in node else []
        if "properties" in node and set(node["properties"]) != set(node.get("required", [])):
            problems.append(f"optional field in {node.get('title')}")
        return problems + [problem for value in node.values() for problem in walk(value)]

    assert walk(hostspec.host_schema()) == []


def test_disable_list_has_one_owner() -> None:
    """The stack model, the host document and its schema take catalog.py's list."""
    disable = hostspec.host_schema()["$defs"]["K3s"]["properties"]["disable"]
    assert tuple(disable["items"]["enum"]) == catalog.K3S_DISABLABLE
    stack_field = config.K3sConfig.model_fields["disable"].annotation
    assert get_args(get_args(stack_field)[0]) == catalog.K3S_DISABLABLE
    assert set(catalog.K3S_DEFAULT_DISABLED) <= set(catalog.K3S_DISABLABLE)


def test_pod_cidr_default_is_the_stack_models_alone() -> None:
    assert config.K3sConfig.model_fields["cluster_cidr"].default == "10.42.0.0/16"
    assert hostspec.K3s.model_fields["cluster_cidr"].is_required()
    for path in (ROOT / "nixos").rglob("*.nix"):
        assert "10.42.0.0/16" not in path.read_text(encoding="utf-8"), path


def test_agent_without_server_addr_has_one_owner() -> None:
    """HostSpec refuses it; no NixOS module repeats the check."""
    for path in (ROOT / "nixos").rglob("*.nix"):
        assert "needs serverAddr" not in path.read_text(encoding="utf-8"), path
    with pytest.raises(ValueError, match="an agent needs serverAddr"):
        hostspec.K3s.model_validate(
            {**json.loads((HERE / "fixtures" / "hetzner-agent.json").read_text())["k3s"]}
            | {"serverAddr": ""}
        )


def test_port_numbers_live_in_the_ports_file() -> None:
    ports = render.FIREWALL_PORTS
    assert ports["tcp"]["api"]["port"] == rules.API_PORT
    for protocol in ("tcp", "udp"):
        numbers = [entry["port"] for entry in ports[protocol].values()]
        assert len(numbers) == len(set(numbers)), protocol
        assert all(entry["reason"] for entry in ports[protocol].values())
    modules = ROOT / "nixos" / "modules"
    for name in ("firewall.nix", "k3s-containers.nix"):
        text = (modules / name).read_text(encoding="utf-8")
        assert "firewall-ports.json" in text
        for number in ("6443", "10250", "4240", "4244", "8472", "6081", "2379"):
            assert number not in text, (name, number)


@pytest.mark.skipif(
    NIX_INSTANTIATE is None or not (KIT / "lib").is_dir(),
    reason="needs nix-instantiate (Debian nix-bin) and ../shared/nixlite",
)
@pytest.mark.parametrize("fixture", ["hetzner-containers", "hetzner-server", "colima-server"])
def test_options_fed_by_the_document_declare_no_default(fixture: str) -> None:
    """The sections configuration.nix hands over whole: no option of theirs picks a value."""
    assert NIX_INSTANTIATE is not None
    result = subprocess.run(
        [
            NIX_INSTANTIATE,
            "--eval",
            "--strict",
            "--json",
            str(HERE / "section-defaults.nix"),
            "--arg",
            "kit",
            str(KIT),
            "--arg",
            "project",
            str(ROOT),
            "--arg",
            "hostFile",
            str(HERE / "fixtures" / f"{fixture}.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "k3s-agent-123"}, r"containers\.1\.name"),
        (
            {"credentials": {"k3sToken": "/var/lib/k3s token"}},
            r"containers\.1\.credentials\.k3sToken",
        ),
        ({"stateDir": "/var/lib/a b"}, r"containers\.1\.stateDir"),
        ({"tailscale": True, "credentials": {"tailscaleAuthKey": None}}, "tailscaleAuthKey"),
    ],
)
def test_container_rules_have_one_owner(change: dict[str, Any], message: str) -> None:
    """HostSpec refuses them; k3s-containers.nix no longer repeats the checks."""
    document = json.loads((HERE / "fixtures" / "hetzner-containers.json").read_text())
    container = document["containers"][1]
    for key, value in change.items():
        container[key] = {**container[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        hostspec.HostSpec.model_validate(document)
    text = (ROOT / "nixos" / "modules" / "k3s-containers.nix").read_text(encoding="utf-8")
    assert "tailscale needs credentials" not in text and "hasSpace" not in text
