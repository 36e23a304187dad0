"""node-roll.sh (a rolling-upgrade step) against the fake host over real SSH.

The fake host is both the node being upgraded and the server whose `k3s kubectl` drains it (a
bootstrap server rolling itself); the stand-in k3s records drains and uncordons.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.remote.harness import (
    HOST_NAME,
    FakeHost,
    deploy_env,
    make_nixos_source,
    run_operator_script,
)

OLD_KEY = "0123456789abcdef"
NEW_KEY = "fedcba9876543210"


def roll(
    host: FakeHost,
    source: Path,
    previous: str | None = OLD_KEY,
    record: str | None = None,
    **overrides: str,
) -> subprocess.CompletedProcess[str]:
    """node-roll.sh; `previous` is the key the last run printed, `record` its container nodes
    ("CONTAINER=NODE ...", the line before the key)."""
    env = deploy_env(host.server, source)
    env.update(
        {
            "ROLL_KEY": NEW_KEY,
            "GATE_HOST": "127.0.0.1",
            "GATE_PORT": str(host.server.port),
            "GATE_USER": "root",
            "GATE_HOST_PUBLIC_KEY": host.server.host_public_key(),
            "DRAIN_TIMEOUT": "30",
            "READY_TIMEOUT": "3",
        }
    )
    if previous is not None:
        # pulumi-command trims the final newline (local/commandOutputs.go, run)
        lines = [previous] if record is None else [f"container-nodes: {record}", previous]
        env["PULUMI_COMMAND_STDOUT"] = "\n".join(lines)
    env.update(overrides)
    return run_operator_script("node-roll.sh", env, host.server.client_key.read_bytes())


def set_nodes(host: FakeHost, *names: str, ready: str = "True") -> None:
    """Registered nodes, each with its Ready condition's status (the stand-in k3s reads them)."""
    nodes = host.root / "k3s/nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    for name in names:
        (nodes / name).write_text(ready)


def set_node(host: FakeHost, ready: str) -> None:
    set_nodes(host, HOST_NAME, ready=ready)


def kubectl_calls(host: FakeHost) -> list[str]:
    return [
        call.removeprefix("kubectl --request-timeout=10s ")
        for call in host.calls("k3s")
        if not call.startswith("kubectl --request-timeout=10s get ")
    ]


def cordoned_nodes(host: FakeHost) -> list[str]:
    return sorted(p.name for p in (host.root / "k3s/cordoned").glob("*"))


def cordoned(host: FakeHost) -> bool:
    return HOST_NAME in cordoned_nodes(host)


def test_same_key_is_no_upgrade_and_touches_nothing(host: FakeHost, tmp_path: Path) -> None:
    set_node(host, "True")
    result = roll(host, make_nixos_source(tmp_path), previous=NEW_KEY)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NEW_KEY}\n"
    assert "no upgrade to roll" in result.stderr
    assert host.calls() == []


def test_new_key_drains_pushes_waits_for_ready_and_uncordons(
    host: FakeHost, tmp_path: Path
) -> None:
    set_node(host, "True")
    result = roll(host, make_nixos_source(tmp_path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NEW_KEY}\n"  # what the next run compares against
    assert kubectl_calls(host) == [
        f"drain {HOST_NAME} --ignore-daemonsets --delete-emptydir-data --timeout=30s",
        f"uncordon {HOST_NAME}",
    ]
    # drain before the push, uncordon after it
    calls = host.calls()
    drain = next(i for i, c in enumerate(calls) if "drain" in c)
    build = next(i for i, c in enumerate(calls) if c.startswith("nixos-rebuild"))
    uncordon = next(i for i, c in enumerate(calls) if "uncordon" in c)
    assert drain < build < uncordon
    assert not cordoned(host)
    assert (host.state / "current-release").exists()


def test_a_drain_that_times_out_uncordons_and_stops_the_roll(
    host: FakeHost, tmp_path: Path
) -> None:
    set_node(host, "True")
    (host.root / "k3s/drain-fails").write_text("")

    result = roll(host, make_nixos_source(tmp_path))

    assert result.returncode == 1
    assert f"drain of {HOST_NAME} did not finish; the nodes are uncordoned and unchanged" in (
        result.stderr
    )
    assert result.stdout == ""  # the key is not recorded: the next `pulumi up` tries again
    assert not cordoned(host)
    assert host.calls("nixos-rebuild") == []
    assert not (host.state / "current-release").exists()


def test_a_failed_push_rolls_back_uncordons_and_stops(host: FakeHost, tmp_path: Path) -> None:
    set_node(host, "True")
    broken = make_nixos_source(tmp_path, {"build-fails": ""})

    result = roll(host, broken)

    assert result.returncode == 1
    assert "push failed (the host rolled back to its previous system)" in result.stderr
    assert result.stdout == ""
    assert not cordoned(host)
    assert host.current_system() == host.initial_system


def test_a_node_not_ready_after_the_push_stays_cordoned(host: FakeHost, tmp_path: Path) -> None:
    set_node(host, "False")

    result = roll(host, make_nixos_source(tmp_path))

    assert result.returncode == 1
    assert f"pushed but {HOST_NAME} is not Ready; the node stays cordoned" in result.stderr
    assert result.stdout == ""
    assert cordoned(host)


def test_bad_environment_exits_2(host: FakeHost, tmp_path: Path) -> None:
    result = roll(host, make_nixos_source(tmp_path), ROLL_KEY="not hex")
    assert result.returncode == 2 and "ROLL_KEY must be a hex digest" in result.stderr
    assert host.calls() == []


def test_a_server_pushes_a_new_release_without_an_upgrade_and_without_a_drain(
    host: FakeHost, tmp_path: Path
) -> None:
    """ROLL_EVERY_RELEASE=1 (a server): the same key still pushes, so that the servers'
    activations go one at a time along the roll chain; no drain, no uncordon."""
    set_node(host, "True")
    result = roll(host, make_nixos_source(tmp_path), previous=NEW_KEY, ROLL_EVERY_RELEASE="1")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NEW_KEY}\n"
    assert "pushed one host at a time (no upgrade)" in result.stderr
    assert kubectl_calls(host) == []
    assert host.calls("nixos-rebuild") != []
    assert (host.state / "current-release").exists()
    assert host.current_system() != host.initial_system


def test_a_servers_failed_release_push_stops_the_chain(host: FakeHost, tmp_path: Path) -> None:
    set_node(host, "True")
    broken = make_nixos_source(tmp_path, {"build-fails": ""})

    result = roll(host, broken, previous=NEW_KEY, ROLL_EVERY_RELEASE="1")

    assert result.returncode == 1
    assert "push failed (the host rolled back to its previous system)" in result.stderr
    assert "the roll stops here" in result.stderr
    assert result.stdout == ""  # not recorded: the next `pulumi up` pushes it again
    assert kubectl_calls(host) == []
    assert host.current_system() == host.initial_system


def test_roll_every_release_is_checked(host: FakeHost, tmp_path: Path) -> None:
    result = roll(host, make_nixos_source(tmp_path), previous=NEW_KEY, ROLL_EVERY_RELEASE="yes")
    assert result.returncode == 2 and "ROLL_EVERY_RELEASE must be 0 or 1" in result.stderr
    assert host.calls() == []


EDGE, BATCH = f"{HOST_NAME}-edge", f"{HOST_NAME}-batch"
CONTAINERS = f"edge={EDGE} batch={BATCH}"
# The node of a container the release removes, as the previous run recorded it: not
# HOST_NAME-gone, so a drill that drains it proves the name is read, not re-derived.
GONE = "retired-gone-node"
HAD = f"{CONTAINERS} gone={GONE}"
# What switch-to-configuration dry-activate writes when the edge container's system changed
# (stopped and started again: stopIfChanged), a container no longer in the release stops, and a
# changed unit that the switch leaves running (X-StopIfChanged=false) is named as not stopped.
EDGE_STOPS = (
    "would stop the following units: container@edge.service, nscd.service\n"
    "would NOT stop the following changed units: container@batch.service\n"
    "would restart the following units: container@gone.service, systemd-journald.service\n"
    "would start the following units: container@edge.service, nscd.service\n"
)
GONE_STOPS = "would stop the following units: container@gone.service\n"


def recorded(pairs: str = CONTAINERS, key: str = NEW_KEY) -> str:
    """node-roll.sh's stdout for a host with container nodes: the record, then the key."""
    return f"container-nodes: {pairs}\n{key}\n"


def test_a_release_that_stops_a_container_drains_only_its_node(
    host: FakeHost, tmp_path: Path
) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH, GONE)
    source = make_nixos_source(tmp_path, {"dry-activate": EDGE_STOPS})

    result = roll(
        host,
        source,
        previous=NEW_KEY,
        record=HAD,
        ROLL_EVERY_RELEASE="1",
        CONTAINER_NODES=CONTAINERS,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded()  # gone is no longer recorded
    # batch does not stop; gone, removed by this release, is drained (by its recorded node
    # name) before its container stops and left cordoned for its own gate to delete
    assert kubectl_calls(host) == [
        f"drain {EDGE} --ignore-daemonsets --delete-emptydir-data --timeout=30s",
        f"drain {GONE} --ignore-daemonsets --delete-emptydir-data --timeout=30s",
        f"uncordon {EDGE}",
    ]
    assert cordoned_nodes(host) == [GONE]
    calls = host.calls()
    dry = next(i for i, c in enumerate(calls) if c.endswith(" dry-activate"))
    drain = next(i for i, c in enumerate(calls) if "drain" in c)
    activation = next(i for i, c in enumerate(calls) if c.endswith(" test"))
    uncordon = next(i for i, c in enumerate(calls) if "uncordon" in c)
    assert dry < drain < activation < uncordon
    assert (host.state / "current-release").exists()


def test_a_host_losing_its_last_container_drains_its_node_before_the_push(
    host: FakeHost, tmp_path: Path
) -> None:
    """The new release has no container nodes on this host: CONTAINER_NODES is gone and an
    agent's ROLL_EVERY_RELEASE is 0, but the previous run recorded one, so the roll still asks
    the host what stops, drains that node, pushes, and leaves it cordoned for its gate."""
    set_nodes(host, HOST_NAME, GONE)
    source = make_nixos_source(tmp_path, {"dry-activate": GONE_STOPS})

    result = roll(host, source, previous=NEW_KEY, record=f"gone={GONE}", ROLL_EVERY_RELEASE="0")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NEW_KEY}\n"  # nothing recorded: the next run is a no-op again
    assert kubectl_calls(host) == [
        f"drain {GONE} --ignore-daemonsets --delete-emptydir-data --timeout=30s"
    ]
    assert cordoned_nodes(host) == [GONE]
    calls = host.calls()
    drain = next(i for i, c in enumerate(calls) if "drain" in c)
    activation = next(i for i, c in enumerate(calls) if c.endswith(" test"))
    assert drain < activation
    assert host.current_system() != host.initial_system

    again = roll(
        host,
        source,
        ROLL_EVERY_RELEASE="0",
        PULUMI_COMMAND_STDOUT=result.stdout.removesuffix("\n"),
    )
    assert again.returncode == 0, again.stderr
    assert "no upgrade to roll" in again.stderr
    assert again.stdout == f"{NEW_KEY}\n"


def test_what_one_run_records_the_next_reads(host: FakeHost, tmp_path: Path) -> None:
    """A run's stdout, handed back by pulumi-command as the next run's PULUMI_COMMAND_STDOUT,
    names the container nodes: the next release, which removes edge, drains edge's node."""
    set_nodes(host, HOST_NAME, EDGE, BATCH)
    first = roll(
        host,
        make_nixos_source(tmp_path / "first"),
        previous=NEW_KEY,
        ROLL_EVERY_RELEASE="1",
        CONTAINER_NODES=f"edge={EDGE}  batch={BATCH}",  # blanks are normalised in the record
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == recorded()

    source = make_nixos_source(
        tmp_path / "second",
        {"dry-activate": "would stop the following units: container@edge.service\n"},
    )
    second = roll(
        host,
        source,
        ROLL_EVERY_RELEASE="1",
        CONTAINER_NODES=f"batch={BATCH}",
        PULUMI_COMMAND_STDOUT=first.stdout.removesuffix("\n"),
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == recorded(f"batch={BATCH}")
    assert f"drain {EDGE} --ignore-daemonsets --delete-emptydir-data --timeout=30s" in (
        kubectl_calls(host)
    )
    assert cordoned_nodes(host) == [EDGE]


def test_a_removed_container_without_a_recorded_node_is_not_drained(
    host: FakeHost, tmp_path: Path
) -> None:
    """A previous stdout of the key alone (written before the record existed) names no node
    for a container the release removes: it is not drained under a guessed name; a warning says
    so, and the rest of the roll goes on."""
    set_nodes(host, HOST_NAME, EDGE, BATCH, f"{HOST_NAME}-gone")
    source = make_nixos_source(tmp_path, {"dry-activate": EDGE_STOPS})

    result = roll(
        host, source, previous=NEW_KEY, ROLL_EVERY_RELEASE="1", CONTAINER_NODES=CONTAINERS
    )

    assert result.returncode == 0, result.stderr
    assert "warning: container gone stops, and neither CONTAINER_NODES nor the previous" in (
        result.stderr
    )
    assert kubectl_calls(host) == [
        f"drain {EDGE} --ignore-daemonsets --delete-emptydir-data --timeout=30s",
        f"uncordon {EDGE}",
    ]
    assert cordoned_nodes(host) == []
    assert result.stdout == recorded()


def test_a_bad_record_in_the_previous_stdout_is_refused(host: FakeHost, tmp_path: Path) -> None:
    for i, previous in enumerate(
        (
            f"container-nodes: edge=Not_A_Node\n{NEW_KEY}",  # not a node name
            f"container-nodes:\n{NEW_KEY}",  # never written empty
            f"container-nodes edge={EDGE}\n{NEW_KEY}",  # not the record's first word
            f"container-nodes: edge={EDGE}\nsomething else\n{NEW_KEY}",  # more than two lines
        )
    ):
        result = roll(
            host,
            make_nixos_source(tmp_path / str(i)),
            ROLL_EVERY_RELEASE="1",
            CONTAINER_NODES=CONTAINERS,
            PULUMI_COMMAND_STDOUT=previous,
        )
        assert result.returncode == 2, (previous, result.stderr)
        assert "previous run" in result.stderr, result.stderr
        assert result.stdout == ""
    assert host.calls() == []


def test_a_release_that_stops_no_container_drains_nothing(host: FakeHost, tmp_path: Path) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH)
    source = make_nixos_source(
        tmp_path, {"dry-activate": "would restart the following units: nscd.service\n"}
    )

    result = roll(
        host, source, previous=NEW_KEY, ROLL_EVERY_RELEASE="1", CONTAINER_NODES=CONTAINERS
    )

    assert result.returncode == 0, result.stderr
    assert kubectl_calls(host) == []
    assert "no node to drain" in result.stderr
    assert (host.state / "current-release").exists()


def test_an_upgrade_drains_the_host_and_all_its_container_nodes(
    host: FakeHost, tmp_path: Path
) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH)

    result = roll(host, make_nixos_source(tmp_path), CONTAINER_NODES=CONTAINERS)

    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded()
    drains = [
        f"drain {node} --ignore-daemonsets --delete-emptydir-data --timeout=30s"
        for node in (HOST_NAME, EDGE, BATCH)
    ]
    assert kubectl_calls(host) == [*drains, *(f"uncordon {n}" for n in (HOST_NAME, EDGE, BATCH))]
    # an upgrade needs no dry activation: every container's k3s changes
    assert not any(c.endswith(" dry-activate") for c in host.calls())


def test_an_upgrade_that_removes_a_container_drains_its_recorded_node_and_leaves_it_cordoned(
    host: FakeHost, tmp_path: Path
) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH, GONE)

    result = roll(host, make_nixos_source(tmp_path), record=HAD, CONTAINER_NODES=CONTAINERS)

    assert result.returncode == 0, result.stderr
    assert result.stdout == recorded()
    drains = [
        f"drain {node} --ignore-daemonsets --delete-emptydir-data --timeout=30s"
        for node in (HOST_NAME, EDGE, BATCH, GONE)
    ]
    assert kubectl_calls(host) == [*drains, *(f"uncordon {n}" for n in (HOST_NAME, EDGE, BATCH))]
    assert cordoned_nodes(host) == [GONE]


def test_a_drain_that_fails_part_way_uncordons_the_nodes_already_drained(
    host: FakeHost, tmp_path: Path
) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH)
    (host.root / f"k3s/drain-fails-{EDGE}").write_text("")

    result = roll(host, make_nixos_source(tmp_path), CONTAINER_NODES=CONTAINERS)

    assert result.returncode == 1
    assert f"drain of {EDGE} did not finish; the nodes are uncordoned and unchanged" in (
        result.stderr
    )
    assert result.stdout == ""
    assert f"uncordon {HOST_NAME}" in kubectl_calls(host)
    assert not any((host.root / "k3s/cordoned").glob("*"))
    assert host.calls("nixos-rebuild") == []
    assert not (host.state / "current-release").exists()


def test_a_release_whose_build_fails_drains_nothing_and_stops(
    host: FakeHost, tmp_path: Path
) -> None:
    set_nodes(host, HOST_NAME, EDGE, BATCH)
    broken = make_nixos_source(tmp_path, {"build-fails": "", "dry-activate": EDGE_STOPS})

    result = roll(
        host, broken, previous=NEW_KEY, ROLL_EVERY_RELEASE="1", CONTAINER_NODES=CONTAINERS
    )

    assert result.returncode == 1
    assert "build of the new release failed; nothing was activated" in result.stderr
    assert result.stdout == ""
    assert kubectl_calls(host) == []
    assert host.current_system() == host.initial_system


def test_container_nodes_are_checked(host: FakeHost, tmp_path: Path) -> None:
    result = roll(host, make_nixos_source(tmp_path), CONTAINER_NODES="edge=Not_A_Node")
    assert result.returncode == 2 and "CONTAINER_NODES must be CONTAINER=NODE pairs" in (
        result.stderr
    )
    assert host.calls() == []
