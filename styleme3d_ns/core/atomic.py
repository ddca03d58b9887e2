"""Files that appear whole or not at all: temp name beside the target, fsync, rename; one line when a write fails.

Every file styleme3d-ns writes for a user (checkpoints, exported splats, metrics, sheets, configs) goes through
:func:`atomic_path`. A reader (``ns-render``, ``--load-dir``, a viewer, a script) therefore sees either the previous
file or the complete new one; a full disk, a read-only folder or Ctrl-C leaves no partial file and no temp file.

    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(text)          # any writer that takes a path: torch.save, PIL's save, plyfile ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from styleme3d_ns.core.errors import UserInputError

# errno -> the cause a user can act on
_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for this file system (or the process's file-size limit)",
    errno.ENOENT: "its folder does not exist",
    errno.ENOTDIR: "a parent path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


class OutputWriteError(UserInputError):
    """An output could not be written; one line naming the path and the cause. Nothing partial was left behind."""


def _errno_of(err: BaseException) -> int | None:
    """The errno of `err` or of the OSError it wraps (torch's zip writer re-raises as RuntimeError)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in `folder`'s file system (None if it cannot be asked)."""
    with contextlib.suppress(OSError):
        stat = os.statvfs(folder)
        return stat.f_bavail * stat.f_frsize
    return None


def disk_full(folder: Path) -> bool:
    """Whether `folder`'s file system has no space left for an unprivileged writer (False when it cannot be asked).

    For writers that may end "successfully" after a failed write (ffmpeg behind mediapy can): a full file system
    right after the write means the output is incomplete."""
    return _free_bytes(folder) == 0


def write_cause(err: BaseException, folder: Path) -> str | None:
    """What stopped a write into `folder`, in words ("disk full", "read-only file system", ...), or None when `err`
    is not a file-system failure (a bug in the writer, which should keep its traceback).

    Writers that wrap the OSError in another type (torch.save: "file write failed") lose the errno; then a file
    system with no space left is reported as full.
    """
    code = _errno_of(err)
    if code in _CAUSES:
        return _CAUSES[code]
    if "No space left" in str(err) or _free_bytes(folder) == 0:
        return "disk full"
    if code is not None:
        return os.strerror(code).lower()
    return None


def _default_mode() -> int:
    """Permissions a plain `open(path, "w")` would give (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a folder; the file itself must be durable
            raise
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path, *, temp_dir: Path | None = None, hint: str = "") -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds it is fsynced and renamed onto `path`.

    Args:
        path: The final file. Its folder must exist (callers create it, so they know which folders are theirs).
        temp_dir: Folder for the temporary file (default: `path`'s own). It must be on the same file system; use it
            when other programs list `path`'s folder and would trip over a stray name (nerfstudio's checkpoints).
        hint: Appended to the error, e.g. "free some space or pass --output-dir elsewhere".

    Raises:
        OutputWriteError: one line "cannot write <path>: <cause>; ..." when the write, fsync or rename fails. The
            temporary file is removed; `path` is untouched (the old file, if any, stays).
    KeyboardInterrupt and other BaseExceptions also remove the temporary file, and propagate unchanged.
    """
    path = Path(path)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    tmp: Path | None = None
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(handle)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, _default_mode())
        _fsync_path(tmp)
        os.replace(tmp, path)
        tmp = None
        _fsync_path(path.parent, directory=True)
    except Exception as err:
        if tmp is not None:
            _discard(tmp)
        cause = None if isinstance(err, OutputWriteError) else write_cause(err, folder)
        if cause is None:
            raise
        message = f"cannot write {path}: {cause}; nothing was written there"
        raise OutputWriteError(f"{message}; {hint}" if hint else message) from err
    except BaseException:
        if tmp is not None:
            _discard(tmp)
        raise


@contextlib.contextmanager
def new_folders(folder: Path) -> Iterator[Path]:
    """Create `folder` and its missing parents; if the block fails, remove the ones made here that are still empty.

    So a failed command leaves no empty folder behind, and never removes a folder it did not create.

    Raises:
        OutputWriteError: one line when the folder cannot be created (read-only, a file in the way, ...).
    """
    folder = Path(folder)
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            cause = write_cause(err, missing[-1].parent if missing else folder) or str(err)
            raise OutputWriteError(f"cannot create folder {folder}: {cause}") from None
        yield folder
    except BaseException:
        for path in missing:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds while empty
        raise


def write_text_atomic(path: Path, text: str, *, hint: str = "") -> Path:
    """Write `text` (UTF-8) to `path` whole or not at all (see :func:`atomic_path`); returns `path`."""
    with atomic_path(path, hint=hint) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, *, what: str = "output", hint: str = "") -> None:
    """Fail early, with one line, if a file could not be written at `path` (before any expensive work).

    Checks that `path` is not a folder, that the nearest existing folder on its way is a folder we can create a
    file in (a probe file is made and removed, which also catches read-only mounts, where root's permission bits
    say nothing) and that its file system has space left. Creates nothing that stays.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputWriteError(f"{what} {path} is a folder; pass a file name")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputWriteError(_message(what, path, f"{folder} is a file, not a folder", hint))
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".styleme3d-write-check-")
    except OSError as err:
        raise OutputWriteError(_message(what, path, write_cause(err, folder) or str(err), hint)) from None
    os.close(handle)
    os.unlink(probe)
    if _free_bytes(folder) == 0:
        raise OutputWriteError(_message(what, path, "disk full", hint))


def _message(what: str, path: Path, cause: str, hint: str) -> str:
    text = f"cannot write {what} {path}: {cause}"
    return f"{text}; {hint}" if hint else text


def _reject_nan(value: Any, where: str = "metrics") -> None:
    """A NaN in the output is a bug, never a result: unavailable metrics are null with a note."""
    if isinstance(value, float) and math.isnan(value):
        raise RuntimeError(f"{where} is NaN")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nan(item, f"{where}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _reject_nan(item, f"{where}[{i}]")


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON whole or not at all , creating its folder.

    PSNR of identical images is written as `Infinity` (Python's json reads it back as inf); NaN is refused.
    """
    _reject_nan(data)
    path = Path(path)
    with new_folders(path.parent):
        return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
