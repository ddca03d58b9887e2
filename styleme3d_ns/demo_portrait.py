"""Offline CPU portrait demo (paper 001's setting): one photo to a 3D Gaussian head, a turntable, a .ply, scores.

The photo is scikit-image's public-domain astronaut portrait; the identity metric uses the packaged dlib models.
Without Stable Diffusion / MVDream weights the SAS and 3D terms are off (the run says so), so this shows the
offline part of the method: template init, surface-guided densification, the photo's front view, the turntable.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from styleme3d_ns.demo import _bin, _run


@dataclass
class PortraitDemoConfig:
    """Offline sas-portrait demo on scikit-image's astronaut photo (CPU, a few minutes on 2 cores)."""

    output_dir: Path = Path("demo_portrait_out")
    """Where the photo, run, turntable video, .ply and metrics go (re-created on each run)."""
    photo: Path | None = None
    """Portrait photo; default: skimage.data.astronaut()."""
    style_prompt: str = "3D cartoon style"
    """Style text for the SAS/MVDream terms (active only when their weights are on this machine)."""
    image_size: int = 128
    """Side of the square training image (paper: 512 on a GPU)."""
    steps: int = 600
    """Training steps (paper 001: 3000)."""
    turntable_views: int = 120
    """Frames of the turntable video and of the identity/saturation scores (paper 001: 120)."""


def main(config: PortraitDemoConfig) -> dict:
    start = time.perf_counter()
    out = config.output_dir
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    photo = config.photo
    if photo is None:
        import skimage.data
        from PIL import Image

        photo = out / "astronaut.png"
        Image.fromarray(skimage.data.astronaut()).save(photo)
    train = [
        _bin("ns-train"), "sas-portrait", "--data", str(photo), "--output-dir", str(out / "runs"),
        "--experiment-name", "portrait", "--timestamp", "run", "--vis", "tensorboard",
        "--max-num-iterations", str(config.steps), "--steps-per-save", str(config.steps),
        "--pipeline.model.style-prompt", config.style_prompt,
        "styleme3d-portrait", "--image-size", str(config.image_size), "--cache-dir", str(out / "crop"),
    ]  # fmt: skip
    generation = _run("generate the 3D head (ns-train sas-portrait)", train, out / "logs" / "train.log")
    run = out / "runs" / "portrait" / "sas-portrait" / "run" / "config.yml"
    video = out / "turntable.mp4"
    turntable = [_bin("styleme3d-turntable"), "--load-config", str(run), "--output", str(out / "turntable.json"),
                 "--views", str(config.turntable_views), "--video", str(video)]  # fmt: skip
    _run("turntable video (styleme3d-turntable + ns-render camera-path)", turntable, out / "logs" / "turntable.log")
    export = [_bin("ns-export"), "gaussian-splat", "--load-config", str(run), "--output-dir", str(out / "export")]
    _run("export (ns-export gaussian-splat)", export, out / "logs" / "export.log")
    metrics_path = out / "metrics.json"
    score = [_bin("styleme3d-eval"), "--load-config", str(run), "--output", str(metrics_path),
             "--orbit-views", str(config.turntable_views)]  # fmt: skip
    _run("score (styleme3d-eval)", score, out / "logs" / "eval.log")
    metrics = json.loads(metrics_path.read_text())
    front = metrics["portrait"]["front"]
    print(f"[demo] generation time:            {generation:.0f} s ({config.steps} steps at {config.image_size} px)")
    if front.get("identity_distance") is not None:
        print(f"[demo] front view identity:        dlib distance {front['identity_distance']:.3f} (same person < 0.6)")
    else:
        print(f"[demo] front view identity:        {front.get('identity_note')}")
    print(f"[demo] turntable video:            {video}")
    print(f"[demo] exported splat:             {out / 'export' / 'splat.ply'}")
    print(f"[demo] photo | front | turntable:  {metrics['sheet']}")
    print(f"[demo] metrics:                    {metrics_path}")
    print(f"[demo] total {time.perf_counter() - start:.0f} s")
    return metrics


def entrypoint() -> None:
    """`styleme3d-demo-portrait` console script."""
    main(tyro.cli(PortraitDemoConfig))
