"""tooling.diff against pairs of synthetic plan directories (see conftest.py)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tooling import diff
from tooling.diff import diff_plans, load_plan, render_markdown, render_text

if TYPE_CHECKING:
    from conftest import ClusterSpec, PlanFactory


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = diff.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def compare(make_plan: PlanFactory, old: ClusterSpec, new: ClusterSpec) -> diff.PlanDiff:
    return diff_plans(load_plan(make_plan(old)), load_plan(make_plan(new)))


def by_name(plan_diff: diff.PlanDiff) -> dict[str, diff.ResourceChange]:
    return {change.name: change for change in plan_diff.resources}


# -- resources and hosts ------------------------------------------------------------------------


def test_growing_the_agent_pool_adds_resources_and_deploys_only_the_new_host(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    result = compare(make_plan, base_spec, base_spec.with_(agents=3))

    added = sorted((c.type, c.name) for c in result.resources if c.kind == "add")
    assert added == [
        ("command:local:Command", "prod-agent-3-push"),
        ("hcloud:index/server:Server", "prod-agent-3"),
        ("hcloud:index/serverNetwork:ServerNetwork", "prod-agent-3-net"),
        ("nixos-k3s:index:NixosHost", "prod-agent-3-nixos"),
    ]
    assert [c for c in result.resources if c.kind != "add"] == []
    assert result.redeployed_hosts == ("prod-agent-3",)
    [host] = result.hosts
    assert host.kind == "added"
    assert host.diff[0] == "--- /dev/null"
    assert '+  "hostname": "prod-agent-3",' in host.diff


def test_shrinking_the_pool_removes_resources_and_redeploys_nothing(
    make_plan: PlanFactory, base_spec: ClusterSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = make_plan(base_spec), make_plan(base_spec.with_(agents=1))

    code, out, _ = run(capsys, old, new)

    assert code == 1
    assert (
        "Resources: 0 to add, 4 to remove, 0 to replace, 0 commands to re-run, 0 to change" in out
    )
    assert "Hosts to redeploy: 0" in out
    assert "- hcloud:index/server:Server prod-agent-2" in out
    assert "Host prod-agent-2 (removed):" in out
    assert "+++ /dev/null" in out


def test_cilium_version_bump_is_an_in_place_change_of_the_release(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    result = compare(make_plan, base_spec, base_spec.with_(cilium_version="1.18.2"))

    assert [(c.kind, c.name) for c in result.resources] == [("change", "cilium")]
    [change] = result.resources[0].changes
    assert change == diff.ValueChange("version", '"1.18.1" -> "1.18.2"')
    assert result.hosts == ()


def test_label_change_shows_host_diff_and_redeploys_that_host(
    make_plan: PlanFactory, base_spec: ClusterSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled = base_spec.with_(node_labels={"prod-agent-1": {"tier": "gpu"}})
    old, new = make_plan(base_spec), make_plan(labelled)

    code, out, _ = run(capsys, old, new)
    result = diff_plans(load_plan(old), load_plan(new))

    assert code == 1
    assert result.redeployed_hosts == ("prod-agent-1",)
    changes = by_name(result)
    # the push command's triggers hold the content hash: pulumi-command replaces on them
    push = changes["prod-agent-1-push"]
    assert push.kind == "replace"
    assert [(c.path, c.forces_replacement) for c in push.changes] == [
        ("environment.HOST_JSON", False),
        ("triggers[0]", True),
    ]
    # the host data the push carries is not repeated: it points at the host's diff
    assert push.changes[0].summary == "data of host prod-agent-1 (see its diff)"
    assert out.count('"tier=gpu"') == 1
    # hcloud updates server labels in place
    assert changes["prod-agent-1"].kind == "change"
    assert changes["prod-agent-1"].changes == (
        diff.ValueChange("labels.tier", '(absent) -> "gpu"'),
    )
    assert set(changes) == {"prod-agent-1", "prod-agent-1-push"}
    assert "--- a/hosts/prod-agent-1.json" in out
    assert '-    "nodeLabels": [],' in out
    assert '+    "nodeLabels": [\n+      "tier=gpu"\n+    ],' in out
    assert "triggers[0]: " in out and "(forces replacement)" in out


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("image", "ubuntu-24.04", "replace"),
        ("location", "nbg1", "replace"),
        ("server_type", "cx43", "change"),
    ],
)
def test_server_changes_replace_only_on_force_new_inputs(
    make_plan: PlanFactory, base_spec: ClusterSpec, field: str, value: str, kind: str
) -> None:
    result = compare(make_plan, base_spec, base_spec.with_(**{field: value}))

    servers = [c for c in result.resources if c.type == "hcloud:index/server:Server"]
    assert len(servers) == 5
    assert {c.kind for c in servers} == {kind}


def test_multi_line_input_change_is_shown_as_a_text_diff(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    script = base_spec.push_script.replace("nixos-rebuild switch", "nixos-rebuild boot")
    result = compare(make_plan, base_spec, base_spec.with_(push_script=script))

    push = by_name(result)["prod-server-1-push"]
    assert push.kind == "change"  # create changes run update, they do not replace
    [change] = push.changes
    assert change.path == "create"
    assert change.summary == "text of 3 -> 3 lines"
    assert "-nixos-rebuild switch" in change.detail
    assert "+nixos-rebuild boot" in change.detail


def test_no_changes_exits_zero_and_says_so(
    make_plan: PlanFactory, base_spec: ClusterSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = make_plan(base_spec), make_plan(base_spec)

    text = run(capsys, old, new)
    markdown = run(capsys, old, new, "--format", "markdown")

    assert text[0] == 0 and markdown[0] == 0
    expected = "No changes: 28 resources and 5 hosts stay as they are."
    assert expected in text[1]
    assert expected in markdown[1]


def test_replacing_a_random_or_tls_resource_on_any_input(
    make_plan: PlanFactory, base_spec: ClusterSpec, tmp_path: Path
) -> None:
    old = make_plan(base_spec)
    new = make_plan(base_spec)
    document = json.loads((new / "plan.json").read_text())
    for resource in document["resources"]:
        if resource["type"].startswith(("random:", "tls:")):
            resource["inputs"]["length" if "random" in resource["type"] else "algorithm"] = 64
    (new / "plan.json").write_text(json.dumps(document))

    result = diff_plans(load_plan(old), load_plan(new))

    assert {(c.kind, c.type) for c in result.resources} == {
        ("replace", "random:index/randomPassword:RandomPassword"),
        ("replace", "tls:index/privateKey:PrivateKey"),
    }


# -- secrets ------------------------------------------------------------------------------------


SECRET_SPEC_CHANGES = {
    "k3s_token": "K10-token-value-CHANGED-9999",
    "deploy_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nBBBBkeyCHANGED\n-----END",
}


@pytest.mark.parametrize("leak", [False, True], ids=["redacted", "raw-in-inputs"])
def test_changed_secrets_are_reported_but_never_shown(
    make_plan: PlanFactory,
    base_spec: ClusterSpec,
    capsys: pytest.CaptureFixture[str],
    leak: bool,
) -> None:
    """With leak=True the plan (wrongly) holds raw values at fingerprinted paths: still hidden."""
    old_spec = base_spec.with_(leak_secret_into_inputs=leak)
    new_spec = old_spec.with_(**SECRET_SPEC_CHANGES)
    old, new = make_plan(old_spec), make_plan(new_spec)

    text = run(capsys, old, new)
    markdown = run(capsys, old, new, "--format", "markdown")
    result = diff_plans(load_plan(old), load_plan(new))

    push = by_name(result)["prod-server-1-push"]
    assert push.changes == (
        diff.ValueChange("connection.privateKey", "changed (secret)"),
        diff.ValueChange("stdin", "changed (secret)"),
    )
    assert by_name(result)["prod-k8s"].changes == (
        diff.ValueChange("kubeconfig", "changed (secret)"),
    )
    planted = [
        base_spec.k3s_token,
        base_spec.deploy_key,
        *SECRET_SPEC_CHANGES.values(),
        "AAAAkey0001",
        "BBBBkeyCHANGED",
        "K10-token",
    ]
    document = json.loads((new / "plan.json").read_text())
    fingerprints = [
        fp for paths in document["secretFingerprints"].values() for fp in paths.values()
    ]
    for output in (text[1], text[2], markdown[1], markdown[2]):
        for value in [*planted, *fingerprints]:
            assert value not in output
    assert "stdin: changed (secret)" in text[1]
    assert "kubeconfig: changed (secret)" in markdown[1]


def test_a_secret_that_appears_or_disappears_is_named_as_such(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    old, new = make_plan(base_spec), make_plan(base_spec)
    document = json.loads((new / "plan.json").read_text())
    cilium = next(r for r in document["resources"] if r["name"] == "cilium")
    cilium["inputs"]["values"]["hubble"] = "[secret]"
    document["secretFingerprints"][cilium["urn"]] = {"values.hubble": "0123456789ab"}
    (new / "plan.json").write_text(json.dumps(document))

    forward = diff_plans(load_plan(old), load_plan(new))
    backward = diff_plans(load_plan(new), load_plan(old))

    assert forward.resources[0].changes == (diff.ValueChange("values.hubble", "added (secret)"),)
    assert backward.resources[0].changes == (diff.ValueChange("values.hubble", "removed (secret)"),)


# -- markdown -----------------------------------------------------------------------------------


def assert_well_formed(markdown: str) -> None:
    assert markdown.count("<details>") == markdown.count("</details>")
    fences = re.findall(r"^(`{3,})(diff|mermaid)?$", markdown, flags=re.MULTILINE)
    assert len(fences) % 2 == 0
    opened = [fence for fence, lang in fences[0::2]]
    closed = [fence for fence, lang in fences[1::2]]
    assert opened == closed
    assert all(lang in ("diff", "mermaid") for _, lang in fences[0::2])


def test_markdown_has_summary_table_then_a_section_per_host(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    new_spec = base_spec.with_(
        agents=3, cilium_version="1.18.2", node_labels={"prod-server-2": {"zone": "a"}}
    )
    result = compare(make_plan, base_spec, new_spec)

    markdown = render_markdown(result)

    assert markdown.startswith(
        "### Plan diff: `prod`\n\n| added | removed | replaced | commands re-run | changed |"
    )
    # The one replacement is a push whose trigger changed: a re-run, no machine replaced.
    assert "| 4 | 0 | 0 | 1 | 2 | 2 |" in markdown
    assert "Hosts to redeploy: <code>prod-agent-3</code>, <code>prod-server-2</code>" in markdown
    summaries = re.findall(r"<summary>(.*?)</summary>", markdown)
    assert summaries == [
        "Resources (7)",
        "Host prod-agent-3 (added, redeploy)",
        "Host prod-server-2 (changed, redeploy)",
        "Monthly cost by item",
    ]
    assert "Monthly cost: **34.95 -&gt; 41.94 EUR per month (+6.99)**" in markdown
    assert markdown.index("| added |") < markdown.index("<details>")
    assert "+- command:local:Command prod-server-2-push" in markdown
    assert "~ kubernetes:helm.sh/v3:Release cilium" in markdown
    assert_well_formed(markdown)


def test_markdown_is_truncated_with_a_visible_note(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    big = base_spec.with_(agents=40, host_padding=300)
    result = compare(make_plan, base_spec, big)
    full = render_markdown(result, max_chars=10_000_000)
    assert len(full) > 200_000  # the untruncated diff would be far over GitHub's limit

    default = render_markdown(result)
    small = render_markdown(result, max_chars=8_000)

    assert len(default) <= diff.DEFAULT_MARKDOWN_MAX_CHARS < 65_536
    assert len(small) <= 8_000
    for cut in (default, small):
        assert "> [!WARNING]\n> Truncated to fit a comment:" in cut
        assert "| 152 | 0 | 0 | 5 | 0 | 43 |" in cut  # the summary always survives
        assert_well_formed(cut)
        assert re.search(r"^\.\.\. \d+ more lines not shown$", cut, flags=re.MULTILINE)
    assert re.search(r"and \d+ more sections not shown", small)
    # natural order: agent-2 comes before agent-10
    assert full.index("Host prod-agent-2 (") < full.index("Host prod-agent-10 (")
    assert full.startswith(default.split("<details>")[0])


def test_markdown_fence_outgrows_backticks_in_the_content(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    script = base_spec.push_script + "echo ```not a fence```\n"
    result = compare(make_plan, base_spec, base_spec.with_(push_script=script))

    markdown = render_markdown(result)

    assert "\n````diff\n" in markdown
    assert_well_formed(markdown)


# -- determinism and the command line -----------------------------------------------------------


def test_output_does_not_depend_on_the_order_inside_plan_json(
    make_plan: PlanFactory, base_spec: ClusterSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    new_spec = base_spec.with_(agents=3, node_labels={"prod-server-1": {"a": "b"}})
    old, new = make_plan(base_spec), make_plan(new_spec)
    first = run(capsys, old, new, "--format", "markdown")
    document = json.loads((new / "plan.json").read_text())
    random.Random(7).shuffle(document["resources"])
    document["hosts"] = dict(reversed(list(document["hosts"].items())))
    (new / "plan.json").write_text(json.dumps(document, indent=1))

    second = run(capsys, old, new, "--format", "markdown")

    assert first == second


def test_stack_change_is_named_in_the_heading(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    result = compare(make_plan, base_spec.with_(stack="dev"), base_spec)

    assert render_text(result).startswith("Plan diff for stack dev -> prod\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "html"], "argument --format: invalid choice: 'html'"),
        (["a", "b", "--max-chars", "10"], "argument --max-chars: must be an integer >= 2000"),
        ([], "the following arguments are required: OLD, NEW"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *args)

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


def test_unreadable_plan_dirs_exit_2_with_one_line(
    make_plan: PlanFactory,
    base_spec: ClusterSpec,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = make_plan(base_spec)
    broken_json = make_plan(base_spec)
    (broken_json / "plan.json").write_text('{"stack": "prod", "resources": [')
    missing_host = make_plan(base_spec)
    (missing_host / "hosts" / "prod-agent-2.json").unlink()
    escaping = make_plan(base_spec)
    document = json.loads((escaping / "plan.json").read_text())
    document["hosts"]["prod-agent-2"]["file"] = "../../etc/passwd"
    (escaping / "plan.json").write_text(json.dumps(document))

    cases = [
        (tmp_path / "nope", "not a plan directory"),
        (tmp_path, "plan.json: cannot read"),
        (broken_json, "invalid JSON at line 1"),
        (missing_host, "cannot read host data of prod-agent-2"),
        (escaping, 'hosts."prod-agent-2".file leaves the plan dir'),
    ]
    for bad, message in cases:
        code, out, err = run(capsys, good, bad)
        assert (code, out) == (2, ""), bad
        assert err.count("\n") == 1 and message in err, err
        assert "Traceback" not in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")

    assert code == 0
    assert "usage: python -m tooling diff" in out


def test_unknown_values_are_shown_as_unknown(
    make_plan: PlanFactory, base_spec: ClusterSpec
) -> None:
    old, new = make_plan(base_spec), make_plan(base_spec)
    document = json.loads((new / "plan.json").read_text())
    network = next(r for r in document["resources"] if r["name"] == "prod-agent-1-net")
    network["inputs"]["serverId"] = "[unknown]"
    (new / "plan.json").write_text(json.dumps(document))

    result = diff_plans(load_plan(old), load_plan(new))

    [change] = result.resources
    assert (change.kind, change.name) == ("replace", "prod-agent-1-net")
    assert change.changes == (diff.ValueChange("serverId", "3003 -> [unknown]", (), True),)


def test_code_spans_are_not_escaped() -> None:
    """Markdown shows a code span literally: an entity there would be printed as such."""
    assert diff._md_code("dev -> prod-new") == "`dev -> prod-new`"
    assert diff._md_code("a`b") == "``a`b``"
    assert diff._md_code("`x") == "`` `x ``"
