"""The single-photo portrait data parser and the orbit cameras of sas-portrait (paper 001)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.data.portrait import (
    CAMERA_RADIUS,
    FOV_Y_DEG,
    TURNTABLE_VIEWS,
    PortraitDataParserConfig,
    PortraitRig,
    front_camera,
    load_portrait,
    random_views,
    turntable_cameras,
)

SIZE = 64


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut portrait (512 x 512) as a JPG."""
    import skimage.data

    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(path, quality=95)
    return path


def parse(data: Path, tmp_path: Path, split: str = "train", **kwargs: object):  # noqa: ANN201 - DataparserOutputs
    config = PortraitDataParserConfig(data=data, image_size=SIZE, cache_dir=tmp_path / "cache", **kwargs)
    return config.setup().get_dataparser_outputs(split=split)


def forward(c2w: torch.Tensor) -> torch.Tensor:
    """Viewing directions `[N, 3]` of OpenGL c2w poses (cameras look down their -z)."""
    return -c2w[:, :3, 2]


# ------------------------------------------------------------------------------------------------ the parser


def test_one_photo_gives_one_square_image_and_a_front_camera_looking_at_the_head(photo: Path, tmp_path: Path) -> None:
    outputs = parse(photo, tmp_path)
    assert len(outputs.image_filenames) == 1
    image = np.asarray(Image.open(outputs.image_filenames[0]))
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    cameras = outputs.cameras
    assert cameras.shape == (1,)
    assert int(cameras.width) == SIZE and int(cameras.height) == SIZE
    c2w = cameras.camera_to_worlds[0]
    assert torch.allclose(c2w[:, :3], torch.eye(3), atol=1e-6), "on +z, looking down -z, +y up"
    assert torch.allclose(c2w[:, 3], torch.tensor([0.0, 0.0, CAMERA_RADIUS]))
    focal = SIZE / 2 / math.tan(math.radians(FOV_Y_DEG) / 2)
    assert float(cameras.fx) == pytest.approx(focal) and float(cameras.fy) == pytest.approx(focal)
    assert float(cameras.cx) == SIZE / 2 and float(cameras.cy) == SIZE / 2


def test_metadata_seeds_the_head_template_and_exposes_the_rig(photo: Path, tmp_path: Path) -> None:
    outputs = parse(photo, tmp_path, num_template_points=2000)
    meta = outputs.metadata
    assert meta["points3D_xyz"].shape == (2000, 3) and meta["points3D_rgb"].shape == (2000, 3)
    assert meta["points3D_rgb"].dtype == torch.uint8
    assert meta["points3D_normals"].shape == (2000, 3)
    rig = meta["portrait_rig"]
    assert isinstance(rig, PortraitRig) and rig.image_size == SIZE
    assert copy.deepcopy(rig) == rig  # nerfstudio's InputDataset deep-copies metadata
    assert rig.random_views(4).shape == (4,)
    assert torch.allclose(rig.front().camera_to_worlds, outputs.cameras.camera_to_worlds)


def test_every_split_is_the_same_photo_and_camera(photo: Path, tmp_path: Path) -> None:
    train = parse(photo, tmp_path, "train")
    for split in ("val", "test"):
        other = parse(photo, tmp_path, split)
        assert other.image_filenames == train.image_filenames
        assert torch.equal(other.cameras.camera_to_worlds, train.cameras.camera_to_worlds)


def test_a_wide_photo_is_centre_cropped_to_a_square(tmp_path: Path) -> None:
    wide = np.zeros((40, 120, 3), dtype=np.uint8)
    wide[:, 40:80] = (200, 30, 30)  # the central square is red, the sides black
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    square = load_portrait(path, 20)
    assert square.shape == (20, 20, 3)
    assert np.abs(square.astype(int) - (200, 30, 30)).max() <= 2


def test_a_transparent_cutout_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    with pytest.warns(UserWarning, match="transparency"):
        image = load_portrait(path, 16)
    assert (image == 255).all()


def test_a_folder_with_one_photo_is_accepted(photo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "me.jpg").write_bytes(photo.read_bytes())
    assert parse(folder, tmp_path).cameras.shape == (1,)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "folder with no image"),
        (lambda d: (d / "not.jpg").write_text("hello") and d / "not.jpg", "cannot be read as an image"),
        (lambda d: (d / "two").mkdir() or _two_images(d / "two"), "holds 2 images"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(UserInputError, match=message) as err:
        load_portrait(path, SIZE)
    assert "\n" not in str(err.value)
    # through nerfstudio's entry point the same line ends the run, without a traceback
    with pytest.raises(SystemExit, match=message) as stop:
        parse(path, tmp_path)
    assert "\n" not in str(stop.value)


def _two_images(folder: Path) -> Path:
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_a_tiny_image_size_is_refused(photo: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="image-size"):
        PortraitDataParserConfig(data=photo, image_size=8, cache_dir=tmp_path).setup().get_dataparser_outputs()


# ------------------------------------------------------------------------------------------------ cameras


def test_random_orbit_cameras_look_at_the_head_from_the_stated_sphere() -> None:
    cameras = random_views(64, (-20.0, 35.0), 2.5, image_size=SIZE, generator=torch.Generator().manual_seed(0))
    c2w = cameras.camera_to_worlds
    eyes = c2w[:, :3, 3]
    assert cameras.shape == (64,)
    assert torch.allclose(eyes.norm(dim=-1), torch.full((64,), 2.5), atol=1e-5)
    assert torch.allclose(forward(c2w), -eyes / eyes.norm(dim=-1, keepdim=True), atol=1e-5), "look at the origin"
    elevation = torch.rad2deg(torch.asin(eyes[:, 1] / 2.5))
    assert elevation.min() >= -20.0 - 1e-3 and elevation.max() <= 35.0 + 1e-3
    rotations = c2w[:, :3, :3]
    assert torch.allclose(rotations.transpose(1, 2) @ rotations, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert (c2w[:, 1, 1] > 0).all(), "camera up is on the +y side: heads are upright"
    azimuth = torch.rad2deg(torch.atan2(eyes[:, 0], eyes[:, 2]))
    assert azimuth.min() < -120 and azimuth.max() > 120, "views all around, back of the head included"


def test_turntable_has_120_evenly_spaced_views_starting_at_the_front() -> None:
    from styleme3d_ns.eval.orbit import look_at_point

    cameras = turntable_cameras(image_size=SIZE)
    assert TURNTABLE_VIEWS == 120 and cameras.shape == (120,)
    c2w = cameras.camera_to_worlds
    assert torch.allclose(c2w[0], front_camera(SIZE).camera_to_worlds[0], atol=1e-6)
    eyes = c2w[:, :3, 3]
    steps = torch.linalg.cross(eyes[:-1], eyes[1:], dim=-1)[:, 1] / CAMERA_RADIUS**2
    assert torch.allclose(steps, torch.full((119,), math.sin(math.radians(3.0))), atol=1e-5)
    assert torch.allclose(look_at_point(c2w), torch.zeros(3, dtype=torch.float64), atol=1e-5)


def test_orbit_rejects_elevations_at_the_poles() -> None:
    with pytest.raises(ValueError, match="elevation"):
        random_views(2, (0.0, 90.0))


# ------------------------------------------------------------------------------------------------ nerfstudio


def test_full_image_datamanager_serves_the_one_photo_for_train_and_eval(photo: Path, tmp_path: Path) -> None:
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig

    config = FullImageDatamanagerConfig(
        dataparser=PortraitDataParserConfig(image_size=SIZE, cache_dir=tmp_path, num_template_points=500),
        data=photo,  # as ns-train's --data
        cache_images_type="uint8",
    )
    manager = config.setup(device="cpu")
    for step in range(3):  # the one-image camera queue refills every step
        camera, batch = manager.next_train(step)
        assert camera.shape == (1,) and batch["image"].shape == (SIZE, SIZE, 3)
    camera, batch = manager.next_eval(0)
    assert batch["image"].shape == (SIZE, SIZE, 3)
    assert len(manager.fixed_indices_eval_dataloader) == 1


def test_ns_train_runs_a_few_steps_on_one_photo(photo: Path, tmp_path: Path, one_torch_thread: None) -> None:  # noqa: ARG001
    """The registered-method path, in-process: trainer setup, train steps, eval of the one image, checkpoint."""
    from tests.conftest import run_trainer, styleme3d_config

    config = styleme3d_config(photo, tmp_path / "runs", 4, reconstruct_steps=100)
    config.pipeline.datamanager = replace(
        config.pipeline.datamanager,
        dataparser=PortraitDataParserConfig(image_size=SIZE, cache_dir=tmp_path, num_template_points=2000),
    )
    config.steps_per_eval_image = 2
    config.steps_per_eval_all_images = 3
    run = run_trainer(config)
    assert sorted((run.parent / "nerfstudio_models").glob("step-*.ckpt"))


def test_face_aligned_crop_puts_the_chin_and_forehead_on_the_templates() -> None:
    from styleme3d_ns.data.face_fit import TEMPLATE_ANCHORS, FrontCamera
    from styleme3d_ns.data.portrait_prior import face_aligned_box
    from styleme3d_ns.guidance.faces import CHIN, FOREHEAD_TOP

    landmarks = np.zeros((468, 3), dtype=np.float32)
    landmarks[FOREHEAD_TOP, :2] = (300.0, 120.0)
    landmarks[CHIN, :2] = (300.0, 330.0)
    left, top, side = face_aligned_box(landmarks, fov_deg=49.1, radius=2.0)
    camera = FrontCamera(1, 49.1, 2.0)  # pixels as fractions of the crop's side
    for index in (FOREHEAD_TOP, CHIN):
        in_crop = (landmarks[index, :2] - np.array([left, top])) / side
        np.testing.assert_allclose(in_crop, camera.pixel_of(TEMPLATE_ANCHORS[index]), atol=1e-6)
