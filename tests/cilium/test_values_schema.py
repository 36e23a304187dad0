"""components.k8s.valuesschema against the jsonschema package (Draft7Validator), shipped schemas.

The plan validates Cilium values with our small draft-07 validator; these tests hold it to the
reference implementation: same violations, same paths, same messages, on valid rendered
values and on many deliberately broken ones that touch every keyword of every schema.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from components.k8s import valuesschema
from components.k8s.cilium import SUPPORTED_VERSIONS, CiliumSettings, render_values, schema_path

Path = tuple[str | int, ...]

ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -3, 7.0, 2.5, 1e300, "", "x", "1450", "true", "tunnel",
    [], [1, "a"], {}, {"k": 1}, {"enabled": "yes"},
]  # fmt: skip


KINDS = {
    "type": " is not of type ",
    "enum": " is not one of ",
    "minimum": " is less than the minimum of ",
    "maximum": " is greater than the maximum of ",
    "anyOf": " is not valid under any of the given schemas",
    "oneOf": " is valid under each of ",
    "properties": "",
    "items": "",
}


def kind(message: str) -> str:
    """The keyword behind a message (anyOf and oneOf share "not valid under any")."""
    return next(key for key, text in KINDS.items() if text and text in message)


def load(version: str) -> dict[str, Any]:
    return json.loads(schema_path(version).read_text(encoding="utf-8"))


def reference(instance: Any, schema: dict[str, Any]) -> list[tuple[Path, str]]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted((tuple(e.absolute_path), e.message) for e in validator.iter_errors(instance))


def ours(instance: Any, schema: dict[str, Any]) -> list[tuple[Path, str]]:
    return sorted((p.path, p.message) for p in valuesschema.problems(instance, schema))


def schema_nodes(schema: Any, path: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every subschema reachable by instance paths (properties, items as index 0)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from schema_nodes(sub, (*path, name))
    items = schema.get("items")
    if isinstance(items, dict):
        yield from schema_nodes(items, (*path, 0))
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key, []):
            yield from schema_nodes(sub, path)


def put(document: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """`document` with `value` at `path`, creating objects and one-element lists on the way."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        return [put({}, rest, value)]  # type: ignore[return-value]
    current = document.get(head) if isinstance(document, dict) else None
    child = current if isinstance(current, dict) else {}
    return {**(document if isinstance(document, dict) else {}), head: put(child, rest, value)}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_shipped_schemas_use_only_supported_keywords(version: str) -> None:
    valuesschema.check_schema(load(version))


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a"},
        {"properties": {"a": {"patternProperties": {"^x": {}}}}},
        {"additionalProperties": {"minLength": 1}},
        {"items": [{"type": "string"}, {"minLength": 1}]},
        {"anyOf": [{"type": "string"}, {"$ref": "#/definitions/x"}]},
        ["not", "a", "schema"],
        {"properties": {"never": False}},
        {"items": True},
    ],
)
def test_other_keywords_are_refused(schema: Any) -> None:
    with pytest.raises(valuesschema.UnsupportedSchema):
        valuesschema.check_schema(schema)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_rendered_values_are_valid_for_both(version: str) -> None:
    schema = load(version)
    for settings in (
        CiliumSettings(
            version=version, api_host="10.0.1.1", cluster_cidr="10.42.0.0/16", node_count=1
        ),
        CiliumSettings(
            version=version,
            api_host="10.0.1.1",
            cluster_cidr="10.42.0.0/16",
            node_count=5,
            routing_mode="native",
            native_routing_cidr="10.0.0.0/8",
            mtu=1450,
            hubble=True,
        ),
    ):
        values = render_values(settings)
        assert ours(values, schema) == reference(values, schema) == []


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_schema_node_agrees_with_jsonschema(version: str) -> None:
    """Every subschema (inside anyOf/oneOf and array items too), fed every odd value."""
    schema = load(version)
    seen: set[str] = set()
    for path, _ in schema_nodes(schema):
        for value in ODD_VALUES:
            instance = put({}, path, value)
            found = ours(instance, schema)
            assert found == reference(instance, schema), (path, value)
            seen.update(kind(message) for _, message in found)
    # Every keyword the schema uses produced a violation at least once.
    used = {key for _, node in schema_nodes(schema) for key in node} & set(KINDS)
    # A oneOf of exclusive alternatives fails with anyOf's message, never "valid under each".
    used = {"anyOf" if key == "oneOf" else key for key in used} - {"properties", "items"}
    assert used <= seen, seen


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("seed", range(40))
def test_random_broken_documents_agree_with_jsonschema(version: str, seed: int) -> None:
    schema = load(version)
    rng = random.Random(f"{version}-{seed}")
    paths = [path for path, _ in schema_nodes(schema) if path]
    document: dict[str, Any] = {}
    for _ in range(rng.randrange(1, 25)):
        path = rng.choice(paths)
        if rng.random() < 0.2:
            path = (*path, "notInTheSchema")
        document = put(document, path, rng.choice(ODD_VALUES))
    assert ours(document, schema) == reference(document, schema)


def test_tuple_oneof_and_enum_schemas_agree_with_jsonschema() -> None:
    schema: dict[str, Any] = {
        "properties": {
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number"}, {"minimum": 0}]},
            "choice": {"enum": [1, True, "a", [1, 2], {"k": False}, None]},
        }
    }
    valuesschema.check_schema(schema)
    for value in [*ODD_VALUES, [1, 2], {"k": False}, {"k": 0}, [True, 2], ["a", "b"], ["a", 1, 2]]:
        for key in schema["properties"]:
            instance = {key: value}
            assert ours(instance, schema) == reference(instance, schema), (key, value)
    assert kind(ours({"one": 1}, schema)[0][1]) == "oneOf"  # 1 is an integer and a number
