"""tooling.cost: the monthly price of what a plan creates, counted from resource types."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from components import catalog
from tooling import cost
from tooling.cost import PricedResource, plan_cost


def resource(type_: str, name: str, **inputs: Any) -> PricedResource:
    return PricedResource(f"urn:pulumi:s::p::{type_}::{name}", name, type_, inputs)


def server(name: str, server_type: str = "cx33", location: str = "fsn1", **inputs: Any):
    return resource(cost.SERVER, name, serverType=server_type, location=location, **inputs)


def test_every_catalog_server_type_has_a_price_in_its_eu_locations() -> None:
    eu_types = [t.name for t in catalog.SERVER_TYPES.values() if "fsn1" in t.locations]
    missing = [name for name in eu_types if name not in catalog.SERVER_PRICES["eu"]]
    # cpx12 is the one current type the dated sources give no EU price for (see catalog.py)
    assert missing == ["cpx12"]
    for prices in catalog.SERVER_PRICES.values():
        assert set(prices) <= set(catalog.SERVER_TYPES)
        assert all(Decimal(price) > 0 for price in prices.values())


def test_server_costs_its_type_plus_a_primary_ipv4() -> None:
    result = plan_cost([server("a", "cx43", "nbg1"), server("b", "cax11", "hel1")])

    assert [(i.name, i.what, cost.money(i.monthly or Decimal(0))) for i in result.items] == [
        ("a", "cx43 in nbg1", "11.99"),
        ("a", "primary IPv4", "0.50"),
        ("b", "cax11 in hel1", "4.49"),
        ("b", "primary IPv4", "0.50"),
    ]
    assert cost.money(result.total) == "17.48"
    assert [i.what for i in result.unconfirmed] == ["primary IPv4", "primary IPv4"]


@pytest.mark.parametrize(
    ("public_nets", "ipv4_items"),
    [
        ([{"ipv4Enabled": False, "ipv6Enabled": True}], 0),
        ([{"ipv4Enabled": True}], 1),
        ([{"ipv4": 4711}], 0),  # an existing PrimaryIp resource is priced on its own
        ([], 1),  # hcloud's default: both address families
    ],
)
def test_primary_ipv4_follows_public_nets(public_nets: list[Any], ipv4_items: int) -> None:
    result = plan_cost([server("a", publicNets=public_nets)])
    assert sum(1 for i in result.items if i.what == "primary IPv4") == ipv4_items


def test_load_balancers_volumes_and_primary_ips_are_counted_generically() -> None:
    result = plan_cost(
        [
            resource(cost.LOAD_BALANCER, "api", loadBalancerType="lb11", location="fsn1"),
            resource(cost.LOAD_BALANCER, "big", loadBalancerType="lb31", networkZone="eu-central"),
            resource(cost.VOLUME, "data", size=100.0),  # mocks hand numbers over as floats
            resource(cost.PRIMARY_IP, "v4", type="ipv4"),
            resource(cost.PRIMARY_IP, "v6", type="ipv6"),
            resource("hcloud:index/network:Network", "net", ipRange="10.0.0.0/16"),
        ]
    )

    assert [(i.name, i.what) for i in result.items] == [
        ("api", "load balancer lb11"),
        ("big", "load balancer lb31"),
        ("data", "volume 100 GB"),
        ("v4", "primary IPv4"),
    ]
    # 5.39 + 18.66 + 100 * 0.0572 + 0.50
    assert cost.money(result.total) == "30.27"
    assert {i.what for i in result.unconfirmed} == {
        "load balancer lb11",
        "load balancer lb31",
        "primary IPv4",
    }


def test_a_price_the_table_lacks_is_reported_not_guessed() -> None:
    result = plan_cost(
        [server("us", "cpx22", "ash"), resource(cost.LOAD_BALANCER, "lb", loadBalancerType="lb99")]
    )

    assert [(i.name, i.what) for i in result.unpriced] == [
        ("us", "cpx22 in ash"),
        ("lb", "load balancer lb99"),
    ]
    assert cost.money(result.total) == "0.50"  # only the server's IPv4 has a price
    basis = cost.describe_basis(result)
    assert "2 item(s) without a price, not counted: cpx22 in ash, load balancer lb99" in basis
    assert catalog.PRICES_AS_OF in basis and "excl. VAT" in basis


def test_cost_document_is_plain_strings_and_sorted_items() -> None:
    document = cost.cost_document(plan_cost([server("a"), resource(cost.VOLUME, "v", size=10)]))

    assert document["monthlyTotal"] == "7.56"  # 6.49 + 0.50 + 0.572
    assert document["currency"] == "EUR"
    assert document["pricesAsOf"] == catalog.PRICES_AS_OF
    assert [item["monthly"] for item in document["items"]] == ["6.49", "0.50", "0.57"]
    assert document["unpriced"] == []
