"""The package's layers: no module imports from a layer above its own (render <- guidance <- models <- configs)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower numbers are lower layers. A module may import from its own layer or any layer below it.
LAYERS = {
    "styleme3d_ns.core": 0,
    "styleme3d_ns.render": 1,
    "styleme3d_ns.guidance": 2,
    "styleme3d_ns.data": 2,
    "styleme3d_ns.models": 3,
    "styleme3d_ns.eval": 4,
    "styleme3d_ns.engine": 5,
    "styleme3d_ns.method_configs": 5,
}
TOP = 6  # command-line programs (apps/, batch/): may import anything


def layer(module: str) -> int:
    """The layer of a dotted module name (longest matching prefix; unlisted package modules are top-level)."""
    matches = [
        (len(prefix), rank) for prefix, rank in LAYERS.items() if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else TOP


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module we ship (method_configs/ installs as styleme3d_ns.method_configs)."""
    found = {}
    for path in (ROOT / "styleme3d_ns").rglob("*.py"):
        if "method_configs" in path.relative_to(ROOT).parts:
            continue  # a symlink in some checkouts; the real folder is below
        found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    for path in (ROOT / "method_configs").glob("*.py"):
        found[f"styleme3d_ns.method_configs.{path.stem}".removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, module: str) -> set[str]:
    """Every styleme3d_ns module `path` imports, including imports inside functions."""
    names = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
    return {name for name in names if name.startswith("styleme3d_ns")}


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    violations = []
    for module, path in sorted(package_modules().items()):
        for imported in sorted(imports_of(path, module)):
            if layer(imported) > layer(module):
                violations.append(f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)})")
    assert not violations, "\n".join(violations)


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from styleme3d_ns.eval.cli import main\n")
    imported = imports_of(path, "styleme3d_ns.render.bad")
    assert imported == {"styleme3d_ns.eval.cli"} and layer("styleme3d_ns.eval.cli") > layer("styleme3d_ns.render.bad")


APPLICATIONS = {"styleme3d_ns.apps", "styleme3d_ns.batch"}
"""Folders of command-line programs: the top floor on purpose."""


def test_every_folder_of_the_package_has_a_floor() -> None:
    folders = {f"styleme3d_ns.{p.name}" for p in (ROOT / "styleme3d_ns").iterdir() if (p / "__init__.py").is_file()}
    folders.add("styleme3d_ns.method_configs")
    unplaced = sorted(f for f in folders if f not in LAYERS and f not in APPLICATIONS)
    assert not unplaced, f"give these folders a floor in LAYERS (or list them as applications): {unplaced}"
    loose = sorted(p.name for p in (ROOT / "styleme3d_ns").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules at the package root hide their floor; move them into a folder: {loose}"


def test_modules_that_moved_import_under_their_old_names() -> None:
    import importlib

    from styleme3d_ns.core.moved import MOVED

    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from styleme3d_ns.trainer import StyleTrainerConfig  # as an old config.yml names it

    assert StyleTrainerConfig.__module__ == "styleme3d_ns.engine.trainer"
