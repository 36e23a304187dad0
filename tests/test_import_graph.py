"""The import graph: the stack config sits at the bottom, with no arrow back up.

Read from the source (ast), so an import inside a function or under TYPE_CHECKING counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "components"

# Modules that import no other project module; the config schema may read these.
LEAVES = {"components.catalog", "components.rules", "components.containermodes"}
# What the config package must never import: the modules that consume the config.
CONSUMERS = {
    "components.k8s.cilium",
    "components.hosts.hostspec",
    "components.hosts.render",
    "components.hosts.inventory",
    "components.k8s.k3s",
    "components.cluster",
    "components.machines.hetzner",
    "components.machines.colima",
    "components.hosts.nixos_host",
    "components.stack",
}
# The product's layers, bottom up: a module may import its own layer and those below it.
# (config: the stack models with the leaves and profiles below them; hosts: the host documents
# and a host's NixOS lifecycle; machines: what makes the machines; k8s: the bring-up and the
# Helm releases; top: the Cluster and the stack check.)
LAYERS = ("config", "hosts", "machines", "k8s", "top")


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "components":
        return parts[0]
    if len(parts) > 1 and parts[1] in ("hosts", "machines", "k8s"):
        return parts[1]
    if module in LEAVES or (len(parts) > 1 and parts[1] in ("config", "profiles", "scripts")):
        return "config"
    return "top"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports, by dotted name (`from components import x` names
    the module components.x when x is one, else the package)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "components"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "components":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if is_module(sub) else base)
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for p in sorted(COMPONENTS.rglob("*.py"))}


def test_the_reader_sees_every_kind_of_import() -> None:
    assert project_imports(COMPONENTS / "config" / "schema.py") >= {"components.catalog"}
    assert "components.config.schema" in project_imports(COMPONENTS / "config" / "checks.py")
    assert "components.k8s.cilium" in project_imports(COMPONENTS / "stack.py")


def test_the_config_schema_is_a_leaf() -> None:
    imports = graph()["components.config.schema"]
    assert imports <= LEAVES, f"config/schema.py imports {sorted(imports - LEAVES)}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_the_leaves_import_no_project_module(leaf: str) -> None:
    assert graph()[leaf] == set()


def test_no_config_module_imports_a_consumer_of_the_config() -> None:
    wrong = {
        module: sorted(imports & CONSUMERS)
        for module, imports in graph().items()
        if module.startswith("components.config") and imports & CONSUMERS
    }
    assert not wrong, wrong


def _in(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_config_package_imports_only_what_lies_below_it() -> None:
    """Itself, the leaves and the provider profiles: nothing above, so no arrow back up."""
    wrong = {
        module: sorted(
            i
            for i in imports
            if not (_in("components.config", i) or _in("components.profiles", i) or i in LEAVES)
        )
        for module, imports in graph().items()
        if _in("components.config", module)
    }
    assert not any(wrong.values()), wrong


def test_the_provider_profiles_are_data_below_the_config() -> None:
    wrong = {
        module: sorted(i for i in imports if not (_in("components.profiles", i) or i in LEAVES))
        for module, imports in graph().items()
        if _in("components.profiles", module)
    }
    assert not any(wrong.values()), wrong


def test_every_consumer_named_exists() -> None:
    assert all(is_module(name) for name in CONSUMERS), sorted(
        n for n in CONSUMERS if not is_module(n)
    )


def test_the_layers_import_only_downwards() -> None:
    """config < hosts < machines < k8s < top (cluster, stack): no arrow back up."""
    wrong = {
        module: sorted(i for i in imports if LAYERS.index(layer(i)) > LAYERS.index(layer(module)))
        for module, imports in graph().items()
        if layer(module) in LAYERS and not module.startswith("components.scripts.")
    }
    assert not any(wrong.values()), {m: w for m, w in wrong.items() if w}


def test_the_product_never_imports_the_offline_tooling() -> None:
    """`pulumi up` runs components/ only; tooling/ (plan, mocks, diff) sits on top of it."""
    tooling = {
        m: sorted(i for i in imports if i.startswith("tooling")) for m, imports in graph().items()
    }
    assert not any(tooling.values()), tooling
    for path in sorted(COMPONENTS.rglob("*.py")):
        assert "import tooling" not in path.read_text(encoding="utf-8")
        assert "from tooling" not in path.read_text(encoding="utf-8"), path
