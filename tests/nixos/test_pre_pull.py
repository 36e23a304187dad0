"""The nodes pull the CNI's images while k3s starts (nixos/modules/k3s.nix, k3s-pre-pull.sh).

The unit is evaluated with the real nixpkgs modules (../shared/nixlite): on the host and inside
its nspawn containers, started with k3s and held back with it; the script runs against a
stand-in `k3s crictl`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nixos.test_modules import nix_eval

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
KIT = Path(os.environ.get("NIXLITE", ROOT.parent / "shared" / "nixlite"))
SCRIPT = ROOT / "nixos" / "modules" / "k3s-pre-pull.sh"
NIX_INSTANTIATE = shutil.which("nix-instantiate")

needs_kit = pytest.mark.skipif(
    NIX_INSTANTIATE is None or not (KIT / "nixos" / "lib" / "eval-config.nix").is_file(),
    reason="needs nix-instantiate (Debian nix-bin) and ../shared/nixlite",
)

# The unit's settings and the list it reads (nixlite's writeText keeps the text it was given),
# for the host and for each container's own system.
REPORT = """
let
  special = import SPECIAL;
  sys = import KIT/nixos/lib/eval-config.nix {
    modules = [ ROOT/nixos/configuration.nix ];
    specialArgs = special;
  };
  unit = cfg:
    let u = cfg.systemd.services.k3s-pre-pull or { enable = false; }; in
    if !u.enable then null else {
      inherit (u) wantedBy partOf;
      unitConfig = u.unitConfig or { };
      execStart = u.serviceConfig.ExecStart;
      type = u.serviceConfig.Type;
      remain = u.serviceConfig.RemainAfterExit;
      afterK3s = builtins.elem "k3s.service" (u.after or [ ]);
    };
  list = cfg: cfg.nixosK3s.k3s.prePullImages;
in {
  host = { unit = unit sys.config; images = list sys.config; };
  containers = builtins.mapAttrs (_: c: { unit = unit c.config; images = list c.config; })
    sys.config.containers;
}
"""


def evaluate(fixture: str, tmp_path: Path) -> dict:
    host = FIXTURES / fixture
    special = tmp_path / "special.nix"
    stub = tmp_path / "disko-stub.nix"
    stub.write_text(
        "{ lib, ... }: { options.disko = lib.mkOption "
        "{ type = lib.types.attrsOf lib.types.anything; default = { }; }; }\n"
    )
    special.write_text(
        "{ host = builtins.fromJSON (builtins.readFile "
        f"{host}); inputs = {{ disko = {{ nixosModules = {{ disko = {stub}; "
        f"default = {stub}; }}; }}; self = {{ outPath = {ROOT}/nixos; }}; }}; }}\n"
    )
    expr = (
        REPORT.replace("SPECIAL", str(special)).replace("KIT", str(KIT)).replace("ROOT", str(ROOT))
    )
    return nix_eval(expr)


def check_unit(unit: dict, images: list[str], held: bool = True) -> None:
    assert unit["wantedBy"] == ["k3s.service"] and unit["partOf"] == ["k3s.service"]
    # Not ordered after k3s: a server's k3s.service is active only once it has joined etcd.
    assert not unit["afterK3s"]
    # No start job waits for the pull; active after it, so a changed list restarts it.
    assert unit["type"] == "exec" and unit["remain"] is True
    # Held back with k3s on a host (the deploy releases both); a container's k3s is not held.
    hold = {"ConditionPathExists": "/var/lib/nixos-k3s/k3s-released"} if held else {}
    assert unit["unitConfig"] == hold
    assert "k3s-pre-pull.sh" in unit["execStart"] and "pre-pull-images.txt" in unit["execStart"]
    assert images


@needs_kit
def test_server_pulls_the_cilium_images_while_k3s_starts(tmp_path: Path) -> None:
    report = evaluate("hetzner-server.json", tmp_path)
    expected = json.loads((FIXTURES / "hetzner-server.json").read_text())["k3s"]["prePullImages"]
    assert report["host"]["images"] == expected
    check_unit(report["host"]["unit"], expected)


@needs_kit
def test_container_agents_pull_in_their_own_k3s(tmp_path: Path) -> None:
    report = evaluate("hetzner-containers.json", tmp_path)
    fixture = json.loads((FIXTURES / "hetzner-containers.json").read_text())
    check_unit(report["host"]["unit"], report["host"]["images"])
    for container in fixture["containers"]:
        inner = report["containers"][container["name"]]
        assert inner["images"] == container["k3s"]["prePullImages"]
        check_unit(inner["unit"], inner["images"], held=False)


@needs_kit
def test_no_list_no_unit(tmp_path: Path) -> None:
    report = evaluate("hetzner-flannel-containers.json", tmp_path)
    assert report["host"]["unit"] is None
    assert all(c["unit"] is None for c in report["containers"].values())


# --- the script -----------------------------------------------------------------------------


def stand_in_k3s(
    tmp_path: Path, *, present: str = "", failing: str = "", up_after: int = 0, overlap: int = 0
) -> Path:
    """A `k3s` whose crictl answers `info` after `up_after` calls, knows `present` and cannot
    pull `failing` (its stderr as crictl's: a klog line, then logrus's fatal line); every call is
    logged. With `overlap`, each pull records its start and then waits (up to 20 s) until
    `overlap` pulls have started, failing if they have not: only concurrent pulls all succeed."""
    log = tmp_path / "calls"
    started = tmp_path / "started"
    k3s = tmp_path / "k3s"
    k3s.write_text(
        f"""#!/usr/bin/env bash
echo "$*" >>{log}
[[ $1 == crictl ]] || exit 9
shift
[[ $1 == --runtime-endpoint && $3 == --image-endpoint ]] || exit 9
verb=$5 image=${{6:-}}
case $verb in
info) n=$(grep -c ' info$' {log}); ((n > {up_after})) ;;
inspecti) [[ -n "{present}" && $image == "{present}" ]] ;;
pull)
  echo "$image" >>{started}
  for ((tick = 0; tick < 200 && $(wc -l <{started}) < {overlap}; tick++)); do sleep 0.1; done
  (($(wc -l <{started}) >= {overlap})) || {{ echo "only $(wc -l <{started}) started" >&2; exit 1; }}
  if [[ $image == "{failing}" ]]; then
    echo 'E1203 18:56:07.000000 1 remote_image.go:180] "PullImage from image service failed"' >&2
    echo 'time="2026-12-03T18:56:07Z" level=fatal msg="pulling image: not found"' >&2
    exit 1
  fi
  echo "Image is up to date for sha256:0"
  ;;
*) exit 9 ;;
esac
"""
    )
    k3s.chmod(0o755)
    return k3s


def run_script(
    tmp_path: Path, k3s: Path, images: list[str], **env: str
) -> subprocess.CompletedProcess:
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{image}\n" for image in images))
    return subprocess.run(
        ["bash", str(SCRIPT), str(k3s), str(listing)],
        capture_output=True,
        text=True,
        env={**os.environ, "POLL_INTERVAL": "0", **env},
        check=False,
    )


def pulls(tmp_path: Path) -> list[str]:
    return [
        line.split()[-1]
        for line in (tmp_path / "calls").read_text().splitlines()
        if " pull " in line
    ]


def test_script_waits_for_containerd_then_pulls_what_is_missing(tmp_path: Path) -> None:
    k3s = stand_in_k3s(tmp_path, present="quay.io/a:1", up_after=3)
    done = run_script(tmp_path, k3s, ["quay.io/a:1", "quay.io/b:2@sha256:" + "0" * 64])
    assert done.returncode == 0, done.stderr
    assert pulls(tmp_path) == ["quay.io/b:2@sha256:" + "0" * 64]
    assert "quay.io/a:1 is present" in done.stdout
    assert (
        "--runtime-endpoint unix:///run/k3s/containerd/containerd.sock"
        in (tmp_path / "calls").read_text()
    )


def test_script_never_fails_the_node(tmp_path: Path) -> None:
    k3s = stand_in_k3s(tmp_path, failing="quay.io/a:1")
    done = run_script(tmp_path, k3s, ["quay.io/a:1", "quay.io/b:2"])
    assert done.returncode == 0
    # Concurrent: the calls' order is the order the background pulls reached the stand-in.
    assert sorted(pulls(tmp_path)) == ["quay.io/a:1", "quay.io/b:2"]
    # One line for the failed image, crictl's fatal message without its time field.
    assert done.stderr.splitlines() == [
        'k3s-pre-pull: could not pull quay.io/a:1 (level=fatal msg="pulling image: not found"); '
        "the kubelet pulls it when its pod starts"
    ]
    assert re.fullmatch(r"k3s-pre-pull: pulled quay\.io/b:2 in \d+s\n", done.stdout)
    (tmp_path / "down").mkdir()
    never_up = stand_in_k3s(tmp_path / "down", up_after=10**6)
    done = run_script(tmp_path / "down", never_up, ["quay.io/a:1"], WAIT_SECONDS="0")
    assert done.returncode == 0 and "did not answer" in done.stderr


def test_script_pulls_the_missing_images_concurrently(tmp_path: Path) -> None:
    # Each stand-in pull waits until all three have started: pulled one after another, the first
    # would give up after 20 s and the test fail (it does against the sequential script).
    missing = ["quay.io/cilium/cilium:v1", "quay.io/cilium/cilium-envoy:v1", "quay.io/op:v1"]
    k3s = stand_in_k3s(tmp_path, present="quay.io/a:1", overlap=len(missing))
    done = run_script(tmp_path, k3s, ["quay.io/a:1", *missing])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert sorted(pulls(tmp_path)) == sorted(missing)
    # One line an image: the present one first (list order), then one per pull as it ends.
    lines = done.stdout.splitlines()
    assert lines[0] == "k3s-pre-pull: quay.io/a:1 is present"
    pulled = [re.fullmatch(r"k3s-pre-pull: pulled (\S+) in \d+s", line) for line in lines[1:]]
    assert sorted(m.group(1) for m in pulled if m) == sorted(missing) and all(pulled)
