"""Real captures as people bring them: the capture's own cameras (INRIA cameras.json, nerfstudio transforms.json,
viewer camera paths), the inside rig for unbounded scenes, and every splat format in and out (data/capture_cameras.py,
data/rigs.py, data/views.py, data/splat_formats.py)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.capture_cameras import read_camera_path, scaled_to
from styleme3d_ns.data.ply_scene import PlySceneDataParserConfig, find_splat_ply
from styleme3d_ns.data.rigs import scene_layout
from styleme3d_ns.data.splat_formats import (
    decode_splat,
    decoded_ply,
    encode_splat,
    encode_splat_records,
    run_splat_transform,
    splat_format,
    splat_transform_tool,
    write_plain_ply,
)
from styleme3d_ns.data.views import BARE_IMAGE_SIZE, scene_views
from tests.test_ply_scene import tiny_splat, write_inria_ply

CENTRE = torch.tensor([0.5, -1.0, 2.0])  # tiny_splat's blob: a unit sphere here
SHELL_RADIUS = 20.0
GEOMETRY = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
needs_splat_transform = pytest.mark.skipif(
    splat_transform_tool() is None, reason="splat-transform is not installed (scripts/install.sh installs it with npm)"
)


# ------------------------------------------------------------------------------------------------ scenes
def object_in_shell(n_object: int = 600, n_shell: int = 300, degree: int = 1) -> dict[str, torch.Tensor]:
    """The blob inside a green background shell of radius 20 around it (a third of the Gaussians)."""
    blob = tiny_splat(n_object, degree=degree)
    g = torch.Generator().manual_seed(7)
    direction = torch.nn.functional.normalize(torch.randn(n_shell, 3, generator=g), dim=-1)
    shell = tiny_splat(n_shell, degree=degree, seed=3)
    shell["means"] = CENTRE + SHELL_RADIUS * direction
    shell["scales"] = torch.full((n_shell, 3), math.log(3.0))  # closes the shell: ~n_shell discs of radius ~6
    shell["features_dc"] = torch.tensor([-1.6, 1.6, -1.6]).expand(n_shell, 3).clone()  # green
    return {key: torch.cat([blob[key], shell[key]]) for key in blob}


def opencv_look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """World-to-camera [4, 4] in OpenCV axes (x right, y down, z forward), written independently of render/camera."""
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = torch.stack([right, down, forward])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def capture_w2c(count: int = 5) -> list[torch.Tensor]:
    """OpenCV world-to-camera matrices of a capture circling the blob (up -y, as COLMAP frames)."""
    out = []
    for i in range(count):
        angle = 2 * math.pi * i / count
        eye = CENTRE.double() + torch.tensor([4 * math.cos(angle), -1.0, 4 * math.sin(angle)], dtype=torch.float64)
        out.append(opencv_look_at(eye, CENTRE.double(), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)))
    return out


def write_inria_run(folder: Path, splat: dict[str, torch.Tensor], w2cs: list[torch.Tensor]) -> Path:
    """An INRIA 3DGS output folder: cameras.json as utils/camera_utils.py::camera_to_JSON writes it (rotation and
    position of inv(w2c)), point_cloud/iteration_{7000,30000}/point_cloud.ply and input.ply (COLMAP's points)."""
    entries = []
    for i, w2c in enumerate(w2cs):
        c2w = torch.linalg.inv(w2c)
        entries.append({"id": i, "img_name": f"{i:05d}", "width": 80, "height": 60, "position": c2w[:3, 3].tolist(),
                        "rotation": c2w[:3, :3].tolist(), "fy": 70.0, "fx": 72.0})  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "cameras.json").write_text(json.dumps(entries))
    for iteration in (7000, 30000):
        (folder / "point_cloud" / f"iteration_{iteration}").mkdir(parents=True)
        scaled = {**splat, "opacities": splat["opacities"] - (0.5 if iteration == 7000 else 0.0)}
        write_inria_ply(folder / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply", scaled)
    points = np.zeros(4, dtype=[(k, "f4") for k in ("x", "y", "z", "nx", "ny", "nz")] + [(c, "u1") for c in "rgb"])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(folder / "input.ply"))
    return folder


def parse(data: Path, tmp: Path, split: str = "train", **options):  # noqa: ANN201
    """The .ply parser's outputs for `data` at 32 px (unless options say otherwise)."""
    config = PlySceneDataParserConfig(data=data, cache_dir=tmp / "cache", **{"image_size": 32, **options})
    return config.setup().get_dataparser_outputs(split)


def project(cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Pixels [V, P, 2] and depths [V, P] of world points [P, 3] in nerfstudio cameras (OpenGL c2w)."""
    c2w = cameras.camera_to_worlds.double()
    rel = points.double()[None] - c2w[:, None, :, 3]  # [V, P, 3]
    local = torch.einsum("vij,vpi->vpj", c2w[:, :, :3], rel)  # camera axes: x right, y up, z back
    depth = -local[..., 2]
    u = cameras.fx.double() * local[..., 0] / depth + cameras.cx.double()
    v = -cameras.fy.double() * local[..., 1] / depth + cameras.cy.double()
    return torch.stack([u, v], dim=-1), depth


# ------------------------------------------------------------------------------------------------ rigs
def test_layout_finds_the_core_and_the_background_shell() -> None:
    layout = scene_layout(object_in_shell()["means"])
    assert layout.unbounded and abs(layout.background_fraction - 1 / 3) < 0.01
    assert torch.allclose(torch.tensor(layout.centre, dtype=torch.float32), CENTRE, atol=0.15)
    assert 0.9 < layout.core_radius < 1.2 and 18.0 < layout.background_radius <= 20.0
    floaters = torch.cat([tiny_splat()["means"], torch.tensor([[40.0, 0, 0], [0, -60, 5], [0, 0, 90]])])
    assert not scene_layout(floaters).unbounded, "an object with a few floaters keeps the orbit"


def test_unbounded_scene_without_cameras_is_seen_from_inside_the_shell(tmp_path: Path) -> None:
    """The issue's scene: at least 80% of the training views sit inside the shell and show the object, and the
    renders show the object and the background around it."""
    splat = object_in_shell()
    out = parse(write_inria_ply(tmp_path / "scene.ply", splat), tmp_path, image_size=48)
    assert out.metadata["views"] == "inside"
    cameras = out.cameras
    inside = (cameras.camera_to_worlds[:, :, 3] - CENTRE).norm(dim=-1) < SHELL_RADIUS - 3.0  # minus the discs
    pixels, depth = project(cameras, splat["means"][:600])
    in_image = (depth > 0) & (pixels >= 0).all(-1) & (pixels < 48).all(-1)
    shows_object = in_image.double().mean(dim=1) > 0.9  # (nearly) the whole object in the frame
    assert float((inside & shows_object).double().mean()) >= 0.8
    # the renders: object pixels and green background pixels in the views that look at the object
    frames = np.stack([np.asarray(Image.open(p)).astype(np.float32) / 255 for p in out.image_filenames])
    rgb, alpha = frames[..., :3], frames[..., 3]
    green = (rgb[..., 1] > rgb[..., 0] + 0.3) & (rgb[..., 1] > rgb[..., 2] + 0.3) & (alpha > 0.5)
    other = ~green & (alpha > 0.5)
    looking = shows_object.numpy()
    assert (green[looking].mean(axis=(1, 2)) > 0.1).all() and (other[looking].mean(axis=(1, 2)) > 0.05).all()
    assert (alpha[looking] > 0.5).mean() > 0.95, "inside the shell every pixel sees something"
    orbit = parse(tmp_path / "scene.ply", tmp_path, rig="orbit")
    assert ((orbit.cameras.camera_to_worlds[:, :, 3] - CENTRE).norm(dim=-1) > SHELL_RADIUS).all(), "--rig orbit"


def test_an_object_keeps_the_orbit(tmp_path: Path) -> None:
    out = parse(write_inria_ply(tmp_path / "blob.ply", tiny_splat()), tmp_path)
    assert out.metadata["views"] == "orbit"


def test_the_default_views_are_at_the_size_people_look_at(tmp_path: Path) -> None:
    """Without --image-size: 512 px for a bare file, a capture's own size capped at 1080 px on the long side."""
    splat = tiny_splat()
    (tmp_path / "bare").mkdir()
    bare = write_inria_ply(tmp_path / "bare" / "blob.ply", splat)
    views = scene_views(bare, splat["means"], "-y", PlySceneDataParserConfig(data=bare).view_settings())
    assert {int(views.cameras["train"].width.max()), int(views.cameras["train"].height.max())} == {BARE_IMAGE_SIZE}
    assert BARE_IMAGE_SIZE == 512
    run = write_inria_run(tmp_path / "run", splat, capture_w2c())
    ply = run / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    settings = replace(PlySceneDataParserConfig(data=ply).view_settings(), max_image_size=60)  # the capture is 80x60
    captured = scene_views(ply, splat["means"], "-y", settings).cameras["train"]
    assert int(captured.width[0]) == 60 and int(captured.height[0]) == 45  # the long side capped, aspect kept


# ------------------------------------------------------------------------------------------------ capture cameras
def test_an_inria_folder_trains_on_exactly_its_cameras(tmp_path: Path) -> None:
    splat = tiny_splat(degree=3)
    w2cs = capture_w2c()
    run = write_inria_run(tmp_path / "output" / "run", splat, w2cs)
    latest = run / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    assert find_splat_ply(run) == latest, "the folder is the splat of its last iteration (not input.ply)"
    for data in (run, latest):
        out = parse(data, tmp_path, image_size=None)  # the capture's own size (80x60, under the 1080 cap)
        assert out.metadata["views"] == "capture" and out.cameras.shape[0] == len(w2cs)
        assert out.metadata["ply_path"] == latest
        assert (out.cameras.width == 80).all() and (out.cameras.height == 60).all()
        # every camera projects like INRIA's own: K (R X + T) with the w2c it was written from
        points = splat["means"][:50].double()
        pixels, depth = project(out.cameras, points)
        for v, w2c in enumerate(w2cs):
            cam = (w2c[:3, :3] @ points.T + w2c[:3, 3:]).T
            expected = torch.stack([72.0 * cam[:, 0] / cam[:, 2] + 40, 70.0 * cam[:, 1] / cam[:, 2] + 30], dim=1)
            assert torch.allclose(pixels[v], expected, atol=1e-3) and torch.allclose(depth[v], cam[:, 2], atol=1e-5)
    # --image-size caps the long side, keeping the aspect and the projection
    small = parse(run, tmp_path, image_size=40)
    assert (small.cameras.width == 40).all() and (small.cameras.height == 30).all()
    assert torch.allclose(small.cameras.fx, torch.full_like(small.cameras.fx, 36.0))
    test = parse(run, tmp_path, "test", image_size=40)
    assert test.cameras.shape[0] == 4, "eval views between the capture's cameras, none of them"
    train_eyes = small.cameras.camera_to_worlds[:, :, 3]
    assert ((test.cameras.camera_to_worlds[:, None, :, 3] - train_eyes[None]).norm(dim=-1) > 0.5).all()
    assert parse(run, tmp_path, rig="orbit").metadata["views"] == "orbit", "--rig overrides the found cameras"


def test_cameras_transforms_json_is_read_as_nerfstudio_reads_it(scene_dir: Path, tmp_path: Path) -> None:
    """`--cameras transforms.json` of a nerfstudio run (dataparser_transforms.json beside its export): the cameras
    equal the ones nerfstudio's own dataparser trains on, frame for frame."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    theirs = NerfstudioDataParserConfig(data=scene_dir, eval_mode="all").setup()
    outputs = theirs.get_dataparser_outputs("train")
    run = tmp_path / "run"
    run.mkdir()
    outputs.save_dataparser_transform(run / "dataparser_transforms.json")
    splat = tiny_splat(degree=1)
    splat["means"] = 0.3 * (splat["means"] - CENTRE)  # around the origin of the run's frame, where the scene is
    ply = write_inria_ply(run / "splat.ply", splat)
    ours = parse(ply, tmp_path, image_size=None, cameras=scene_dir / "transforms.json")
    frames = json.loads((scene_dir / "transforms.json").read_text())["frames"]
    assert ours.metadata["views"] == "capture" and ours.cameras.shape[0] == len(frames)
    names = [Path(f["file_path"]).name for f in frames]
    index = [names.index(Path(p).name) for p in outputs.image_filenames]  # nerfstudio sorts and splits the frames
    expected = outputs.cameras.camera_to_worlds
    assert torch.allclose(ours.cameras.camera_to_worlds[index], expected, atol=1e-5)
    assert torch.equal(ours.cameras.fx[index], outputs.cameras.fx)
    # the run folder alone finds the same cameras (transforms.json next to its config.yml's data path is not here:
    # put the dataset's transforms.json beside the export)
    shutil.copy(scene_dir / "transforms.json", run / "transforms.json")
    found = parse(ply, tmp_path, image_size=None)
    assert found.metadata["views"] == "capture"
    assert torch.allclose(found.cameras.camera_to_worlds[index], expected, atol=1e-5)


def test_a_viewer_camera_path_is_read_with_nerfstudios_reader(tmp_path: Path) -> None:
    c2w = torch.eye(4)
    c2w[:3, 3] = CENTRE + torch.tensor([0.0, 0.0, 4.0])  # OpenGL: looks down -z at the blob
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps({"render_width": 64, "render_height": 48, "camera_type": "perspective",
                                "camera_path": [{"camera_to_world": c2w.flatten().tolist(), "fov": 60.0,
                                                 "aspect": 4 / 3}] * 3}))  # fmt: skip
    cameras = read_camera_path(path, tiny_splat()["means"]).cameras
    assert cameras.shape[0] == 3 and torch.allclose(cameras.fy, torch.full((3, 1), 24 / math.tan(math.radians(30))))
    pixels, depth = project(cameras[:1], CENTRE[None])
    assert torch.allclose(pixels[0, 0], torch.tensor([32.0, 24.0], dtype=torch.float64)) and depth[0, 0] > 0
    assert scaled_to(cameras, 32).width.max() == 32


def test_bad_camera_files_get_one_line(tmp_path: Path) -> None:
    ply = write_inria_ply(tmp_path / "s.ply", tiny_splat(n=20))
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "broken.json").write_text("{")
    for cameras, expected in [("other.json", "neither a nerfstudio transforms.json"), ("broken.json", "not valid JSON"),
                              ("absent.json", "does not exist")]:  # fmt: skip
        with pytest.raises(SystemExit, match=expected):
            parse(ply, tmp_path, cameras=tmp_path / cameras)
    with pytest.raises(SystemExit, match="--cameras and --rig orbit"):
        parse(ply, tmp_path, cameras=tmp_path / "other.json", rig="orbit")


# ------------------------------------------------------------------------------------------------ formats
def geometry(ply: Path) -> dict[str, np.ndarray]:
    vertex = PlyData.read(str(ply))["vertex"]
    return {name: np.asarray(vertex.data[name]) for name in GEOMETRY}


def test_splat_files_decode_as_splat_transform_and_encode_back_exactly(tmp_path: Path) -> None:
    """Our .splat decode is splat-transform's, value for value; our encoder is its exact inverse (geometry), so a
    .splat read, stylised and written again decodes to the same geometry. Needs no npm."""
    splat = {k: v.numpy() for k, v in tiny_splat(n=500, degree=0).items() if k != "features_rest"}
    first = tmp_path / "in.splat"
    encode_splat_records(splat).tofile(first)
    decoded = decode_splat(first)
    stylised = {**decoded, "features_dc": decoded["features_dc"][::-1].copy()}  # new colours, same geometry
    again = decode_splat(_write(tmp_path / "out.splat", encode_splat_records(stylised)))
    for key in ("means", "scales", "quats", "opacities"):
        assert np.array_equal(again[key], decoded[key]), key
    assert np.abs(again["features_dc"] - stylised["features_dc"]).max() <= 0.5 / 255 / 0.2820948 + 1e-6
    assert splat_format(first) == "splat" and decoded_ply(first, tmp_path).suffix == ".ply"
    tool = splat_transform_tool()
    if tool is None:
        pytest.skip("splat-transform is not installed: its reading of .splat not compared")
    run_splat_transform(first, tmp_path / "theirs.ply", "test")
    theirs, ours = geometry(tmp_path / "theirs.ply"), geometry(decoded_ply(first, tmp_path))
    for name in GEOMETRY:
        assert np.array_equal(theirs[name], ours[name]), name


def _write(path: Path, records: np.ndarray) -> Path:
    records.tofile(path)
    return path


@needs_splat_transform
@pytest.mark.parametrize("fmt", ["spz", "sog", "compressed-ply"])
def test_formats_round_trip_through_splat_transform(tmp_path: Path, fmt: str) -> None:
    """in (decode), stylise (new colours), out (encode), in again: the geometry is what the first decode gave."""
    base = write_inria_ply(tmp_path / "base.ply", tiny_splat(n=400, degree=3))
    suffix = {"spz": ".spz", "sog": ".sog", "compressed-ply": ".compressed.ply"}[fmt]
    original = tmp_path / f"scene{suffix}"
    run_splat_transform(base, original, "test")
    assert splat_format(original) == fmt
    first = decoded_ply(original, tmp_path / "cache")
    assert first != original and decoded_ply(original, tmp_path / "cache") == first, "decoded once"
    columns = _columns(first)
    columns["f_dc_0"], columns["f_dc_1"] = columns["f_dc_1"].copy(), -columns["f_dc_0"]  # "stylised"
    stylised = _write_columns(tmp_path / "stylised.ply", columns)
    out = tmp_path / f"out{suffix}"
    if fmt == "compressed-ply":
        run_splat_transform(stylised, out, "test")
    else:
        encode_splat(stylised, out, fmt)
    second = geometry(decoded_ply(out, tmp_path / "cache"))
    expected = geometry(first)
    if fmt == "compressed-ply":  # splat-transform's writer re-sorts the Gaussians (Morton order): compare as sets
        order_a = np.lexsort([expected[c] for c in ("z", "y", "x")])
        order_b = np.lexsort([second[c] for c in ("z", "y", "x")])
        expected = {k: v[order_a] for k, v in expected.items()}
        second = {k: v[order_b] for k, v in second.items()}
    sog = fmt == "sog"
    for name in ("scale_0", "scale_1", "scale_2", *(() if sog else ("x", "y", "z", "opacity"))):
        assert np.array_equal(second[name], expected[name]), name
    if sog:  # splat-transform's SOG writer re-quantises positions (16-bit, log-encoded) and truncates alpha
        extent = max(np.ptp(expected[c]) for c in "xyz")
        assert max(np.abs(second[c] - expected[c]).max() for c in "xyz") <= extent / 2**15
        sigmoid = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
        assert np.abs(sigmoid(second["opacity"]) - sigmoid(expected["opacity"])).max() <= 1 / 255 + 1e-6
    angle = rotation_angle(second, expected)
    assert angle.max() <= ROTATION_STEP[fmt], angle.max()
    if not sog:
        assert (angle == 0).mean() >= 0.99, "all but near-ties come back exactly"
    dc = np.stack([_columns(decoded_ply(out, tmp_path / "cache"))[f"f_dc_{i}"] for i in range(3)], axis=1)
    assert np.corrcoef(dc[:, 0], columns["f_dc_0"])[0, 1] > 0.95, "the stylised colours are what comes back"


ROTATION_STEP = {"spz": 0.01, "compressed-ply": 0.01, "sog": 0.04}
"""Largest rotation change (radians) in a round trip: all three store a quaternion's three smallest components
(10-bit, 8-bit for SOG) and rebuild the largest; when two components nearly tie, the decoded quaternion can pick the
other one and come back one quantisation step away (measured: 1 in 400 Gaussians for .spz, under 0.002 rad).
splat-transform's SOG writer re-quantises every rotation (measured: up to 0.031 rad, 1.8 degrees)."""


def rotation_angle(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    """Angle (radians) between the rotations of two splats' quaternions `rot_*` (q and -q are the same rotation)."""
    qa, qb = (np.stack([g[f"rot_{i}"] for i in range(4)], axis=1).astype(np.float64) for g in (a, b))
    dot = np.abs((qa * qb).sum(1)) / np.linalg.norm(qa, axis=1) / np.linalg.norm(qb, axis=1)
    return 2 * np.arccos(np.clip(dot, 0.0, 1.0)) * (np.abs(qa - qb).max(axis=1) > 0)


def _columns(ply: Path) -> dict[str, np.ndarray]:
    vertex = PlyData.read(str(ply))["vertex"]
    return {prop.name: np.asarray(vertex.data[prop.name]).copy() for prop in vertex.properties}


def _write_columns(path: Path, columns: dict[str, np.ndarray]) -> Path:
    data = np.empty(len(columns["x"]), dtype=[(name, "<f4") for name in columns])
    for name, column in columns.items():
        data[name] = column
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    return path


def test_a_missing_converter_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STYLEME3D_SPLAT_TRANSFORM", str(tmp_path / "nowhere"))
    (tmp_path / "scene.spz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserInputError, match="needs PlayCanvas' splat-transform, which is not installed"):
        decoded_ply(tmp_path / "scene.spz", tmp_path)
    write_plain_ply(tmp_path / "plain.ply", {k: v.numpy() for k, v in tiny_splat(n=3, degree=0).items()})
    assert decoded_ply(tmp_path / "plain.ply", tmp_path) == tmp_path / "plain.ply", "plain .ply needs no tool"


# ------------------------------------------------------------------------------------------------ end to end
def test_a_splat_file_with_transforms_json_stylises_and_round_trips(
    tmp_path_factory: pytest.TempPathFactory, style_path: Path
) -> None:
    """The whole path once: `--data scene.splat --cameras transforms.json`, stylise (trains on exactly those
    cameras), `styleme3d-export --format splat`, read again: the geometry is the first decode's, the colours the
    run's."""
    from styleme3d_ns.apps.export import AtomicExportGaussianSplat
    from tests.conftest import run_trainer, styleme3d_config

    tmp = tmp_path_factory.mktemp("capture_e2e")
    base = {k: v.numpy() for k, v in tiny_splat(n=300, degree=0).items() if k != "features_rest"}
    scene = _write(tmp / "scene.splat", encode_splat_records(base))
    w2cs = capture_w2c(4)
    frames = []
    for i, w2c in enumerate(w2cs):
        c2w = torch.linalg.inv(w2c)
        c2w[:3, 1:3] *= -1  # OpenCV -> OpenGL camera axes
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w.tolist()})
    transforms = tmp / "transforms.json"
    transforms.write_text(json.dumps({"fl_x": 36.0, "fl_y": 36.0, "w": 48, "h": 36, "frames": frames}))
    torch.manual_seed(0)
    config = styleme3d_config(scene, tmp / "runs", 4, style_image=style_path, offline_teacher="off")
    parser = PlySceneDataParserConfig(cache_dir=tmp / "cache", cameras=transforms, image_size=None, num_eval_views=2)
    config.pipeline.datamanager = replace(config.pipeline.datamanager, dataparser=parser)
    trainer_config = run_trainer(config)
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(trainer_config, test_mode="inference")
    trained = pipeline.datamanager.train_dataset.cameras
    assert trained.shape[0] == 4 and (trained.width == 48).all()
    for v, w2c in enumerate(w2cs):
        expected = torch.linalg.inv(w2c)[:3].clone()
        expected[:3, 1:3] *= -1
        assert torch.allclose(trained.camera_to_worlds[v].double(), expected, atol=1e-5)
    AtomicExportGaussianSplat(load_config=trainer_config, output_dir=tmp / "export", format="splat").main()
    exported = decode_splat(tmp / "export" / "splat.splat")
    decoded = decode_splat(scene)
    for key in ("means", "scales", "quats", "opacities"):
        assert np.array_equal(exported[key], decoded[key]), key
    model_dc = pipeline.model.features_dc.detach().numpy()
    assert np.abs(exported["features_dc"] - model_dc).max() <= 0.5 / 255 / 0.2820948 + 1e-5, "the run's colours"
    assert np.abs(exported["features_dc"] - decoded["features_dc"]).max() > 0.1, "which stylisation moved"
    # the compressed formats through the same command: splat-transform writes them, or one line says it is missing
    if splat_transform_tool() is not None:
        AtomicExportGaussianSplat(load_config=trainer_config, output_dir=tmp / "export", format="spz").main()
        spz = _columns(decoded_ply(tmp / "export" / "splat.spz", tmp / "cache"))
        assert len(spz["x"]) == 300 and np.abs(spz["x"] - decoded["means"][:, 0]).max() < 2**-11
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STYLEME3D_SPLAT_TRANSFORM", str(tmp / "nowhere"))
        with pytest.raises(SystemExit, match="--format sog needs PlayCanvas' splat-transform"):
            AtomicExportGaussianSplat(load_config=trainer_config, output_dir=tmp / "export", format="sog").main()


# ------------------------------------------------------------------------------------------------ memory
def _tiny_maps(count: int, size: int = 24) -> tuple[list, object]:  # noqa: ANN001
    """`count` colour maps of tiny_splat from an orbit at `size` px, and their cameras."""
    from styleme3d_ns.data.rigs import OrbitRig, orbit_views
    from styleme3d_ns.render.camera import viewmat_from_c2w
    from styleme3d_ns.render.colour_map import ColourMap

    splat = tiny_splat(n=200, degree=1)
    rig = OrbitRig.around(splat["means"], "-y", 2.0, size, 50.0, 1.1)
    cameras = rig.cameras(*orbit_views(count, (10.0, 40.0), 1)["train"])
    maps = [
        ColourMap.build(
            splat["means"],
            splat["quats"],
            torch.exp(splat["scales"]),
            torch.sigmoid(splat["opacities"])[:, 0],
            viewmat_from_c2w(cameras.camera_to_worlds[i : i + 1]),
            cameras[i : i + 1].get_intrinsics_matrices(),
            size,
            size,
            sh_degree=1,
        )  # fmt: skip
        for i in range(count)
    ]
    return maps, cameras


def test_the_colour_map_cache_holds_at_most_its_memory_budget() -> None:
    from styleme3d_ns.render.colour_map import ColourMapCache

    maps, _ = _tiny_maps(6)
    budget = int(2.5 * max(m.nbytes for m in maps))
    cache = ColourMapCache(capacity=256, max_bytes=budget)
    geometry = (torch.zeros(1),)
    for round_ in range(2):
        for i, cmap in enumerate(maps):
            assert cache.get(i, geometry, lambda cmap=cmap: cmap) is cmap
            assert cache.nbytes <= budget, (round_, i, cache.nbytes)
    assert 1 <= len(cache._maps) <= 2, "the oldest went first"
    assert sum(m.nbytes for m in maps) > 2 * budget, "without the budget all six would stay"


def test_the_teacher_builds_the_views_that_fit_spread_over_all() -> None:
    """teacher_views builds maps one view at a time, farthest first, and stops at its byte budget with one line."""
    from types import SimpleNamespace

    from styleme3d_ns.models.offline_teacher import spread_order, teacher_views

    maps, cameras = _tiny_maps(12)
    order = spread_order(cameras.camera_to_worlds)
    assert sorted(order.tolist()) == list(range(12))
    azimuth = torch.rad2deg(torch.atan2(cameras.camera_to_worlds[:, 0, 3] - 0.5, cameras.camera_to_worlds[:, 2, 3] - 2))
    first_four = azimuth[order[:4]]
    gaps = torch.diff(torch.sort(torch.remainder(first_four, 360)).values)
    assert gaps.min() >= 60.0, "the first views taken are spread around the orbit"
    built = iter(maps[i] for i in order.tolist())
    renderer = SimpleNamespace(view=lambda c: (torch.eye(4)[None], torch.eye(3)[None], 24, 24),
                               colour_map=lambda *a: next(built))  # fmt: skip
    model = SimpleNamespace(base_features_dc=None, base_features_rest=None, device="cpu", renderer=renderer,
                            render_colours=lambda *a, **k: (None, None, torch.zeros(24, 24, 1)))  # fmt: skip
    lines: list[str] = []
    budget = sum(m.nbytes for m in (maps[i] for i in order[:5].tolist()))
    views = teacher_views(model, cameras, 1.0, 512, budget, lines.append)
    assert [id(m) for m in views["maps"]] == [id(maps[i]) for i in order[:5].tolist()]
    assert views["depths"].shape == (5, 1, 24, 24) and len(lines) == 1 and "5 of 12 views" in lines[0]
