"""The images the nodes pull while k3s starts are the ones the Cilium chart's templates render.

components/data/cilium/chart-images.json holds the image-deciding defaults of each supported
chart's values.yaml (../shared/data/cilium/values-<version>.yaml); the references are checked
against those files read independently here: `repository:tag@digest` (templates/_helpers.tpl
`cilium.image`) and `<operator repository>-generic:tag@genericDigest`
(`cilium.operator.image`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.hosts import hostspec
from components.k8s import cilium
from components.stack import parse_cluster
from tests.conftest import stack_data
from tests.reliability import offline

SHARED_CILIUM = Path(__file__).resolve().parents[3] / "shared" / "data" / "cilium"


def chart_values(version: str) -> dict[str, Any]:
    path = SHARED_CILIUM / f"values-{version}.yaml"
    if not path.exists():
        pytest.skip(f"{path} not present (the chart's default values)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rendered(version: str, **settings: Any) -> cilium.ChartImages:
    values = cilium.render_values(
        cilium.CiliumSettings(
            api_host="10.0.1.2",
            cluster_cidr="10.42.0.0/16",
            node_count=3,
            version=version,
            **settings,
        )
    )
    return cilium.chart_images(values, version)


@pytest.mark.parametrize("version", cilium.SUPPORTED_VERSIONS)
def test_shipped_defaults_are_the_charts(version: str) -> None:
    shipped = json.loads(cilium.CHART_IMAGES_PATH.read_text(encoding="utf-8"))
    assert shipped[version] == cilium.image_defaults(chart_values(version))


@pytest.mark.parametrize("version", cilium.SUPPORTED_VERSIONS)
def test_default_install_runs_agent_envoy_and_operator_by_digest(version: str) -> None:
    values = chart_values(version)
    agent, envoy, operator = values["image"], values["envoy"]["image"], values["operator"]["image"]
    # A new installation with l7Proxy runs cilium-envoy as its own DaemonSet (envoy.enabled ~).
    assert values["l7Proxy"] is True and values["envoy"]["enabled"] is None
    images = rendered(version)
    assert images.every_node == (
        f"{agent['repository']}:{agent['tag']}@{agent['digest']}",
        f"{envoy['repository']}:{envoy['tag']}@{envoy['digest']}",
    )
    assert images.cluster == (
        f"{operator['repository']}-generic:{operator['tag']}@{operator['genericDigest']}",
    )


def test_hubble_adds_relay_and_ui_to_the_cluster_images() -> None:
    values = chart_values("1.19.6")["hubble"]
    images = rendered("1.19.6", hubble=True)
    relay, front, back = (
        values["relay"]["image"],
        values["ui"]["frontend"]["image"],
        values["ui"]["backend"]["image"],
    )
    assert images.cluster[1:] == tuple(
        f"{i['repository']}:{i['tag']}@{i['digest']}" for i in (relay, front, back)
    )
    assert len(rendered("1.19.6", hubble=True, hubble_ui=False).cluster) == 1


@pytest.mark.parametrize(
    ("extra", "every_node"),
    [
        ({"envoy": {"enabled": False}}, ["quay.io/cilium/cilium:"]),
        ({"l7Proxy": False}, ["quay.io/cilium/cilium:"]),
        ({"upgradeCompatibility": "1.15"}, ["quay.io/cilium/cilium:"]),
        (
            {"upgradeCompatibility": "1.16"},
            ["quay.io/cilium/cilium:", "quay.io/cilium/cilium-envoy:"],
        ),
        (
            {"image": {"override": "registry.example/cilium:mine"}},
            ["registry.example/cilium:mine", "quay.io/cilium/cilium-envoy:"],
        ),
    ],
)
def test_the_stacks_values_decide_as_the_templates_do(
    extra: dict[str, Any], every_node: list[str]
) -> None:
    images = rendered("1.19.6", extra_values=extra).every_node
    assert len(images) == len(every_node)
    assert all(image.startswith(prefix) for image, prefix in zip(images, every_node, strict=True))


def test_without_digests_the_tag_alone() -> None:
    images = rendered("1.19.6", extra_values={"image": {"useDigest": False}})
    assert images.every_node[0] == "quay.io/cilium/cilium:v1.19.6"


def test_eni_ipam_names_the_aws_operator() -> None:
    values = chart_values("1.19.6")["operator"]["image"]
    images = rendered("1.19.6", extra_values={"eni": {"enabled": True}})
    assert images.cluster == (f"quay.io/cilium/operator-aws:v1.19.6@{values['awsDigest']}",)


def test_servers_pull_the_operator_agents_only_the_daemonsets() -> None:
    cfg = parse_cluster(stack_data("prod"))
    images = cilium.node_images(cfg)
    assert images.agent and set(images.agent) < set(images.server)
    assert any("operator-generic" in i for i in images.server)
    assert not any("operator" in i for i in images.agent)
    flannel = stack_data("prod")
    flannel["k3s"] = {**flannel.get("k3s", {}), "cni": "flannel"}
    flannel.pop("cilium", None)
    assert cilium.node_images(parse_cluster(flannel)) == cilium.NodeImages()


def test_an_image_change_moves_only_the_hosts_that_pull_it() -> None:
    """Hubble's UI runs as a Deployment, pulled by the servers only: turning it on changes the
    servers' content hashes and no agent's; a new Cilium version changes every host's."""

    def hashes(data: dict[str, Any]) -> dict[str, str]:
        rendered_hosts = offline.render_stack(parse_cluster(data)).hosts
        return {name: hostspec.content_hash(text) for name, text in rendered_hosts.items()}

    base = stack_data("prod")
    base["cilium"] = {**base.get("cilium", {}), "hubble": {"enabled": True, "ui": False}}
    with_ui = json.loads(json.dumps(base))
    with_ui["cilium"]["hubble"]["ui"] = True
    upgraded = json.loads(json.dumps(base))
    upgraded["cilium"]["version"] = "1.20.0"
    before, after, later = hashes(base), hashes(with_ui), hashes(upgraded)
    servers = {n for n in before if "control" in n}
    assert servers and servers != set(before)
    assert {n for n in before if before[n] != after[n]} == servers
    assert {n for n in before if before[n] != later[n]} == set(before)
