"""How the Hetzner provider polls its actions: `hcloud:pollFunction` and `hcloud:pollInterval`.

These are the provider's own settings (Pulumi hands `hcloud:*` stack config to the default
provider); the program sets neither, it checks them before any resource is created.

terraform-provider-hcloud (which pulumi-hcloud wraps; hcloud/provider.go) reads `poll_interval`
(a Go duration, default "500ms") and `poll_function` ("constant" or "exponential", default
"exponential") and gives hcloud-go ConstantBackoff(interval) or ExponentialBackoff(2, interval),
the latter capped at one minute (hcloud-go hcloud/client.go). Every resource that waits for an
action (a server create, a subnet, an attach) then polls it with that backoff until it ends
(hcloud-go ActionClient.WaitForFunc). With the default, a server create whose action ends just
after 63.5 s is seen at 123.5 s (hetznercloud/terraform-provider-hcloud#966); poll_function
"constant" was added for "creating a cloud instance with a custom snapshot" (#798).

Constant polling spends requests: every running action is polled once an interval, so N servers
created together poll N / interval times a second. Hetzner Cloud allows 3600 requests an hour per
project (hetznercloud/hcloud-go#79, terraform-provider-hcloud#702; a refused request is retried
by hcloud-go at most 5 times, then the create fails). The check below keeps constant polling
within that rate on its own: interval >= N seconds for N servers, so the polling never outruns
the limit however long the creates take, and the rest of the deploy and the cluster's Hetzner
controllers (the same project) keep the hour's allowance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from components.config.errors import Problem
from components.config.schema import ClusterConfig

POLL_FUNCTION = "hcloud:pollFunction"
POLL_INTERVAL = "hcloud:pollInterval"
FUNCTIONS = ("constant", "exponential")
DEFAULT_FUNCTION = "exponential"
DEFAULT_INTERVAL = 0.5
# Requests a second Hetzner's per-project limit allows on average (3600 an hour).
REQUESTS_PER_SECOND = 1.0

# Go's time.ParseDuration units (seconds each); "µs" and "us" are the same.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")


@dataclass(frozen=True)
class HcloudPolling:
    """The provider's polling: `function` and its base `interval` in seconds."""

    function: str = DEFAULT_FUNCTION
    interval: float = DEFAULT_INTERVAL
    # False: neither key is set, the provider's defaults apply. The provider's plugin-framework
    # resources (a server's network attach) then cap their exponential backoff at 10 s, not 60.
    configured: bool = False


def parse_duration(text: str) -> float | None:
    """Seconds of a positive Go duration ("500ms", "2s", "1m30s"), or None if it is not one."""
    position, total = 0, 0.0
    while position < len(text):
        part = _PART.match(text, position)
        if part is None:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        position = part.end()
    return total if text and total > 0 else None


def hetzner_servers(cluster: ClusterConfig) -> int:
    """Servers the stack creates on Hetzner (one per host)."""
    return sum(pool.count for pool in cluster.node_pools) if cluster.provider == "hetzner" else 0


def minimum_constant_interval(servers: int) -> float:
    """The shortest constant interval whose polls of `servers` creates at once stay within the
    per-project rate (see the module docstring)."""
    return max(DEFAULT_INTERVAL, servers / REQUESTS_PER_SECOND)


def read_polling(
    get: Callable[[str], str | None], cluster: ClusterConfig
) -> tuple[HcloudPolling, list[Problem]]:
    """The stack's polling from `get` (a config lookup), and what is wrong with it."""
    function, interval = get(POLL_FUNCTION), get(POLL_INTERVAL)
    problems: list[Problem] = []
    if function is not None and function not in FUNCTIONS:
        allowed = ", ".join(repr(f) for f in FUNCTIONS)
        problems.append(Problem(POLL_FUNCTION, f"{function!r} is not one of {allowed}"))
    seconds = DEFAULT_INTERVAL
    if interval is not None:
        parsed = parse_duration(interval)
        if parsed is None:
            problems.append(
                Problem(
                    POLL_INTERVAL,
                    f"{interval!r} is not a positive Go duration (e.g. '500ms', '5s', '1m')",
                )
            )
        else:
            seconds = parsed
    polling = HcloudPolling(
        function=function if function in FUNCTIONS else DEFAULT_FUNCTION,
        interval=seconds,
        configured=function is not None or interval is not None,
    )
    servers = hetzner_servers(cluster)
    minimum = minimum_constant_interval(servers)
    if not problems and polling.function == "constant" and seconds < minimum:
        problems.append(
            Problem(
                POLL_INTERVAL,
                f"{interval or '500ms'} with constant polling: the {servers} servers created "
                f"together would poll {servers / seconds:.1f} times a second, over Hetzner's "
                f"3600 requests an hour per project; use at least '{minimum:g}s' (one second "
                f"per server), or pollFunction 'exponential'",
            )
        )
    return polling, problems
