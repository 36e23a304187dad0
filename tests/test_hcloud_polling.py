"""The Hetzner provider's action polling (hcloud:pollFunction, hcloud:pollInterval), checked
before any resource is created; invalid-stack files in tests/reliability/invalid cover the
messages through the CLI."""

from __future__ import annotations

import pytest
import yaml

from components.config import hcloud_polling
from components.config.hcloud_polling import HcloudPolling, parse_duration, read_polling
from components.config.schema import ClusterConfig
from components.stack import parse_cluster
from tests.conftest import PROJECT_DIR, stack_data


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("1m30s", 90.0), ("1.5s", 1.5), (".5s", 0.5), ("2h", 7200.0)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "0s", "5 s", "-1s", "5sec", "s", "1m30"])
def test_not_go_durations(text: str) -> None:
    assert parse_duration(text) is None


def cluster(servers: int, agents: int = 0) -> ClusterConfig:
    data = stack_data("prod")
    data["nodePools"][0]["count"] = servers
    data["nodePools"][1]["count"] = agents
    return parse_cluster(data)


def test_unset_is_the_providers_default() -> None:
    polling, problems = read_polling({}.get, cluster(3, 2))
    assert problems == []
    assert polling == HcloudPolling("exponential", 0.5, configured=False)


def test_constant_needs_a_second_per_server() -> None:
    settings = {"hcloud:pollFunction": "constant", "hcloud:pollInterval": "5s"}
    polling, problems = read_polling(settings.get, cluster(3, 2))
    assert problems == []
    assert polling == HcloudPolling("constant", 5.0, configured=True)
    _, problems = read_polling(settings.get, cluster(3, 3))
    assert [p.path for p in problems] == ["hcloud:pollInterval"]
    assert "the 6 servers" in problems[0].message and "at least '6s'" in problems[0].message


def test_constant_without_interval_is_the_default_half_second() -> None:
    _, problems = read_polling({"hcloud:pollFunction": "constant"}.get, cluster(1))
    assert [p.path for p in problems] == ["hcloud:pollInterval"]
    assert "500ms with constant polling" in problems[0].message


def test_exponential_has_no_minimum() -> None:
    settings = {"hcloud:pollFunction": "exponential", "hcloud:pollInterval": "500ms"}
    polling, problems = read_polling(settings.get, cluster(3, 30))
    assert problems == [] and polling.function == "exponential" and polling.configured


def test_minimum_is_one_second_per_server_not_below_the_default() -> None:
    assert hcloud_polling.minimum_constant_interval(0) == 0.5
    assert hcloud_polling.minimum_constant_interval(5) == 5.0


def test_prod_stack_polls_at_its_minimum() -> None:
    data = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text(encoding="utf-8"))
    config = data["config"]
    prod = parse_cluster(config["nixos-k3s:cluster"])
    polling, problems = read_polling(lambda key: config.get(key), prod)
    assert problems == []
    assert polling.function == "constant"
    assert polling.interval == hcloud_polling.minimum_constant_interval(
        hcloud_polling.hetzner_servers(prod)
    )
