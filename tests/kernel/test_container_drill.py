"""Real-kernel drill: each container mode's namespaces and capabilities do what its CNI needs.

Twice: with `unshare` + `capsh` (namespaces and bounding set only), and under the real
systemd-nspawn with the flags k3s-containers.nix renders for the mode (its seccomp filter, the
mode's --capability=, --system-call-filter= and binds, private network and users) where
systemd-nspawn runs.

For every mode in nixos/modules/k3s-container-modes.json (the file k3s-containers.nix renders the
nspawn containers from) the drill rebuilds the container's namespaces with `unshare` (a user
namespace exactly when the mode's privateUsers is not "no") and its capability bounding set with
`capsh --drop` (systemd-nspawn's default set plus the mode's capabilities, nothing else), then
runs what the CNI does on a node:

- host-users (Cilium): mount bpffs and cgroup2, create a veth pair, add a clsact qdisc, load a
  tc BPF program with bpf(), pin it in the bpffs and attach it to the veth; write
  /proc/sys/net (loose rp_filter).
- user-namespace (flannel): create flannel's VXLAN device, the cni0 bridge and a veth pair.
- the refused combination: in the user namespace, bpf(BPF_PROG_LOAD) fails with EPERM.

Runs as root (here and in CI). Skips only where the kernel or the machine lacks a feature, and
says which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from components import containermodes

HERE = Path(__file__).parent
BPF_PROG = HERE / "bpf_prog.py"
TOOLS = ("unshare", "capsh", "ip", "tc", "mount")
# What the container's namespaces are: nspawn gives every container its own mount, pid, uts,
# ipc, cgroup and (privateNetwork) network namespace; the user namespace depends on the mode.
NAMESPACES = ("--mount", "--pid", "--fork", "--net", "--uts", "--ipc", "--cgroup")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the drill needs root (namespaces, BPF)"),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in TOOLS),
        reason="needs "
        + ", ".join(t for t in TOOLS if shutil.which(t) is None)
        + " (Debian: util-linux, libcap2-bin, iproute2)",
    ),
]


def kernel_capabilities() -> list[str]:
    """Every capability this kernel knows, as capsh names them (cap_chown, ...)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text(encoding="utf-8"))
    decoded = subprocess.run(
        ["capsh", f"--decode={(1 << (last + 1)) - 1:#x}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return decoded.split("=", 1)[1].split(",")


def own_bounding_set() -> set[str]:
    """The capabilities this test process may pass on (a sandbox may hold fewer than all)."""
    status = Path("/proc/self/status").read_text(encoding="utf-8")
    mask = int(
        next(line for line in status.splitlines() if line.startswith("CapBnd:")).split()[1], 16
    )
    return {name for bit, name in enumerate(kernel_capabilities()) if mask >> bit & 1}


def mode_capabilities(mode: str) -> set[str]:
    """The mode's bounding set, from the same data file the NixOS module renders it from."""
    return {cap.lower() for cap in containermodes.bounding_set(containermodes.modes()[mode])}


def run_in_container(mode: str, script: str, *, without: frozenset[str] = frozenset()) -> str:
    """Run `script` (bash) as root inside the mode's namespaces and capability bounding set.

    `without` removes capabilities from the mode's set (to show they are needed). Returns
    stdout+stderr; the script's own failure shows in the output (it runs with `set -e` off).
    """
    spec = containermodes.modes()[mode]
    keep = mode_capabilities(mode) - {cap.lower() for cap in without}
    unknown = keep - set(kernel_capabilities())
    if unknown:
        pytest.skip(f"kernel lacks capabilities {sorted(unknown)} that mode {mode} grants")
    drop = [cap for cap in kernel_capabilities() if cap not in keep]
    userns = ["--user", "--map-root-user"] if spec.user_namespaced else []
    command = [
        "unshare",
        *userns,
        *NAMESPACES,
        "--propagation",
        "private",
        "--",
        "capsh",
        f"--drop={','.join(drop)}",
        "--",
        "-c",
        script,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def bounding_mask_line(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("CapBnd:"))
    return int(line.split()[1], 16)


def names_of(mask: int) -> set[str]:
    return {name for bit, name in enumerate(kernel_capabilities()) if mask >> bit & 1}


def assert_node_ran(mode: str, output: str, steps: Sequence[str]) -> None:
    """The container held the mode's bounding set and printed every step of its CNI's work.

    A new user namespace hands its root every capability inside it, whatever this process's own
    bounding set lacks: the set is exactly the mode's. Without one it is the mode's set less
    what this machine's own bounding set lacks.
    """
    expected = mode_capabilities(mode)
    if not containermodes.modes()[mode].user_namespaced:
        expected &= own_bounding_set()
    assert names_of(bounding_mask_line(output)) == expected, output
    for step in steps:
        assert step in output, output


def require_kernel(feature: str, script: str) -> None:
    """Skip (naming the feature) when even full root in a fresh netns cannot do `script`."""
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"kernel lacks {feature}: {probe.stderr.strip()[:200]}")


# The node's bpffs: mounted by the drill itself, or (nspawn) the instance the host bound in.
MOUNT_OWN_BPFFS = 'bpffs=$(mktemp -d) && mount -t bpf bpf "$bpffs" && echo "bpffs mounted"'
HOST_BOUND_BPFFS = 'bpffs=/sys/fs/bpf && findmnt -t bpf "$bpffs" >/dev/null && echo "bpffs mounted"'


def cilium_node(python: str, prog: str, bpffs: str = MOUNT_OWN_BPFFS) -> str:
    return f"""
grep CapBnd /proc/self/status
{bpffs}
cgroup=$(mktemp -d)
mount -t cgroup2 none "$cgroup" && echo "cgroup2 mounted"
ip link add lxc-drill type veth peer name eth-drill && ip link set lxc-drill up \\
  && echo "veth created"
tc qdisc add dev lxc-drill clsact && echo "clsact added"
{python} {prog} "$bpffs/cil_from_container"
tc filter add dev lxc-drill ingress bpf direct-action object-pinned "$bpffs/cil_from_container" \\
  && echo "tc program attached"
tc filter show dev lxc-drill ingress
echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter && echo "rp_filter loose"
"""


def flannel_node(python: str, prog: str) -> str:
    return f"""
grep CapBnd /proc/self/status
ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning && echo "vxlan created"
ip link add cni0 type bridge && ip link set cni0 up && echo "bridge created"
ip link add veth-pod type veth peer name eth0-pod && ip link set veth-pod master cni0 \\
  && echo "veth created"
ip -d link show flannel.1
echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter && echo "rp_filter loose"
{python} {prog}
"""


CILIUM_NODE = cilium_node(sys.executable, str(BPF_PROG))
FLANNEL_NODE = flannel_node(sys.executable, str(BPF_PROG))
# What the scripts above print when every step works.
CILIUM_STEPS = (
    "bpffs mounted",
    "cgroup2 mounted",
    "veth created",
    "clsact added",
    "loaded",
    "pinned",
    "tc program attached",
    "rp_filter loose",
    "direct-action",
)
FLANNEL_STEPS = ("vxlan created", "bridge created", "veth created", "rp_filter loose")


def test_drill_capabilities_come_from_the_rendered_data() -> None:
    host_users = mode_capabilities("host-users")
    assert {"cap_bpf", "cap_net_admin", "cap_perfmon", "cap_sys_admin"} <= host_users
    assert "cap_sys_rawio" not in host_users and "cap_sys_time" not in host_users
    assert mode_capabilities("user-namespace") == {
        cap.lower() for cap in containermodes.nspawn_default_capabilities()
    } | {"cap_net_admin"}


def test_host_users_mode_runs_what_cilium_needs() -> None:
    require_kernel("veth", "ip link add drill0 type veth peer name drill1")
    require_kernel(
        "the clsact qdisc",
        "ip link add drill0 type veth peer name drill1 && tc qdisc add dev drill0 clsact",
    )
    require_kernel("BPF (CONFIG_BPF_SYSCALL)", f"{sys.executable} {BPF_PROG}")
    assert_node_ran("host-users", run_in_container("host-users", CILIUM_NODE), CILIUM_STEPS)


def test_bpf_load_needs_the_capabilities_the_mode_grants() -> None:
    require_kernel("BPF (CONFIG_BPF_SYSCALL)", f"{sys.executable} {BPF_PROG}")
    output = run_in_container(
        "host-users",
        f"{sys.executable} {BPF_PROG}",
        without=frozenset({"CAP_BPF", "CAP_SYS_ADMIN"}),
    )
    assert "load: EPERM" in output, output


def test_user_namespace_mode_runs_flannel_and_cannot_load_bpf() -> None:
    require_kernel("user namespaces", "unshare --user --map-root-user true")
    require_kernel("VXLAN", "ip link add drill0 type vxlan id 1 dstport 8472")
    require_kernel("bridges", "ip link add drill0 type bridge")
    output = run_in_container("user-namespace", FLANNEL_NODE)
    assert_node_ran("user-namespace", output, FLANNEL_STEPS)
    assert "vxlan id 1" in output and "dstport 8472" in output, output
    # The refused combination: Cilium in a user-namespaced container. The kernel checks BPF
    # capabilities against the initial user namespace, so the load fails however many
    # capabilities the container's root holds in its own namespace.
    assert "load: EPERM" in output, output
    assert "loaded" not in output, output


# --- the same under the real systemd-nspawn -------------------------------------------------

NSPAWN = shutil.which("systemd-nspawn")
# Inside the nspawn tree: the host's /usr (merged-/usr Debian) and this directory.
NSPAWN_PYTHON = "/usr/bin/python3"
NSPAWN_PROG = "/drill/bpf_prog.py"

needs_nspawn = pytest.mark.skipif(
    NSPAWN is None or not Path(NSPAWN_PYTHON).exists(),
    reason="needs systemd-nspawn (Debian: systemd-container) and /usr/bin/python3",
)


def nspawn_tree(root: Path) -> Path:
    """A minimal container root: the host's /usr bound read-only, merged-/usr symlinks.

    World-traversable (0755), as a container root is: a user-namespaced root is nobody on the
    host and must still reach its own /proc.
    """
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    for name in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "var", "root", "drill"):
        (root / name).mkdir(mode=0o755)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "etc" / "os-release").write_text(Path("/etc/os-release").read_text(encoding="utf-8"))
    (root / "etc" / "machine-id").touch()
    return root


def nspawn_flags(mode: str, bpffs: Path | None = None) -> list[str]:
    """The nspawn flags k3s-containers.nix renders for the mode, from the same data.

    `bpffs`: the host directory holding the container's own bpffs instance (modes with bpffs).
    """
    spec = containermodes.modes()[mode]
    flags = ["--private-network", f"--private-users={spec.private_users}"]
    if spec.user_namespaced:
        # The drill's tree is owned by the host's root; nixos-containers idmaps its binds instead.
        flags.append("--private-users-ownership=off")
    flags.append("--capability=" + ",".join(sorted(spec.capabilities)))
    flags += [f"--system-call-filter={call}" for call in sorted(spec.system_call_filter)]
    for path, access in sorted(spec.binds.items()):
        if Path(path).exists():  # a machine without /dev/fuse cannot hand it in
            flags.append(f"--bind-ro={path}" if access == "ro" else f"--bind={path}")
    if spec.bpffs:
        assert bpffs is not None
        flags.append(f"--bind={bpffs}:/sys/fs/bpf")
    return flags


@pytest.fixture
def nspawn_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, closed to a user-namespaced root.
    parent = Path(tempfile.mkdtemp(prefix="nixos-k3s-drill-"))
    parent.chmod(0o755)
    try:
        yield parent / "root"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def run_in_nspawn(mode: str, script: str, root: Path) -> str:
    assert NSPAWN is not None
    bpffs = None
    if containermodes.modes()[mode].bpffs:
        # As the host's systemd mount unit does: a fresh bpffs instance for this container.
        bpffs = root.parent / "bpffs"
        bpffs.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "bpf", "bpffs", str(bpffs)], check=True)
    try:
        output = _run_in_nspawn(mode, script, root, bpffs)
        if bpffs is not None:
            output += f"\nhost-side bpffs of the container: {sorted(os.listdir(bpffs))}\n"
        return output
    finally:
        if bpffs is not None:
            subprocess.run(["umount", str(bpffs)], check=False)


def _run_in_nspawn(mode: str, script: str, root: Path, bpffs: Path | None) -> str:
    assert NSPAWN is not None
    command = [
        NSPAWN,
        "--quiet",
        "--register=no",
        "--keep-unit",
        f"--directory={nspawn_tree(root)}",
        "--bind-ro=/usr",
        f"--bind-ro={HERE}:/drill",
        *nspawn_flags(mode, bpffs),
        "/bin/bash",
        "-c",
        script,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if "CapBnd:" not in done.stdout:
        pytest.skip(f"systemd-nspawn does not start a container here: {done.stderr.strip()[:300]}")
    return done.stdout + done.stderr


ISOLATION_KEPT = """
(echo 1 > /proc/sys/kernel/panic_on_oops) 2>/dev/null || echo "kernel sysctls read-only"
(touch /sys/kernel/drill) 2>/dev/null || echo "sysfs read-only"
timeout 2 head -n 1 /dev/kmsg >/dev/null && echo "kmsg readable"
"""


@needs_nspawn
def test_host_users_mode_under_systemd_nspawn(nspawn_root: Path) -> None:
    script = cilium_node(NSPAWN_PYTHON, NSPAWN_PROG, HOST_BOUND_BPFFS) + ISOLATION_KEPT
    output = run_in_nspawn("host-users", script, nspawn_root)
    isolation = ("kernel sysctls read-only", "sysfs read-only", "kmsg readable")
    assert_node_ran("host-users", output, CILIUM_STEPS + isolation)
    # The program was pinned in the container's own bpffs instance, bound in from the host.
    assert "host-side bpffs of the container: [" in output and "'cil_from_container'" in output


@needs_nspawn
def test_user_namespace_mode_under_systemd_nspawn(nspawn_root: Path) -> None:
    output = run_in_nspawn("user-namespace", flannel_node(NSPAWN_PYTHON, NSPAWN_PROG), nspawn_root)
    assert_node_ran("user-namespace", output, FLANNEL_STEPS)
    assert "load: EPERM" in output and "loaded" not in output, output
