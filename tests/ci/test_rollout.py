"""The Mermaid deploy-order diagram of the PR diff, on real plans of the shipped stacks.

Every diagram is also read back with Mermaid's own parser (tests/ci/mermaid/parse.mjs, after
`npm ci --prefix tests/ci/mermaid`); without node or those modules that part is skipped and
only the structural checks here run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_plan, stack_data
from tooling import diff, plan, rollout

MERMAID_DIR = Path(__file__).parent / "mermaid"
HAVE_MERMAID = shutil.which("node") is not None and (MERMAID_DIR / "node_modules").is_dir()


def write(tmp: Path, name: str, cluster: dict[str, Any], stack: str = "prod") -> Path:
    out = tmp / name
    plan.write_plan(run_plan(cluster, stack=stack), out)
    return out


def diagram(old: Path, new: Path) -> str:
    return diff.diff_plans(diff.load_plan(old), diff.load_plan(new)).rollout


def parsed(text: str) -> dict[str, Any]:
    """What Mermaid makes of the diagram; structural checks always, the real parser if here."""
    assert text.startswith("flowchart LR\n")
    opened = sum(1 for line in text.splitlines() if line.strip().startswith("subgraph "))
    closed = sum(1 for line in text.splitlines() if line.strip() == "end")
    assert opened == closed
    for label in re.findall(r'\["(.*?)"\]', text):
        assert '"' not in label
    if not HAVE_MERMAID:
        # CI installs it (make node-deps): there the diagram must go through Mermaid itself.
        assert os.environ.get("CI") != "true", "Mermaid's parser missing: run make node-deps"
        return {}
    run = subprocess.run(
        ["node", str(MERMAID_DIR / "parse.mjs")],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def named_edges(text: str) -> set[tuple[str, str]]:
    names = {
        node_id: label.split("<br/>")[0]
        for node_id, label in re.findall(r'^\s+(\w+)\["(.*?)"\]$', text, re.MULTILINE)
    }
    return {
        (names[a], names[b]) for a, b in re.findall(r"^\s+(\w+) --> (\w+)$", text, re.MULTILINE)
    }


@pytest.fixture(scope="module")
def before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("rollout"), "before", stack_data("prod"))


def test_a_new_node_runs_machine_install_push_join_then_nodes_ready(
    before: Path, tmp_path: Path
) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["count"] = 3
    text = diagram(before, write(tmp_path, "grown", data))

    assert named_edges(text) == {
        ("prod-workers-3", "prod-workers-3-install"),
        ("prod-workers-3-install", "prod-workers-3-push"),
        ("prod-workers-3-push", "prod-workers-3-joined"),
        # nodes-Ready follows the pushes (it polls for the registration itself), not the gates.
        ("prod-workers-3-push", "prod-nodes-ready"),
    }
    mermaid = parsed(text)
    if mermaid:
        assert mermaid["type"] == "flowchart-v2"
        texts = {v["text"]: v["classes"] for v in mermaid["vertices"].values()}
        assert texts["prod-workers-3<br>added"] == ["add"]
        assert texts["prod-nodes-ready<br>changed"] == ["change"]
        titles = [s["title"] for s in mermaid["subgraphs"]]
        assert titles == [
            "Machines",
            "NixOS installs",
            "Pushes (nixos-rebuild)",
            "Joins (node registered)",
            "Nodes Ready",
        ]


def test_a_k3s_package_change_pushes_the_bootstrap_server_first(
    before: Path, tmp_path: Path
) -> None:
    data = stack_data("prod")
    data["k3s"]["package"] = "k3s_1_33"
    text = diagram(before, write(tmp_path, "k3s", data))

    edges = {(a, b) for a, b in named_edges(text) if a.endswith("-push") and b.endswith("-push")}
    # from the dependency graph: every other host waits for the API of the first server only
    assert edges == {
        ("prod-control-1-push", "prod-control-2-push"),
        ("prod-control-1-push", "prod-control-3-push"),
        ("prod-control-1-push", "prod-workers-1-push"),
        ("prod-control-1-push", "prod-workers-2-push"),
    }
    pushes = re.findall(r'(\w+)\["prod-[\w-]+-push<br/>replaced"\]', text)
    assert len(pushes) == 5
    assert f"class {','.join(pushes)} replace" in text
    parsed(text)


def test_a_cilium_bump_pushes_every_host_its_new_image_list(before: Path, tmp_path: Path) -> None:
    """Each host's data carries the images the chart runs (k3s.prePullImages), so a new Cilium
    version pushes every host (its k3s-pre-pull.service pulls the new images), the servers one
    at a time through their roll steps, and the release follows the bootstrap server's push."""
    data = stack_data("prod")
    data["cilium"]["version"] = "1.20.0"
    text = diagram(before, write(tmp_path, "cilium", data))

    labels = re.findall(r'\["(.*?)"\]', text)
    assert labels[0].startswith("Node rolls") and labels[-2:] == [
        "Helm releases (Cilium)",
        "prod-cilium<br/>changed",
    ]
    rolls = {(a, b) for a, b in named_edges(text) if a.endswith("-roll") and b.endswith("-roll")}
    assert rolls == {
        ("prod-control-1-roll", "prod-control-2-roll"),
        ("prod-control-2-roll", "prod-control-3-roll"),
    }
    assert {
        label.split("<br/>")[0] for label in labels if label.endswith("-push<br/>replaced")
    } == {
        f"prod-{host}-push"
        for host in ("control-1", "control-2", "control-3", "workers-1", "workers-2")
    }
    assert ("prod-control-1-push", "prod-cilium") in named_edges(text)
    parsed(text)


def test_removed_nodes_are_drawn_apart_without_order(before: Path, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["count"] = 1
    text = diagram(before, write(tmp_path, "shrunk", data))

    assert 'subgraph removed["Removed (deleted last)"]' in text
    assert '["prod-workers-2<br/>removed"]' in text
    assert '["prod-workers-2-push<br/>removed"]' in text
    assert not any("workers-2" in a or "workers-2" in b for a, b in named_edges(text))
    parsed(text)


def test_a_large_change_is_drawn_one_box_per_stage(before: Path, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["count"] = 20
    text = diagram(before, write(tmp_path, "large", data))

    assert "subgraph" not in text
    assert 'machines["Machines<br/>18 added"]' in text
    assert 'pushes["Pushes (nixos-rebuild)<br/>18 added"]' in text
    assert "machines --> installs" in text
    assert "pushes --> ready" in text
    assert "class machines add" in text
    mermaid = parsed(text)
    if mermaid:
        assert set(mermaid["vertices"]) == {"machines", "installs", "pushes", "joins", "ready"}


def test_dev_stack_vms_are_the_machines(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "hosts").mkdir(parents=True)
    (empty / "plan.json").write_text('{"stack": "dev", "resources": [], "hosts": {}}')
    text = diagram(empty, write(tmp_path, "dev", stack_data("dev"), stack="dev"))

    assert ("dev-server-1-vm", "dev-server-1-install") in named_edges(text)
    assert ("dev-agent-1-push", "dev-nodes-ready") in named_edges(text)
    assert ("dev-cilium", "dev-nodes-ready") in named_edges(text)
    parsed(text)


def test_the_markdown_comment_carries_the_diagram(
    before: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["labels"] = {"tier": "batch"}
    new = write(tmp_path, "label", data)

    code = diff.main([str(before), str(new), "--format", "markdown"])
    out = capsys.readouterr().out

    assert code == 1
    block = re.search(r"```mermaid\n(.*?)```", out, re.DOTALL)
    assert block is not None
    assert block.group(1) == diagram(before, new)
    assert out.index("```mermaid") < out.index("<details>")
    assert "prod-workers-1-push<br/>replaced" in block.group(1)


def test_no_changes_no_diagram(before: Path, tmp_path: Path) -> None:
    assert diagram(before, write(tmp_path, "same", stack_data("prod"))) == ""


def test_labels_are_escaped_for_mermaid() -> None:
    node = rollout.Node("urn:x", "command:local:Command", 'a"b<c>&#d`-push', None, (), None, True)
    text = rollout.mermaid({"urn:x": node}, {"urn:x": "add"}, {})

    assert '["a#quot;b#lt;c#gt;#amp;#35;d#96;-push<br/>added"]' in text
    mermaid = parsed(text)
    if mermaid:
        [vertex] = mermaid["vertices"].values()
        assert vertex["text"] == 'a"b<c>&#d`-push<br>added'


# The prod stack's roll chain: the servers, then the agents, one host a batch.
ALL_ROLLS = {
    ("prod-control-1-roll", "prod-control-2-roll"),
    ("prod-control-2-roll", "prod-control-3-roll"),
    ("prod-control-3-roll", "prod-workers-1-roll"),
    ("prod-workers-1-roll", "prod-workers-2-roll"),
}


def test_a_k3s_upgrade_draws_the_roll_chain_servers_first(before: Path, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["k3s"]["package"] = "k3s_1_33"
    edges = named_edges(diagram(before, write(tmp_path, "k3s-roll", data)))

    rolls = {(a, b) for a, b in edges if a.endswith("-roll") and b.endswith("-roll")}
    assert rolls == ALL_ROLLS
    for host in ("prod-control-1", "prod-workers-2"):
        assert (f"{host}-roll", f"{host}-push") in edges


def test_a_server_release_draws_the_servers_rolls_one_at_a_time(
    before: Path, tmp_path: Path
) -> None:
    """A new release of the servers (not an upgrade) goes one server at a time: their roll
    steps push it (ROLL_EVERY_RELEASE), so the diagram draws them, chained, each before its
    push; the agents' releases did not change and nothing of theirs is drawn."""
    data = stack_data("prod")
    data["nodePools"][0]["labels"] = {"tier": "control"}
    text = diagram(before, write(tmp_path, "server-release", data))
    edges = named_edges(text)

    rolls = {(a, b) for a, b in edges if a.endswith("-roll") and b.endswith("-roll")}
    assert rolls == {
        ("prod-control-1-roll", "prod-control-2-roll"),
        ("prod-control-2-roll", "prod-control-3-roll"),
    }
    for host in ("prod-control-1", "prod-control-2", "prod-control-3"):
        assert (f"{host}-roll", f"{host}-push") in edges
    assert "prod-workers-" not in text
    parsed(text)


def test_removing_a_hosts_last_container_draws_its_roll_before_its_push(
    tmp_path: Path,
) -> None:
    """The workers lose their only container: their new release has no container nodes and an
    agent's ROLL_EVERY_RELEASE is 0, but their roll steps recorded one (node-roll.sh), so
    they drain its node and push, one batch at a time: the diagram draws them."""
    data = stack_data("prod")
    data["nodePools"][1]["containers"] = [{"name": "edge"}]
    had = write(tmp_path, "with-container", data)
    data["nodePools"][1]["containers"] = []
    edges = named_edges(diagram(had, write(tmp_path, "without-container", data)))

    rolls = {(a, b) for a, b in edges if a.endswith("-roll") and b.endswith("-roll")}
    # the servers' releases change too (no more container routes), and they push their own
    assert rolls == ALL_ROLLS
    for host in ("prod-workers-1", "prod-workers-2"):
        assert (f"{host}-roll", f"{host}-push") in edges


def test_a_label_change_draws_no_roll(before: Path, tmp_path: Path) -> None:
    data = stack_data("prod")
    data["nodePools"][1]["labels"] = {"tier": "batch"}
    text = diagram(before, write(tmp_path, "label-roll", data))
    assert "-roll" not in text and "prod-workers-1-push" in text
    # the installs' update only says "already installed": nothing to draw
    assert "-install" not in text
