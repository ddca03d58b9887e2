"""Where a guided splat's Gaussians come from, and how they densify while they may move.

- :func:`read_base`: the base splat a stylisation starts from, from the data parser (a .ply scene) or
  ``--pipeline.model.base-checkpoint``;
- :func:`splatfacto_gaussians`: splatfacto's initial splat for reconstruction (seed points or random), on CPU;
- :func:`splatfacto_strategy`: gsplat's densification with splatfacto's settings.

A method that starts or densifies differently passes its own functions of the same signatures (sas-portrait: the
head template and surface-guided densification), as :class:`~styleme3d_ns.models.guided_splat.GuidedSplatModel`'s
``initial_gaussians`` and ``densification``.
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModelConfig, num_sh_bases, random_quat_tensor
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import exit_on_user_error
from styleme3d_ns.data.ply_scene import base_splat_for_model
from styleme3d_ns.models.checkpoint import load_gaussians

Gaussians = dict[str, Tensor]
"""Per-Gaussian tensors by splatfacto's names: means [N, 3], scales [N, 3] (log), quats [N, 4], features_dc [N, 3],
features_rest [N, K-1, 3], opacities [N, 1] (logit)."""


def read_base(config: Any, metadata: dict) -> tuple[Gaussians | None, Exception | None]:  # noqa: ANN401 - a model config
    """The base splat to stylise, or (None, None) to start from scratch, or (None, the error) when the base checkpoint
    cannot be read now.

    A .ply scene's splat (in the data parser's metadata) is read at once, a bad one stopping with one line. A base
    checkpoint's error is returned instead of raised: `ns-render`/`ns-export` rebuild the model from config.yml and
    then load the stylised state, so they must work even if the base has since moved; only training fails on it.
    """
    if "base_splat" in metadata:
        with exit_on_user_error():
            base = base_splat_for_model(metadata, config.sh_degree)
        CONSOLE.log(f"Base splat: {base['means'].shape[0]} Gaussians from {metadata.get('ply_path')}")
        return base, None
    if config.base_checkpoint is None:
        return None, None
    try:
        base = load_gaussians(
            config.base_checkpoint, sh_degree=config.sh_degree, drop_non_finite=config.drop_non_finite_gaussians
        )
    except Exception as err:  # noqa: BLE001 - reported when training starts
        return None, err
    CONSOLE.log(f"Loaded base splat: {base['means'].shape[0]} Gaussians from {config.base_checkpoint}")
    return base, None


def splatfacto_gaussians(model: Any) -> Gaussians:  # noqa: ANN401 - a SplatfactoModel being populated
    """Initial splat for reconstruction, as splatfacto does, on CPU (splatfacto calls `.cuda()` here): the data's seed
    points (or `num_random` uniform ones), isotropic scales from the 3 nearest neighbours, opacity 0.1."""
    config, seed_points = model.config, model.seed_points
    use_seed = seed_points is not None and not config.random_init
    if use_seed:
        means = seed_points[0].float()
    else:
        means = (torch.rand((config.num_random, 3)) - 0.5) * config.random_scale
    distances, _ = model.k_nearest_sklearn(means, 3)
    # log of the mean distance to the 3 nearest neighbours: splatfacto's initial isotropic scale
    scales = torch.log(torch.from_numpy(distances).mean(dim=-1, keepdim=True).repeat(1, 3))
    n = means.shape[0]
    shs = torch.zeros((n, num_sh_bases(config.sh_degree), 3))
    if use_seed and seed_points[1].shape[0] > 0:
        rgb = seed_points[1].float() / 255.0
        shs[:, 0, :] = RGB2SH(rgb) if config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
    else:
        shs[:, 0, :] = torch.rand(n, 3)
    return {
        "means": means,
        "scales": scales,
        "quats": random_quat_tensor(n),
        "features_dc": shs[:, 0, :],
        "features_rest": shs[:, 1:, :],
        "opacities": torch.logit(0.1 * torch.ones(n, 1)),  # splatfacto's initial opacity 0.1
    }


def splatfacto_strategy(config: SplatfactoModelConfig, num_train_data: int) -> DefaultStrategy:
    """gsplat's densification strategy with splatfacto's settings from `config` (as splatfacto 1.1.5 builds it)."""
    return DefaultStrategy(
        prune_opa=config.cull_alpha_thresh,
        grow_grad2d=config.densify_grad_thresh,
        grow_scale3d=config.densify_size_thresh,
        grow_scale2d=config.split_screen_size,
        prune_scale3d=config.cull_scale_thresh,
        prune_scale2d=config.cull_screen_size,
        refine_scale2d_stop_iter=config.stop_screen_size_at,
        refine_start_iter=config.warmup_length,
        refine_stop_iter=config.stop_split_at,
        reset_every=config.reset_alpha_every * config.refine_every,
        refine_every=config.refine_every,
        pause_refine_after_reset=num_train_data + config.refine_every,
        absgrad=config.use_absgrad,
        revised_opacity=False,
        verbose=True,
    )
