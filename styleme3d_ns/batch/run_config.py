"""What an existing nerfstudio run was trained on, read from its config.yml without importing nerfstudio.

nerfstudio writes config.yml with Python tags (`!!python/object:...`); loading it the usual way imports and
constructs every class it names. The batch driver only needs the data path, so it reads the file with a safe loader
that turns `pathlib` paths into `Path` and every other Python object into a plain mapping or list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _PlainLoader(yaml.SafeLoader):
    """A SafeLoader that never constructs Python objects: tagged nodes become plain data."""


def _plain(loader: _PlainLoader, suffix: str, node: yaml.Node) -> Any:
    """`!!python/object/apply:pathlib.PosixPath [parts]` -> Path; any other tagged node -> dict, list or str."""
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        return Path(*items) if suffix.startswith("object/apply:pathlib.") and items else items
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


def run_config_file(run: Path) -> Path:
    """The config.yml of a run given as its folder or as the file itself."""
    run = Path(run)
    return run if run.suffix in (".yml", ".yaml") else run / "config.yml"


def run_data_path(run: Path) -> Path | None:
    """The `--data` a nerfstudio run was trained on, or None when its config.yml is missing or does not say."""
    config = run_config_file(run)
    try:
        content = yaml.load(config.read_text(), Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(content, dict):
        return None
    data = content.get("data")
    if data is None:  # older configs keep it only in the datamanager
        data = content.get("pipeline", {}).get("datamanager", {}).get("data")
    return data if isinstance(data, Path) and str(data) not in ("", ".") else None
