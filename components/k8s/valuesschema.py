"""JSON Schema (draft-07) validation for the keywords Helm chart value schemas use.

The Cilium charts we support ship a draft-07 `values.schema.json` built from `type`,
`properties`, `items`, `anyOf`, `oneOf`, `enum`, `minimum` and `maximum` only; the Hetzner
charts' schemas (components/data/hcloud/) add `additionalProperties`. This module
implements exactly those keywords with the semantics and messages of the `jsonschema` package
(Draft7Validator), which stays a test dependency: tests/cilium/test_values_schema.py checks the
two against each other on every shipped schema. A schema with any other validation keyword is
refused (UnsupportedSchema) instead of being half-checked; a test walks the shipped schemas for
that, so a new chart version with new keywords fails in CI, not at a user's `pulumi up`.

Why not `jsonschema` at run time: importing it (referencing, rpds, attrs and its metaschema
store) costs more than everything else `plan` imports besides Pulumi and pydantic.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Keywords that never fail validation (annotations), as draft-07 defines them.
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "readOnly",
     "writeOnly", "definitions"}
)  # fmt: skip
VALIDATION = frozenset(
    {
        "type",
        "properties",
        "additionalProperties",
        "items",
        "anyOf",
        "oneOf",
        "enum",
        "minimum",
        "maximum",
    }
)


class UnsupportedSchema(Exception):
    """The schema uses a keyword this module does not implement."""


@dataclass(frozen=True)
class Problem:
    path: tuple[str | int, ...]  # where in the instance, like jsonschema's absolute_path
    message: str  # jsonschema's message for the same violation


def _is_type(instance: Any, name: str) -> bool:
    # Draft-07 type checker of the jsonschema package (bool is never a number).
    if name == "object":
        return isinstance(instance, dict)
    if name == "array":
        return isinstance(instance, list)
    if name == "string":
        return isinstance(instance, str)
    if name == "boolean":
        return isinstance(instance, bool)
    if name == "null":
        return instance is None
    if isinstance(instance, bool):
        return False
    if name == "integer":
        return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())
    if name == "number":
        return isinstance(instance, numbers.Number)
    raise UnsupportedSchema(f"unknown type {name!r}")


def _unbool(value: Any) -> Any:
    # True/False must not equal 1/0 (jsonschema._utils.unbool)
    if value is True:
        return ("bool", True)
    if value is False:
        return ("bool", False)
    return value


def _equal(one: Any, two: Any) -> bool:
    """jsonschema._utils.equal: JSON equality, bool never equal to a number."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return one.keys() == two.keys() and all(_equal(one[k], two[k]) for k in one)
    return _unbool(one) == _unbool(two)


def check_schema(schema: Any) -> None:
    """Raise UnsupportedSchema if any subschema uses a keyword this module cannot check.

    Boolean subschemas are refused too: no chart schema uses them, and jsonschema reports
    their violations without the instance path, which this module does not imitate.
    """
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"a schema must be an object, not {schema!r}")
    unknown = sorted(set(schema) - VALIDATION - ANNOTATIONS)
    if unknown:
        raise UnsupportedSchema(f"unsupported schema keyword(s): {', '.join(unknown)}")
    for sub in schema.get("properties", {}).values():
        check_schema(sub)
    additional = schema.get("additionalProperties", True)
    if not isinstance(additional, bool):
        check_schema(additional)
    if "items" in schema:
        items = schema["items"]
        for sub in items if isinstance(items, list) else [items]:
            check_schema(sub)
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key, []):
            check_schema(sub)


def problems(instance: Any, schema: Any) -> list[Problem]:
    """Every violation of `schema` by `instance` (one per failing keyword, like iter_errors)."""
    return list(_iter(instance, schema, ()))


def is_valid(instance: Any, schema: Any) -> bool:
    return next(_iter(instance, schema, ()), None) is None


def _iter(instance: Any, schema: Any, path: tuple[str | int, ...]) -> Iterator[Problem]:
    if schema is True:
        return
    if schema is False:
        yield Problem(path, f"False schema does not allow {instance!r}")
        return
    for keyword, value in schema.items():
        if keyword in ANNOTATIONS:
            continue
        if keyword == "type":
            types = value if isinstance(value, list) else [value]
            if not any(_is_type(instance, name) for name in types):
                reprs = ", ".join(repr(name) for name in types)
                yield Problem(path, f"{instance!r} is not of type {reprs}")
        elif keyword == "properties":
            if isinstance(instance, dict):
                for name, sub in value.items():
                    if name in instance:
                        yield from _iter(instance[name], sub, (*path, name))
        elif keyword == "additionalProperties":
            yield from _additional(instance, value, schema, path)
        elif keyword == "items":
            if isinstance(instance, list):
                if isinstance(value, list):
                    for index, (item, sub) in enumerate(zip(instance, value, strict=False)):
                        yield from _iter(item, sub, (*path, index))
                else:
                    for index, item in enumerate(instance):
                        yield from _iter(item, value, (*path, index))
        elif keyword == "enum":
            if all(not _equal(each, instance) for each in value):
                yield Problem(path, f"{instance!r} is not one of {value!r}")
        elif keyword == "minimum":
            if _is_type(instance, "number") and instance < value:
                yield Problem(path, f"{instance!r} is less than the minimum of {value!r}")
        elif keyword == "maximum":
            if _is_type(instance, "number") and instance > value:
                yield Problem(path, f"{instance!r} is greater than the maximum of {value!r}")
        elif keyword == "anyOf":
            if not any(is_valid(instance, sub) for sub in value):
                yield Problem(path, f"{instance!r} is not valid under any of the given schemas")
        elif keyword == "oneOf":
            valid = [sub for sub in value if is_valid(instance, sub)]
            if not valid:
                yield Problem(path, f"{instance!r} is not valid under any of the given schemas")
            elif len(valid) > 1:
                # jsonschema lists the later matches first, then the first one.
                reprs = ", ".join(repr(sub) for sub in [*valid[1:], valid[0]])
                yield Problem(path, f"{instance!r} is valid under each of {reprs}")
        else:
            raise UnsupportedSchema(f"unsupported schema keyword {keyword!r}")


def _additional(
    instance: Any, value: Any, schema: Mapping[str, Any], path: tuple[str | int, ...]
) -> Iterator[Problem]:
    """additionalProperties: a schema every undeclared key must match, or false (none allowed)."""
    if not isinstance(instance, dict):
        return
    declared = schema.get("properties", {})
    extras = sorted((key for key in instance if key not in declared), key=str)
    if isinstance(value, dict):
        for key in extras:
            yield from _iter(instance[key], value, (*path, key))
    elif value is False and extras:
        verb = "was" if len(extras) == 1 else "were"
        names = ", ".join(repr(key) for key in extras)
        yield Problem(path, f"Additional properties are not allowed ({names} {verb} unexpected)")
