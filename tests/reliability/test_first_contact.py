"""The install's first SSH contact is pinned: the stock image's host key comes from cloud-init
user data (Hetzner, `hetzner.nixosImage: false`) or through `colima ssh` (Colima), and the user
data stays byte-identical. (With the NixOS image the user data carries the NixOS host key
itself: tests/test_hetzner_image.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from components.machines.userdata import host_key_user_data
from tests.conftest import Plan, stack_data
from tooling.mocks import fake_private_key, fake_ssh_public_key

SERVER_TYPE = "hcloud:index/server:Server"


def stock_stack() -> dict[str, Any]:
    data = stack_data("prod")
    data["hetzner"] = {**data["hetzner"], "nixosImage": False}
    return data


@pytest.fixture
def stock_plan(plan_of: Callable[..., Plan]) -> Plan:
    """prod on the stock image with nixos-anywhere (no NixOS image)."""
    return plan_of(stock_stack(), stack="prod")


def user_data(plan: Plan) -> dict[str, str]:
    """Server name -> its user data (a secret input: only in secret_paths)."""
    found = {}
    for server in plan.of_type(SERVER_TYPE):
        assert server.inputs["userData"] == "[secret]", "user data holds a private key"
        found[server.name] = server.secret_paths["userData"]
    return found


def test_stock_image_gets_a_pinned_throwaway_host_key(stock_plan: Plan) -> None:
    data = user_data(stock_plan)
    assert data
    for host, text in data.items():
        assert text.startswith("#cloud-config\n")
        config = yaml.safe_load(text)
        assert config["ssh_deletekeys"] is True, "the image's own host keys go"
        keys = config["ssh_keys"]
        assert sorted(keys) == ["ed25519_private", "ed25519_public"]
        assert keys["ed25519_private"] == fake_private_key(f"{host}-stock-host-key")
        stock_public = fake_ssh_public_key(f"{host}-stock-host-key").strip()
        assert keys["ed25519_public"] == stock_public
        install = stock_plan[f"{host}-install"].inputs["environment"]
        assert install["STOCK_HOST_PUBLIC_KEY"] == stock_public, "the first contact pins it"
        assert install["HOST_PUBLIC_KEY"] != stock_public, "distinct from the NixOS host key"
        assert fake_private_key(f"{host}-host-key") not in text, "the NixOS key stays out"


def test_user_data_bytes_do_not_change_with_unrelated_stack_changes(
    stock_plan: Plan, plan_of: Callable[..., Plan]
) -> None:
    before = user_data(stock_plan)
    assert user_data(plan_of(stock_stack(), stack="prod")) == before, "plan twice"
    changed = stock_stack()
    changed["nodePools"][1]["labels"] = {"node.example.com/pool": "changed"}
    changed["nodePools"][1]["count"] = 3
    changed["k3s"]["etcdSnapshots"]["retention"] = 5
    changed["firewall"]["sshSources"] = ["203.0.113.0/24"]
    after = user_data(plan_of(changed, stack="prod"))
    assert set(after) == set(before) | {"prod-workers-3"}
    for host, text in before.items():
        assert after[host] == text, host


def test_user_data_is_a_pure_function_of_the_key() -> None:
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n"
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeStockKeyForTestsOnly0123456789abcdef\n"
    text = host_key_user_data(private, public)
    assert text == host_key_user_data(private, public)
    assert yaml.safe_load(text)["ssh_keys"]["ed25519_private"] == private


def test_colima_pins_the_vm_host_key_read_through_colima(dev_plan: Plan) -> None:
    for install in (r for r in dev_plan.result.registrations if r.name.endswith("-install")):
        host = install.name.removesuffix("-install")
        env = install.inputs["environment"]
        assert env["STOCK_HOST_PUBLIC_KEY"] == fake_ssh_public_key(f"{host}-vm-host-key").strip()
