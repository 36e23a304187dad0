"""A strict JSON schema derived from a Helm chart's values.yaml, for charts that ship none.

hcloud-cloud-controller-manager's chart has no values.schema.json, so Helm itself would accept
any typo. This derives one from the chart's own values.yaml at the pinned tag (a copy lives in
components/data/hcloud/): every key the chart declares gets the type of its default, and every
mapping of the chart's own settings refuses keys the chart does not know
(`additionalProperties: false`). Mappings that hold Kubernetes objects or free-form maps
(`env`, `args`, `resources`, security contexts, labels, ...) stay open: the chart passes them
through with toYaml, and their keys are Kubernetes', not the chart's.

Regenerate after changing the pinned chart:
    python -m components.k8s.chartschema components/data/hcloud/<chart>-<version>.values.yaml
writes <chart>-<version>.values.schema.json next to it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

# Dotted paths (inside values) of mappings whose keys are not the chart's to define.
CCM_OPEN_MAPS = frozenset(
    {
        "args",  # any hcloud-cloud-controller-manager flag
        "env",  # any environment variable, each an EnvVar without its name
        "monitoring.podMonitor.labels",
        "monitoring.podMonitor.annotations",
        "monitoring.podMonitor.spec",
        "networking.network",  # an EnvVar (value or valueFrom)
        "resources",
        "podSecurityContext",
        "securityContext",
        "selectorLabels",
        "strategy",
        "nodeSelector",
        "affinity",
        "serviceAccount.annotations",
        "podLabels",
        "podAnnotations",
        "dnsConfig",
    }
)

# Keys whose default is null but whose value is a string when set.
CCM_NULLABLE_STRINGS = frozenset({"nameOverride"})

# What the templates accept beyond the default's type: deployment.yaml and daemonset.yaml
# render only for these two kinds (anything else renders no controller at all).
CCM_REFINEMENTS: dict[str, dict[str, Any]] = {
    "kind": {"enum": ["Deployment", "DaemonSet"]},
    "replicaCount": {"minimum": 1},
}


def _type_of(value: Any, path: str, nullable: Collection[str]) -> dict[str, Any]:
    if value is None:
        return {"type": ["string", "null"]} if path in nullable else {}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    raise TypeError(f"{path}: unexpected value {value!r}")


def derive(
    values: Mapping[str, Any],
    open_maps: Collection[str],
    nullable: Collection[str] = (),
    path: str = "",
    refinements: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The schema of one mapping of values; an empty default mapping is a free-form map."""
    if path in open_maps or not values:
        return {"type": "object"}
    properties: dict[str, Any] = {}
    for key, child in sorted(values.items()):
        dotted = f"{path}.{key}" if path else key
        if isinstance(child, Mapping):
            properties[key] = derive(child, open_maps, nullable, dotted, refinements)
        else:
            properties[key] = {
                **_type_of(child, dotted, nullable),
                **(refinements or {}).get(dotted, {}),
            }
    return {"type": "object", "properties": properties, "additionalProperties": False}


def derive_file(values_file: Path) -> dict[str, Any]:
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    schema = derive(values, CCM_OPEN_MAPS, CCM_NULLABLE_STRINGS, refinements=CCM_REFINEMENTS)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$comment": f"derived by components/k8s/chartschema.py from {values_file.name}",
        **schema,
    }


def schema_text(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].endswith(".values.yaml"):
        print(
            "usage: python -m components.k8s.chartschema <chart>-<version>.values.yaml",
            file=sys.stderr,
        )
        return 2
    source = Path(argv[0])
    target = source.with_name(source.name.removesuffix(".values.yaml") + ".values.schema.json")
    target.write_text(schema_text(derive_file(source)), encoding="utf-8")
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
