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
    """Offline styleme3d demo (CPU, about 90 s on 2 cores after the install): the stylisation is `ns-train styleme3d`'s
    defaults (the offline teacher); only the scene's size and the reconstruction's steps are the demo's own."""

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
    reconstruct_steps: int = 700
    """Reconstruction steps (splatfacto on our CPU rasteriser). 700 keeps the demo under 90 s on 2 cores with the
    method's own stylisation (800 steps: 87-95 s measured; 26.3 dB held-out PSNR at 700 against 26.75 at 800,
    docs/performance.md)."""
    densify_grad_thresh: float = 0.005
    """Reconstruction densification threshold (splatfacto: 0.0008). At 96 px, 0.005 keeps ~31k Gaussians (800 steps)
    instead of ~84k (docs/performance.md)."""
    sheet_size: int = 256
    """Longer side (px) of the held-out views in the before/after sheet and the scores: the size a person judges at,
    whatever the scene's training resolution."""


def _check(config: DemoConfig) -> Path | None:
    """Every argument checked before anything is written; returns the style file (None: a sample image name)."""
    from styleme3d_ns.data.style_image import load_style_image

    for name in ("resolution", "num_views", "reconstruct_steps", "sheet_size"):
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


def _train(out: Path, name: str, scene: Path, extra: list[str]) -> Path:
    cmd = [
        console_script("ns-train"), "styleme3d", "--data", str(scene), "--output-dir", str(out / "runs"),
        "--experiment-name", name, "--timestamp", "run", "--vis", "tensorboard", *extra,
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

    steps = str(config.reconstruct_steps)
    recon = [
        "--max-num-iterations", steps, "--steps-per-save", steps, "--pipeline.model.reconstruct-steps", steps,
        # densify from step 200 to 80% of the run, with a threshold that suits 96 px views (docs/performance.md)
        "--pipeline.model.densify-grad-thresh", str(config.densify_grad_thresh),
        "--pipeline.model.warmup-length", str(min(200, config.reconstruct_steps // 5)),
        "--pipeline.model.stop-split-at", str(config.reconstruct_steps * 4 // 5),
    ]  # fmt: skip
    base_cfg = _train(out, "base", scene, recon)
    # `ns-train styleme3d`'s own stylisation: the offline teacher, which ends the run after its solve. The experts
    # that need downloaded networks are switched off only to skip their weight look-ups (importing open_clip and
    # diffusers to find no weights costs ~8 s on 2 cores); without weights they are off anyway, so the result is the
    # same as the plain command's
    style_cfg = _train(
        out, "stylised", scene,
        ["--pipeline.model.base-checkpoint", str(base_cfg.parent), "--pipeline.model.style-image", str(style_path),
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
    # CLIP scores need downloaded weights the demo never has: skipping them saves open_clip's ~5 s import
    run_stage("styleme3d-eval (held-out views vs the base)", [
        console_script("styleme3d-eval"), "--load-config", str(style_cfg), "--base-config", str(base_cfg),
        "--output", str(metrics_path), "--sheet", str(sheet), "--resolution", str(config.sheet_size),
        "--clip-pretrained", "None",
    ], out / "log_eval.txt")  # fmt: skip

    for line in _score_lines(json.loads(metrics_path.read_text())):
        print(f"[demo] {line}")
    same = _same_geometry(base_cfg, style_cfg)
    print(f"[demo] geometry (means, scales, quats, opacities) bit-identical to the base: {same}")
    print(f"[demo] base | stylised | style sheet: {sheet}")
    print(f"[demo] turntable video:               {video}")
    print(f"[demo] exported splat:                {out / 'export' / 'splat.ply'}")
    print(f"[demo] metrics:                       {metrics_path}")
    print(f"[demo] view it live (this machine only): styleme3d-viewer --load-config {style_cfg}")
    print(f"[demo] total {time.perf_counter() - start:.0f} s")


def _score_lines(metrics: dict) -> list[str]:
    """What the demo prints of `styleme3d-eval`'s scores: the measures the teacher's loss does not reward (it fits
    Magenta renditions by least squares; none of these is that), each base -> stylised."""
    style, content = metrics["style"], metrics["content"]
    views = metrics["views"]
    lines = [f"scored on {len(views['held_out'])} held-out views at {views['height_width'][1]} px"]
    if style.get("patch_distance") is not None:
        lines.append(
            f"patch distance to the style (Laplacian-pyramid sliced Wasserstein) {style['patch_distance_base']:.3f} -> "
            f"{style['patch_distance']:.3f} ({100 * style['patch_reduction']:.0f}% closer); colour distance "
            f"{style['colour_distance_base']:.3f} -> {style['colour_distance']:.3f} "
            f"({100 * style['colour_reduction']:.0f}% closer)"
        )
    if style.get("learned_style_similarity") is not None:  # needs the `style` extra (Magenta's style predictor)
        lines.append(
            "learned style similarity (Magenta style vectors, cosine) "
            f"{style['learned_style_similarity_base']:.3f} -> {style['learned_style_similarity']:.3f}"
        )
    short, long = metrics["consistency"]["short_range"], metrics["consistency"]["long_range"]
    if short["rmse_base"] is not None and long["rmse_base"] is not None:
        lines.append(
            f"consistency (warped RMSE) short range {short['rmse_base']:.3f} -> {short['rmse_stylised']:.3f}, long "
            f"range {long['rmse_base']:.3f} -> {long['rmse_stylised']:.3f}"
        )
    added = metrics["consistency_sh_dc_only"].get("view_dependent_added") or {}
    shares = [added.get(r, {}).get("added_stylised") for r in ("short_range", "long_range")]
    if all(share is not None for share in shares):
        lines.append(f"view-dependent share of that error {100 * shares[0]:.0f}% / {100 * shares[1]:.0f}%")
    lines.append(f"content kept: SSIM {content['ssim']:.3f}, PSNR {content['psnr_db']:.1f} dB vs the base")
    return lines


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
