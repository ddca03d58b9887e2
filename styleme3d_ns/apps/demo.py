"""Offline CPU demo: build a scene, reconstruct it, stylise it, then render, export and score the result.

Everything comes from installed packages (scikit-image images, the EfficientNet-Lite0 ImageNet weights);
nothing is downloaded. Each stage is the nerfstudio command a user would type, so the demo is also a
smoke test of `ns-train` and of nerfstudio's render and export (through our atomic `styleme3d-render` and
`styleme3d-export`) on our methods.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from styleme3d_ns.apps.runs import EXPORT, RENDER, DemoOutput, console_script, run_stage
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.scene_builder import build_scene

# What the demo writes into --output-dir: the only entries of that folder it ever replaces.
OUTPUTS = ("scene", "runs", "export", "style_*.png", "log_*.txt", "turntable.mp4", "metrics.json", "before_after.png")


@dataclass
class DemoConfig:
    """Offline styleme3d demo (CPU, about 80 s on 2 cores after the install)."""

    output_dir: Path = Path("demo_out")
    """Where the scene, runs, renders, video, .ply and metrics go. A folder the demo made is reused (its previous
    outputs replaced); any other non-empty folder is refused unless --overwrite."""
    overwrite: bool = False
    """Write into a non-empty --output-dir the demo did not make; only the demo's own outputs there are replaced."""
    style: str = "immunohistochemistry"
    """Style image: a path, or the name of a scikit-image sample image (e.g. immunohistochemistry, brick, coffee)."""
    resolution: int = 96
    """Width and height of the scene's views in pixels."""
    num_views: int = 24
    """Number of posed views in the synthetic scene (every 8th is held out for evaluation)."""
    reconstruct_steps: int = 800
    """Reconstruction steps (splatfacto on our CPU rasteriser)."""
    densify_grad_thresh: float = 0.005
    """Reconstruction densification threshold (splatfacto: 0.0008). At 96 px, 0.005 keeps ~31k Gaussians instead
    of ~84k; 800 steps reach a held-out PSNR of 26.7 dB (1500 splatfacto-default steps: 27.0 dB) in a third of the
    time (docs/performance.md)."""
    style_steps: int = 500
    """Stylisation steps (colour only, geometry frozen): the Gram (SOS) loss at the render's scale, one view per step,
    the colour learning rate decaying from 0.1 to 0.008 (docs/styleme3d.md, "Colour learning-rate decay and the
    demo's stylisation"). With --offline-teacher the teacher's solve is the result and the run ends after its first
    step."""
    offline_teacher: bool = False
    """Stylise with the offline teacher (Magenta network + exact colour solve) instead: bolder strokes (learned style
    similarity 0.95 against SOS's 0.90) but a paler scene, further from its content (PSNR 8 dB to the base)."""


# The demo's SOS stylisation, measured on its own scene (docs/styleme3d.md, "Colour learning-rate decay and the
# demo's stylisation"): the Gram loss at the render's scale only (the half-scale pass cost content for no Gram
# distance here), content weight 1, and the colour (SH DC) rate decaying from 0.1 to 0.008 so that the
# one-view-per-step updates settle instead of leaving view-to-view noise in the colours.
SOS_STYLISE = (
    "--pipeline.model.sos.scales", "1.0", "--pipeline.model.sos.pretrain-steps", "0",
    "--pipeline.model.sos.content-weight", "1.0",
    "--optimizers.features-dc.optimizer.lr", "0.1", "--pipeline.model.colour-lr-decay", "0.08",
)  # fmt: skip


def _check(config: DemoConfig) -> Path | None:
    """Every argument checked before anything is written; returns the style file (None: a sample image name)."""
    from styleme3d_ns.data.style_image import load_style_image

    for name in ("resolution", "num_views", "reconstruct_steps", "style_steps"):
        if getattr(config, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)})")
    if not config.densify_grad_thresh > 0:
        raise UserInputError(f"--densify-grad-thresh must be positive (got {config.densify_grad_thresh}); try 0.003")
    if Path(config.style).exists():
        load_style_image(config.style)  # one line if it is not a usable image
        return Path(config.style)
    import skimage.data

    if not callable(getattr(skimage.data, config.style, None)):
        raise UserInputError(f"--style {config.style!r} is neither a file nor a scikit-image sample image name")
    return None


def style_image_file(style: str, out: Path) -> Path:
    """``style`` as given if it is a file, else the scikit-image sample of that name saved as PNG into ``out``."""
    if Path(style).exists():
        return Path(style)
    import skimage.data
    from PIL import Image

    image = np.asarray(getattr(skimage.data, style)())
    path = out / f"style_{style}.png"
    Image.fromarray(image[..., :3] if image.ndim == 3 else image).save(path)
    return path


def _train(out: Path, name: str, scene: Path, steps: int, extra: list[str]) -> Path:
    cmd = [
        console_script("ns-train"), "styleme3d", "--data", str(scene), "--output-dir", str(out / "runs"),
        "--experiment-name", name, "--timestamp", "run", "--vis", "tensorboard",
        "--max-num-iterations", str(steps), "--steps-per-save", str(steps), *extra,
    ]  # fmt: skip
    run_stage(f"ns-train ({name})", cmd, out / f"log_train_{name}.txt")
    return out / "runs" / name / "styleme3d" / "run" / "config.yml"


def main(config: DemoConfig) -> None:
    start = time.perf_counter()
    folder = DemoOutput(config.output_dir, OUTPUTS, overwrite=config.overwrite, prog="styleme3d-demo")
    with exit_on_user_error("styleme3d-demo"):
        style_file = _check(config)
        folder.check({"--style": style_file})
        out = folder.prepare()
    scene = build_scene(out / "scene", num_views=config.num_views, width=config.resolution, height=config.resolution)
    style_path = style_image_file(config.style, out)
    print(f"[demo] scene: {scene}  style: {style_path}", flush=True)

    recon = [
        "--pipeline.model.reconstruct-steps", str(config.reconstruct_steps),
        # densify from step 200 to 80% of the run, with a threshold that suits 96 px views (docs/performance.md)
        "--pipeline.model.densify-grad-thresh", str(config.densify_grad_thresh),
        "--pipeline.model.warmup-length", str(min(200, config.reconstruct_steps // 5)),
        "--pipeline.model.stop-split-at", str(config.reconstruct_steps * 4 // 5),
    ]  # fmt: skip
    base_cfg = _train(out, "base", scene, config.reconstruct_steps, recon)
    style_cfg = _train(
        out, "stylised", scene, config.style_steps,
        ["--pipeline.model.base-checkpoint", str(base_cfg.parent), "--pipeline.model.style-image", str(style_path),
         *(("--pipeline.model.offline-teacher", "on") if config.offline_teacher else
           ("--pipeline.model.offline-teacher", "off", *SOS_STYLISE)),
         # the demo is the offline path: skip the weight look-ups of the experts that need downloaded networks
         # (importing open_clip and diffusers only to find no weights costs ~8 s on 2 cores)
         *(arg for expert in ("dssd", "csd", "qa") for arg in (f"--pipeline.model.{expert}.enabled", "False"))],
    )  # fmt: skip

    video = out / "turntable.mp4"
    run_stage("styleme3d-render (turntable video, atomic ns-render)", [
        *RENDER, "interpolate", "--load-config", str(style_cfg), "--output-path", str(video),
        "--pose-source", "train", "--interpolation-steps", "3", "--order-poses", "True", "--frame-rate", "24",
    ], out / "log_render.txt")  # fmt: skip
    run_stage("export (gaussian splat .ply, atomic ns-export)", [
        *EXPORT, "--load-config", str(style_cfg), "--output-dir", str(out / "export"),
    ], out / "log_export.txt")  # fmt: skip
    metrics_path, sheet = out / "metrics.json", out / "before_after.png"
    run_stage("styleme3d-eval (held-out views vs the base)", [
        console_script("styleme3d-eval"), "--load-config", str(style_cfg), "--base-config", str(base_cfg),
        "--output", str(metrics_path), "--sheet", str(sheet),
    ], out / "log_eval.txt")  # fmt: skip

    metrics = json.loads(metrics_path.read_text())
    style, content = metrics["style"], metrics["content"]
    print(
        f"[demo] style distance (Gram, EfficientNet-Lite0) {style['gram_distance_base']:.4g} -> "
        f"{style['gram_distance_stylised']:.4g} ({100 * style['gram_reduction']:.0f}% closer); content "
        f"PSNR {content['psnr_db']:.1f} dB, SSIM {content['ssim']:.3f} vs the base on "
        f"{len(metrics['views']['held_out'])} held-out views"
    )
    if style.get("learned_style_similarity") is not None:  # needs the `style` extra (Magenta's style predictor)
        print(
            "[demo] learned style similarity (Magenta style vectors, cosine) "
            f"{style['learned_style_similarity_base']:.3f} -> {style['learned_style_similarity']:.3f}"
        )
    same = _same_geometry(base_cfg, style_cfg)
    print(f"[demo] geometry (means, scales, quats, opacities) bit-identical to the base: {same}")
    print(f"[demo] base | stylised | style sheet: {sheet}")
    print(f"[demo] turntable video:               {video}")
    print(f"[demo] exported splat:                {out / 'export' / 'splat.ply'}")
    print(f"[demo] metrics:                       {metrics_path}")
    print(f"[demo] view it live (this machine only): styleme3d-viewer --load-config {style_cfg}")
    print(f"[demo] total {time.perf_counter() - start:.0f} s")


def _same_geometry(base_cfg: Path, style_cfg: Path) -> bool:
    """Whether the stylised run's Gaussians sit exactly where the base's do (paper 000: RGB-only optimisation)."""
    import torch

    from styleme3d_ns.models.checkpoint import load_gaussians

    base, styled = load_gaussians(base_cfg.parent), load_gaussians(style_cfg.parent)
    return all(torch.equal(base[k], styled[k]) for k in ("means", "scales", "quats", "opacities"))


def entrypoint() -> None:
    """Console script `styleme3d-demo`."""
    main(tyro.cli(DemoConfig))


if __name__ == "__main__":
    entrypoint()
