"""Per-frame cost of the look (palette switch, blend, colour preservation, region) against one plain render.

One plain render = what the display path does without a look: evaluate the base's SH (degree 3) for the view and
rasterise the colours at RES x RES (CPU tile rasteriser, no grad). A look adds, per frame, the SH evaluation of the
palette entries it reads (`styles_used`: one, two when blending) and `apply_look` on the [N, 3] colours; the
rasteriser's cost does not change (it takes colours either way). Both are printed as a ratio to the plain render,
measured in one run on the same scene (scripts/bench_render.py's make_scene, a palette of 3 styles).

Usage: python scripts/bench_look.py [--sizes 50000 100000] [--res 512] [--repeats 5]   (CPU; run under the lock)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for bench_render's scene and timer

from bench_render import make_scene, timed  # noqa: E402

from styleme3d_ns.models.look import LookConfig, apply_look, styles_used  # noqa: E402
from styleme3d_ns.render import rasterize_torch  # noqa: E402
from styleme3d_ns.render.sh import sh_colors  # noqa: E402

NUM_STYLES = 3
LOOKS = {
    "palette switch (style 2, strength 1)": LookConfig(style=2),
    "strength 0.6": LookConfig(style=1, strength=0.6),
    "blend two styles (0.5), strength 0.8": LookConfig(style=0, blend_to=2, blend=0.5, strength=0.8),
    "colour preservation (base-colour)": LookConfig(style=1, preserve_colour="base-colour"),
    "region inside a rotated box": LookConfig(
        style=1, region="inside", box_center=(0.0, 0.0, 3.0), box_size=(1.0, 1.0, 1.0), box_rotation=(0.3, 0.2, 0.1)
    ),  # fmt: skip
    "all four together": LookConfig(
        style=0,
        blend_to=1,
        blend=0.3,
        strength=0.7,
        preserve_colour="style-colour",
        region="outside",
        box_center=(0.0, 0.0, 3.0),
    ),  # fmt: skip
}


def bench(n: int, res: int, repeats: int) -> None:
    scene = make_scene(n, res)
    dirs = scene["means"]  # the camera sits at the origin: view directions are the centres
    palette_sh = torch.randn(NUM_STYLES, n, 16, 3, generator=torch.Generator().manual_seed(1)) * 0.3
    geometry = [scene[k] for k in ("means", "quats", "scales", "opacities")]

    def render(colours: torch.Tensor) -> None:
        rasterize_torch(*geometry, colours, scene["viewmats"], scene["Ks"], res, res, packed=False)

    with torch.no_grad():
        base_rgb = sh_colors(3, dirs, scene["sh"])
        plain = timed(lambda: render(sh_colors(3, dirs, scene["sh"])), repeats)
        print(f"\n{n} Gaussians, {res}x{res} px: plain render (SH + rasterise) {plain * 1e3:.0f} ms")
        print(f"  {'look':40s} {'apply_look':>12s} {'+ palette SH':>14s}")
        palette_rgb = torch.stack([sh_colors(3, dirs, sh) for sh in palette_sh])
        for name, look in LOOKS.items():
            blend = timed(lambda look=look: apply_look(base_rgb, palette_rgb, scene["means"], look), repeats)

            def with_sh(look: LookConfig = look) -> None:
                used = {k: sh_colors(3, dirs, palette_sh[k]) for k in styles_used(look)}
                apply_look(base_rgb, used, scene["means"], look)

            total = timed(with_sh, repeats)
            print(f"  {name:40s} {blend / plain:11.4f}x {total / plain:13.4f}x")
        strength0 = timed(lambda: apply_look(base_rgb, palette_rgb, scene["means"], replace(look, strength=0)), repeats)
        print(f"  {'strength 0 (returns the base)':40s} {strength0 / plain:11.4f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000], help="Gaussian counts")
    parser.add_argument("--res", type=int, default=512, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for n in args.sizes:
        bench(n, args.res, args.repeats)


if __name__ == "__main__":
    main()
