"""Reading the stack: `nixos-k3s:cluster` from the Pulumi config, parsed and checked, and the
secrets it needs (hcloud token, tailscale key, etcd S3 keys), each required to be encrypted.

Checks that belong to modules above this package (Cilium's chart values) are handed in as
`extra_checks`; components/stack.py puts the whole check together.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pydantic import ValidationError

from components.config.checks import semantic_problems, semantic_warnings
from components.config.derived import needs_tailscale_key, uses_cloud_controller, uses_csi
from components.config.errors import ConfigError, Problem, problems_from_validation
from components.config.hcloud_polling import read_polling
from components.config.schema import ClusterConfig

# A check run after the config's own, given the problems found so far.
ExtraCheck = Callable[[ClusterConfig, Sequence[Problem]], Iterable[Problem]]


def parse_cluster(
    data: Any, source: str = "nixos-k3s:cluster", extra_checks: Sequence[ExtraCheck] = ()
) -> ClusterConfig:
    """Validate raw stack data with the schema, the config's checks and `extra_checks`; raise
    ConfigError listing every problem. components.stack.parse_cluster runs every check."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [Problem("", f"expected a mapping of cluster settings, got {type(data).__name__}")],
            source,
        )
    try:
        cfg = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from_validation(exc, ClusterConfig), source) from None
    problems = semantic_problems(cfg)
    for check in extra_checks:
        problems += check(cfg, problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


# --- loading from Pulumi config --------------------------------------------------------------

REQUIRED_SECRET_HINT = "pulumi config set --secret"


@dataclass(frozen=True)
class StackConfig:
    cluster: ClusterConfig
    tailscale_auth_key: pulumi.Output[str] | None
    # The Hetzner API token for the in-cluster cloud controller and CSI driver (a Kubernetes
    # Secret); None when neither is installed.
    hcloud_token: pulumi.Output[str] | None = None
    etcd_s3_credentials: EtcdS3Credentials | None = None


TAILSCALE_KEY = "nixos-k3s:tailscaleAuthKey"
HCLOUD_TOKEN = "hcloud:token"


def _check_hcloud_token() -> None:
    """The provider reads the token itself; it must exist, and not in plain text."""
    if pulumi.runtime.get_config(HCLOUD_TOKEN):
        if not pulumi.runtime.is_config_secret(HCLOUD_TOKEN):
            raise ConfigError(
                [
                    Problem(
                        HCLOUD_TOKEN,
                        "is stored in plain text in the stack file: set it again with "
                        f"{REQUIRED_SECRET_HINT} {HCLOUD_TOKEN} <token>",
                    )
                ]
            )
    elif not os.environ.get("HCLOUD_TOKEN"):
        raise ConfigError(
            [
                Problem(
                    HCLOUD_TOKEN,
                    "the Hetzner Cloud API token is not set: "
                    f"{REQUIRED_SECRET_HINT} {HCLOUD_TOKEN} <token> (or export HCLOUD_TOKEN)",
                )
            ]
        )


def _hcloud_token(cluster: ClusterConfig) -> pulumi.Output[str] | None:
    """The token the in-cluster Hetzner add-ons need (checked by _check_hcloud_token first)."""
    if not (uses_cloud_controller(cluster) or uses_csi(cluster)):
        return None
    raw = pulumi.runtime.get_config(HCLOUD_TOKEN) or os.environ.get("HCLOUD_TOKEN", "")
    return pulumi.Output.secret(str(raw))


def _tailscale_key(cluster: ClusterConfig) -> pulumi.Output[str] | None:
    """The tailscale auth key when the stack needs one; it must have been set encrypted."""
    if not needs_tailscale_key(cluster):
        return None
    raw = pulumi.runtime.get_config(TAILSCALE_KEY)
    if not raw:
        raise ConfigError(
            [
                Problem(
                    TAILSCALE_KEY,
                    "tailscale is enabled but the auth key is not set: "
                    f"{REQUIRED_SECRET_HINT} {TAILSCALE_KEY} <tskey-auth-...>",
                )
            ]
        )
    if not pulumi.runtime.is_config_secret(TAILSCALE_KEY):
        raise ConfigError(
            [
                Problem(
                    TAILSCALE_KEY,
                    "is stored in plain text in the stack file: set it again with "
                    f"{REQUIRED_SECRET_HINT} {TAILSCALE_KEY} <tskey-auth-...>",
                )
            ]
        )
    return pulumi.Output.secret(str(raw))


ETCD_S3_ACCESS_KEY = "nixos-k3s:etcdS3AccessKeyId"
ETCD_S3_SECRET_KEY = "nixos-k3s:etcdS3SecretAccessKey"
# What a systemd EnvironmentFile line holds unquoted: no whitespace, quotes, '\\' or '$'.
S3_CREDENTIAL = re.compile(r"^[A-Za-z0-9+/=_.:@-]{1,256}$")


@dataclass(frozen=True)
class EtcdS3Credentials:
    """The S3 key pair for etcd snapshot uploads, both Pulumi secrets."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]


def _etcd_s3_credentials(cluster: ClusterConfig) -> EtcdS3Credentials | None:
    """Both keys when snapshots go to S3; each must be set, encrypted and one line of text.

    The messages never quote a value: these are secrets.
    """
    if cluster.k3s.etcd_snapshots.s3 is None:
        return None
    problems: list[Problem] = []
    values: dict[str, str] = {}
    for key, example in ((ETCD_S3_ACCESS_KEY, "<access key>"), (ETCD_S3_SECRET_KEY, "<secret>")):
        raw = pulumi.runtime.get_config(key)
        hint = f"{REQUIRED_SECRET_HINT} {key} {example}"
        if not raw:
            problems.append(Problem(key, f"k3s.etcdSnapshots.s3 is set but this is not: {hint}"))
        elif not pulumi.runtime.is_config_secret(key):
            problems.append(
                Problem(key, f"is stored in plain text in the stack file: set it again with {hint}")
            )
        elif not S3_CREDENTIAL.match(str(raw)):
            problems.append(
                Problem(
                    key,
                    "has characters an S3 key does not have (whitespace, quotes, '\\' or '$'): "
                    f"set it again with {hint}",
                )
            )
        else:
            values[key] = str(raw)
    if problems:
        raise ConfigError(problems)
    return EtcdS3Credentials(
        access_key_id=pulumi.Output.secret(values[ETCD_S3_ACCESS_KEY]),
        secret_access_key=pulumi.Output.secret(values[ETCD_S3_SECRET_KEY]),
    )


def load_config(extra_checks: Sequence[ExtraCheck] = ()) -> StackConfig:
    """The validated stack config; raises ConfigError (no traceback in `pulumi up`)."""
    config = pulumi.Config("nixos-k3s")
    try:
        raw = config.get_object("cluster")
    except pulumi.ConfigTypeError as exc:
        raise ConfigError([Problem("nixos-k3s:cluster", f"not a YAML mapping ({exc})")]) from None
    if raw is None:
        raise ConfigError(
            [Problem("nixos-k3s:cluster", "missing: the stack file must define the cluster")]
        )
    cluster = parse_cluster(raw, extra_checks=extra_checks)
    if cluster.provider == "hetzner":
        _check_hcloud_token()
        _, polling_problems = read_polling(pulumi.runtime.get_config, cluster)
        if polling_problems:
            raise ConfigError(polling_problems)
    key = _tailscale_key(cluster)
    s3_credentials = _etcd_s3_credentials(cluster)
    for warning in semantic_warnings(cluster):
        pulumi.log.warn(str(warning))
    return StackConfig(
        cluster=cluster,
        tailscale_auth_key=key,
        hcloud_token=_hcloud_token(cluster),
        etcd_s3_credentials=s3_credentials,
    )
