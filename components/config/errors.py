"""Stack problems and how they are reported: one line per problem, with its path in the stack
file (`nodePools[1].serverType`), the bad value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import pulumi
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Warning_:
    path: str
    message: str

    def __str__(self) -> str:
        return f"warning: {self.path}: {self.message}"


class ConfigError(pulumi.RunError):
    """Every problem in a stack config; str() is one line per problem."""

    def __init__(self, problems: Sequence[Problem], source: str = "nixos-k3s:cluster"):
        self.problems = list(problems)
        self.source = source
        lines = [f"invalid stack config ({source}): {len(self.problems)} problem(s)"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[Problem], str]]:
        # Rebuilt from its problems (not its message) when it crosses a process boundary.
        return (type(self), (self.problems, self.source))


def _format_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class a location inside the config points into, for listing allowed keys."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if not args:
            return annotation
        annotation = args[-1] if get_origin(annotation) is dict else args[0]
    return annotation


def _allowed_suffix(root: type[BaseModel], loc: Sequence[int | str]) -> str:
    """' (allowed: ...)' for a missing field that takes one of fixed values."""
    parent = _model_at(root, loc[:-1])
    field = next(
        (f for n, f in (parent.model_fields.items() if parent else []) if loc[-1] in (n, f.alias)),
        None,
    )
    if field is None or get_origin(field.annotation) is not Literal:
        return ""
    return " (allowed: " + ", ".join(repr(v) for v in get_args(field.annotation)) + ")"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problems_from_validation(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = list(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"unknown field{hint}; allowed: {', '.join(allowed)}"
        elif kind == "missing":
            message = "required field is missing" + _allowed_suffix(root, loc)
        elif kind == "value_error":
            message = str(item["msg"]).removeprefix("Value error, ")
        else:
            message = f"{item['msg']} (got {_shown(item.get('input'))})"
        problems.append(Problem(_format_path(loc), message))
    return problems
