"""The batch grid: scenes x styles x methods, read from GRID.yaml and checked before anything runs.

    output_dir: batch_out              # optional (default: <grid stem>_out beside the grid file)
    steps: 1000                        # stylisation steps (default: each method's own)
    reconstruct_steps: 1500            # for dataset scenes: one reconstruction per scene, shared by its styles
    scenes:
      garden: data/garden              # a nerfstudio dataset, a base run folder (or its config.yml), or a .ply
      lego: {base: outputs/lego/splatfacto/2024-01-01_000000, data: data/lego}
    styles:
      starry: styles/starry.jpg        # an image, or a prompt: {prompt: "an ink wash painting"}
    methods:
      styleme3d: {}
      vgg: {method: styleme3d, options: {pipeline.model.sos.backbone: vgg19}}
    train_options: {machine.device-type: cpu}   # every ns-train (as `ns-train <method> --help` spells them)
    eval_options: {max-views: 4}                # every styleme3d-eval

Scenes, styles and methods are mappings from a name to an entry, or lists of entries (then named after the file or
prompt). Relative paths are read from the grid file's folder. Every mistake is one line naming the value and the fix.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from styleme3d_ns.batch.methods import BATCH_METHODS
from styleme3d_ns.batch.run_config import run_config_file, run_data_path
from styleme3d_ns.core.errors import UserInputError

GRID_KEYS = ("output_dir", "steps", "reconstruct_steps", "scenes", "styles", "methods", "train_options", "eval_options")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_RECONSTRUCT_STEPS = 1500
"""Reconstruction steps for dataset scenes when the grid does not say (the demo's)."""
RESERVED_TRAIN_OPTIONS = ("data", "output-dir", "experiment-name", "timestamp", "max-num-iterations", "vis",
                          "pipeline.model.base-checkpoint", "pipeline.model.style-image", "pipeline.model.prompt",
                          "pipeline.model.style-prompt")  # fmt: skip
RESERVED_EVAL_OPTIONS = ("load-config", "output", "sheet")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Option = str | int | float | bool | list


@dataclass(frozen=True)
class Scene:
    """One scene of the grid."""

    name: str
    """Folder-safe name (run folders and results rows use it)."""
    kind: Literal["data", "base", "ply"]
    """A dataset to reconstruct first, an existing base run to stylise, or a 3DGS .ply passed as --data."""
    data: Path
    """What ns-train gets as --data (for a base run: the data it was trained on)."""
    base: Path | None = None
    """The base run folder (kind "base")."""


@dataclass(frozen=True)
class Style:
    """One style of the grid: an image, a prompt, or both."""

    name: str
    image: Path | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class MethodRun:
    """One method column: a registered method and its option overrides."""

    label: str
    """Folder-safe name (the method name unless the grid names a variant)."""
    method: str
    options: dict[str, Option] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    """A checked grid."""

    path: Path
    output_dir: Path
    scenes: list[Scene]
    styles: list[Style]
    methods: list[MethodRun]
    steps: int | None = None
    reconstruct_steps: int = DEFAULT_RECONSTRUCT_STEPS
    train_options: dict[str, Option] = field(default_factory=dict)
    eval_options: dict[str, Option] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers
def slug(text: str, limit: int = 40) -> str:
    """A folder-safe name from free text: letters, digits, '.', '_' and '-', at most `limit` characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._")[:limit].strip("-._")
    return cleaned or "x"


def _entries(raw: Any, section: str, grid: Path) -> list[tuple[str | None, Any]]:
    """(explicit name or None, entry) pairs of a section given as a mapping or a list."""
    if isinstance(raw, dict):
        return [(str(name), value) for name, value in raw.items()]
    if isinstance(raw, list):
        pairs = []
        for entry in raw:
            name = entry.get("name") if isinstance(entry, dict) else None
            rest = {k: v for k, v in entry.items() if k != "name"} if isinstance(entry, dict) else entry
            pairs.append((None if name is None else str(name), rest))
        return pairs
    raise UserInputError(f"`{section}` in {grid} must be a mapping of name: entry or a list of entries")


def _check_name(name: str, section: str, grid: Path) -> str:
    if not _NAME.match(name):
        raise UserInputError(
            f"{section} name {name!r} in {grid} is not folder-safe; use letters, digits, '.', '_' and '-' only"
        )
    return name


def _unique(names: list[str], section: str, grid: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UserInputError(f"two {section} are named {name!r} in {grid}; give them distinct names")
        seen.add(name)


def _path(value: Any, where: str, root: Path) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise UserInputError(f"{where} must be a path (got {value!r})")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _keys(entry: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in entry:
        if key not in allowed:
            raise UserInputError(f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}")


# ------------------------------------------------------------------------------------------------ scenes
def _is_run(path: Path) -> bool:
    return run_config_file(path).is_file() or (path / "nerfstudio_models").is_dir()


def _splat_ply(path: Path, where: str) -> Path | None:
    """The .ply a bare scene path means: the file, or the one .ply of a folder without transforms.json (the rule
    ns-train's --data follows, styleme3d_ns.data.ply_scene.find_splat_ply)."""
    if path.suffix.lower() == ".ply":
        return path
    if not path.is_dir() or (path / "transforms.json").exists() or _is_run(path):
        return None
    plys = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".ply")
    if len(plys) > 1:
        raise UserInputError(f"{where}: {path} holds {len(plys)} .ply files; name the splat itself (<folder>/x.ply)")
    return plys[0] if plys else None


def _base_run(path: Path, where: str) -> Path:
    """A base run folder with a checkpoint (a config.yml path means its folder)."""
    folder = path.parent if path.suffix in (".yml", ".yaml") else path
    if not folder.is_dir():
        raise UserInputError(f"{where}: base run {folder} does not exist; fix the path (a finished run's folder)")
    if not list((folder / "nerfstudio_models").glob("step-*.ckpt")):
        raise UserInputError(
            f"{where}: base run {folder} has no nerfstudio_models/step-*.ckpt; point it at a finished run's folder"
        )
    return folder


def _default_name(path: Path, kind: str) -> str:
    """A scene's name when the grid gives none: a run (<output>/<experiment>/<method>/<timestamp>) is named after
    its experiment, a dataset folder after the folder, a file after its stem."""
    if kind == "base":
        run = path.parent if path.suffix in (".yml", ".yaml") else path
        return slug(run.parent.parent.name)
    return slug(path.stem if path.is_file() else path.name)


def _scene(name: str | None, entry: Any, root: Path, grid: Path) -> Scene:
    where = f"scene {name!r} in {grid}" if name else f"a scene in {grid}"
    if isinstance(entry, str | Path):
        path = _path(entry, where, root)
        ply = _splat_ply(path, where)
        kind = "ply" if ply is not None else "base" if _is_run(path) else "data"
        name = name or _default_name(path, kind)  # a folder holding a .ply is named after the folder
        entry = {kind: str(ply or path)}
    if not isinstance(entry, dict):
        raise UserInputError(f"{where} must be a path or a mapping with data, base or ply (got {entry!r})")
    _keys(entry, ("data", "base", "ply"), where)
    kinds = [k for k in ("base", "ply") if k in entry]
    if len(kinds) > 1 or not (kinds or "data" in entry):
        raise UserInputError(f"{where} needs exactly one of data (a dataset), base (a run) or ply (a .ply file)")
    kind = kinds[0] if kinds else "data"
    source = _path(entry[kind], where, root)
    name = name or _default_name(source, kind)
    name = _check_name(name, "scene", grid)
    where = f"scene {name!r} in {grid}"
    if "ply" in entry:
        if source.suffix.lower() != ".ply" or not source.is_file():
            raise UserInputError(f"{where}: {source} is not an existing .ply file; fix the path")
        return Scene(name, "ply", source)
    if "base" in entry:
        base = _base_run(source, where)
        data = _path(entry["data"], where, root) if "data" in entry else run_data_path(base)
        if data is None:
            raise UserInputError(f"{where}: cannot read the data path from {run_config_file(base)}; add `data:`")
        if not data.exists():
            raise UserInputError(
                f"{where}: the base run's data {data} does not exist; add `data: <where it is now>` to the scene"
            )
        return Scene(name, "base", data, base)
    if not source.exists():
        raise UserInputError(
            f"{where}: data {source} does not exist; fix the path (relative paths start at the grid file's folder)"
        )
    return Scene(name, "data", source)


# ------------------------------------------------------------------------------------------------ styles
def _style(name: str | None, entry: Any, root: Path, grid: Path) -> Style:
    where = f"style {name!r} in {grid}" if name else f"a style in {grid}"
    if isinstance(entry, str):
        looks_like_image = entry.lower().endswith(IMAGE_SUFFIXES) or _path(entry, where, root).is_file()
        entry = {"image": entry} if looks_like_image else {"prompt": entry}
    if not isinstance(entry, dict) or not ({"image", "prompt"} & set(entry)):
        raise UserInputError(f"{where} must be an image path, a prompt, or a mapping with image and/or prompt")
    _keys(entry, ("image", "prompt"), where)
    image = _path(entry["image"], where, root) if "image" in entry else None
    prompt = entry.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise UserInputError(f"{where}: prompt must be non-empty text (got {prompt!r})")
    name = _check_name(name or slug(image.stem if image is not None else prompt), "style", grid)
    if image is not None and not image.is_file():
        raise UserInputError(f"style {name!r} in {grid}: image {image} does not exist; fix the path")
    return Style(name, image, prompt.strip() if prompt else None)


# ------------------------------------------------------------------------------------------------ methods
def _registered_methods() -> set[str]:
    """Method names nerfstudio's ns-train finds through entry points (ours are registered there)."""
    return {e.name for e in importlib.metadata.entry_points(group="nerfstudio.method_configs")}


def _method(name: str | None, entry: Any, grid: Path) -> MethodRun:
    if isinstance(entry, str):
        name, entry = name or entry, {"method": entry}
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise UserInputError(f"method {name!r} in {grid} must be a mapping with method and/or options")
    where = f"method {name!r} in {grid}"
    _keys(entry, ("method", "options"), where)
    method = str(entry.get("method", name))
    supported = ", ".join(BATCH_METHODS)
    if method not in BATCH_METHODS:
        hint = " (it makes a head from one photo, not a styled scene)" if method == "sas-portrait" else ""
        raise UserInputError(f"unknown method {method!r} in {grid}{hint}; styleme3d-batch runs: {supported}")
    if method not in _registered_methods():
        raise UserInputError(f"method {method!r} is not registered with nerfstudio; reinstall: pip install -e .")
    options = _options(entry.get("options"), f"options of {where}", RESERVED_TRAIN_OPTIONS)
    return MethodRun(_check_name(name or method, "method", grid), method, options)


# ------------------------------------------------------------------------------------------------ options
def option_flag(key: str) -> str:
    """`pipeline.model.lambda-geo` or `--pipeline.model.lambda-geo` -> `--pipeline.model.lambda-geo`."""
    return key if key.startswith("--") else f"--{key}"


def _scalar_ok(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _options(raw: Any, where: str, reserved: tuple[str, ...]) -> dict[str, Option]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserInputError(f"{where} must be a mapping of option: value (got {raw!r})")
    for key, value in raw.items():
        bare = option_flag(str(key))[2:].replace("_", "-")
        if bare in reserved:
            raise UserInputError(f"--{bare} in {where} is set by styleme3d-batch for each job; remove it")
        ok = _scalar_ok(value) or (isinstance(value, list) and all(map(_scalar_ok, value)))
        if not ok:
            raise UserInputError(f"{where}: {key} must be a number, text, true/false or a list of them")
    return {str(k): v for k, v in raw.items()}


def option_arguments(options: dict[str, Option]) -> list[str]:
    """Command-line words for options: booleans as True/False (tyro's spelling), lists as several values."""

    def word(value: Any) -> str:
        return str(value) if not isinstance(value, bool) else ("True" if value else "False")

    args: list[str] = []
    for key, value in options.items():
        args.append(option_flag(key))
        args += [word(v) for v in value] if isinstance(value, list) else [word(value)]
    return args


def _positive(raw: dict, key: str, grid: Path, default: int | None) -> int | None:
    value = raw.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserInputError(f"{key} in {grid} must be a positive whole number of steps (got {value!r})")
    return value


# ------------------------------------------------------------------------------------------------ loading
class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names one key twice (plain YAML loaders silently keep the last)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are flattened by the base class
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserInputError(f"grid file {path} does not exist; pass a GRID.yaml (docs/batch.md shows one)")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise UserInputError(
            f"{path} names {err.key!r} twice in one mapping (lines {err.first.line + 1} and {err.again.line + 1}); "
            "YAML would keep only the last: remove or rename one"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserInputError(
            f"{path} is not valid YAML{at}: {problem}; fix it (docs/batch.md shows the layout)"
        ) from None
    except UnicodeDecodeError:
        raise UserInputError(f"{path} is not a text file; pass a GRID.yaml") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path} must be a YAML mapping with scenes, styles and methods (docs/batch.md)")
    for key in raw:
        if key not in GRID_KEYS:
            raise UserInputError(f"unknown key {key!r} in {path}; allowed: {', '.join(GRID_KEYS)}")
    for key in ("scenes", "styles", "methods"):
        if not raw.get(key):
            raise UserInputError(f"{path} has no {key}; add `{key}:` with at least one entry (docs/batch.md)")
    return raw


def load_grid(path: Path, output_dir: Path | None = None) -> Grid:
    """Read and check GRID.yaml; `output_dir` overrides the grid's own."""
    path = Path(path).expanduser().resolve()
    raw = _read_yaml(path)
    root = path.parent
    scenes = [_scene(n, e, root, path) for n, e in _entries(raw["scenes"], "scenes", path)]
    styles = [_style(n, e, root, path) for n, e in _entries(raw["styles"], "styles", path)]
    methods = [_method(n, e, path) for n, e in _entries(raw["methods"], "methods", path)]
    _unique([s.name for s in scenes], "scenes", path)
    _unique([s.name for s in styles], "styles", path)
    _unique([m.label for m in methods], "methods", path)
    if output_dir is not None:  # from the command line: relative to the working folder
        out = Path(output_dir).expanduser().resolve()
    else:
        out = _path(raw.get("output_dir") or f"{path.stem}_out", f"output_dir in {path}", root)
    return Grid(
        path=path,
        output_dir=out,
        scenes=scenes,
        styles=styles,
        methods=methods,
        steps=_positive(raw, "steps", path, None),
        reconstruct_steps=_positive(raw, "reconstruct_steps", path, DEFAULT_RECONSTRUCT_STEPS),
        train_options=_options(raw.get("train_options"), f"train_options in {path}", RESERVED_TRAIN_OPTIONS),
        eval_options=_options(raw.get("eval_options"), f"eval_options in {path}", RESERVED_EVAL_OPTIONS),
    )
