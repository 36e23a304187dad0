"""The Colima NixOS files: they parse, read only host fields the schema has, and the shell they
embed (NIC names, Lima user, guest agent) works against a Lima-shaped cidata directory."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from components.scripts import PROJECT_DIR

HARDWARE = PROJECT_DIR / "nixos" / "hardware" / "colima-vz.nix"
LIMA_GUEST = PROJECT_DIR / "nixos" / "modules" / "lima-guest.nix"
SCHEMA = PROJECT_DIR / "nixos" / "host.schema.json"
NIX_FILES = [HARDWARE, LIMA_GUEST]
SCRIPT_HEADER = "#!/usr/bin/env bash\nset -o errexit\nset -o nounset\nset -o pipefail\n"

LIMA_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILimaUserKeyForTests0123456789abcdefgh lima"
# Rendered as Lima's cidata templates render them (network-config, user-data, lima.env).
NETWORK_CONFIG = """version: 2
ethernets:
  eth0:
    match:
      macaddress: '52:55:55:AA:BB:01'
    dhcp4: true
    set-name: eth0
    dhcp4-overrides:
      route-metric: 200
    dhcp-identifier: mac
  col0:
    match:
      macaddress: '52:55:55:aa:bb:02'
    dhcp4: true
    set-name: col0
    dhcp4-overrides:
      route-metric: 300
    dhcp-identifier: mac
"""
USER_DATA = f"""#cloud-config
growpart:
  mode: auto
  devices: ['/']
users:
  - name: "alice"
    uid: "501"
    homedir: "/home/alice.linux"
    shell: /bin/bash
    sudo: ALL=(ALL) NOPASSWD:ALL
    lock_passwd: true
    ssh-authorized-keys:
      - "{LIMA_KEY}"
write_files:
 - content: |
      #!/bin/sh
   owner: root:root
"""
LIMA_ENV = """LIMA_CIDATA_NAME=colima-dev-a
LIMA_CIDATA_USER=alice
LIMA_CIDATA_UID=501
LIMA_CIDATA_HOME=/home/alice.linux
LIMA_CIDATA_COMMENT=Alice Example
LIMA_CIDATA_MOUNTTYPE=virtiofs
LIMA_CIDATA_VSOCK_PORT=2222
LIMA_CIDATA_VIRTIO_PORT=
"""


def embedded_scripts() -> dict[str, str]:
    """The `fooScript = ''...'';` strings of lima-guest.nix as bash sees them."""
    text = LIMA_GUEST.read_text()
    found = re.findall(r"^  (\w+Script) = ''\n(.*?)\n  '';$", text, flags=re.M | re.S)
    scripts = {}
    for name, body in found:
        body = textwrap.dedent(body).replace("'''", "''").replace("''${", "${")
        scripts[name] = SCRIPT_HEADER + body + "\n"
    return scripts


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def recorder(bin_dir: Path, name: str, log: Path, exit_code: int = 0) -> None:
    executable(bin_dir / name, f'#!/bin/sh\necho "{name} $*" >>"{log}"\nexit {exit_code}\n')


@pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="nix-instantiate missing")
@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.name)
def test_nix_file_parses(path: Path) -> None:
    result = subprocess.run(
        ["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _schema_has(schema: dict[str, object], path: list[str]) -> bool:
    node: object = schema
    for key in path:
        while isinstance(node, dict) and "$ref" in node:
            ref = str(node["$ref"]).removeprefix("#/").split("/")
            node = schema
            for part in ref:
                node = node[part]  # type: ignore[index]
        if not isinstance(node, dict):
            return False
        properties = node.get("properties")
        if not isinstance(properties, dict) or key not in properties:
            return False
        node = properties[key]
    return True


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.name)
def test_host_fields_read_exist_in_the_schema(path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    fields = set(re.findall(r"\bhost((?:\.[a-zA-Z]+)+)", path.read_text()))
    assert path != HARDWARE or fields, "colima-vz.nix reads host data"
    missing = [f for f in sorted(fields) if not _schema_has(schema, f.strip(".").split("."))]
    assert missing == [], f"{path.name} reads host fields absent from the schema: {missing}"


def test_lima_guest_embeds_the_three_scripts() -> None:
    assert sorted(embedded_scripts()) == ["guestagentScript", "initScript", "renameScript"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("name", ["guestagentScript", "initScript", "renameScript"])
def test_embedded_scripts_are_shellcheck_clean(name: str, tmp_path: Path) -> None:
    # writeShellApplication runs shellcheck on these at build time; fail here first.
    script = tmp_path / f"{name}.sh"
    script.write_text(embedded_scripts()[name])
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def cidata(tmp_path: Path) -> Path:
    mount = tmp_path / "cidata"
    mount.mkdir()
    (mount / "network-config").write_text(NETWORK_CONFIG)
    (mount / "user-data").write_text(USER_DATA)
    (mount / "lima.env").write_text(LIMA_ENV)
    (mount / "meta-data").write_text("instance-id: iid-boot-42\nlocal-hostname: lima-dev-a\n")
    return mount


def run_script(name: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"{name}.sh"
    script.write_text(embedded_scripts()[name])
    bin_dir = tmp_path / "bin"
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    return subprocess.run(
        ["bash", str(script)], env=full_env, capture_output=True, text=True, check=False
    )


def fake_sysfs(tmp_path: Path, nics: dict[str, str]) -> Path:
    net = tmp_path / "sys-class-net"
    for name, mac in nics.items():
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
    return net


def test_nics_are_renamed_by_mac_from_network_config(cidata: Path, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    log = tmp_path / "calls.log"
    recorder(tmp_path / "bin", "ip", log)
    recorder(tmp_path / "bin", "udevadm", log)
    net = fake_sysfs(
        tmp_path,
        {"lo": "00:00:00:00:00:00", "enp0s1": "52:55:55:aa:bb:01", "enp0s2": "52:55:55:aa:bb:02"},
    )
    result = run_script(
        "renameScript",
        tmp_path,
        {"LIMA_CIDATA_MNT": str(cidata), "SYSFS_NET": str(net), "NIC_WAIT_SECONDS": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "udevadm settle --timeout=0",
        "ip link set dev enp0s1 down",
        "ip link set dev enp0s1 name eth0",
        "ip link set dev enp0s2 down",
        "ip link set dev enp0s2 name col0",
    ]


def test_nics_already_named_are_left_alone(cidata: Path, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    log = tmp_path / "calls.log"
    recorder(tmp_path / "bin", "ip", log)
    recorder(tmp_path / "bin", "udevadm", log)
    net = fake_sysfs(tmp_path, {"eth0": "52:55:55:aa:bb:01", "enp0s2": "52:55:55:aa:bb:02"})
    result = run_script(
        "renameScript",
        tmp_path,
        {"LIMA_CIDATA_MNT": str(cidata), "SYSFS_NET": str(net), "NIC_WAIT_SECONDS": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "udevadm settle --timeout=0",
        "ip link set dev enp0s2 down",
        "ip link set dev enp0s2 name col0",
    ]


def test_missing_nic_is_reported_and_the_others_renamed(cidata: Path, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    log = tmp_path / "calls.log"
    recorder(tmp_path / "bin", "ip", log)
    recorder(tmp_path / "bin", "udevadm", log)
    net = fake_sysfs(tmp_path, {"enp0s1": "52:55:55:aa:bb:01"})
    result = run_script(
        "renameScript",
        tmp_path,
        {"LIMA_CIDATA_MNT": str(cidata), "SYSFS_NET": str(net), "NIC_WAIT_SECONDS": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "no NIC with MAC 52:55:55:aa:bb:02 for col0" in result.stderr
    assert log.read_text().splitlines()[-1] == "ip link set dev enp0s1 name eth0"


def _init_env(cidata: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "LIMA_CIDATA_MNT": str(cidata),
        "LIMA_RUN_DIR": str(tmp_path / "run"),
        "LIMA_KEYS_DIR": str(tmp_path / "etc-ssh-authorized_keys.d"),
    }


def test_lima_user_keys_and_gates(cidata: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "run").mkdir()
    log = tmp_path / "calls.log"
    recorder(bin_dir, "id", log, exit_code=1)  # the user does not exist yet
    recorder(bin_dir, "usermod", log)
    recorder(bin_dir, "chown", log)
    home = tmp_path / "home-alice"
    # useradd --create-home makes the home directory; so does the fake.
    executable(bin_dir / "useradd", f'#!/bin/sh\necho "useradd $*" >>"{log}"\nmkdir -p "{home}"\n')
    (cidata / "lima.env").write_text(LIMA_ENV.replace("/home/alice.linux", str(home)))

    result = run_script("initScript", tmp_path, _init_env(cidata, tmp_path))
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert (
        f"useradd --uid 501 --user-group --home-dir {home} --create-home "
        "--shell /run/current-system/sw/bin/bash --comment Lima (Colima) login alice"
    ) in calls
    assert "usermod --append --groups lima alice" in calls
    assert f"chown -R 501 {home}/.ssh" in calls
    keys_file = tmp_path / "etc-ssh-authorized_keys.d" / "alice"
    assert keys_file.read_text() == LIMA_KEY + "\n"
    assert oct(keys_file.stat().st_mode & 0o777) == "0o444"
    user_keys = home / ".ssh" / "authorized_keys"
    assert user_keys.read_text() == LIMA_KEY + "\n"
    assert oct(user_keys.stat().st_mode & 0o777) == "0o600"
    meta = (cidata / "meta-data").read_text()
    assert (tmp_path / "run" / "lima-ssh-ready").read_text() == meta
    assert (tmp_path / "run" / "lima-boot-done").read_text() == meta


def test_existing_lima_user_is_not_recreated(cidata: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "run").mkdir()
    log = tmp_path / "calls.log"
    for name in ("id", "usermod", "chown", "useradd"):
        recorder(bin_dir, name, log)
    home = tmp_path / "home-alice"
    home.mkdir()
    (cidata / "lima.env").write_text(LIMA_ENV.replace("/home/alice.linux", str(home)))
    result = run_script("initScript", tmp_path, _init_env(cidata, tmp_path))
    assert result.returncode == 0, result.stderr
    assert not any(call.startswith("useradd") for call in log.read_text().splitlines())


def test_user_data_without_keys_fails_before_opening_the_gates(
    cidata: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "run").mkdir()
    log = tmp_path / "calls.log"
    for name in ("id", "usermod", "chown", "useradd"):
        recorder(bin_dir, name, log)
    (cidata / "user-data").write_text(USER_DATA.replace(f'      - "{LIMA_KEY}"\n', ""))
    result = run_script("initScript", tmp_path, _init_env(cidata, tmp_path))
    assert result.returncode == 1
    assert "no ssh-authorized-keys" in result.stderr
    assert not (tmp_path / "run" / "lima-ssh-ready").exists()


@pytest.mark.parametrize(
    ("vsock", "virtio", "expected"),
    [
        ("2222", "", "daemon --vsock-port 2222"),
        ("0", "io.lima-vm.guest_agent.0", "daemon --virtio-port io.lima-vm.guest_agent.0"),
    ],
)
def test_guest_agent_arguments(
    cidata: Path, tmp_path: Path, vsock: str, virtio: str, expected: str
) -> None:
    (tmp_path / "bin").mkdir()
    log = tmp_path / "calls.log"
    executable(cidata / "lima-guestagent", f'#!/bin/sh\necho "$*" >>"{log}"\n')
    env_text = LIMA_ENV.replace("VSOCK_PORT=2222", f"VSOCK_PORT={vsock}").replace(
        "VIRTIO_PORT=", f"VIRTIO_PORT={virtio}"
    )
    (cidata / "lima.env").write_text(env_text)
    result = run_script("guestagentScript", tmp_path, {"LIMA_CIDATA_MNT": str(cidata)})
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [expected]
