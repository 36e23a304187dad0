"""The Hetzner NixOS image (hetzner.nixosImage) in the plan: create, replace, delete.

Offline, from plans of the shipped prod stack: one image command per architecture, keyed by
the pin, the architecture and the base configuration; servers boot its snapshot and ignore a
later one (no server is replaced for a new pin); the install only waits for the pinned host
key; destroy deletes the snapshots. The scripts themselves are drilled in
tests/remote/test_hcloud_image.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.hosts import hostspec, render
from components.machines import hetzner_image
from components.stack import parse_cluster
from tests.conftest import Plan, run_plan, stack_data
from tooling import diff, plan
from tooling.mocks import REDACTED

IMAGE_BUILD = "prod-hetzner-image-x86-64-snapshot"
SERVERS = [f"prod-control-{i}" for i in (1, 2, 3)] + [f"prod-workers-{i}" for i in (1, 2)]


def test_one_image_per_architecture_with_its_lifecycle(prod_plan: Plan) -> None:
    images = [r for r in prod_plan.of_type("command:local:Command") if "-image-" in r.name]
    assert [r.name for r in images] == [IMAGE_BUILD]  # prod is all x86_64
    build = prod_plan[IMAGE_BUILD]
    assert build.inputs["create"] == "python3 components/scripts/hcloud-image.py create"
    assert build.inputs["update"] == "python3 components/scripts/hcloud-image.py keep"
    assert build.inputs["delete"] == "python3 components/scripts/hcloud-image.py delete"
    env = build.inputs["environment"]
    # The key is the pin (flake.lock), the architecture and the base configuration.
    assert build.inputs["triggers"] == [hetzner_image.image_key("x86_64", env["HOST_JSON"])]
    assert env["IMAGE_KEY"] == build.inputs["triggers"][0]
    firewall = next(r for r in prod_plan.of_type("hcloud:index/firewall:Firewall"))
    assert firewall.urn in build.depends_on  # the builder gets the cluster's firewall
    assert (env["ARCH"], env["BUILDER_TYPE"], env["HOST_NAME"]) == (
        "x86_64",
        "cpx12",
        "prod-image-x86-64",
    )
    # A new key deletes the old snapshots first: the builder's name is unique per project.
    assert build.delete_before_replace
    # The token and the deploy key are secrets: in state encrypted, never on a command line.
    assert "HCLOUD_TOKEN" not in env and build.inputs["stdin"] == REDACTED
    header, *lines = build.secret_paths["stdin"].splitlines()
    assert header.startswith("nixos-k3s-bundle v1 2 ")  # install.sh's bundle: count, sha256
    records = dict(line.split("\t", 1) for line in lines)
    assert sorted(records) == ["@deploy-key", "@hcloud-token"]
    assert "stderr" in build.additional_secret_outputs


def test_the_image_is_the_hosts_shared_base(prod_plan: Plan) -> None:
    image = json.loads(prod_plan[IMAGE_BUILD].inputs["environment"]["HOST_JSON"])
    host = json.loads(prod_plan["prod-workers-1-push"].inputs["environment"]["HOST_JSON"])
    # k3s is in the image (its closure), held back until a push releases it on each host.
    assert image["k3s"]["enable"] is True and image["network"]["privateGateway"] is None
    assert image["k3s"]["package"] == host["k3s"]["package"]
    for key in ("hardware", "firewall", "stateVersion", "system"):
        assert image[key] == host[key], key
    assert image["ssh"]["authorizedKeys"] == host["ssh"]["authorizedKeys"]
    hostspec.HostSpec.model_validate(image)


def test_servers_boot_the_image_and_ignore_a_new_one(prod_plan: Plan) -> None:
    build = prod_plan[IMAGE_BUILD]
    for name in SERVERS:
        server = prod_plan.by_urn[
            next(r.urn for r in prod_plan.of_type("hcloud:index/server:Server") if r.name == name)
        ]
        assert build.urn in server.depends_on, name
        assert set(server.ignore_changes) == {"image", "userData"}, name
        assert server.inputs["userData"] == REDACTED and "userData" in server.secret_paths
        user_data = server.secret_paths["userData"]
        assert user_data.startswith("#cloud-config\nssh_deletekeys: true\nssh_keys:\n")
        env = prod_plan[f"{name}-install"].inputs["environment"]
        assert env["FROM_IMAGE"] == "1"
        # The install only swaps the host key: it waits for the boot, not for the private
        # network's attach (the host document carries its MAC); the build waits for both.
        assert "HOST_JSON" not in env
        assert not prod_plan.reaches(f"{name}-install", f"{name}-private")
        assert prod_plan.reaches(f"{name}-build", f"{name}-private")
        assert prod_plan.reaches(f"{name}-build", f"{name}-install")
        # A throwaway first-boot key, never the host's own (the metadata service hands the user
        # data to any process on the server); the install replaces it over a pinned connection.
        assert f"  ed25519_public: {env['STOCK_HOST_PUBLIC_KEY']}\n" in user_data
        assert env["HOST_PUBLIC_KEY"] not in user_data


def test_stock_image_path_stays(plan_of: Any) -> None:
    data = stack_data("prod")
    data["hetzner"] = {**data["hetzner"], "nixosImage": False}
    stock: Plan = plan_of(data, stack="prod")
    assert not [r for r in stock.result.registrations if "-image-" in r.name]
    for server in stock.of_type("hcloud:index/server:Server"):
        assert server.inputs["image"] == "ubuntu-24.04"
        # The stock image gets a throwaway host key (not the NixOS one), which the install pins.
        install = stock[f"{server.name}-install"].inputs["environment"]
        assert "FROM_IMAGE" not in install
        # nixos-anywhere installs the final system, from the host document.
        assert json.loads(install["HOST_JSON"])["name"] == server.name
        assert stock.reaches(f"{server.name}-install", f"{server.name}-private")
        stock_key = install["STOCK_HOST_PUBLIC_KEY"]
        assert stock_key != install["HOST_PUBLIC_KEY"]
        assert f"  ed25519_public: {stock_key}\n" in server.secret_paths["userData"]


def test_image_key_follows_pin_arch_and_base(tmp_path: Path) -> None:
    lock = tmp_path / "flake.lock"
    lock.write_text('{"nodes": {"nixpkgs": {"locked": {"rev": "a"}}}}')
    base = hetzner_image.image_key("x86_64", "{}", lock)
    assert base == hetzner_image.image_key("x86_64", "{}", lock)
    assert base != hetzner_image.image_key("arm64", "{}", lock)
    assert base != hetzner_image.image_key("x86_64", '{"k": 1}', lock)
    lock.write_text('{"nodes": {"nixpkgs": {"locked": {"rev": "b"}}}}')
    assert base != hetzner_image.image_key("x86_64", "{}", lock)


def test_arm_pools_get_their_own_image() -> None:
    data = stack_data("prod")
    data["nodePools"][1]["serverType"] = "cax21"
    cfg = parse_cluster(data)
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3mQ2bJ0pM1wq6Zr7s8S3bA2VfM0g5qTj9Gkq1mLrX d"]
    arm = render.image_spec(cfg, "arm64", keys)
    assert (arm.name, arm.system) == ("prod-image-arm64", "aarch64-linux")


def write_plan(tmp: Path, name: str, cluster: dict[str, Any]) -> diff.Plan:
    out = tmp / name
    plan.write_plan(run_plan(cluster, stack="prod"), out)
    return diff.load_plan(out)


@pytest.fixture(scope="module")
def before(tmp_path_factory: pytest.TempPathFactory) -> diff.Plan:
    return write_plan(tmp_path_factory.mktemp("image"), "before", stack_data("prod"))


def test_new_base_replaces_the_image_not_the_servers(before: diff.Plan, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["sshKeys"] = [
        *data["sshKeys"],
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGyq2Xk0cz2C8bqJ7G3p4xFZ2s6M5v1nQ8w0eLr7tH9a new",
    ]
    changes = diff.diff_plans(before, write_plan(tmp_path, "after", data)).resources
    kinds = {c.name: c.kind for c in changes}
    assert kinds[IMAGE_BUILD] == "replace"
    assert not [c for c in changes if c.type == "hcloud:index/server:Server"]


def test_switching_to_the_stock_image_replaces_no_server(before: diff.Plan, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["hetzner"] = {**data["hetzner"], "nixosImage": False}
    changes = diff.diff_plans(before, write_plan(tmp_path, "stock", data)).resources
    assert {c.name for c in changes if c.kind == "remove"} >= {IMAGE_BUILD}
    assert not [c for c in changes if c.type == "hcloud:index/server:Server"]
    assert not [c for c in changes if c.kind == "replace"]
