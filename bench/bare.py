"""Bare resources: the SDK's own cost of registering the resources a plan holds.

For every resource of a plan, the baseline registers one resource of the same type through
the same SDK class, with only the inputs the class requires (constant plain values): no
parent, no options, no dependencies, no Outputs as inputs. A generated SDK class creates one
Output per property of its type and serializes every input; that cost belongs to the SDK and
is paid by any program that creates these resources, so it is in the baseline. What the
ratio plan/baseline then shows is our program's own overhead: rendering, Outputs between
resources, components, dependencies, recording and writing the plan.

`floor` is the other extreme, for reference only: as many `CustomResource`s with no
properties at all, which no real program registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pulumi

FLOOR_TYPE = "nixos-k3s:bench:Bare"

Factory = Callable[[str], pulumi.Resource]


def _command_local(name: str) -> pulumi.Resource:
    from pulumi_command import local

    return local.Command(name)


def _command_remote(name: str) -> pulumi.Resource:
    from pulumi_command import remote

    return remote.Command(name, connection=remote.ConnectionArgs(host="192.0.2.1"))


def _private_key(name: str) -> pulumi.Resource:
    import pulumi_tls as tls

    return tls.PrivateKey(name, algorithm="ED25519")


def _random_password(name: str) -> pulumi.Resource:
    import pulumi_random as random

    return random.RandomPassword(name, length=16)


def _server(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.Server(name, server_type="cx23")


def _server_network(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.ServerNetwork(name, server_id=1)


def _network(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.Network(name, ip_range="10.0.0.0/16")


def _network_subnet(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.NetworkSubnet(
        name, ip_range="10.0.1.0/24", network_id=1, network_zone="eu-central", type="cloud"
    )


def _network_route(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.NetworkRoute(name, destination="10.1.0.0/24", gateway="10.0.1.1", network_id=1)


def _placement_group(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.PlacementGroup(name, type="spread")


def _ssh_key(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.SshKey(name, public_key="ssh-ed25519 AAAA")


def _firewall(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.Firewall(name)


def _load_balancer(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.LoadBalancer(name, load_balancer_type="lb11")


def _load_balancer_network(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.LoadBalancerNetwork(name, load_balancer_id=1)


def _load_balancer_service(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.LoadBalancerService(name, load_balancer_id="1", protocol="tcp")


def _load_balancer_target(name: str) -> pulumi.Resource:
    import pulumi_hcloud as hcloud

    return hcloud.LoadBalancerTarget(name, load_balancer_id=1, type="server")


def _kubernetes_secret(name: str) -> pulumi.Resource:
    import pulumi_kubernetes as k8s

    return k8s.core.v1.Secret(name)


def _helm_release(name: str) -> pulumi.Resource:
    import pulumi_kubernetes as k8s

    return k8s.helm.v3.Release(name, chart="cilium")


def _kubernetes_provider(name: str) -> pulumi.Resource:
    import pulumi_kubernetes as k8s

    return k8s.Provider(name)


CUSTOM: dict[str, Factory] = {
    "command:local:Command": _command_local,
    "command:remote:Command": _command_remote,
    "hcloud:index/firewall:Firewall": _firewall,
    "hcloud:index/loadBalancer:LoadBalancer": _load_balancer,
    "hcloud:index/loadBalancerNetwork:LoadBalancerNetwork": _load_balancer_network,
    "hcloud:index/loadBalancerService:LoadBalancerService": _load_balancer_service,
    "hcloud:index/loadBalancerTarget:LoadBalancerTarget": _load_balancer_target,
    "hcloud:index/network:Network": _network,
    "hcloud:index/networkRoute:NetworkRoute": _network_route,
    "hcloud:index/networkSubnet:NetworkSubnet": _network_subnet,
    "hcloud:index/placementGroup:PlacementGroup": _placement_group,
    "hcloud:index/server:Server": _server,
    "hcloud:index/serverNetwork:ServerNetwork": _server_network,
    "hcloud:index/sshKey:SshKey": _ssh_key,
    "kubernetes:core/v1:Secret": _kubernetes_secret,
    "kubernetes:helm.sh/v3:Release": _helm_release,
    "pulumi:providers:kubernetes": _kubernetes_provider,
    "random:index/randomPassword:RandomPassword": _random_password,
    "tls:index/privateKey:PrivateKey": _private_key,
}


class UnknownType(Exception):
    """A plan holds a custom resource type this table has no bare factory for."""


def missing(resources: Iterable[dict[str, Any]]) -> list[str]:
    """Custom resource types of a plan without a bare factory (must be none)."""
    return sorted({r["type"] for r in resources if r["custom"] and r["type"] not in CUSTOM})


def register(resources: Iterable[dict[str, Any]]) -> int:
    """Register one bare resource per plan resource (plan.json's `resources`)."""
    items = list(resources)
    unknown = missing(items)
    if unknown:
        raise UnknownType(f"no bare factory for {', '.join(unknown)} (add one to bench/bare.py)")
    for i, res in enumerate(items):
        name = f"bare-{i}"
        if res["custom"]:
            CUSTOM[res["type"]](name)
        else:
            pulumi.ComponentResource(res["type"], name)
    return len(items)


def register_floor(count: int) -> int:
    """`count` custom resources with no properties (the reference floor)."""
    for i in range(count):
        pulumi.CustomResource(FLOOR_TYPE, f"floor-{i}", {})
    return count
