"""Indented, key-sorted JSON text, byte for byte what `json.dumps` writes, without its cost.

`json.dumps(..., indent=2)` always takes the standard library's pure-Python encoder (its C
encoder handles compact output only), and host documents and plan.json are written with an
indent so that diffs of them read line by line. `pretty` sorts the keys itself and lets
pydantic-core's serializer (Rust) write the indented text, which matches `json.dumps(value,
sort_keys=True, indent=2, ensure_ascii=False)` for strings, integers, booleans, null, lists
and string-keyed objects. Floats are the one difference (`1e-07` vs `1e-7`), so a value holding
one, or anything else outside that set, goes through `json.dumps` itself.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core


class _Fallback(Exception):
    """The value holds something only json.dumps is trusted to format."""


def _sorted(value: Any) -> Any:
    # Exact types only: subclasses (IntEnum, str enums, bool is checked before int) may print
    # differently, and json.dumps is the reference for them.
    kind = type(value)
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise _Fallback
        return {key: _sorted(value[key]) for key in sorted(value)}
    if kind is list or kind is tuple:
        return [_sorted(item) for item in value]
    if kind is str or kind is int or kind is bool or value is None:
        return value
    raise _Fallback


def pretty(value: Any) -> str:
    """`json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\\n"`, faster."""
    try:
        ordered = _sorted(value)
    except _Fallback:
        return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return pydantic_core.to_json(ordered, indent=2).decode() + "\n"
