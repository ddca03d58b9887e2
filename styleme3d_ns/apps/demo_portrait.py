"""Offline CPU portrait demo (paper 001's setting): one photo to a 3D Gaussian head, a turntable, a .ply, scores.

The photo is scikit-image's public-domain astronaut portrait; the identity metric uses the packaged dlib models.
Without Stable Diffusion / MVDream weights the SAS and 3D terms are off (the run says so), so this shows the
offline method: the head template fitted to the photo's face (MediaPipe's packaged landmarks and segmentation),
coloured all round from the photo, trained where the photo sees it, then the turntable, the export, paper 001's
scores and the offline portrait's measures (docs/sas-portrait.md). With --style-image the offline teacher styles it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from styleme3d_ns.apps.runs import EXPORT, DemoOutput, console_script, run_stage
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error

PROG = "styleme3d-demo-portrait"
MEASURE_LINES = ("identity at yaw 35", "back (yaw 180)", "side chroma spread", "background Gaussians", "sheet (photo")
# What the demo writes into --output-dir: the only entries of that folder it ever replaces.
OUTPUTS = ("logs", "runs", "crop", "export", "astronaut.png", "turntable.json", "turntable.mp4", "metrics*.json",
           "metrics_sheet.png", "measures.json", "turntable_sheet.png")  # fmt: skip


@dataclass
class PortraitDemoConfig:
    """Offline sas-portrait demo on scikit-image's astronaut photo (CPU, a few minutes on 2 cores)."""

    output_dir: Path = Path("demo_portrait_out")
    """Where the photo, run, turntable video, .ply and metrics go. A folder the demo made is reused (its previous
    outputs replaced); any other non-empty folder is refused unless --overwrite."""
    overwrite: bool = False
    """Write into a non-empty --output-dir the demo did not make; only the demo's own outputs there are replaced."""
    photo: Path | None = None
    """Portrait photo; default: skimage.data.astronaut()."""
    style_prompt: str = "3D cartoon style"
    """Style text for the SAS/MVDream terms (active only when their weights are on this machine)."""
    style_image: Path | None = None
    """Style image: the offline teacher styles the head from every side (needs the style extra)."""
    image_size: int = 128
    """Side of the square training image (paper: 512 on a GPU)."""
    steps: int = 300
    """Training steps (paper 001: 3000). Offline, the head starts fitted and coloured, and only what the photo sees
    trains: 300 steps sharpen the face (docs/sas-portrait.md)."""
    turntable_views: int = 120
    """Frames of the turntable video and of the identity/saturation scores (paper 001: 120)."""


def _check(config: PortraitDemoConfig) -> None:
    """Every argument checked before anything is written (one line each)."""
    for name in ("image_size", "steps", "turntable_views"):
        if getattr(config, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)})")
    for flag, path in (("--photo", config.photo), ("--style-image", config.style_image)):
        if path is not None and not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise UserInputError(f"{flag} {path} {what}; pass an image file (PNG/JPG)")


def main(config: PortraitDemoConfig) -> dict:
    start = time.perf_counter()
    folder = DemoOutput(config.output_dir, OUTPUTS, overwrite=config.overwrite, prog=PROG)
    with exit_on_user_error(PROG):
        _check(config)
        folder.check({"--photo": config.photo, "--style-image": config.style_image})
        out = folder.prepare()
    (out / "logs").mkdir()
    photo = config.photo
    if photo is None:
        import skimage.data
        from PIL import Image

        photo = out / "astronaut.png"
        Image.fromarray(skimage.data.astronaut()).save(photo)
    train = [
        console_script("ns-train"), "sas-portrait", "--data", str(photo), "--output-dir", str(out / "runs"),
        "--experiment-name", "portrait", "--timestamp", "run", "--vis", "tensorboard",
        "--max-num-iterations", str(config.steps), "--steps-per-save", str(config.steps),
        "--pipeline.model.style-prompt", config.style_prompt,
        *(["--pipeline.model.style-image", str(config.style_image)] if config.style_image is not None else []),
        "styleme3d-portrait", "--image-size", str(config.image_size), "--cache-dir", str(out / "crop"),
    ]  # fmt: skip
    generation = run_stage("generate the 3D head (ns-train sas-portrait)", train, out / "logs" / "train.log")
    run = out / "runs" / "portrait" / "sas-portrait" / "run" / "config.yml"
    video = out / "turntable.mp4"
    turntable = [console_script("styleme3d-turntable"), "--load-config", str(run),
                 "--output", str(out / "turntable.json"),
                 "--views", str(config.turntable_views), "--video", str(video)]  # fmt: skip
    run_stage("turntable video (styleme3d-turntable, styleme3d-render)", turntable, out / "logs" / "turntable.log")
    export = [*EXPORT, "--load-config", str(run), "--output-dir", str(out / "export")]
    run_stage("export (gaussian splat .ply, atomic ns-export)", export, out / "logs" / "export.log")
    metrics_path = out / "metrics.json"
    score = [console_script("styleme3d-eval"), "--load-config", str(run), "--output", str(metrics_path),
             "--orbit-views", str(config.turntable_views)]  # fmt: skip
    run_stage("score (styleme3d-eval)", score, out / "logs" / "eval.log")
    measure = [sys.executable, "-m", "styleme3d_ns.eval.portrait_measures", "--load-config", str(run),
               "--sheet", str(out / "turntable_sheet.png"), "--json", str(out / "measures.json")]  # fmt: skip
    run_stage("offline portrait measures (styleme3d_ns.eval.portrait_measures)", measure, out / "logs" / "measure.log")
    metrics = json.loads(metrics_path.read_text())
    front = metrics["portrait"]["front"]
    print(f"[demo] generation time:            {generation:.0f} s ({config.steps} steps at {config.image_size} px)")
    if front.get("identity_distance") is not None:
        print(f"[demo] front view identity:        dlib distance {front['identity_distance']:.3f} (same person < 0.6)")
    else:
        print(f"[demo] front view identity:        {front.get('identity_note')}")
    for line in (out / "logs" / "measure.log").read_text().splitlines():
        if line.startswith(MEASURE_LINES):
            print(f"[demo] {line}")
    print(f"[demo] turntable video:            {video}")
    print(f"[demo] exported splat:             {out / 'export' / 'splat.ply'}")
    print(f"[demo] photo | front | turntable:  {metrics['sheet']}")
    print(f"[demo] metrics:                    {metrics_path}")
    print(f"[demo] total {time.perf_counter() - start:.0f} s")
    return metrics


def entrypoint() -> None:
    """`styleme3d-demo-portrait` console script."""
    main(tyro.cli(PortraitDemoConfig))
