"""The nodes pull the CNI's images while k3s starts (nixos/modules/k3s.nix, k3s-pre-pull.sh).

The unit is evaluated with the real nixpkgs modules (../shared/nixlite): on the host and inside
its nspawn containers, started with k3s and held back with it; the script runs against a
stand-in `k3s crictl`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
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

# The start of a report's `let`: `sys`, the host document's system (see evaluate).
HOST_SYSTEM = """
let
  special = import SPECIAL;
  sys = import KIT/nixos/lib/eval-config.nix {
    modules = [ ROOT/nixos/configuration.nix ];
    specialArgs = special;
  };
"""

# The unit's settings and the list it reads (nixlite's writeText keeps the text it was given),
# for the host and for each container's own system.
REPORT = (
    HOST_SYSTEM
    + """  unit = cfg:
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
)


def evaluate(fixture: str, tmp_path: Path, report: str = REPORT) -> dict:
    """`report` (a Nix expression with `sys`, the evaluated host, in scope: see REPORT) for the
    host document fixtures/`fixture`, through the real nixpkgs modules of ../shared/nixlite."""
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
        report.replace("SPECIAL", str(special)).replace("KIT", str(KIT)).replace("ROOT", str(ROOT))
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
    tmp_path: Path,
    *,
    present: str = "",
    failing: str = "",
    up_after: int = 0,
    overlap: int = 0,
    import_failing: str = "",
) -> Path:
    """A `k3s` whose crictl answers `info` after `up_after` calls, knows `present` and cannot
    pull `failing` (its stderr as crictl's: a klog line, then logrus's fatal line); every call is
    logged. With `overlap`, each pull records its start and then waits (up to 20 s) until
    `overlap` pulls have started, failing if they have not: only concurrent pulls all succeed.
    Its `ctr ... images import` (as the script calls it) reads the archive and fails for an
    archive named `import_failing`."""
    log = tmp_path / "calls"
    started = tmp_path / "started"
    k3s = tmp_path / "k3s"
    k3s.write_text(
        f"""#!/usr/bin/env bash
echo "$*" >>{log}
if [[ $1 == ctr ]]; then
  [[ $2 == --address && $3 == /run/k3s/containerd/containerd.sock && $4 == -n && $5 == k8s.io &&
    $6 == images && $7 == import && $8 == --base-name && ${{10}} == --no-unpack && $# == 11 ]] ||
    exit 9
  cat "${{11}}" >/dev/null || exit 1
  if [[ ${{11##*/}} == "{import_failing}" ]]; then
    echo 'ctr: failed to import: unexpected EOF' >&2
    exit 1
  fi
  exit 0
fi
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


def script_argv(tmp_path: Path, k3s: Path, images: list[str], archives: Path | None) -> list[str]:
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{image}\n" for image in images))
    return ["bash", str(SCRIPT), str(k3s), str(listing), *([str(archives)] if archives else [])]


def run_script(
    tmp_path: Path, k3s: Path, images: list[str], archives: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        script_argv(tmp_path, k3s, images, archives),
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


# --- importing the archives of k3s-cni-fetch.sh ---------------------------------------------

CILIUM = "quay.io/cilium/cilium:v1.19.6@sha256:" + "1" * 64
ENVOY = "quay.io/cilium/cilium-envoy:v1.36@sha256:" + "2" * 64
OPERATOR = "quay.io/cilium/operator:v1.19.6@sha256:" + "3" * 64


def archive_dir(tmp_path: Path, *images: str) -> Path:
    """The fetch's directory with its lock file and an archive of each of `images`."""
    archives = tmp_path / "cni-images"
    archives.mkdir()
    (archives / ".lock").touch()
    for image in images:
        (archives / f"sha256-{image.rsplit(':', 1)[1]}.tar").write_text("oci archive\n")
    return archives


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def imports(tmp_path: Path) -> list[tuple[str, str]]:
    """(base name, archive file name) of each `ctr images import`."""
    return [
        (line.split()[8], Path(line.split()[10]).name)
        for line in calls(tmp_path)
        if line.startswith("ctr ")
    ]


def test_script_imports_the_fetched_archives_before_pulling(tmp_path: Path) -> None:
    present = "quay.io/cilium/hubble:v1@sha256:" + "4" * 64
    archives = archive_dir(tmp_path, CILIUM, ENVOY, present)
    k3s = stand_in_k3s(tmp_path, present=present)
    done = run_script(tmp_path, k3s, [present, CILIUM, ENVOY, OPERATOR], archives)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # The repository without tag or digest as the base name: ctr names the image REPO:TAG.
    assert sorted(imports(tmp_path)) == [
        ("quay.io/cilium/cilium", f"sha256-{'1' * 64}.tar"),
        ("quay.io/cilium/cilium-envoy", f"sha256-{'2' * 64}.tar"),
    ]
    # Every import ends before the first pull; every missing image is still pulled (its
    # manifests), the one without an archive in full.
    order = [
        line.split()[0] for line in calls(tmp_path) if line.split()[0] == "ctr" or " pull " in line
    ]
    assert order == ["ctr", "ctr", "crictl", "crictl", "crictl"]
    assert sorted(pulls(tmp_path)) == sorted([CILIUM, ENVOY, OPERATOR])
    lines = done.stdout.splitlines()
    assert sorted(re.sub(r" in \d+s$", "", line) for line in lines[1:3]) == sorted(
        [f"k3s-pre-pull: imported {CILIUM}", f"k3s-pre-pull: imported {ENVOY}"]
    )
    # Markers: the fetch need not download these again for this containerd.
    assert sorted(p.name for p in archives.glob("*.imported")) == [
        f"sha256-{'1' * 64}.imported",
        f"sha256-{'2' * 64}.imported",
    ]


def test_a_failed_import_leaves_the_image_to_its_pull(tmp_path: Path) -> None:
    archives = archive_dir(tmp_path, CILIUM)
    k3s = stand_in_k3s(tmp_path, import_failing=f"sha256-{'1' * 64}.tar")
    done = run_script(tmp_path, k3s, [CILIUM], archives)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"k3s-pre-pull: could not import {archives}/sha256-{'1' * 64}.tar "
        f"(ctr: failed to import: unexpected EOF); pulling {CILIUM} in full"
    ]
    assert pulls(tmp_path) == [CILIUM]
    assert not list(archives.glob("*.imported"))


def test_script_without_archives_pulls_as_before(tmp_path: Path) -> None:
    k3s = stand_in_k3s(tmp_path)
    # No directory (a host without the fetch), and a directory no fetch has locked yet.
    done = run_script(tmp_path, k3s, [CILIUM], tmp_path / "missing")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    (tmp_path / "empty").mkdir()
    done = run_script(tmp_path, k3s, [CILIUM], tmp_path / "empty")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert imports(tmp_path) == [] and pulls(tmp_path) == [CILIUM, CILIUM]


def test_script_waits_for_a_running_fetch(tmp_path: Path) -> None:
    archives = archive_dir(tmp_path, CILIUM)
    k3s = stand_in_k3s(tmp_path)
    with (archives / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        script = subprocess.Popen(
            script_argv(tmp_path, k3s, [CILIUM], archives),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "POLL_INTERVAL": "0"},
        )
        time.sleep(1.5)
        assert script.poll() is None and imports(tmp_path) == []
        fcntl.flock(lock, fcntl.LOCK_UN)
        _out, err = script.communicate(timeout=30)
    assert script.returncode == 0 and err == "", err
    assert imports(tmp_path) == [("quay.io/cilium/cilium", f"sha256-{'1' * 64}.tar")]
    assert pulls(tmp_path) == [CILIUM]

    # Bounded: a fetch that holds the lock past WAIT_SECONDS leaves the images to their pulls.
    (tmp_path / "calls").unlink()
    (archives / f"sha256-{'1' * 64}.imported").unlink()
    with (archives / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = run_script(tmp_path, k3s, [CILIUM], archives, WAIT_SECONDS="1")
    assert done.returncode == 0
    assert f"a fetch held {archives}/.lock for 1s" in done.stderr
    assert imports(tmp_path) == [] and pulls(tmp_path) == [CILIUM]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for a bind mount"
)
def test_a_read_only_directory_gets_no_marker(tmp_path: Path) -> None:
    # As a container's pre-pull sees the host's directory: a read-only bind at the same path.
    archives = archive_dir(tmp_path, CILIUM)
    k3s = stand_in_k3s(tmp_path)
    argv = script_argv(tmp_path, k3s, [CILIUM], archives)
    bind = f"mount --bind {archives} {archives} && mount -o remount,bind,ro {archives}"
    done = subprocess.run(
        ["unshare", "-m", "bash", "-c", f'{bind} && exec "$@"', "bash", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "POLL_INTERVAL": "0"},
        check=False,
    )
    if "mount:" in done.stderr:
        pytest.skip(f"no bind mounts here: {done.stderr.strip()}")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert imports(tmp_path) == [("quay.io/cilium/cilium", f"sha256-{'1' * 64}.tar")]
    assert not list(archives.glob("*.imported"))
