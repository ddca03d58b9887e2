"""Cost of stylising an unbounded capture as people bring one: a synthetic scene of N Gaussians (a dense core of
coloured blobs, a third of them in a background shell around it), no cameras, views at 512 px (the inside rig),
`ns-train styleme3d` from the command line in a fresh process with an empty render cache.

Prints the wall time from launch to exit, the peak resident memory of the run (the process and its children), the
stages the run logs (parse and render, offline teacher), and each against the issue's targets: 1M Gaussians in at
most 4 min and 8 GiB, 3M in at most 10 min and 16 GiB, on 2 cores.

    python scripts/bench_capture.py --gaussians 1000000
    python scripts/bench_capture.py --gaussians 3000000

The scene is written as a plain SH-degree-3 .ply (what INRIA, nerfstudio and Postshot export) into a temporary folder.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {1_000_000: (240.0, 8.0), 3_000_000: (600.0, 16.0)}  # Gaussians -> (seconds, GiB), issue 22


def unbounded_scene(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """N Gaussians: two thirds on the surfaces of 12 coloured spheres within radius 1 of the origin (the core), a
    third on a shell of radius 20 (the background, colours varying over it); SH degree 3, float32, INRIA's layout."""
    rng = np.random.default_rng(seed)
    n_core = 2 * n // 3
    n_shell = n - n_core
    centres = rng.uniform(-0.6, 0.6, (12, 3))
    radii = rng.uniform(0.15, 0.4, 12)
    which = rng.integers(0, 12, n_core)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = np.empty((n, 3), np.float32)
    means[:n_core] = centres[which] + radii[which, None] * direction[:n_core]
    means[n_core:] = 20.0 * direction[n_core:]
    # scales about the spacing of the Gaussians on each surface, so they close it
    area_core = 4 * math.pi * np.sum(radii**2) / n_core
    area_shell = 4 * math.pi * 20.0**2 / n_shell
    scales = np.empty((n, 3), np.float32)
    scales[:n_core] = math.log(0.7 * math.sqrt(area_core))
    scales[n_core:] = math.log(0.7 * math.sqrt(area_shell))
    scales += rng.normal(0.0, 0.15, (n, 3)).astype(np.float32)
    palette = rng.uniform(-1.5, 1.5, (12, 3))
    dc = np.empty((n, 3), np.float32)
    dc[:n_core] = palette[which] + 0.3 * direction[:n_core]
    dc[n_core:] = 1.2 * direction[n_core:, [2, 0, 1]]  # the sky/ground/walls change colour around the shell
    return {
        "means": means,
        "scales": scales,
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "features_dc": dc,
        "features_rest": (0.02 * rng.normal(size=(n, 15, 3))).astype(np.float32),
        "opacities": np.full((n, 1), 3.0, np.float32),
    }


class PeakMemory:
    """Samples the resident memory of a process and its children every 0.2 s; `peak` in bytes."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self._process, *self._process.children(recursive=True)]
                total = 0
                for process in processes:
                    try:
                        total += process.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.peak = max(self.peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def write_sheet(config_yml: Path, path: Path) -> None:
    """Base | stylised renders of training views 0 (looking at the core) and 7 (looking outwards) at full size."""
    import torch

    from styleme3d_ns.eval.render import load_pipeline
    from styleme3d_ns.eval.sheet import contact_sheet

    _, pipeline = load_pipeline(config_yml)
    model = pipeline.model
    cameras = pipeline.datamanager.train_dataset.cameras
    background = model._get_background_color()
    rows = []
    with torch.no_grad():
        for index in (0, 7):
            camera = cameras[index : index + 1].to(model.device)
            row = []
            for dc, rest in (
                (model.base_features_dc, model.base_features_rest),
                (model.features_dc, model.features_rest),
            ):
                rgb, alpha, _ = model.render_colours(camera, dc, rest)
                row.append((rgb + (1 - alpha) * background).clamp(0, 1))
            rows.append(row)
    print(f"sheet (base | stylised, training views 0 and 7): {contact_sheet(rows, path)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--style", default="immunohistochemistry", help="image path or scikit-image sample name")
    parser.add_argument("--sheet", type=Path, default=None, help="after timing: write a before/after PNG of two views")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from styleme3d_ns.apps.demo import style_image_file
    from styleme3d_ns.data.splat_formats import write_plain_ply

    work = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    try:
        start = time.perf_counter()
        ply = write_plain_ply(work / "unbounded.ply", unbounded_scene(args.gaussians))
        print(f"scene: {args.gaussians:,} Gaussians, {ply.stat().st_size / 2**20:.0f} MB, written in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        style = style_image_file(args.style, work)
        cmd = [
            str(BIN / "ns-train"), "styleme3d", "--data", str(ply), "--output-dir", str(work / "runs"),
            "--vis", "tensorboard", "--pipeline.model.style-image", str(style),
            # the demo's offline experts: no downloaded-network look-ups
            *(a for e in ("dssd", "csd", "qa") for a in (f"--pipeline.model.{e}.enabled", "False")),
            "styleme3d-ply", "--cache-dir", str(work / "cache"), "--image-size", str(args.image_size),
        ]  # fmt: skip
        start = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
        memory = PeakMemory(process.pid)
        output, _ = process.communicate()
        wall = time.perf_counter() - start
        peak = memory.stop() / 2**30
        if process.returncode != 0:
            print(output[-4000:])
            raise SystemExit(f"bench_capture: ns-train failed (exit {process.returncode})")
        flat = " ".join(re.sub(r"\S+\.py:\d+", "", output).split())  # without rich's "file.py:123" columns
        views = re.search(r"views: (.*?\(--rig [a-z]+[^)]*\))", flat)
        teacher = re.findall(r"'[^']+': (\d+) views fitted in ([\d.]+) s", flat)
        print(f"CPU, {psutil.cpu_count()} cores; command: {' '.join(cmd)}")
        if views:
            print(views.group(0))
        if teacher:
            print(f"offline teacher: {teacher[-1][0]} views fitted in {float(teacher[-1][1]):.1f} s")
        print(f"end to end (launch to exit): {wall:.1f} s; peak resident memory {peak:.2f} GiB")
        target = TARGETS.get(args.gaussians)
        if target:
            print(f"targets {target[0]:.0f} s, {target[1]:.0f} GiB: time {wall / target[0]:.2f} x, memory "
                  f"{peak / target[1]:.2f} x")  # fmt: skip
        if args.sheet is not None:
            write_sheet(next((work / "runs").rglob("config.yml")), args.sheet)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # our own temporary folder


if __name__ == "__main__":
    main()
