"""Benchmark `styleme3d-export --web`: export time, folder size and the page's first frame in headless chromium.

Scenes:
  - a stylised run (--run CONFIG, e.g. the demo's `demo_out/runs/.../config.yml`; without it the demo is run into a
    temporary folder first, ~2 min): exported as `styleme3d-export --web` does, and also compared with our
    rasteriser: the page's first frame against our render of the same camera (the model, and the decoded export);
  - a synthetic scene of --gaussians (1 M) Gaussians, SH degree 3, with 3 styles: export time and size only.

Prints seconds, MB, bytes per Gaussian and ratios measured in this one run (to the size of one .ply per style,
which is what sharing the styles without this page would take).

Usage: python scripts/bench_web.py [--run CONFIG] [--gaussians 1000000] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from styleme3d_ns.apps.sog import read_sog  # noqa: E402
from styleme3d_ns.apps.web_colours import QuantisedColours, dequantise_colours  # noqa: E402
from styleme3d_ns.apps.web_export import WebScene, write_web_folder  # noqa: E402
from styleme3d_ns.models.look import LookConfig  # noqa: E402
from styleme3d_ns.render.sh import SH_C0  # noqa: E402
from tests.test_web_export import drawn_frame, mean_abs, offline_page, our_renders, static_server  # noqa: E402

PLY_BYTES_PER_GAUSSIAN = 62 * 4  # a degree-3 3DGS .ply: 62 float32 properties


def synthetic_scene(count: int, styles: int = 3) -> WebScene:
    """`count` Gaussians on a sphere shell over a floor disc, smooth random SH colours, `styles` recoloured sets."""
    gen = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(count, 3, generator=gen), dim=1)
    means = direction * (1 + 0.02 * torch.randn(count, 1, generator=gen))
    floor = torch.rand(count, generator=gen) < 0.3
    means[floor] = torch.cat([torch.randn(int(floor.sum()), 2, generator=gen) * 1.5,
                              torch.full((int(floor.sum()), 1), -1.0)], 1)  # fmt: skip
    dc = torch.sin(means @ torch.randn(3, 3, generator=gen) * 3) * 1.5
    rest = torch.randn(count, 15, 3, generator=gen) * 0.1
    looks = [(dc @ torch.randn(3, 3, generator=gen) * 0.6 + 0.3 * k, rest.flip(-1)) for k in range(styles)]
    camera = {"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3.2]], "fx": 548.0, "fy": 548.0, "cx": 256.0,
              "cy": 256.0, "width": 512, "height": 512}  # fmt: skip
    return WebScene(
        means=means, quats=torch.randn(count, 4, generator=gen),
        log_scales=torch.log(torch.rand(count, 3, generator=gen) * 0.01 + 0.002),
        opacities=torch.rand(count, generator=gen), base=(dc, rest), styles=looks,
        labels=[f"style {k}" for k in range(styles)], cameras=[camera], background=[1.0, 1.0, 1.0],
    )  # fmt: skip


def first_frame(folder: Path, size: int, screenshot: Path | None = None) -> tuple[float, np.ndarray]:
    """Seconds from opening the page to its first drawn frame (offline, headless chromium), and that frame; with
    `screenshot`, then also the whole page at 1280x800 with its controls, to that PNG."""
    blocked: list[str] = []
    with static_server(folder) as url:
        start = time.perf_counter()
        with offline_page(url, blocked, size) as page:
            frame = drawn_frame(page, after=0, timeout_ms=600_000)
            seconds = time.perf_counter() - start
            if screenshot is not None:
                page.set_viewport_size({"width": 1280, "height": 800})
                version = page.evaluate("window.styleme3d.lookVersion")
                page.locator("#strength").fill("0.8")  # a control moved, as a user would
                page.locator("#keep").select_option("base-colour")
                drawn_frame(page, after=version + 1, timeout_ms=600_000)
                page.screenshot(path=str(screenshot))
    assert not blocked, blocked
    return seconds, frame


def decoded_renders(run: Path, folder: Path, looks: dict[str, LookConfig], size: int) -> dict[str, np.ndarray]:
    """Our renders of what the page received: the run's model with the export's decoded geometry and colours."""
    meta = json.loads((folder / "scene.json").read_text())
    geometry, count = read_sog(folder / "scene.sog"), meta["count"]
    rest_bands = (meta["sh_degree"] + 1) ** 2 - 1

    def colours(entry: dict) -> tuple[torch.Tensor, torch.Tensor]:
        data = (folder / entry["file"]).read_bytes()
        quantised = QuantisedColours(data, entry["dc_min"], entry["dc_max"], entry["codebook_size"])
        return dequantise_colours(quantised, count, rest_bands)

    @torch.no_grad()
    def decode_into(model) -> None:  # noqa: ANN001 - GuidedSplatModel
        model.means.copy_(torch.from_numpy(geometry.means))
        model.quats.copy_(torch.from_numpy(geometry.quats))
        model.scales.copy_(torch.from_numpy(geometry.log_scales))
        model.opacities.copy_(torch.logit(torch.from_numpy(geometry.opacities).clamp(1e-6, 1 - 1e-6))[:, None])
        targets = [(model.base_features_dc, model.base_features_rest)]
        targets += [model.palette_entry(k) for k in range(model.palette_size)]
        for (dc, rest), entry in zip(targets, [meta["base"], *meta["styles"]], strict=True):
            decoded_dc, decoded_rest = colours(entry)
            dc.copy_(decoded_dc if model.config.sh_degree > 0 else torch.logit(0.5 + SH_C0 * decoded_dc))
            if rest_bands:
                rest.copy_(decoded_rest)

    return our_renders(run, looks, size, edit=decode_into)


def demo_run(work: Path) -> Path:
    """Run the demo into `work` and return its stylised run's config.yml."""
    subprocess.run([sys.executable, "-m", "styleme3d_ns.apps.demo", "--output-dir", str(work / "demo")], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    runs = [p for p in (work / "demo" / "runs").rglob("config.yml") if "styleme3d" in p.parts]
    return max(runs, key=lambda p: p.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="config.yml of a stylised run (default: run the demo first)")
    parser.add_argument("--gaussians", type=int, default=1_000_000, help="Gaussians of the synthetic scene")
    parser.add_argument("--size", type=int, default=512, help="page and render size in px (square)")
    parser.add_argument("--skip-synthetic", action="store_true", help="only the run")
    parser.add_argument("--screenshot", type=Path, help="also save the run's page (1280x800, controls) to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_web_"))
    run = args.run or demo_run(work)

    from styleme3d_ns.eval.render import load_pipeline

    _, pipeline = load_pipeline(run)
    scene = WebScene.from_model(pipeline.model, pipeline.datamanager.train_dataset.cameras)
    del pipeline
    report = write_web_folder(scene, work / "run_page")
    count, styles = scene.means.shape[0], len(scene.styles)
    print(f"run: {count} Gaussians, {styles} style(s), SH degree {scene.sh_degree}")
    print(f"  export {report.seconds:.1f} s, folder {report.bytes_total / 1e6:.2f} MB (geometry "
          f"{report.bytes_geometry / 1e6:.2f} MB, colours {report.bytes_colours / 1e6:.2f} MB, engine and page "
          f"{(report.bytes_total - report.bytes_geometry - report.bytes_colours) / 1e6:.2f} MB)")  # fmt: skip
    print(f"  data {(report.bytes_geometry + report.bytes_colours) / count:.1f} B/Gaussian; "
          f"{(report.bytes_geometry + report.bytes_colours) / (styles * count * PLY_BYTES_PER_GAUSSIAN):.3f}x "
          f"the {styles} .ply file(s) of its styles")  # fmt: skip
    seconds, page = first_frame(report.folder, args.size, args.screenshot)
    print(f"  first frame in headless chromium (SwiftShader, {args.size} px): {seconds:.1f} s")
    looks = {"style": LookConfig(), "base": LookConfig(strength=0.0)}
    ours, decoded = our_renders(run, looks, args.size), decoded_renders(run, report.folder, looks, args.size)
    print(f"  page vs our render of the model: MAE {mean_abs(page, ours['style']):.2f} grey levels (/255); "
          f"of the decoded export: {mean_abs(page, decoded['style']):.2f}; decoded vs model: "
          f"{mean_abs(decoded['style'], ours['style']):.2f} (base look: {mean_abs(decoded['base'], ours['base']):.2f});"
          f" style vs base: {mean_abs(ours['style'], ours['base']):.2f}")  # fmt: skip

    if args.skip_synthetic:
        return
    synthetic = synthetic_scene(args.gaussians)
    report_big = write_web_folder(synthetic, work / "synthetic_page")
    count_big = args.gaussians
    print(f"synthetic: {count_big} Gaussians, 3 styles, SH degree 3")
    print(f"  export {report_big.seconds:.1f} s ({report_big.seconds / report.seconds:.1f}x the run's), folder "
          f"{report_big.bytes_total / 1e6:.1f} MB (geometry {report_big.bytes_geometry / 1e6:.1f} MB, colours "
          f"{report_big.bytes_colours / 1e6:.1f} MB)")  # fmt: skip
    data = report_big.bytes_geometry + report_big.bytes_colours
    print(f"  data {data / count_big:.1f} B/Gaussian; {data / (3 * count_big * PLY_BYTES_PER_GAUSSIAN):.3f}x "
          f"the 3 .ply files of its styles ({3 * count_big * PLY_BYTES_PER_GAUSSIAN / 1e6:.0f} MB)")  # fmt: skip
    seconds_big, frame = first_frame(report_big.folder, args.size)
    print(f"  first frame in headless chromium (SwiftShader, {args.size} px): {seconds_big:.1f} s "
          f"({seconds_big / seconds:.1f}x the run's); frame std {frame.std():.1f}")  # fmt: skip
    print(f"folders kept in {work}")
    assert math.isfinite(seconds_big)


if __name__ == "__main__":
    main()
