"""What every styleme3d-ns method spec shares: the trainer, data pipeline and optimiser groups."""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from styleme3d_ns.method_configs.schedulers import FloatExponentialDecaySchedulerConfig

from styleme3d_ns.data.dataparser import CheckedNerfstudioDataParserConfig
from styleme3d_ns.engine.trainer import StyleTrainerConfig

LOCAL_VIEWER_HOST = "127.0.0.1"
"""The viewer serves this machine only; `--viewer.websocket-host 0.0.0.0` opens it to the network on purpose."""


def default_device() -> str:
    """CUDA when present, else CPU: nerfstudio defaults to CUDA and fails on CPU-only machines."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def adam(lr: float, scheduler: FloatExponentialDecaySchedulerConfig | None = None) -> dict:
    """One nerfstudio optimiser group (splatfacto's eps)."""
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}


def gaussian_optimizers(
    *,
    colour_lr: float,
    opacity_lr: float = 0.05,
    means_lr: float = 1.6e-4,
    means_lr_final: float = 1.6e-6,
    scales_lr: float = 0.005,
    quats_lr: float = 0.001,
    max_steps: int = 30000,
) -> dict:
    """Optimiser groups keyed by Gaussian parameter name (defaults: splatfacto's).

    Groups for frozen tensors are harmless: a model only hands nerfstudio the groups it trains.
    SH rest bands use 1/20 of the DC rate, as splatfacto.
    """
    return {
        "means": adam(means_lr, FloatExponentialDecaySchedulerConfig(lr_final=means_lr_final, max_steps=max_steps)),
        "features_dc": adam(colour_lr),
        "features_rest": adam(colour_lr / 20),
        "opacities": adam(opacity_lr),
        "scales": adam(scales_lr),
        "quats": adam(quats_lr),
        "camera_opt": adam(
            1e-4,
            FloatExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0
            ),
        ),
    }


def splat_trainer(
    method_name: str,
    model: ModelConfig,
    *,
    max_num_iterations: int,
    optimizers: dict,
    steps_per_save: int = 500,
    dataparser: DataParserConfig | None = None,
) -> StyleTrainerConfig:
    """A splatfacto-style TrainerConfig that runs on CPU as well as CUDA (default data: a checked nerfstudio scene).

    Our trainer checks inputs before writing anything, writes checkpoints atomically, saves on Ctrl-C and resumes
    to the planned step (styleme3d_ns/engine/trainer.py); the viewer listens on localhost only.
    """
    return StyleTrainerConfig(
        method_name=method_name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=steps_per_save,
        steps_per_eval_all_images=max_num_iterations,
        max_num_iterations=max_num_iterations,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device()),
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(
                dataparser=dataparser if dataparser is not None else CheckedNerfstudioDataParserConfig(),
                cache_images_type="uint8",
            ),
            model=model,
        ),
        optimizers=optimizers,
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15, websocket_host=LOCAL_VIEWER_HOST),
        vis="viewer",
    )
