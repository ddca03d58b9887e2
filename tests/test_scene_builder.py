"""Tests for the offline posed multi-view scene builder (styleme3d_ns.data.scene_builder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleme3d_ns.data import scene_builder as sb

NUM_VIEWS = 24
NUM_POINTS = 4000
SMALL = {"num_views": 4, "width": 32, "height": 24, "num_seed_points": 200}

# nerfstudio 1.1.5's Cameras.generate_rays indexes with lists internally; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default scene, built once for the module."""
    return sb.build_scene(tmp_path_factory.mktemp("scenes") / "default", num_views=NUM_VIEWS)


@pytest.fixture(scope="module")
def outputs(scene_dir: Path) -> dict:
    """nerfstudio's own dataparser outputs for the train and test splits."""
    pytest.importorskip("open3d", reason="nerfstudio loads the seed point cloud with open3d")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=scene_dir, load_3D_points=True).setup()
    return {split: parser.get_dataparser_outputs(split) for split in ("train", "test")}


def _to_dataparser_frame(points: torch.Tensor, out) -> torch.Tensor:
    """World points (N, 3) -> nerfstudio's oriented, centred and scaled frame (N, 3)."""
    transform = out.dataparser_transform.double()
    return (points.double() @ transform[:, :3].T + transform[:, 3]) * out.dataparser_scale


def _from_dataparser_frame(origins: torch.Tensor, dirs: torch.Tensor, out) -> tuple[np.ndarray, np.ndarray]:
    """Rays (N, 3) in nerfstudio's frame -> world origins and unit directions (N, 3)."""
    rot, trans = out.dataparser_transform[:, :3].double(), out.dataparser_transform[:, 3].double()
    world_origins = (origins.double() / out.dataparser_scale - trans) @ rot  # rows: R^T (x - t)
    world_dirs = dirs.double() @ rot
    return world_origins.numpy(), (world_dirs / world_dirs.norm(dim=-1, keepdim=True)).numpy()


def _frame_stem(path: Path) -> str:
    return Path(path).stem


def test_dataparser_splits_and_seed_points(scene_dir: Path, outputs: dict) -> None:
    train, test = outputs["train"], outputs["test"]
    train_names = {_frame_stem(p) for p in train.image_filenames}
    test_names = {_frame_stem(p) for p in test.image_filenames}
    assert train_names and test_names and not train_names & test_names
    assert len(train_names | test_names) == NUM_VIEWS == len(list((scene_dir / "images").glob("*.png")))
    assert test_names == {f"frame_{i:05d}" for i in range(0, NUM_VIEWS, 8)}  # same as --eval-mode interval
    meta = json.loads((scene_dir / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["val_filenames"] == meta["test_filenames"]
    assert train.metadata["points3D_xyz"].shape == (NUM_POINTS, 3)
    assert train.metadata["points3D_rgb"].shape == (NUM_POINTS, 3)
    # nerfstudio's auto-scaling puts the cameras in [-1, 1]; the object sits well inside.
    assert train.cameras.camera_to_worlds[:, :3, 3].abs().max() <= 1.0 + 1e-5
    # the backdrop wall stands just outside the camera orbit, so the cloud reaches a little past the cameras
    assert train.metadata["points3D_xyz"].abs().max() < 2.0
    assert int(train.cameras.width[0]) == 96 and int(train.cameras.height[0]) == 96


@pytest.mark.parametrize("split", ["train", "test"])
def test_centre_ray_hits_object_at_stored_depth(scene_dir: Path, outputs: dict, split: str) -> None:
    """The ray nerfstudio generates through the centre pixel hits the scene at the depth the renderer stored."""
    out = outputs[split]
    cams = out.cameras
    height, width = int(cams.height[0]), int(cams.width[0])
    row, col = height // 2, width // 2
    scene = sb.make_scene(seed=0)
    for i, image_path in enumerate(out.image_filenames):
        rays = cams.generate_rays(camera_indices=i, coords=torch.tensor([[row + 0.5, col + 0.5]]))
        origins, dirs = _from_dataparser_frame(rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3), out)
        distance, _ = scene.cast(origins, dirs)
        assert np.isfinite(distance[0]), f"centre ray of {image_path} misses the scene"
        forward = -cams.camera_to_worlds[i, :3, 2].double()
        z_depth = distance[0] * float(rays.directions.reshape(3).double() @ forward)
        stored = np.load(scene_dir / "depths" / f"{_frame_stem(image_path)}.npy")
        assert stored.shape == (height, width)
        assert abs(stored[row, col] - z_depth) < 1e-4


def test_seed_points_project_onto_rendered_surface(scene_dir: Path, outputs: dict) -> None:
    """Each seed point, projected manually with nerfstudio's cameras (OpenGL: looks down -Z, +Y up), lands on a
    pixel whose stored depth and colour match it in its best view."""
    out = outputs["train"]
    cams = out.cameras
    xyz = out.metadata["points3D_xyz"].double()
    rgb = out.metadata["points3D_rgb"].numpy().astype(np.float64) / 255
    best_depth_err = np.full(len(xyz), np.inf)
    best_colour_err = np.full(len(xyz), np.inf)
    for i, image_path in enumerate(out.image_filenames):
        c2w = cams.camera_to_worlds[i].double()
        cam = (xyz - c2w[:, 3]) @ c2w[:, :3]
        z = -cam[:, 2]
        x = (cams.fx[i] * cam[:, 0] / z + cams.cx[i]).numpy()
        y = (-cams.fy[i] * cam[:, 1] / z + cams.cy[i]).numpy()
        inside = (z.numpy() > 0) & (x >= 0) & (x < int(cams.width[i])) & (y >= 0) & (y < int(cams.height[i]))
        cols, rows = x[inside].astype(int), y[inside].astype(int)
        depth = np.load(scene_dir / "depths" / f"{_frame_stem(image_path)}.npy")[rows, cols]
        image = np.asarray(Image.open(image_path), dtype=np.float64)[rows, cols] / 255
        depth_err = np.abs(depth - z.numpy()[inside] / out.dataparser_scale)
        colour_err = np.abs(image - rgb[inside]).mean(axis=1)
        better = depth_err < best_depth_err[inside]
        idx = np.flatnonzero(inside)[better]
        best_depth_err[idx], best_colour_err[idx] = depth_err[better], colour_err[better]
    assert np.isfinite(best_depth_err).all(), "every seed point is visible in some training view"
    assert np.median(best_depth_err) < 0.01 and np.quantile(best_depth_err, 0.9) < 0.03
    assert np.median(best_colour_err) < 0.06


def test_capture_poses_look_at_target() -> None:
    c2ws = sb.capture_poses(12, radius=2.0, elevations_deg=(30.0,), target=(0.1, 0.0, 0.2))
    rot = c2ws[:, :3, :3]
    assert np.allclose(rot.transpose(0, 2, 1) @ rot, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rot), 1.0)
    to_target = np.array([0.1, 0.0, 0.2]) - c2ws[:, :3, 3]
    assert np.allclose(to_target / np.linalg.norm(to_target, axis=1, keepdims=True), -rot[:, :, 2])
    assert np.allclose(np.linalg.norm(to_target, axis=1), 2.0)
    assert (rot[:, 2, 1] > 0).all()  # camera +Y leans towards world +Z


def test_deterministic_per_seed(tmp_path: Path) -> None:
    first = sb.build_scene(tmp_path / "a", seed=3, **SMALL)
    second = sb.build_scene(tmp_path / "b", seed=3, **SMALL)
    other = sb.build_scene(tmp_path / "c", seed=4, **SMALL)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    image = Path("images/frame_00000.png")
    assert (first / image).read_bytes() != (other / image).read_bytes()


def test_refuses_non_empty_dir_and_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        sb.build_scene(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    sb.build_scene(out, overwrite=True, **SMALL)
    assert not (out / "keep.txt").exists() and (out / "transforms.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no temp or backup dirs left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (sb.build_scene(empty, **SMALL) / "sparse_pc.ply").is_file()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args, **_kwargs) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(sb, "write_ply", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        sb.build_scene(tmp_path / "scene", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["styleme3d-make-scene", str(out), "--num-views", "4", "--width", "32", "--height", "32"]
    monkeypatch.setattr("sys.argv", [*argv, "--num-seed-points", "100", "--eval-every", "2"])
    sb.main()
    assert str(out) in capsys.readouterr().out
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 4 and len(meta["test_filenames"]) == 2
    with pytest.raises(SystemExit, match="not empty"):
        sb.main()
