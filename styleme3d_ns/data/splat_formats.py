"""Every splat format people share, in and out: `.ply` (plain 3DGS), `.splat`, `.spz`, `.ksplat`, SuperSplat's
compressed `.ply` and `.sog`.

Reading turns any of them into a plain 3DGS `.ply` (:func:`decoded_ply`), which :mod:`styleme3d_ns.data.ply_scene`
reads like any other: the geometry is exactly what the format's decoder gives. Writing (:func:`encode_splat`) goes
from the plain `.ply` that `ns-export gaussian-splat` writes to the chosen format.

Who decodes and encodes:

- `.splat` (antimatter15's 32-byte records) here, in numpy: the decode is, operation for operation, PlayCanvas'
  `splat-transform` (so both give the same float32 values), and the encoder is its exact inverse: a `.splat` that was
  read, stylised and written again decodes to bit-identical geometry (positions, scales, rotations, opacities).
  splat-transform's own writer truncates opacity and rotation bytes, so it drops one level in a round trip.
- `.spz`, `.ksplat`, compressed `.ply`, `.sog`: PlayCanvas' `splat-transform` (npm `@playcanvas/splat-transform`,
  maintained with SuperSplat; `scripts/install.sh` installs it into `.venv/node/`). Without it, one line says how to
  install it. It writes `.spz`, `.sog` and compressed `.ply`, not `.ksplat`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from styleme3d_ns.core.atomic import atomic_path
from styleme3d_ns.core.errors import UserInputError

SplatFormat = Literal["ply", "compressed-ply", "splat", "spz", "ksplat", "sog"]
OutputFormat = Literal["ply", "splat", "spz", "sog"]
SUFFIXES: dict[str, SplatFormat] = {".splat": "splat", ".spz": "spz", ".ksplat": "ksplat", ".sog": "sog"}
"""File suffix -> format, besides `.ply` (plain or compressed: told apart by the header, see :func:`splat_format`)."""
OUTPUT_SUFFIXES: dict[OutputFormat, str] = {"ply": ".ply", "splat": ".splat", "spz": ".spz", "sog": ".sog"}
SPLAT_TRANSFORM_ENV = "STYLEME3D_SPLAT_TRANSFORM"
"""Environment variable naming the splat-transform executable, when it is neither on PATH nor in the venv."""
INSTALL_HINT = (
    "install PlayCanvas' splat-transform (scripts/install.sh does, when npm is present; or npm install -g "
    "@playcanvas/splat-transform)"
)
DECODE_VERSION = 1
"""Part of the decoded-file cache key: bump when a decode changes for the same bytes."""
SH_C0 = 0.28209479177387814  # splat-transform's constant, to the digit: the .splat colour decode must match it
_SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
_OPACITY_EPS = 1e-6  # splat-transform clamps alpha/255 off 0 and 1 before the logit


# --------------------------------------------------------------------------------------------------------------------
# Which format, which tool
# --------------------------------------------------------------------------------------------------------------------


def is_splat_file(path: Path) -> bool:
    """Whether `path` names a splat file by its suffix (.ply, .splat, .spz, .ksplat, .sog)."""
    suffix = Path(path).suffix.lower()
    return suffix == ".ply" or suffix in SUFFIXES


def splat_format(path: Path) -> SplatFormat:
    """The format of splat file `path`: by suffix, and for a `.ply` by its header (SuperSplat's compressed `.ply`
    stores `packed_position` in its vertex element and a `chunk` element)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    try:
        with open(path, "rb") as handle:
            head = handle.read(16384)
    except OSError:
        return "ply"  # the reader says what is wrong with it
    header = head.split(b"end_header", 1)[0]
    return "compressed-ply" if b"packed_position" in header and b"element chunk" in header else "ply"


def splat_transform_tool() -> str | None:
    """The splat-transform executable: $STYLEME3D_SPLAT_TRANSFORM, `splat-transform` on PATH, or the copy
    scripts/install.sh puts in the venv (`<venv>/node/node_modules/.bin/`); None when there is none."""
    named = os.environ.get(SPLAT_TRANSFORM_ENV)
    if named:
        return named if Path(named).is_file() else None
    found = shutil.which("splat-transform")
    if found:
        return found
    venv = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "splat-transform"
    return str(venv) if venv.is_file() else None


def run_splat_transform(source: Path, target: Path, what: str) -> None:
    """`splat-transform source target` (the suffix of `target` picks the format); one line on failure.

    Raises:
        UserInputError: the tool is missing (naming `what` needs it and how to install it), or it failed (its last
            message).
    """
    tool = splat_transform_tool()
    if tool is None:
        raise UserInputError(f"{what} needs PlayCanvas' splat-transform, which is not installed; {INSTALL_HINT}")
    # -g cpu: SOG's k-means otherwise asks for a WebGPU adapter, which a headless machine does not have
    command = [tool, "-q", "-w", "-g", "cpu", str(source), str(target)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except OSError as err:
        raise UserInputError(f"{what}: cannot run {tool} ({err.strerror}); {INSTALL_HINT}") from None
    if run.returncode != 0 or not target.is_file():
        lines = [line.strip() for line in (run.stderr + run.stdout).splitlines() if "error" in line.lower()]
        reason = (lines[-1] if lines else f"exit {run.returncode}")[:160]
        raise UserInputError(f"{what}: splat-transform failed ({reason}); is {source.name} a valid splat file?")


# --------------------------------------------------------------------------------------------------------------------
# In
# --------------------------------------------------------------------------------------------------------------------


def decoded_ply(path: Path, cache_root: Path) -> Path:
    """A plain 3DGS `.ply` with the Gaussians of splat file `path`: `path` itself when it is one, else its decode,
    written once into `cache_root` (named by the file's bytes, so a changed file decodes again).

    Raises:
        UserInputError: one line for a missing file, a missing decoder or a file the decoder rejects.
    """
    path = Path(path)
    fmt = splat_format(path)
    if fmt == "ply" or not path.is_file():
        return path
    digest = hashlib.sha256(f"{DECODE_VERSION}".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    target = Path(cache_root).expanduser() / "decoded" / f"{path.name}-{digest.hexdigest()[:16]}.ply"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if fmt == "splat":
            write_plain_ply(tmp, decode_splat(path))
        else:
            with tempfile.TemporaryDirectory(dir=target.parent) as work:
                decoded = Path(work) / "decoded.ply"
                run_splat_transform(path, decoded, f"reading {path} ({fmt})")
                os.replace(decoded, tmp)
    return target


def decode_splat(path: Path) -> dict[str, np.ndarray]:
    """The Gaussians of an antimatter15 `.splat` file as splat-transform decodes them (float32, the plain `.ply`'s
    stored values): `{"means": [N, 3], "scales": [N, 3] (log), "quats": [N, 4] (wxyz, unit), "features_dc": [N, 3],
    "opacities": [N, 1] (logit)}`; a `.splat` has no higher SH bands.

    Every operation is splat-transform 3.10's `decodeGeometric`/`decodeColor` (float64, then stored as float32).
    """
    size = Path(path).stat().st_size
    if size == 0 or size % _SPLAT_RECORD.itemsize:
        raise UserInputError(f"{path} is not a .splat file: its {size} bytes are not a whole number of 32-byte records")
    records = np.fromfile(path, dtype=_SPLAT_RECORD)
    return {
        "means": records["position"].copy(),
        "scales": np.log(records["scale"].astype(np.float64)).astype(np.float32),
        "quats": _decode_rotation(records["rot"]),
        "features_dc": ((records["rgba"][:, :3] / 255.0 - 0.5) / SH_C0).astype(np.float32),
        "opacities": _decode_opacity(records["rgba"][:, 3:4]),
    }


def _decode_rotation(rot: np.ndarray) -> np.ndarray:
    """u8 [N, 4] -> unit wxyz quaternions (float32), as splat-transform: (u / 255) * 2 - 1, normalised."""
    r = (rot / 255.0) * 2.0 - 1.0
    length = np.sqrt(r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1] + r[:, 2] * r[:, 2] + r[:, 3] * r[:, 3])
    out = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (len(r), 1))
    ok = length > 0
    out[ok] = r[ok] / length[ok, None]
    return out.astype(np.float32)


def _decode_opacity(alpha: np.ndarray) -> np.ndarray:
    """u8 [N, 1] -> opacity logits (float32), clamped off the asymptotes as splat-transform does."""
    a = np.clip(alpha / 255.0, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    return np.log(a / (1.0 - a)).astype(np.float32)


def write_plain_ply(path: Path, splat: dict[str, np.ndarray]) -> Path:
    """Write a splat (numpy arrays in :func:`decode_splat`'s layout, optionally "features_rest" [N, K-1, 3]) as a
    plain 3DGS `.ply` in the INRIA property order (f_rest channel-major), float32 throughout."""
    from plyfile import PlyData, PlyElement

    n = len(splat["means"])
    rest = splat.get("features_rest", np.zeros((n, 0, 3), np.float32))
    rest = np.ascontiguousarray(rest.transpose(0, 2, 1)).reshape(n, -1)  # channel-major, as INRIA writes it
    columns = {"x": splat["means"][:, 0], "y": splat["means"][:, 1], "z": splat["means"][:, 2]}
    columns |= {f"f_dc_{i}": splat["features_dc"][:, i] for i in range(3)}
    columns |= {f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])}
    columns |= {"opacity": splat["opacities"][:, 0]}
    columns |= {f"scale_{i}": splat["scales"][:, i] for i in range(3)}
    columns |= {f"rot_{i}": splat["quats"][:, i] for i in range(4)}
    data = np.empty(n, dtype=[(name, "<f4") for name in columns])
    for name, column in columns.items():
        data[name] = column
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# Out
# --------------------------------------------------------------------------------------------------------------------


def encode_splat(ply: Path, target: Path, fmt: OutputFormat) -> None:
    """Write the plain 3DGS `.ply` `ply` (an `ns-export gaussian-splat` output) to the file `target` in format `fmt`,
    whatever `target`'s name (callers write through :func:`~styleme3d_ns.core.atomic.atomic_path`). `.splat` is
    encoded here (:func:`encode_splat_records`), `.spz` and `.sog` by splat-transform; "ply" copies."""
    target = Path(target)
    if fmt == "ply":
        shutil.copyfile(ply, target)
    elif fmt == "splat":
        encode_splat_records(_read_plain_ply(ply)).tofile(target)
    else:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
            written = Path(work) / f"splat{OUTPUT_SUFFIXES[fmt]}"  # the suffix picks splat-transform's writer
            run_splat_transform(Path(ply), written, f"writing {fmt}")
            os.replace(written, target)


def _read_plain_ply(path: Path) -> dict[str, np.ndarray]:
    """The columns of a plain 3DGS `.ply` that a `.splat` stores, float32."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    stack = lambda *names: np.stack([np.asarray(vertex.data[n], dtype=np.float32) for n in names], axis=1)  # noqa: E731
    return {
        "means": stack("x", "y", "z"),
        "scales": stack("scale_0", "scale_1", "scale_2"),
        "quats": stack("rot_0", "rot_1", "rot_2", "rot_3"),
        "features_dc": stack("f_dc_0", "f_dc_1", "f_dc_2"),
        "opacities": stack("opacity"),
    }


def encode_splat_records(splat: dict[str, np.ndarray]) -> np.ndarray:
    """`.splat` records `[N]` (32 bytes each) for a splat in :func:`decode_splat`'s layout, the exact inverse of that
    decode: a splat decoded from a `.splat` file encodes to records that decode to the same float32 geometry.

    Colours and alpha round to the nearest byte (splat-transform truncates, which moves a decoded value down one
    level). A scale is the float32 `s` whose float32 log is the stored log-scale (exp, then a neighbouring float when
    exp rounded across). A rotation takes the nearest bytes, `round(127.5 q + 127.5)`, unless other bytes decode to
    exactly this quaternion (it came from a `.splat`): those are found by trying every value of its largest component.
    """
    n = len(splat["means"])
    records = np.zeros(n, dtype=_SPLAT_RECORD)
    records["position"] = splat["means"]
    records["scale"] = _encode_scale(splat["scales"].astype(np.float32))
    colour = np.rint((0.5 + SH_C0 * splat["features_dc"].astype(np.float64)) * 255.0)
    alpha = np.rint(255.0 / (1.0 + np.exp(-splat["opacities"].astype(np.float64))))
    records["rgba"] = np.clip(np.concatenate([colour, alpha], axis=1), 0, 255).astype(np.uint8)
    records["rot"] = _encode_rotation(splat["quats"].astype(np.float32))
    return records


def _encode_scale(log_scale: np.ndarray) -> np.ndarray:
    """float32 linear scales whose float32(log(.)) is `log_scale` (float32) wherever such a float exists."""
    target = log_scale.astype(np.float32).ravel()
    scale = np.exp(target.astype(np.float64)).astype(np.float32)
    log32 = lambda values: np.log(values.astype(np.float64)).astype(np.float32)  # noqa: E731
    for direction in (np.float32(np.inf), np.float32(-np.inf)):  # exp may round to either neighbour
        wrong = np.flatnonzero(log32(scale) != target)
        if wrong.size == 0:
            break
        neighbour = np.nextafter(scale[wrong], direction)
        fixed = log32(neighbour) == target[wrong]
        scale[wrong[fixed]] = neighbour[fixed]
    return scale.reshape(log_scale.shape)


def _encode_rotation(quats: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """u8 [N, 4] that decode (:func:`_decode_rotation`) to exactly `quats` where possible, else the nearest bytes."""
    unit = quats.astype(np.float64) / np.linalg.norm(quats.astype(np.float64), axis=1, keepdims=True).clip(1e-30)
    codes = np.clip(np.rint(unit * 127.5 + 127.5), 0, 255).astype(np.uint8)
    wrong = np.flatnonzero((_decode_rotation(codes) != quats).any(axis=1))
    candidates = np.arange(256, dtype=np.float64)
    for start in range(0, len(wrong), chunk):
        index = wrong[start : start + chunk]
        q = quats[index].astype(np.float64)
        largest = np.abs(q).argmax(axis=1)
        q_max = q[np.arange(len(q)), largest]
        # each byte of the largest component fixes the length the decoder divided by; the others follow from it
        per_unit = ((candidates[None, :] / 255.0) * 2.0 - 1.0) / q_max[:, None]  # [M, 256]
        trial = np.clip(np.rint((q[:, None, :] * per_unit[..., None] + 1.0) * 127.5), 0, 255)  # [M, 256, 4]
        decoded = _decode_rotation(trial.reshape(-1, 4).astype(np.uint8)).reshape(trial.shape)
        exact = (decoded == quats[index][:, None, :]).all(axis=2) & (per_unit > 0)  # [M, 256]
        found = exact.any(axis=1)
        pick = exact.argmax(axis=1)
        codes[index[found]] = trial[np.flatnonzero(found), pick[found]].astype(np.uint8)
    return codes
