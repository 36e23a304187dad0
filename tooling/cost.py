"""Monthly cost of a plan: the list prices in catalog.py applied to the resources it creates.

Counted generically from the resource types and inputs a plan holds, so that any hcloud server,
load balancer, volume or primary IP the program registers is priced without code changes here:
  hcloud:index/server:Server              serverType in its location, plus a primary IPv4 unless
                                          publicNets disables it or assigns an existing one
  hcloud:index/loadBalancer:LoadBalancer  loadBalancerType (its addresses are included)
  hcloud:index/volume:Volume              size in GB
  hcloud:index/primaryIp:PrimaryIp        type ipv4 (IPv6 is free)
Anything else (networks, firewalls, Colima VMs, commands) costs nothing. A price the table does
not have is reported as missing, never guessed. Amounts are strings with two decimals ("23.96"),
so plan.json stays plain text that diffs well and serializes without floats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from components import catalog

SERVER = "hcloud:index/server:Server"
LOAD_BALANCER = "hcloud:index/loadBalancer:LoadBalancer"
VOLUME = "hcloud:index/volume:Volume"
PRIMARY_IP = "hcloud:index/primaryIp:PrimaryIp"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class PricedResource:
    """What a plan says about one resource; enough to price it."""

    urn: str
    name: str
    type: str
    inputs: Mapping[str, Any]


@dataclass(frozen=True)
class CostItem:
    name: str
    what: str  # "cx33 in fsn1", "primary IPv4", "volume 10 GB"
    monthly: Decimal | None  # None: no price in the table
    confirmed: bool = True  # False: a figure catalog.py could not confirm for its date


@dataclass(frozen=True)
class Cost:
    items: tuple[CostItem, ...]

    @property
    def total(self) -> Decimal:
        return sum((item.monthly for item in self.items if item.monthly is not None), Decimal(0))

    @property
    def unpriced(self) -> tuple[CostItem, ...]:
        return tuple(item for item in self.items if item.monthly is None)

    @property
    def unconfirmed(self) -> tuple[CostItem, ...]:
        return tuple(item for item in self.items if not item.confirmed)


def money(amount: Decimal) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


def plan_cost(resources: Iterable[PricedResource]) -> Cost:
    items: list[CostItem] = []
    for resource in resources:
        items.extend(_items(resource))
    return Cost(tuple(items))


def _items(resource: PricedResource) -> list[CostItem]:
    inputs = resource.inputs
    if resource.type == SERVER:
        return _server_items(resource.name, inputs)
    if resource.type == LOAD_BALANCER:
        lb_type = str(inputs.get("loadBalancerType", ""))
        price = catalog.LOAD_BALANCER_PRICES.get(lb_type)
        return [
            CostItem(
                resource.name,
                f"load balancer {lb_type or '(type unknown)'}",
                Decimal(price) if price else None,
                catalog.LOAD_BALANCER_PRICES_CONFIRMED,
            )
        ]
    if resource.type == VOLUME:
        size = inputs.get("size")
        if isinstance(size, int | float) and not isinstance(size, bool):
            gigabytes = Decimal(int(size))
            monthly = gigabytes * Decimal(catalog.VOLUME_PRICE_PER_GB)
            return [
                CostItem(
                    resource.name, f"volume {gigabytes} GB", monthly, catalog.VOLUME_PRICE_CONFIRMED
                )
            ]
        return [CostItem(resource.name, "volume (size unknown)", None)]
    if resource.type == PRIMARY_IP and inputs.get("type") == "ipv4":
        return [_ipv4(resource.name)]
    return []


def _server_items(name: str, inputs: Mapping[str, Any]) -> list[CostItem]:
    server_type = str(inputs.get("serverType", ""))
    location = str(inputs.get("location") or str(inputs.get("datacenter", "")).split("-")[0])
    region = catalog.PRICE_REGIONS.get(location, "")
    price = catalog.SERVER_PRICES.get(region, {}).get(server_type)
    where = f" in {location}" if location else ""
    items = [CostItem(name, f"{server_type}{where}", Decimal(price) if price else None)]
    if _server_has_own_ipv4(inputs):
        items.append(_ipv4(name))
    return items


def _server_has_own_ipv4(inputs: Mapping[str, Any]) -> bool:
    """hcloud gives a server a new primary IPv4 unless public_net turns it off or names one."""
    nets = inputs.get("publicNets")
    if not isinstance(nets, list) or not nets:
        return True
    net = nets[0] if isinstance(nets[0], Mapping) else {}
    if net.get("ipv4"):  # an existing PrimaryIp resource, priced on its own
        return False
    return net.get("ipv4Enabled", True) is not False


def _ipv4(name: str) -> CostItem:
    return CostItem(
        name,
        "primary IPv4",
        Decimal(catalog.PRIMARY_IPV4_PRICE),
        catalog.PRIMARY_IPV4_PRICE_CONFIRMED,
    )


def cost_document(cost: Cost) -> dict[str, Any]:
    """The `cost` section of plan.json."""
    return {
        "basis": catalog.PRICE_BASIS,
        "pricesAsOf": catalog.PRICES_AS_OF,
        "currency": "EUR",
        "monthlyTotal": money(cost.total),
        "items": [
            {
                "name": item.name,
                "what": item.what,
                "monthly": None if item.monthly is None else money(item.monthly),
                "confirmed": item.confirmed,
            }
            for item in cost.items
        ],
        "unpriced": [f"{item.name}: {item.what}" for item in cost.unpriced],
    }


def describe_basis(cost: Cost) -> str:
    """The price basis plus what the total leaves out or cannot vouch for."""
    notes = [catalog.PRICE_BASIS]
    if cost.unpriced:
        names = ", ".join(sorted({item.what for item in cost.unpriced}))
        notes.append(f"{len(cost.unpriced)} item(s) without a price, not counted: {names}")
    if cost.unconfirmed:
        kinds = ", ".join(sorted({item.what for item in cost.unconfirmed}))
        notes.append(f"unconfirmed for that date: {kinds}")
    return "; ".join(notes)
