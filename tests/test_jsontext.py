"""jsontext.pretty must write exactly what json.dumps(sort_keys, indent=2) writes."""

from __future__ import annotations

import enum
import json
import random
from typing import Any

import pytest

from components.hosts import jsontext

TRICKY_STRINGS = [
    "",
    "plain",
    'quote " and backslash \\ and slash /',
    "controls \x00 \x01 \x08 \x0c \n \r \t \x1f \x7f",
    "non-ascii é ü ß 漢字 🚀 \u2028 \u2029",
    'looks like json: {"a": [1, 2]}',
]


def reference(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["str", "int", "bool", "null", "float"]
    if depth < 4:
        kinds += ["dict", "dict", "list"]
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(TRICKY_STRINGS) + "".join(
            chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(4))
        )
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 + 5, rng.randrange(-1000, 1000)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "float":
        return rng.choice([0.1, -0.0, 1e-7, 1e16, 1.5, 123456789.123])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(TRICKY_STRINGS) + str(i): random_value(rng, depth + 1)
        for i in range(rng.randrange(5))
    }


@pytest.mark.parametrize("seed", range(300))
def test_random_documents_match_json_dumps(seed: int) -> None:
    value = random_value(random.Random(seed), 0)
    assert jsontext.pretty(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"b": {}, "a": []},
        {"z": [1, [2, [3, {}]]], "a": {"y": None, "x": True}},
        {"text": TRICKY_STRINGS},
        (1, 2, ("x",)),
    ],
)
def test_edge_shapes(value: Any) -> None:
    assert jsontext.pretty(value) == reference(value)


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [
        {"f": 1e-7},  # the serializers disagree on floats: json.dumps decides
        {1: "int keys", 2: "sorted as numbers, written as strings"},
        {"k": Color.RED},
        {"nested": [{"deep": 0.5}]},
    ],
)
def test_values_outside_the_fast_path_use_json_dumps(value: Any) -> None:
    assert jsontext.pretty(value) == reference(value)


def test_rendered_host_documents_round_trip(prod_plan: Any, dev_plan: Any) -> None:
    for plan in (prod_plan, dev_plan):
        for text, _ in plan.result.hosts.values():
            assert jsontext.pretty(json.loads(text)) == reference(json.loads(text)) == text


def test_plain_documents_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("json.dumps used for a document without floats")

    value = {"b": [1, "x", None, True], "a": {"c": "é"}}
    expected = reference(value)
    monkeypatch.setattr(jsontext.json, "dumps", refuse)
    assert jsontext.pretty(value) == expected
