"""Shared fixtures: a tiny synthetic scene, a short reconstruction, and an in-process training loop."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

SCENE_SIZE = 64
RECON_STEPS = 500
STYLE_STEPS = 150


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny CPU workloads gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP
    workers made a 60-step optimisation ~50x slower; run single-threaded and restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def effnet():  # noqa: ANN201 - EfficientNetLite0Features
    """The packaged ImageNet EfficientNet-Lite0 feature network, built once."""
    from styleme3d_ns.guidance.backbones import EfficientNetLite0Features

    return EfficientNetLite0Features()


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64, 16-view posed scene in nerfstudio's layout (built from scikit-image textures)."""
    from styleme3d_ns.data.scene_builder import build_scene

    return build_scene(
        tmp_path_factory.mktemp("scene") / "scene",
        num_views=16,
        width=SCENE_SIZE,
        height=SCENE_SIZE,
        num_seed_points=2000,
    )


@pytest.fixture(scope="session")
def style_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A style image from scikit-image's samples, written as PNG."""
    import skimage.data
    from PIL import Image

    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(skimage.data.immunohistochemistry()).save(path)
    return path


def styleme3d_config(data: Path, output_dir: Path, steps: int, **model_kwargs):  # noqa: ANN201
    """The registered `styleme3d` TrainerConfig, pointed at `data`, CPU, no viewer."""
    from styleme3d_ns.method_configs.styleme3d_config import styleme3d

    return method_config(styleme3d, data, output_dir, steps, **model_kwargs)


def method_config(spec, data: Path, output_dir: Path, steps: int, **model_kwargs):  # noqa: ANN001, ANN201
    """A registered method's TrainerConfig (`spec` a MethodSpecification), pointed at `data`, CPU, no viewer."""
    config = replace(spec.config)  # shallow: the nested configs below are replaced, never mutated
    config.pipeline = replace(config.pipeline, model=replace(config.pipeline.model, **model_kwargs))
    # as ns-train does with --data
    config.pipeline.datamanager = replace(
        config.pipeline.datamanager, data=data, dataparser=replace(config.pipeline.datamanager.dataparser)
    )
    config.data = data
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.max_num_iterations = steps
    config.steps_per_save = steps
    config.steps_per_eval_image = 10**9
    config.steps_per_eval_all_images = 10**9
    config.machine = replace(config.machine, device_type="cpu")
    config.set_timestamp()
    return config


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(open_clip config JSON, checkpoint) of a tiny random CLIP, loaded through the real loader."""
    from tests.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def run_trainer(config) -> Path:  # noqa: ANN001
    """Train in-process exactly as `ns-train` does; return the run's config.yml."""
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml"


@pytest.fixture(scope="session")
def base_run(scene_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a short CPU reconstruction of `scene_dir` (no style image: reconstruction only)."""
    torch.manual_seed(0)
    np.random.seed(0)
    out = tmp_path_factory.mktemp("runs")
    config = styleme3d_config(scene_dir, out, RECON_STEPS, reconstruct_steps=RECON_STEPS, warmup_length=100,
                              refine_every=50, stop_split_at=250)  # fmt: skip
    return run_trainer(config)


@pytest.fixture(scope="session")
def base_checkpoint(base_run: Path) -> Path:
    """The newest step-*.ckpt of the base reconstruction."""
    return sorted((base_run.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]


@pytest.fixture(scope="session")
def stylised_run(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """config.yml of a short stylisation of the base run with the style image."""
    digest = sha256(base_checkpoint)
    from styleme3d_ns.method_configs.styleme3d_config import styleme3d

    # a short run: a short fixed-scale SOS phase, then multi-scale (the method default is a quarter of 2800 steps)
    sos = replace(styleme3d.config.pipeline.model.sos, pretrain_steps=STYLE_STEPS // 4)
    config = styleme3d_config(
        scene_dir, tmp_path_factory.mktemp("styled"), STYLE_STEPS, base_checkpoint=base_checkpoint,
        style_image=style_path, sos=sos, offline_teacher="off",  # the SOS training path (the teacher has its tests)
    )  # fmt: skip
    run = run_trainer(config)
    assert sha256(base_checkpoint) == digest, "the base checkpoint must never be modified"
    return run
