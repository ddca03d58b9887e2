"""Configs that load from an older `config.yml`: fields added since take their defaults.

nerfstudio saves a run's whole config tree with `yaml.dump` and loads it back (`ns-render`, `ns-export`, `ns-eval`,
`styleme3d-eval`, `--load-config`) by setting the saved attributes on a bare instance, bypassing `__init__`: a field
the package gained after the run was trained would simply be missing, and the first read of it an AttributeError.
PyYAML hands the saved attributes to `__setstate__` when a class defines it; ours fills the defaults first, and
takes a field saved under an older name (``RENAMED``) as the field it became.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class DefaultsOnLoad:
    """Mixin for config dataclasses: attributes missing from a loaded `config.yml` get the field's default."""

    RENAMED: ClassVar[dict[str, str]] = {}
    """Old field name -> its name now, for configs saved before the rename."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        for old, new in self.RENAMED.items():
            if old in state:
                state.setdefault(new, state.pop(old))
        for field in dataclasses.fields(self):  # type: ignore[arg-type] - only mixed into dataclasses
            if field.name in state:
                continue
            if field.default is not dataclasses.MISSING:
                state[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                state[field.name] = field.default_factory()
        self.__dict__.update(state)
