"""Measure the offline teacher's default against the detail option at the size people look at (issue 21).

For each style, stylises a scene twice with `ns-train styleme3d` (the defaults, then `--pipeline.model.detail.enabled
True`), scores both with `styleme3d-eval --resolution 512` against the base, and prints one row each: patch and
colour distance to the style (share removed against the base), learned style similarity, short/long-range warped
error, the view-dependent share of it, SSIM to the base, Gaussian count and the stylisation's wall time.

Scenes: a nerfstudio scene with a base run (`--data <demo>/scene --base <demo>/runs/base/styleme3d/run`, 96 px
views fitted at 512 px with `--teacher-scale`), or a splat `.ply` (`--data still_life.ply`, views rendered at 512 px
by the .ply parser). `--build-still-life OUT.ply` writes the second scene of docs/styleme3d.md: a still life of
textured primitives (not the demo's) sampled into flat Gaussians, sharp at 512 px, with no reconstruction.

`--before` adds a run per style with the teacher as it was before issue 21 (`--pipeline.model.teacher.stroke-size
0`: the network at the view's size, no grain); `--fine` one colour-only at the detail option's finer stroke size
(`--pipeline.model.teacher.stroke-size 0.03125`), which separates what the finer strokes bring from what the split
brings. Each style also gets `figure_<style>.png`: the first held-out view at
the scoring resolution, base | (before) | default | detail, labelled (tiles from the `styleme3d-eval` sheets).

Usage:
    python scripts/bench_strokes.py --build-still-life /tmp/still_life.ply
    python scripts/bench_strokes.py --data /tmp/still_life.ply --styles immunohistochemistry brick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SH_C0 = 0.28209479177387814
VARIANTS = {
    "before": ["--pipeline.model.teacher.stroke-size", "0"],
    "default": [],
    "fine": ["--pipeline.model.teacher.stroke-size", "0.03125"],
    "detail": ["--pipeline.model.detail.enabled", "True"],
}
"""Each run's extra ns-train arguments."""


def build_still_life(path: Path, count: int = 60000, seed: int = 0) -> None:
    """A sphere, box and cylinder on a gravel disk (retina, moon and colour-wheel textures), as `count` flat
    Gaussians sampled area-uniformly on the surfaces, each facing along the surface normal with its shaded colour."""
    sys.path.insert(0, str(ROOT))
    from plyfile import PlyData, PlyElement

    from styleme3d_ns.data.scene_builder import GROUND_Z, Box, Cylinder, GroundDisk, ProceduralScene, Sphere

    scene = ProceduralScene(primitives=(
        GroundDisk(z=GROUND_Z, radius=1.1, texture="gravel"),
        Sphere(center=np.array([-0.35, 0.3, GROUND_Z + 0.5]), radius=0.5, texture="retina", yaw=0.7),
        Box(center=np.array([0.45, 0.25, GROUND_Z + 0.28]), half=np.full(3, 0.28), texture="moon", yaw=0.4),
        Cylinder(base=np.array([0.1, -0.5, GROUND_Z]), radius=0.22, height=0.8, texture="colorwheel", yaw=1.0),
    ))  # fmt: skip
    points, index = scene.sample_surface(count, np.random.default_rng(seed))
    normals = np.zeros_like(points)
    for k, primitive in enumerate(scene.primitives):
        normals[index == k] = primitive.surface(points[index == k])[0]
    rgb = scene.shade(points, index)
    # the rotation taking +z to the normal, as a wxyz quaternion (half-way vector form)
    quats = np.concatenate([1.0 + normals[:, 2:3], -normals[:, 1:2], normals[:, 0:1], np.zeros((count, 1))], 1)
    quats[quats[:, 0] < 1e-6] = (0.0, 1.0, 0.0, 0.0)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    side = math.sqrt(sum(p.area() for p in scene.primitives) / count)  # one Gaussian's share of the surface
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    vertex = np.zeros(count, dtype=[(n, "f4") for n in names])
    columns = [*points.T, *((rgb - 0.5) / SH_C0).T, np.full(count, math.log(0.98 / 0.02)),
               np.full(count, math.log(side)), np.full(count, math.log(side)), np.full(count, math.log(0.05 * side)),
               *quats.T]  # fmt: skip
    for name, column in zip(names, columns, strict=True):
        vertex[name] = column
    PlyData([PlyElement.describe(vertex, "vertex")], comments=["Vertical Axis: z"]).write(str(path))
    print(f"wrote {path}: {count} Gaussians")


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_strokes: failed (exit {done.returncode}), see {log}")
    return time.perf_counter() - start


def _row(style: str, variant: str, m: dict, out: Path, name: str, seconds: float | None) -> list[str]:
    """One table row of `styleme3d-eval`'s metrics `m` of run `name` (its time from the log when `seconds` is None)."""
    from styleme3d_ns.models.checkpoint import load_gaussians

    count = load_gaussians(out / "runs" / name / "styleme3d" / "run")["means"].shape[0]
    vd = m["consistency_sh_dc_only"]["view_dependent_added"]
    timing = out / f"seconds_{name}.txt"
    if seconds is None:  # a run of an earlier call: its time as that call wrote it
        seconds = float(timing.read_text()) if timing.exists() else -1.0
    else:
        timing.write_text(f"{seconds:.1f}\n")
    return [
        style, variant, f"{m['style']['patch_distance']:.3f} ({100 * m['style']['patch_reduction']:.0f}%)",
        f"{m['style']['colour_distance']:.3f} ({100 * m['style']['colour_reduction']:.0f}%)",
        f"{m['style']['learned_style_similarity']:.3f}",
        f"{m['consistency']['short_range']['rmse_stylised']:.3f} / "
        f"{m['consistency']['long_range']['rmse_stylised']:.3f}",
        f"{100 * vd['short_range']['added_stylised']:.0f}% / {100 * vd['long_range']['added_stylised']:.0f}%",
        f"{m['content']['ssim']:.3f}", str(count), f"{seconds:.0f} s" if seconds > 0 else "(earlier call)",
    ]  # fmt: skip


def figure(out: Path, style: str, variants: list[str], size: int) -> None:
    """`figure_<style>.png`: the first held-out view (the sheets' first row) of the base and each variant, labelled."""
    from crops_strokes import LABELS, labelled_sheet  # scripts/, beside this file
    from PIL import Image

    labels = {**LABELS, "before": "before (stroke-size 0)"}  # the whole view has room to say what "before" was
    tiles = [(f"base ({style})", Image.open(out / f"{style}_{variants[0]}.png").crop((0, 0, size, size)))]
    for variant in variants:
        label = labels[variant]
        tiles.append((f"{label} ({style})", Image.open(out / f"{style}_{variant}.png").crop((size, 0, 2 * size, size))))
    sheet = labelled_sheet([tiles], size, 22)
    sheet.save(out / f"figure_{style}.png")
    print(f"wrote {out / f'figure_{style}.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-still-life", type=Path, help="write the still-life .ply here and stop")
    parser.add_argument("--data", type=Path, help="a nerfstudio scene folder (with --base) or a splat .ply")
    parser.add_argument("--base", type=Path, help="base run folder for a nerfstudio scene")
    parser.add_argument("--teacher-scale", type=float, default=16 / 3, help="teacher render scale (scene + base)")
    parser.add_argument("--styles", nargs="+", default=["immunohistochemistry", "brick"])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench_strokes_out"))
    parser.add_argument("--before", action="store_true", help="also run the teacher as before issue 21 (stroke-size 0)")
    parser.add_argument("--fine", action="store_true", help="also run colour-only at detail's stroke size (1/32)")
    args = parser.parse_args()
    if args.build_still_life:
        build_still_life(args.build_still_life)
        return
    sys.path.insert(0, str(ROOT))
    from styleme3d_ns.apps.demo import style_image_file

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for style in args.styles:
        style_path = style_image_file(style, args.out)
        variants = [v for v in VARIANTS if (v != "before" or args.before) and (v != "fine" or args.fine)]
        for variant in variants:
            extra = VARIANTS[variant]
            name = f"{style}_{variant}"
            metrics = args.out / f"{name}.json"
            if metrics.exists():  # a finished run of an earlier call: scored already
                rows.append(_row(style, variant, json.loads(metrics.read_text()), args.out, name, None))
                continue
            cmd = [str(BIN / "ns-train"), "styleme3d", "--data", str(args.data), "--output-dir", str(args.out / "runs"),
                   "--experiment-name", name, "--timestamp", "run", "--vis", "tensorboard",
                   "--pipeline.model.style-image", str(style_path), *extra,
                   *(a for e in ("dssd", "csd", "qa") for a in (f"--pipeline.model.{e}.enabled", "False"))]  # fmt: skip
            if args.base is not None:
                cmd += ["--pipeline.model.base-checkpoint", str(args.base),
                        "--pipeline.model.teacher-render-scale", str(args.teacher_scale)]  # fmt: skip
            else:
                cmd += ["styleme3d-ply", "--image-size", str(args.resolution), "--cache-dir", str(args.out / "cache")]
            seconds = run(cmd, args.out / f"log_{name}.txt")
            config = args.out / "runs" / name / "styleme3d" / "run" / "config.yml"
            evaluate = [str(BIN / "styleme3d-eval"), "--load-config", str(config), "--output", str(metrics),
                        "--sheet", str(args.out / f"{name}.png"), "--resolution", str(args.resolution)]  # fmt: skip
            run(evaluate, args.out / f"log_eval_{name}.txt")
            m = json.loads(metrics.read_text())
            rows.append(_row(style, variant, m, args.out, name, seconds))
            base = m["style"]
            print(f"{name}: base patch {base['patch_distance_base']:.3f}, colour {base['colour_distance_base']:.3f}, "
                  f"short/long {m['consistency']['short_range']['rmse_base']:.3f} / "
                  f"{m['consistency']['long_range']['rmse_base']:.3f}", flush=True)  # fmt: skip
        figure(args.out, style, variants, args.resolution)
    header = ["style", "run", "patch (closer)", "colour (closer)", "learned", "warped short / long",
              "view-dependent", "SSIM", "Gaussians", "time"]  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
