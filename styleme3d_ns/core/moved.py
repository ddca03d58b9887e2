"""Modules that moved keep their old import paths: old `config.yml` files name them, and so may users' scripts.

nerfstudio writes a run's config with `yaml.dump`, which records every class by its module path
(`!!python/object:styleme3d_ns.trainer.StyleTrainerConfig`); `ns-render`, `ns-export` and `--load-config` import
those paths again. A meta-path finder answers each old name with the module at its new path (the same module
object, so classes stay identical), and `python -m <old name>` runs the new module's code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

MOVED = {
    "styleme3d_ns.errors": "styleme3d_ns.core.errors",
    "styleme3d_ns.atomic": "styleme3d_ns.core.atomic",
    "styleme3d_ns.safe_load": "styleme3d_ns.core.safe_load",
    "styleme3d_ns.config_defaults": "styleme3d_ns.core.config_defaults",
    "styleme3d_ns.trainer": "styleme3d_ns.engine.trainer",
    "styleme3d_ns.faces": "styleme3d_ns.guidance.faces",
    "styleme3d_ns.demo": "styleme3d_ns.apps.demo",
    "styleme3d_ns.demo_portrait": "styleme3d_ns.apps.demo_portrait",
    "styleme3d_ns.runs": "styleme3d_ns.apps.runs",
    "styleme3d_ns.stages": "styleme3d_ns.apps.stages",
    "styleme3d_ns.export": "styleme3d_ns.apps.export",
    "styleme3d_ns.viewer": "styleme3d_ns.apps.viewer",
}
"""Old dotted module name -> where the module lives now (0.1.0 layout -> core/, engine/, apps/)."""


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads an old name as the module at its new path (imported once, under its new name)."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        # importlib stamps the alias's spec on the module it was handed: give the module its own back
        module.__spec__ = importlib.util.find_spec(self.new_name)

    def get_code(self, fullname: str) -> CodeType | None:
        """For `python -m <old name>` (runpy runs the code as __main__)."""
        spec = importlib.util.find_spec(self.new_name)
        return spec.loader.get_code(self.new_name)  # type: ignore[union-attr]


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names in :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        if fullname not in MOVED:
            return None  # type: ignore[return-value]
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(MOVED[fullname]))


def install() -> None:
    """Put the finder on `sys.meta_path` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
