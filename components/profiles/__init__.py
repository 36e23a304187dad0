"""One profile per provider: what differs between the machines of `provider: hetzner` and
`provider: colima` (interface, MTU, nameservers, disk, hardware profile, architecture). A new
provider is a new module here plus its machine layer (components/<provider>.py)."""

from __future__ import annotations

from components.profiles import colima, hetzner
from components.profiles.base import ProviderProfile

PROFILES: dict[str, ProviderProfile] = {p.name: p for p in (hetzner.PROFILE, colima.PROFILE)}


def profile(provider: str) -> ProviderProfile:
    """The profile of a stack's `provider`."""
    return PROFILES[provider]


__all__ = ["PROFILES", "ProviderProfile", "profile"]
