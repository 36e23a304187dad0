"""The CNI's images are downloaded before k3s runs (nixos/modules/k3s-cni-fetch.sh, cni-images.nix).

The units, the tool on the host's PATH and the containers' binds are evaluated with the real
nixpkgs modules (../shared/nixlite); the script runs against a stand-in `skopeo`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.nixos.test_pre_pull import FIXTURES, HOST_SYSTEM, ROOT, evaluate, needs_kit

SCRIPT = ROOT / "nixos" / "modules" / "k3s-cni-fetch.sh"
DIR = "/var/lib/nixos-k3s/cni-images"

REPORT = (
    HOST_SYSTEM
    + """
  fetchUnit = cfg:
    let u = cfg.systemd.services.k3s-cni-fetch or { enable = false; }; in
    if !(u.enable or true) then null else {
      inherit (u) wantedBy after wants;
      unitConfig = u.unitConfig or { };
      execStart = u.serviceConfig.ExecStart;
      type = u.serviceConfig.Type;
      remain = u.serviceConfig.RemainAfterExit;
    };
  prePull = cfg: let u = cfg.systemd.services.k3s-pre-pull; in {
    execStart = u.serviceConfig.ExecStart;
    path = map (p: p.name) (u.path or [ ]);
  };
  tool = builtins.head (builtins.filter (p: p.name == "nixos-k3s-cni-fetch")
    sys.config.environment.systemPackages);
in {
  host = {
    fetch = fetchUnit sys.config;
    images = sys.config.nixosK3s.k3s.fetchImages;
    prePull = prePull sys.config;
    tmpfiles = sys.config.systemd.tmpfiles.settings."10-nixos-k3s-cni-images" or null;
    tool = { main = "${tool}/bin/${tool.meta.mainProgram}"; wrapper = tool.passthru.content; };
  };
  containers = builtins.mapAttrs (_: c: {
    fetch = fetchUnit c.config;
    images = c.config.nixosK3s.k3s.fetchImages;
    prePull = prePull c.config;
    hasTool = builtins.any (p: (p.name or "") == "nixos-k3s-cni-fetch")
      c.config.environment.systemPackages;
  }) sys.config.containers;
  binds = builtins.mapAttrs (_: c: builtins.filter (f: builtins.match ".*cni-images.*" f != null)
    c.extraFlags) sys.config.containers;
}
"""
)


@pytest.fixture(autouse=True)
def skopeo_in_nixlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """nixlite's fake pkgs has the packages it was told of (eval-host.sh scans for them)."""
    monkeypatch.setenv("NIXLITE_EXTRA_PKGS", "skopeo")


@needs_kit
def test_the_host_downloads_its_and_its_containers_images_from_boot(tmp_path: Path) -> None:
    report = evaluate("hetzner-containers.json", tmp_path, REPORT)
    fixture = json.loads((FIXTURES / "hetzner-containers.json").read_text())
    listed = fixture["k3s"]["prePullImages"] + [
        image for c in fixture["containers"] for image in c["k3s"]["prePullImages"]
    ]
    host = report["host"]
    # The document's list, as render.fetch_images forms it.
    assert host["images"] == fixture["k3s"]["fetchImages"] == sorted(set(listed))
    fetch = host["fetch"]
    assert fetch["wantedBy"] == ["multi-user.target"]
    assert fetch["after"] == ["network-online.target"] == fetch["wants"]
    # Not held back with k3s: it runs while k3s waits for its turn.
    assert fetch["unitConfig"] == {}
    # No start job (boot, activation) waits for the download; a changed list restarts it.
    assert fetch["type"] == "exec" and fetch["remain"] is True
    assert fetch["execStart"].startswith(host["tool"]["main"] + " ")
    assert fetch["execStart"].endswith("-cni-fetch-images.txt")
    assert host["tmpfiles"] == {DIR: {"d": {"mode": "0755", "user": "root", "group": "root"}}}
    # The tool on the system's PATH, wrapped with its directory, policy and programs.
    assert host["tool"]["main"].endswith("/bin/nixos-k3s-cni-fetch")
    wrapper = host["tool"]["wrapper"]
    assert "k3s-cni-fetch.sh" in wrapper and f"--set ARCHIVE_DIR {DIR}" in wrapper
    assert re.search(
        r"--set SKOPEO_POLICY /nix/store/\S+-skopeo/etc/containers/default-policy\.json", wrapper
    )
    for program in ("skopeo", "jq", "coreutils", "findutils", "util-linux"):
        assert re.search(rf"/nix/store/[^/:]+-{program}/bin", wrapper), program
    # Every pre-pull imports from the directory; flock comes from util-linux.
    assert host["prePull"]["execStart"].endswith(f"-pre-pull-images.txt {DIR}")
    assert host["prePull"]["path"] == ["util-linux"]

    for name, container in report["containers"].items():
        # The containers' images come from the host's download, read-only at the same path.
        assert report["binds"][name] == [f"--bind-ro={DIR}"]
        assert container["fetch"] is None and container["images"] == []
        assert container["hasTool"] is False
        assert container["prePull"]["execStart"].endswith(f"-pre-pull-images.txt {DIR}")


@needs_kit
def test_a_server_without_containers_downloads_its_own_images(tmp_path: Path) -> None:
    report = evaluate("hetzner-server.json", tmp_path, REPORT)
    fixture = json.loads((FIXTURES / "hetzner-server.json").read_text())
    assert report["host"]["images"] == fixture["k3s"]["fetchImages"]
    assert fixture["k3s"]["fetchImages"] == sorted(fixture["k3s"]["prePullImages"])
    assert report["host"]["fetch"] is not None and report["containers"] == {}


@needs_kit
def test_no_images_no_download_and_no_bind(tmp_path: Path) -> None:
    report = evaluate("hetzner-flannel-containers.json", tmp_path, REPORT)
    assert report["host"]["fetch"] is None and report["host"]["tmpfiles"] is None
    assert all(binds == [] for binds in report["binds"].values())
    # The tool is there all the same (the base system's: the deploy may start it early).
    assert report["host"]["tool"]["main"].endswith("/bin/nixos-k3s-cni-fetch")


# --- the script -----------------------------------------------------------------------------

CILIUM = "quay.io/cilium/cilium:v1.19.6@sha256:" + "1" * 64
ENVOY = "quay.io/cilium/cilium-envoy:v1.36@sha256:" + "2" * 64
OPERATOR = "registry.local:5000/cilium/operator@sha256:" + "3" * 64


def archive(image: str) -> str:
    return f"sha256-{image.rsplit(':', 1)[1]}.tar"


def stand_in_skopeo(tmp_path: Path, *, failing: str = "", slow: str = "", overlap: int = 0) -> Path:
    """A `skopeo copy` that logs its arguments, writes the archive its destination names, fails
    for a source containing `failing` (after writing half an archive) and, for one containing
    `slow`, waits until $tmp_path/go exists. With `overlap`, each copy waits (up to 20 s) until
    `overlap` copies have started, failing if they have not: only concurrent copies succeed."""
    skopeo = tmp_path / "skopeo"
    log = tmp_path / "skopeo-calls"
    started = tmp_path / "started"
    skopeo.write_text(
        f"""#!/usr/bin/env bash
echo "$*" >>{log}
source=${{@: -2:1}} dest=${{@: -1}}
path=${{dest#oci-archive:}} path=${{path%%:*}}
echo "$source" >>{started}
for ((tick = 0; tick < 200 && $(wc -l <{started}) < {overlap}; tick++)); do sleep 0.1; done
(($(wc -l <{started}) >= {overlap})) || {{ echo "only $(wc -l <{started}) started" >&2; exit 1; }}
if [[ -n "{slow}" && $source == *"{slow}"* ]]; then
  until [[ -e {tmp_path}/go ]]; do sleep 0.05; done
fi
umask 077  # the archive's mode is the script's business
echo half >"$path"
if [[ -n "{failing}" && $source == *"{failing}"* ]]; then
  echo 'time="2026-12-03T18:56:07Z" level=fatal msg="reading manifest: 404"' >&2
  exit 1
fi
echo "oci archive of $source" >"$path"
"""
    )
    skopeo.chmod(0o755)
    return skopeo


def fetch_argv(tmp_path: Path, images: list[str] | None = None, host_json: Path | None = None):
    if host_json is not None:
        return ["bash", str(SCRIPT), "--host-json", str(host_json)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{image}\n" for image in images or []))
    return ["bash", str(SCRIPT), str(listing)]


def fetch_env(tmp_path: Path, skopeo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ARCHIVE_DIR": str(tmp_path / "cni-images"),
        "SKOPEO_POLICY": "/nix/store/x-skopeo/etc/containers/default-policy.json",
        "SKOPEO": str(skopeo),
    }


def run_fetch(
    tmp_path: Path, skopeo: Path, images: list[str] | None = None, host_json: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        fetch_argv(tmp_path, images, host_json),
        capture_output=True,
        text=True,
        env=fetch_env(tmp_path, skopeo),
        check=False,
    )


def copies(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "skopeo-calls"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def listing(directory: Path) -> dict[str, str]:
    return {p.name: oct(p.stat().st_mode & 0o777) for p in directory.iterdir() if p.name != ".lock"}


def test_fetch_writes_one_archive_per_image_named_by_digest(tmp_path: Path) -> None:
    skopeo = stand_in_skopeo(tmp_path, overlap=3)
    done = run_fetch(tmp_path, skopeo, [ENVOY, CILIUM, OPERATOR, CILIUM, ""])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    directory = tmp_path / "cni-images"
    # Only the finished archives, world-readable (containers read them through a bind).
    assert listing(directory) == {archive(i): "0o644" for i in (CILIUM, ENVOY, OPERATOR)}
    assert oct(directory.stat().st_mode & 0o777) == "0o755"
    assert (directory / archive(CILIUM)).read_text() == (
        f"oci archive of docker://quay.io/cilium/cilium@sha256:{'1' * 64}\n"
    )
    calls = {call[-2]: call for call in copies(tmp_path)}
    assert len(calls) == 3
    cilium = calls[f"docker://quay.io/cilium/cilium@sha256:{'1' * 64}"]
    assert cilium == [
        "--policy",
        "/nix/store/x-skopeo/etc/containers/default-policy.json",
        "--tmpdir",
        f"{directory}/.tmp",
        "--command-timeout",
        "30m",
        "copy",
        "--quiet",
        "--retry-times",
        "3",
        f"docker://quay.io/cilium/cilium@sha256:{'1' * 64}",
        f"oci-archive:{directory}/.tmp-{archive(CILIUM)}:v1.19.6",
    ]
    # No tag: the archive's ref name is the digest's file name; a registry port stays.
    operator = calls[f"docker://registry.local:5000/cilium/operator@sha256:{'3' * 64}"]
    assert operator[-1] == f"oci-archive:{directory}/.tmp-{archive(OPERATOR)}:sha256-{'3' * 64}"
    lines = sorted(re.sub(r" in \d+s$", "", line) for line in done.stdout.splitlines())
    assert lines == sorted(f"nixos-k3s-cni-fetch: fetched {i}" for i in (CILIUM, ENVOY, OPERATOR))


def test_fetch_skips_fetched_and_imported_images_and_removes_stale_ones(tmp_path: Path) -> None:
    directory = tmp_path / "cni-images"
    directory.mkdir()
    (directory / archive(CILIUM)).write_text("earlier\n")
    (directory / archive(ENVOY).replace(".tar", ".imported")).touch()
    stale = "quay.io/cilium/cilium:v1.18@sha256:" + "9" * 64
    (directory / archive(stale)).write_text("old\n")
    (directory / archive(stale).replace(".tar", ".imported")).touch()
    (directory / f".tmp-{archive(OPERATOR)}").write_text("half\n")
    skopeo = stand_in_skopeo(tmp_path)
    done = run_fetch(tmp_path, skopeo, [CILIUM, ENVOY, OPERATOR])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [call[-2] for call in copies(tmp_path)] == [
        f"docker://registry.local:5000/cilium/operator@sha256:{'3' * 64}"
    ]
    assert (directory / archive(CILIUM)).read_text() == "earlier\n"
    assert sorted(listing(directory)) == sorted(
        [archive(CILIUM), archive(ENVOY).replace(".tar", ".imported"), archive(OPERATOR)]
    )
    assert f"nixos-k3s-cni-fetch: {CILIUM} is fetched" in done.stdout
    assert f"nixos-k3s-cni-fetch: {ENVOY} is imported" in done.stdout


def test_one_failed_image_does_not_stop_the_others(tmp_path: Path) -> None:
    skopeo = stand_in_skopeo(tmp_path, failing="cilium-envoy", overlap=3)
    tag_only = "quay.io/cilium/hubble:v1"
    done = run_fetch(tmp_path, skopeo, [CILIUM, ENVOY, OPERATOR, tag_only])
    assert done.returncode == 0
    # No half archive under the final name, none left behind.
    assert sorted(listing(tmp_path / "cni-images")) == sorted([archive(CILIUM), archive(OPERATOR)])
    assert sorted(done.stderr.splitlines()) == sorted(
        [
            f"nixos-k3s-cni-fetch: could not fetch {ENVOY} "
            '(level=fatal msg="reading manifest: 404"); the pull fetches it',
            f"nixos-k3s-cni-fetch: {tag_only} has no digest; the pull fetches it",
        ]
    )


def test_fetch_reads_the_host_document(tmp_path: Path) -> None:
    # k3s.fetchImages only: the containers' lists are in it already (render.fetch_images).
    document = {
        "k3s": {"prePullImages": [ENVOY], "fetchImages": [CILIUM, ENVOY, OPERATOR]},
        "containers": [{"k3s": {"prePullImages": [CILIUM, "quay.io/other/x@sha256:" + "1" * 64]}}],
    }
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps(document))
    skopeo = stand_in_skopeo(tmp_path)
    done = run_fetch(tmp_path, skopeo, host_json=host_json)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert sorted(listing(tmp_path / "cni-images")) == sorted(
        archive(i) for i in (CILIUM, ENVOY, OPERATOR)
    )
    assert len(copies(tmp_path)) == 3
    # A document without the sections (an image host's) fetches nothing; a broken one says so.
    host_json.write_text(json.dumps({"name": "x"}))
    done = run_fetch(tmp_path, skopeo, host_json=host_json)
    assert done.returncode == 0 and done.stdout == "" and len(copies(tmp_path)) == 3
    host_json.write_text("{")
    done = run_fetch(tmp_path, skopeo, host_json=host_json)
    assert done.returncode == 0
    assert f"cannot read the images of host document {host_json}" in done.stderr


def start_fetch(tmp_path: Path, skopeo: Path) -> subprocess.Popen[str]:
    """A fetch of cilium and envoy, running in the background."""
    return subprocess.Popen(
        fetch_argv(tmp_path, [CILIUM, ENVOY]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=fetch_env(tmp_path, skopeo),
    )


def test_a_second_run_waits_for_the_first_and_downloads_nothing_twice(tmp_path: Path) -> None:
    skopeo = stand_in_skopeo(tmp_path, slow="cilium@")
    first = start_fetch(tmp_path, skopeo)
    deadline = time.monotonic() + 10
    while len(copies(tmp_path)) < 2:
        assert time.monotonic() < deadline, "the first run never started its copies"
        time.sleep(0.05)
    second = start_fetch(tmp_path, skopeo)
    time.sleep(1)
    assert second.poll() is None, "the second run did not wait for the lock"
    # A reader (the pre-pull) cannot take the lock shared while the first run downloads.
    with (tmp_path / "cni-images/.lock").open() as lock, pytest.raises(BlockingIOError):
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    (tmp_path / "go").touch()
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    assert len(copies(tmp_path)) == 2
    out, _ = second.communicate()
    assert sorted(out.splitlines()) == sorted(
        [f"nixos-k3s-cni-fetch: {CILIUM} is fetched", f"nixos-k3s-cni-fetch: {ENVOY} is fetched"]
    )


def test_two_references_to_one_image_download_it_once(tmp_path: Path) -> None:
    other_tag = CILIUM.replace(":v1.19.6@", ":stable@")
    skopeo = stand_in_skopeo(tmp_path)
    done = run_fetch(tmp_path, skopeo, [CILIUM, other_tag])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(copies(tmp_path)) == 1
    assert listing(tmp_path / "cni-images") == {archive(CILIUM): "0o644"}
