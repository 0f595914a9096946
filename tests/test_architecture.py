"""The tree's rules (docs/architecture.md): no import circle between modules or packages, the
dependencies point one way, and the front ends (CLI, plugin) use only the packages' faces."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "napari_etdms"
# package -> the packages it must not import (directly or lazily)
BELOW = {
    "models": {"engine", "stage1", "io", "evaluation", "training", "simulation", "export", "cli", "plugin"},
    "diffusion": {"engine", "stage1", "io", "evaluation", "training", "simulation", "export", "cli", "plugin"},
    "stage1": {"engine", "io", "evaluation", "training", "simulation", "export", "cli", "plugin"},
    "io": {"engine", "stage1", "evaluation", "training", "simulation", "export", "cli", "plugin", "models"},
    "engine": {"evaluation", "training", "simulation", "export", "cli", "plugin"},
    "simulation": {"evaluation", "training", "export", "cli", "plugin"},
    "evaluation": {"training", "export", "cli", "plugin"},
    "training": {"export", "cli", "plugin"},
    "export": {"training", "cli", "plugin"},
    "plugin": {"cli"},
    "cli": {"plugin"},
}
FRONT_ENDS = ("cli", "plugin")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def bound_names(path: Path) -> set[str]:
    """Names a module binds at its top level (a package face's re-exports among them)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def imports() -> dict[str, set[str]]:
    """Each module -> the napari_etdms modules it imports anywhere (module level or lazily)."""
    modules = {module_name(p): p for p in SOURCE.rglob("*.py")}
    faces = {name: bound_names(path) for name, path in modules.items() if path.name == "__init__.py"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("napari_etdms"):
                for alias in node.names:  # `from package import module` imports the module
                    submodule = f"{node.module}.{alias.name}"
                    is_module = submodule in modules and alias.name not in faces.get(node.module, ())
                    found.add(submodule if is_module else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("napari_etdms"))
        graph[name] = found - {name}
    return graph


def test_intra_package_imports_are_absolute():
    relative = [f"{module_name(p)}:{node.lineno}" for p in SOURCE.rglob("*.py")
                for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom) and node.level]
    assert relative == []


def test_no_import_circle_between_modules():
    graph = imports()
    cycles = []

    def visit(node, path, on_path, done):
        on_path.add(node)
        for nxt in graph.get(node, ()):
            # a package's __init__ re-exporting its modules is its face, not a dependency of them
            if nxt in on_path and not node.startswith(nxt + "."):
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done and nxt not in on_path and nxt in graph:
                visit(nxt, path + [nxt], on_path, done)
        on_path.discard(node)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], set(), done)
    assert cycles == []


@pytest.mark.parametrize("package", sorted(BELOW))
def test_dependencies_point_one_way(package):
    wrong = sorted(f"{module} imports {target}" for module, targets in imports().items()
                   if package_of(module) == package for target in targets if package_of(target) in BELOW[package])
    assert wrong == []


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_front_ends_use_only_the_packages_faces(front_end):
    """`napari_etdms.engine`, not `napari_etdms.engine.pipeline`: what a package offers is in
    its `__init__`, and its inside can change without touching the CLI or the plugin."""
    packages = {p.parent.name for p in SOURCE.glob("*/__init__.py")}
    inside = sorted(f"{module} imports {target}" for module, targets in imports().items()
                    if package_of(module) == front_end for target in targets
                    if package_of(target) in packages - {front_end} and target.count(".") > 1)
    assert inside == []
