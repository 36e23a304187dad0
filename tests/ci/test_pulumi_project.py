"""The Pulumi CLI path: `pulumi install` then `pulumi preview`/`up` on a fresh clone.

The CLI builds `.venv` from requirements.txt only (Pulumi.yaml: toolchain pip), then the Python
language host (pulumi/pulumi sdk/python/cmd/pulumi-language-python, parseOptions and the run
path) does two things that can stop before the program runs: with a `typechecker` option it
requires that package in the venv ("The typechecker option is set to pyright, but pyright is
not installed", TestTypecheckerMissingError) and runs `python -m <typechecker> <program dir>`,
failing on any error it reports; and the program itself must import with what that venv holds.
These tests read Pulumi.yaml, requirements.txt and pyproject.toml together.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT_DIR = Path(__file__).resolve().parents[2]
# The program as the CLI runs it: __main__.py and everything it imports from the project.
PROGRAM_PATHS = ("__main__.py", "components")
# Modules of the project itself: its packages and every module name pytest puts on sys.path.
LOCAL_MODULES = frozenset(
    path.stem
    for pattern in ("*.py", "*/", "tests/**/*.py", "bench/*.py")
    for path in PROJECT_DIR.glob(pattern)
    if not path.name.startswith(".")
)
# pulumi-language-python parseOptions: the runtime options it knows and their values.
RUNTIME_OPTIONS: dict[str, frozenset[str] | None] = {
    "toolchain": frozenset({"pip", "poetry", "uv"}),
    "virtualenv": None,  # any directory
    "typechecker": frozenset({"mypy", "pyright"}),
}


def read_project() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text(encoding="utf-8"))


def read_pyproject() -> dict[str, Any]:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def pinned_requirements(path: Path) -> dict[str, str]:
    """name -> version of a requirements file of `name==version` lines (no -r, no ranges)."""
    pins = {}
    for line in requirement_lines(path):
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+-]*)", line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed_closure(names: Iterable[str]) -> set[str]:
    """The distributions `pip install` of `names` brings in (from the installed metadata)."""
    environment = {**default_environment(), "extra": ""}
    seen: set[str] = set()
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    return seen


def third_party_imports(paths: Iterable[Path]) -> dict[str, set[str]]:
    """Top-level module -> files importing it, for modules neither stdlib nor the project's."""
    found: dict[str, set[str]] = {}
    for root in paths:
        for file in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".", 1)[0]
                    if top in sys.stdlib_module_names or top in LOCAL_MODULES:
                        continue
                    found.setdefault(top, set()).add(str(file.relative_to(PROJECT_DIR)))
    return found


def missing_from(
    imports: dict[str, set[str]], closure: set[str], distributions: Mapping[str, list[str]]
) -> list[str]:
    problems = []
    for module, files in sorted(imports.items()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not providers & closure:
            problems.append(f"{module} (imported by {', '.join(sorted(files))})")
    return problems


def cli_path_problems(
    project: dict[str, Any], requirements: dict[str, str], pyproject: dict[str, Any]
) -> list[str]:
    """Why `pulumi install` + `pulumi up` would stop before the program runs (empty: it runs)."""
    problems = []
    runtime = project.get("runtime", {})
    options = runtime.get("options", {}) if isinstance(runtime, dict) else {}
    if not isinstance(runtime, dict) or runtime.get("name") != "python":
        problems.append("runtime.name is not python")
    for key, value in options.items():
        if key not in RUNTIME_OPTIONS:
            problems.append(f"runtime option {key} is unknown to pulumi-language-python")
        elif (allowed := RUNTIME_OPTIONS[key]) is not None and value not in allowed:
            problems.append(f"runtime option {key}: {value!r} is not one of {sorted(allowed)}")
    if options.get("toolchain") != "pip":
        problems.append("the venv is built from requirements.txt only with toolchain: pip")
    if "pulumi" not in requirements:
        problems.append("requirements.txt does not pin the pulumi SDK")
    closure = installed_closure(requirements)
    distributions = importlib.metadata.packages_distributions()
    program = [PROJECT_DIR / path for path in PROGRAM_PATHS]
    for module in missing_from(third_party_imports(program), closure, distributions):
        problems.append(f"the program imports {module}, which requirements.txt does not bring")
    typechecker = options.get("typechecker")
    if typechecker is not None:
        if typechecker not in requirements:
            problems.append(
                f"typechecker {typechecker} is not in requirements.txt: the CLI refuses to run"
            )
        if typechecker == "pyright":
            # `python -m pyright <program dir>` reads [tool.pyright]: all it includes must
            # type-check with the packages of the Pulumi venv alone
            scope = pyproject.get("tool", {}).get("pyright", {}).get("include", ["."])
            checked = [PROJECT_DIR / path for path in scope]
            for module in missing_from(third_party_imports(checked), closure, distributions):
                problems.append(f"pyright's scope imports {module}, which the Pulumi venv lacks")
    return problems


def test_a_fresh_clone_gets_through_pulumi_install_into_the_program() -> None:
    requirements = pinned_requirements(PROJECT_DIR / "requirements.txt")

    assert cli_path_problems(read_project(), requirements, read_pyproject()) == []


def test_the_program_runs_without_a_typechecker_and_types_are_checked_by_make_lint() -> None:
    """No `typechecker`: the pip `pyright` wrapper would fetch Node.js and pyright from npm on
    the deploy runner before every `pulumi up`. CI's `make lint` runs pyright instead."""
    project = read_project()
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    dev = requirement_lines(PROJECT_DIR / "requirements-dev.txt")
    assert dev[0] == "-r requirements.txt"
    assert "pyright" in pinned_requirements_of(dev[1:])
    assert "pyright" not in pinned_requirements(PROJECT_DIR / "requirements.txt")
    makefile = (PROJECT_DIR / "Makefile").read_text(encoding="utf-8")
    assert "\t$(VENV)/bin/pyright\n" in makefile


def pinned_requirements_of(lines: list[str]) -> set[str]:
    return {canonicalize_name(line.split("==", 1)[0]) for line in lines}


def test_test_only_packages_stay_out_of_the_pulumi_venv() -> None:
    requirements = pinned_requirements(PROJECT_DIR / "requirements.txt")
    closure = installed_closure(requirements)
    assert {"pytest", "pyright", "ruff", "jsonschema", "check-jsonschema"}.isdisjoint(closure)


# -- the checker itself sees the combinations of issue 14 -------------------------------------


@pytest.fixture
def good() -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    return (
        read_project(),
        pinned_requirements(PROJECT_DIR / "requirements.txt"),
        read_pyproject(),
    )


def with_options(project: dict[str, Any], **options: str) -> dict[str, Any]:
    runtime = {**project["runtime"], "options": {**project["runtime"]["options"], **options}}
    return {**project, "runtime": runtime}


def test_typechecker_missing_from_requirements_is_found(good: Any) -> None:
    project, requirements, pyproject = good

    scoped = {"tool": {"pyright": {**pyproject["tool"]["pyright"], "include": list(PROGRAM_PATHS)}}}

    problems = cli_path_problems(with_options(project, typechecker="pyright"), requirements, scoped)

    assert problems == [
        "typechecker pyright is not in requirements.txt: the CLI refuses to run",
    ]


def test_pyright_pinned_but_scoped_over_the_tests_is_found(good: Any) -> None:
    project, requirements, pyproject = good

    problems = cli_path_problems(
        with_options(project, typechecker="pyright"),
        {**requirements, "pyright": "1.1.414"},
        pyproject,
    )

    assert any(p.startswith("pyright's scope imports pytest (imported by tests/") for p in problems)


def test_pyright_pinned_and_scoped_to_the_program_passes(good: Any) -> None:
    project, requirements, pyproject = good
    scoped = {"tool": {"pyright": {**pyproject["tool"]["pyright"], "include": list(PROGRAM_PATHS)}}}

    problems = cli_path_problems(
        with_options(project, typechecker="pyright"),
        {**requirements, "pyright": "1.1.414"},
        scoped,
    )

    assert problems == []


def test_unknown_runtime_options_are_found(good: Any) -> None:
    project, requirements, pyproject = good

    problems = cli_path_problems(
        with_options(project, typechecker="pytype", toolchain="conda"), requirements, pyproject
    )

    assert "runtime option typechecker: 'pytype' is not one of ['mypy', 'pyright']" in problems
    assert "runtime option toolchain: 'conda' is not one of ['pip', 'poetry', 'uv']" in problems


def test_readme_gives_the_first_time_steps_in_order() -> None:
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Real use: prerequisites", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#", 1)[0].strip()
        for line in section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
        if line.startswith("pulumi ")
    ]
    order = ["pulumi login", "pulumi stack init", "pulumi config set --secret", "pulumi up"]

    positions = [
        next(i for i, command in enumerate(commands) if command.startswith(step)) for step in order
    ]
    assert positions == sorted(positions), commands
    assert "pulumi stack init prod" in commands
