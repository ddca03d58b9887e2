"""Finding model weights on disk, never silently on the network.

Every guidance loads its weights through :func:`resolve_weights`, so a missing checkpoint fails the same way
everywhere: one line naming the model, where we looked and how to get it. A Hugging Face repo id is looked up in
the local HF cache only; a download happens only when the caller passes ``allow_download=True`` *and*
``HF_HUB_OFFLINE`` is not set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from styleme3d_ns.core.errors import MissingWeightsError

# `owner/name` or a bare `name`, as the Hub spells repo ids. A string that also exists as a local path wins.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def _one_line(text: str) -> str:
    """Collapse whitespace so an error message stays on one line whatever paths or hints were interpolated."""
    return " ".join(str(text).split())


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set, read at call time (huggingface_hub only reads it once, at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, honouring ``HF_HUB_CACHE``/``HF_HOME`` set after import."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    try:
        from huggingface_hub import constants
    except ImportError:
        return Path("~/.cache/huggingface/hub").expanduser()
    return Path(constants.HF_HUB_CACHE)


def _hf_repo_cache(repo_id: str, cache_dir: Path) -> Path:
    """The folder the HF cache uses for a model repo: ``models--owner--name``."""
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def _from_hf(repo_id: str, filename: str | None, cache_dir: Path, download: bool) -> Path | None:
    """Look ``repo_id`` (optionally one ``filename`` in it) up in the HF cache; download only if ``download``."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    if filename is not None:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    else:
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            pass
    if not download:
        return None
    try:
        if filename is not None:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir))
        return Path(huggingface_hub.snapshot_download(repo_id, cache_dir=cache_dir))
    except Exception:  # any Hub/network failure becomes the one-line MissingWeightsError below
        return None


def resolve_weights(
    name: str,
    path_or_id: str | Path | None,
    *,
    filename: str | None = None,
    hint: str,
    allow_download: bool = False,
) -> Path:
    """Return the local path of a model's weights, or raise :class:`MissingWeightsError`.

    Args:
        name: Human-readable model name used in the error message, e.g. ``"VGG-19"``.
        path_or_id: A local file/directory, or a Hugging Face repo id (``owner/name``) looked up in the HF cache.
            A ``Path`` is always treated as local; a ``str`` is local if it exists, otherwise a repo id.
        filename: For a directory or repo id, the file inside it that is needed (``None``: the whole folder).
        hint: How to pass a local path instead, e.g. ``"pass --pipeline.model.vgg-weights PATH"``.
        allow_download: Permit a Hub download when the cache misses. Ignored (no network) when
            ``HF_HUB_OFFLINE`` is set.

    Returns:
        Path to the file (``filename`` given or ``path_or_id`` a file) or to the directory/snapshot.
    """
    if path_or_id is None:
        raise MissingWeightsError(_one_line(f"{name} weights: no path or Hugging Face repo id was given; {hint}."))

    local = Path(path_or_id).expanduser()
    if local.exists():
        if filename is None or local.is_file():
            return local
        if (local / filename).is_file():
            return local / filename
        raise MissingWeightsError(
            _one_line(f"{name} weights: '{local / filename}' not found (the folder exists, the file does not); {hint}.")
        )

    repo_id = str(path_or_id)
    if isinstance(path_or_id, Path) or not _REPO_ID.match(repo_id):
        raise MissingWeightsError(_one_line(f"{name} weights not found at '{local}'; {hint}."))

    cache_dir = hf_cache_dir()
    offline = hf_offline()
    found = _from_hf(repo_id, filename, cache_dir, download=allow_download and not offline)
    if found is not None and found.exists():
        return found
    wanted = f"'{filename}' of " if filename else ""
    why = "HF_HUB_OFFLINE=1, no download attempted" if offline else "local files only"
    repo_cache = _hf_repo_cache(repo_id, cache_dir)
    raise MissingWeightsError(
        _one_line(
            f"{name} weights not found: no local path '{local.absolute()}' and {wanted}Hugging Face repo "
            f"'{repo_id}' is not in the cache '{repo_cache}' ({why}); run `huggingface-cli download {repo_id}` "
            f"on a machine with internet and copy that cache folder here (or set HF_HUB_CACHE), or {hint}."
        )
    )


def select_device_dtype(
    device: str | torch.device | None = None, *, half: bool = True
) -> tuple[torch.device, torch.dtype]:
    """Pick the device and compute dtype for a frozen guidance network.

    float16 is used only on CUDA (and only if ``half``): CPU half-precision convolutions are slow or unsupported, so
    CPU always gets float32. ``device=None`` means CUDA when available, else CPU.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"Device '{dev}' was requested but CUDA is not available on this machine; use 'cpu'.")
    dtype = torch.float16 if (dev.type == "cuda" and half) else torch.float32
    return dev, dtype
