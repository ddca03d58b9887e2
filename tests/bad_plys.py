"""The bad `.ply` files of issue 24's battery, each with the words its one-line error must hold.

Shared by the reader's tests (tests/test_ply_scene.py), the pre-flight's (tests/test_bad_inputs_preflight.py) and
scripts/battery_bad_inputs.py, which runs them through `ns-train`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from tests.test_ply_scene import tiny_splat, write_inria_ply

N = 5  # Gaussians of each bad file (the good one it is made from)


def _columns(path: Path) -> dict[str, np.ndarray]:
    vertex = PlyData.read(str(path))["vertex"]
    return {prop.name: np.asarray(vertex.data[prop.name]) for prop in vertex.properties}


def _write_columns(path: Path, columns: dict[str, np.ndarray]) -> Path:
    data = np.empty(len(next(iter(columns.values()))), dtype=[(name, "f4") for name in columns])
    for name, column in columns.items():
        data[name] = column
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return path


def _with(good: dict[str, torch.Tensor], key: str, rows: list[int], value: float) -> dict[str, torch.Tensor]:
    edited = {**good, key: good[key].clone()}
    edited[key][rows] = value
    return edited


def bad_plys(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a bad .ply written into `folder`, text its one-line error must contain). Inputs are written once."""
    folder.mkdir(parents=True, exist_ok=True)
    good = tiny_splat(n=N, degree=1)
    source = write_inria_ply(folder / "good.ply", good)
    raw = source.read_bytes()
    body = raw.index(b"end_header\n") + len(b"end_header\n")
    columns = _columns(source)
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, words: str) -> None:
        path = folder / f"{name.replace(' ', '_')}.ply"
        path.write_bytes(content)
        cases[name] = (path, words)

    put("empty file", b"", "is not a readable .ply")
    put("random bytes", np.random.default_rng(0).bytes(4096), "is not a readable .ply")
    put("header only", raw[:body], f"is truncated or damaged: its header declares {N} vertex rows")
    put("truncated", raw[: body + (len(raw) - body) // 2], "is truncated or damaged")
    declared = raw[:body].replace(f"element vertex {N}\n".encode(), b"element vertex 2000000000\n")
    put("2e9 declared", declared + raw[body:], "its header declares 2000000000 vertex rows")
    renamed = {name.replace("x", "px").replace("y", "py").replace("z", "pz") if name in "xyz" else name: column
               for name, column in columns.items()}  # fmt: skip
    cases["wrong property names"] = (_write_columns(folder / "renamed.ply", renamed), "it lacks x, y, z")
    cases["NaN positions"] = (write_inria_ply(folder / "nan.ply", _with(good, "means", [1], float("nan"))),
                              "1 of 5 Gaussians have NaN/Inf in means")  # fmt: skip
    cases["Inf scales"] = (write_inria_ply(folder / "inf.ply", _with(good, "scales", [0, 3], float("inf"))),
                           "2 of 5 Gaussians have NaN/Inf in scales")  # fmt: skip
    cloud = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(cloud, "vertex")]).write(str(folder / "cloud.ply"))
    cases["point cloud"] = (folder / "cloud.ply", "is a point cloud")
    vertices = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    mesh = [PlyElement.describe(vertices, "vertex"), PlyElement.describe(faces, "face")]
    PlyData(mesh).write(str(folder / "mesh.ply"))
    cases["mesh"] = (folder / "mesh.ply", "is a mesh (1 faces)")
    cases["0 Gaussians"] = (write_inria_ply(folder / "zero.ply", tiny_splat(n=0)), "zero Gaussians")
    cases["zero quaternions"] = (write_inria_ply(folder / "quats.ply", _with(good, "quats", [2], 0.0)),
                                 "1 of 5 Gaussians have all-zero rot_* quaternions")  # fmt: skip
    ten = {name: column for name, column in columns.items() if not name.startswith("f_rest_")}
    ten |= {f"f_rest_{i}": np.zeros(N, np.float32) for i in range(10)}
    cases["10 f_rest"] = (_write_columns(folder / "ten_rest.ply", ten), "has 10 f_rest_* properties")
    cases["missing file"] = (folder / "absent.ply", "does not exist")
    return cases
