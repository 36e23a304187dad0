"""Where a profiled plan spends its time: by package, by function, and in our own code."""

from __future__ import annotations

import cProfile
import pstats
import sys
from collections import Counter
from pathlib import Path

from bench.runner import PROJECT_DIR

ROWS = 25


def project_file(filename: str) -> str | None:
    """`filename` relative to the project, or None for everything outside it."""
    path = Path(filename)
    if not path.is_absolute() or "site-packages" in path.parts:
        return None
    try:
        return path.resolve().relative_to(PROJECT_DIR).as_posix()
    except ValueError:
        return None


def where(filename: str) -> str:
    """A file as a reader finds it: under the project, site-packages or the stdlib."""
    path = Path(filename)
    relative = project_file(filename)
    if relative is not None:
        return relative
    for marker in ("site-packages", f"python{sys.version_info.major}.{sys.version_info.minor}"):
        if marker in path.parts:
            return Path(*path.parts[path.parts.index(marker) + 1 :]).as_posix()
    return filename  # builtins ("~") and frozen modules ("<frozen runpy>")


def owner(filename: str) -> str:
    """What a profiled file belongs to: a project file, a site-package, or the stdlib module."""
    path = Path(filename)
    located = where(filename)
    if "site-packages" in path.parts:
        return located.split("/")[0]
    if project_file(filename) is not None or located == filename:
        return located
    return "stdlib:" + located.split("/")[0].removesuffix(".py")


def _location(filename: str, function: str) -> str:
    return f"{where(filename)}:{function}"


def report(profiler: cProfile.Profile) -> str:
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table untyped
    total = sum(row[2] for row in table.values()) or 1.0
    by_owner: Counter[str] = Counter()
    for (filename, _, _), row in table.items():
        by_owner[owner(filename)] += row[2]
    own = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:ROWS]
    ours = sorted(
        (
            (row[3], _location(filename, function))
            for (filename, _, function), row in table.items()
            if project_file(filename) is not None
        ),
        reverse=True,
    )[:ROWS]
    lines = [
        f"profiled program time: {total:.3f} s (cProfile inflates it)",
        "main thread only: the mock monitor's RegisterResource runs in the SDK's executor threads",
        "",
    ]
    lines.append("own time by package or project file:")
    lines += [f"  {t / total:6.1%}  {t:7.3f} s  {name}" for name, t in by_owner.most_common(ROWS)]
    lines += ["", "functions by own time:"]
    lines += [
        f"  {row[2] / total:6.1%}  {row[2]:7.3f} s  {row[1]:>8} calls  "
        f"{_location(filename, function)}"
        for (filename, _, function), row in own
    ]
    lines += ["", "project functions by cumulative time (includes the SDK work they cause):"]
    lines += [f"  {t / total:6.1%}  {t:7.3f} s  {name}" for t, name in ours]
    return "\n".join(lines) + "\n"
