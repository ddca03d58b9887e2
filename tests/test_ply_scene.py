"""A 3DGS .ply as the scene (styleme3d_ns.data.ply_scene): import, cameras, renders, errors, and the round trip
through ns-train and ns-export gaussian-splat."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.ply_scene import (
    OrbitRig,
    PlySceneDataParserConfig,
    base_splat_for_model,
    find_splat_ply,
    orbit_views,
    read_splat_ply,
    render_rgba,
)
from styleme3d_ns.render.camera import viewmat_from_c2w
from styleme3d_ns.render.sh import SH_C0

N_GAUSSIANS = 300
SMALL = {"image_size": 32, "num_views": 6, "elevations_deg": (10.0, 40.0), "num_eval_views": 2}


# ------------------------------------------------------------------------------------------------ fixture files
def tiny_splat(n: int = N_GAUSSIANS, degree: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A coloured blob of `n` Gaussians on a unit sphere around (0.5, -1, 2), in the checkpoint layout."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = torch.tensor([0.5, -1.0, 2.0]) + direction
    return {
        "means": means,
        # about the spacing of n points on the sphere, as a trained splat's surface Gaussians
        "scales": torch.full((n, 3), math.log(0.12 * math.sqrt(N_GAUSSIANS / max(n, 1))))
        + 0.2 * torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "features_dc": (direction - 0.0) / 0.6,  # colour varies over the sphere
        "features_rest": 0.05 * torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g),
        "opacities": torch.full((n, 1), 2.0) + 0.1 * torch.randn(n, 1, generator=g),  # well above ns-export's cut
    }


def write_inria_ply(path: Path, splat: dict[str, torch.Tensor], *, normals: bool = True, comments=()) -> Path:  # noqa: ANN001
    """Write `splat` as the INRIA 3DGS code does (gaussian_model.py save_ply): x y z nx ny nz f_dc_* f_rest_*
    opacity scale_* rot_*, f_rest channel-major (all red coefficients, then green, then blue), float32."""
    n = splat["means"].shape[0]
    rest = splat["features_rest"].transpose(1, 2).reshape(n, 3 * splat["features_rest"].shape[1])  # channel-major
    columns = {"x": splat["means"][:, 0], "y": splat["means"][:, 1], "z": splat["means"][:, 2]}
    if normals:
        columns |= {name: torch.zeros(n) for name in ("nx", "ny", "nz")}
    columns |= {f"f_dc_{i}": splat["features_dc"][:, i] for i in range(3)}
    columns |= {f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])}
    columns |= {"opacity": splat["opacities"][:, 0]}
    columns |= {f"scale_{i}": splat["scales"][:, i] for i in range(3)}
    columns |= {f"rot_{i}": splat["quats"][:, i] for i in range(4)}
    data = np.empty(n, dtype=[(name, "f4") for name in columns])
    for name, column in columns.items():
        data[name] = column.numpy()
    PlyData([PlyElement.describe(data, "vertex")], comments=list(comments)).write(str(path))
    return path


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """Every vertex property of a .ply, by name, in file order."""
    vertex = PlyData.read(str(path))["vertex"]
    return {prop.name: np.asarray(vertex.data[prop.name]) for prop in vertex.properties}


# ------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_an_inria_ordered_ply_imports_every_property_exactly(tmp_path: Path, degree: int) -> None:
    splat = tiny_splat(degree=degree)
    path = write_inria_ply(tmp_path / "scene.ply", splat, normals=degree % 2 == 0)
    read, read_degree, _ = read_splat_ply(path)
    assert read_degree == degree
    assert set(read) == set(splat)
    for key, value in splat.items():
        assert read[key].dtype == torch.float32 and torch.equal(read[key], value), key


def test_f_rest_is_read_channel_major(tmp_path: Path) -> None:
    """The file's f_rest_i is coefficient i % (K-1) of channel i // (K-1), written independently of the reader."""
    n, k = 2, 15
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"]
    names += ["rot_0", "rot_1", "rot_2", "rot_3", *(f"f_rest_{i}" for i in range(3 * k))]
    data = np.zeros(n, dtype=[(name, "f4") for name in names])
    data["rot_0"] = 1.0
    for i in range(3 * k):
        data[f"f_rest_{i}"] = i
    path = tmp_path / "s.ply"
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    rest = read_splat_ply(path)[0]["features_rest"]
    assert rest.shape == (n, k, 3)
    coefficient, channel = 4, 2
    assert float(rest[0, coefficient, channel]) == channel * k + coefficient


def test_a_folder_with_one_ply_is_the_scene_and_datasets_are_not(tmp_path: Path) -> None:
    path = write_inria_ply(tmp_path / "splat.ply", tiny_splat(n=4))
    assert find_splat_ply(tmp_path) == path and find_splat_ply(path) == path
    (tmp_path / "transforms.json").write_text("{}")
    assert find_splat_ply(tmp_path) is None, "a nerfstudio dataset with a point cloud .ply stays a dataset"
    (tmp_path / "transforms.json").unlink()
    shutil.copy(path, tmp_path / "other.ply")
    with pytest.raises(UserInputError, match="2 splat files"):
        find_splat_ply(tmp_path)


def test_bad_files_get_one_line_each(tmp_path: Path) -> None:
    from tests.bad_plys import bad_plys

    for name, (path, expected) in bad_plys(tmp_path).items():
        with pytest.raises(UserInputError) as err:
            read_splat_ply(path)
        message = str(err.value)
        assert expected in message and "\n" not in message and str(path) in message, (name, message)


def test_a_bad_file_stops_the_parser_with_one_line(tmp_path: Path) -> None:
    from tests.bad_plys import bad_plys

    path, _ = bad_plys(tmp_path)["mesh"]
    with pytest.raises(SystemExit, match="is a mesh"):
        PlySceneDataParserConfig(data=path, cache_dir=tmp_path).setup().get_dataparser_outputs("train")


# ------------------------------------------------------------------------------------------------ cameras
def test_orbit_frames_the_robust_bounds_and_ignores_floaters() -> None:
    splat = tiny_splat()
    floaters = torch.tensor([[40.0, 0.0, 0.0], [0.0, -60.0, 5.0], [0.0, 0.0, 90.0]])
    means = torch.cat([splat["means"], floaters])
    rig = OrbitRig.around(means, "-y", percentile=2.0, image_size=48, fov_deg=50.0, framing=1.1)
    assert np.allclose(rig.centre, [0.5, -1.0, 2.0], atol=0.15) and 0.9 < rig.bounds_radius < 1.8
    az, el = orbit_views(8, (10.0, 40.0), 4)["train"]
    cameras = rig.cameras(az, el)
    c2w = cameras.camera_to_worlds
    assert torch.allclose((c2w[:, :, 3] - torch.tensor(rig.centre)).norm(dim=-1), torch.full((8,), rig.distance))
    assert (c2w[:, :, 1] @ torch.tensor([0.0, -1.0, 0.0]) > 0).all(), "camera up leans to the chosen up axis"
    # every Gaussian of the blob projects inside every view; no floater does
    points = torch.cat([splat["means"], torch.ones(N_GAUSSIANS, 1)], dim=1)
    cam = viewmat_from_c2w(c2w) @ points.T  # [V, 4, N], OpenCV
    pixels = cameras.get_intrinsics_matrices() @ cam[:, :3]
    uv = pixels[:, :2] / pixels[:, 2:3]
    assert (cam[:, 2] > 0).all() and (uv > 0).all() and (uv < 48).all()


def test_eval_views_sit_between_training_views() -> None:
    views = orbit_views(6, (10.0, 40.0, 70.0), 3)
    train_az, train_el = views["train"]
    eval_az, eval_el = views["test"]
    assert torch.equal(train_el, torch.tensor([10.0, 40.0, 70.0, 10.0, 40.0, 70.0]))
    assert torch.equal(eval_az, torch.tensor([30.0, 150.0, 270.0])) and torch.equal(eval_el, torch.full((3,), 40.0))
    assert not set(eval_az.tolist()) & set(train_az.tolist())


# ------------------------------------------------------------------------------------------------ data parser
def test_dataparser_renders_the_splat_once_and_hands_it_to_the_model(tmp_path: Path) -> None:
    splat = tiny_splat(degree=1)
    path = write_inria_ply(tmp_path / "scene.ply", splat, comments=["Vertical Axis: z"])
    config = PlySceneDataParserConfig(data=path, cache_dir=tmp_path / "cache", **SMALL)
    train = config.setup().get_dataparser_outputs("train")
    test = config.setup().get_dataparser_outputs("test")
    assert len(train.image_filenames) == 6 and len(test.image_filenames) == 2
    assert train.metadata["base_sh_degree"] == 1 and train.metadata["ply_up_axis"] == "+z"
    assert all(torch.equal(train.metadata["base_splat"][k], v) for k, v in splat.items())
    assert torch.equal(train.dataparser_transform, torch.eye(4)[:3]) and train.dataparser_scale == 1.0
    # the images are the splat's renders (RGBA, straight alpha): compare with the rasteriser's premultiplied colour
    image = np.asarray(Image.open(train.image_filenames[1])).astype(np.float32) / 255.0
    assert image.shape == (32, 32, 4)
    expected = render_rgba(splat, 1, train.cameras[1:2])[0].astype(np.float32) / 255.0
    assert np.array_equal(image, expected)
    assert 0.05 < image[..., 3].mean() < 0.95, "the blob is in view, with background around it"
    # a second parse (ns-export, ns-render) reads the same files instead of rendering again
    stamps = [p.stat().st_mtime_ns for p in train.image_filenames]
    again = config.setup().get_dataparser_outputs("train")
    assert again.image_filenames == train.image_filenames
    assert [p.stat().st_mtime_ns for p in again.image_filenames] == stamps
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [train.image_filenames[0].parent.name]


def test_model_gets_the_files_degree_or_zero_padded_bands() -> None:
    splat = tiny_splat(n=7, degree=1)
    metadata = {"base_splat": splat, "base_sh_degree": 1, "ply_path": "s.ply"}
    padded = base_splat_for_model(metadata, 3)
    assert padded["features_rest"].shape == (7, 15, 3)
    assert torch.equal(padded["features_rest"][:, :3], splat["features_rest"])
    assert not padded["features_rest"][:, 3:].any()
    assert base_splat_for_model(metadata, 1)["features_rest"] is not None
    for model_degree in (0,):
        with pytest.raises(UserInputError, match="--pipeline.model.sh-degree 1"):
            base_splat_for_model(metadata, model_degree)
    metadata3 = {"base_splat": tiny_splat(n=7, degree=3), "base_sh_degree": 3, "ply_path": "s.ply"}
    with pytest.raises(UserInputError, match="stores SH degree 3 but --pipeline.model.sh-degree is 2"):
        base_splat_for_model(metadata3, 2)


# ------------------------------------------------------------------------------------------------ round trip
SPLAT_TRANSFORM = Path(__file__).resolve().parents[1] / ".venv" / "node" / "node_modules" / ".bin" / "splat-transform"


def _export(config_yml: Path, out: Path) -> Path:
    """`ns-export gaussian-splat --load-config config_yml --output-dir out`, in-process; the written .ply."""
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    ExportGaussianSplat(load_config=config_yml, output_dir=out).main()
    return out / "splat.ply"


def _splat_transform_reads(ply: Path, out: Path) -> np.ndarray | None:
    """The .splat records splat-transform (PlayCanvas' converter) writes from `ply`, or None without it."""
    from styleme3d_ns.data.splat_formats import splat_transform_tool

    tool = splat_transform_tool() or (str(SPLAT_TRANSFORM) if SPLAT_TRANSFORM.exists() else None)
    if tool is None:
        return None
    subprocess.run([tool, str(ply), str(out)], check=True, capture_output=True, timeout=120)
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    return np.fromfile(out, dtype=record)


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory, style_path: Path) -> dict[str, Path]:
    """An INRIA-layout fixture .ply stylised by styleme3d (8 steps, 48 px), exported, imported by `--data
    export.ply` (the default data parser, no training) and exported again."""
    from tests.conftest import run_trainer, styleme3d_config

    tmp = tmp_path_factory.mktemp("ply_round_trip")
    fixture = write_inria_ply(tmp / "base.ply", tiny_splat(degree=3))
    torch.manual_seed(0)
    # no offline teacher (a colour solve when stylising starts, where the model has one): these runs are about the
    # .ply path, and the re-import must not change a colour
    from styleme3d_ns.method_configs.styleme3d_config import styleme3d

    no_teacher = {"offline_teacher": "off"} if hasattr(styleme3d.config.pipeline.model, "offline_teacher") else {}
    stylise = styleme3d_config(fixture, tmp / "runs", 8, style_image=style_path, **no_teacher)
    parser = PlySceneDataParserConfig(cache_dir=tmp / "cache", **{**SMALL, "image_size": 48})
    stylise.pipeline.datamanager = replace(stylise.pipeline.datamanager, dataparser=parser)
    stylised = run_trainer(stylise)
    first = _export(stylised, tmp / "export1")
    with pytest.MonkeyPatch.context() as patch:  # the default parser's cache goes to the system temp dir
        patch.setattr(tempfile, "tempdir", str(tmp))
        # one step at learning rate 0 (nerfstudio saves no checkpoint for zero steps): import, then export
        reimport = styleme3d_config(first, tmp / "reimport", 1, style_image=style_path, **no_teacher)
        reimport.optimizers = {
            k: {**v, "optimizer": replace(v["optimizer"], lr=0.0)} for k, v in reimport.optimizers.items()
        }
        second = _export(run_trainer(reimport), tmp / "export2")
    return {"fixture": fixture, "stylised": stylised, "first": first, "second": second, "tmp": tmp}


def test_export_import_export_is_bit_identical(round_trip: dict[str, Path]) -> None:
    first, second = read_columns(round_trip["first"]), read_columns(round_trip["second"])
    assert list(first) == list(second)
    for name in first:
        assert first[name].dtype == second[name].dtype and np.array_equal(first[name], second[name]), name
    assert round_trip["first"].read_bytes() == round_trip["second"].read_bytes()


def test_export_keeps_the_geometry_and_carries_the_stylised_colours(round_trip: dict[str, Path]) -> None:
    from styleme3d_ns.models.checkpoint import load_gaussians

    fixture, exported = read_columns(round_trip["fixture"]), read_columns(round_trip["first"])
    assert list(exported) == list(fixture), "nerfstudio writes the INRIA property order"
    geometry = ["x", "y", "z", "opacity", *(f"scale_{i}" for i in range(3)), *(f"rot_{i}" for i in range(4))]
    for name in geometry:
        assert np.array_equal(exported[name], fixture[name]), name
    stylised = load_gaussians(round_trip["stylised"].parent)
    dc = np.stack([exported[f"f_dc_{i}"] for i in range(3)], axis=1)
    assert np.array_equal(dc, stylised["features_dc"].numpy()), "the export holds the trained colours"
    assert not np.array_equal(dc, np.stack([fixture[f"f_dc_{i}"] for i in range(3)], axis=1)), "and they moved"
    rest = np.stack([exported[f"f_rest_{i}"] for i in range(45)], axis=1)
    assert np.array_equal(rest, stylised["features_rest"].transpose(1, 2).reshape(-1, 45).numpy())


def test_playcanvas_splat_transform_reads_the_export(round_trip: dict[str, Path]) -> None:
    """A reader someone else wrote sees the same Gaussians and the stylised colours (install: scripts/install.sh)."""
    records = _splat_transform_reads(round_trip["first"], round_trip["tmp"] / "export.splat")
    if records is None:
        pytest.skip("splat-transform is not installed (scripts/install.sh installs it when npm is available)")
    columns = read_columns(round_trip["first"])
    assert records.shape == (N_GAUSSIANS,)
    assert np.array_equal(records["position"], np.stack([columns[c] for c in "xyz"], axis=1))
    scales = np.exp(np.stack([columns[f"scale_{i}"] for i in range(3)], axis=1))
    np.testing.assert_allclose(records["scale"], scales, rtol=1e-6)
    dc = np.stack([columns[f"f_dc_{i}"] for i in range(3)], axis=1).astype(np.float64)
    colour = np.clip((0.5 + SH_C0 * dc) * 255, 0, 255)
    alpha = 255 / (1 + np.exp(-columns["opacity"].astype(np.float64)))
    expected = np.concatenate([colour, alpha[:, None]], axis=1)
    assert np.abs(records["rgba"].astype(np.float64) - expected).max() <= 1.0
