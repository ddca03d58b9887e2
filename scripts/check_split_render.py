"""How closely a split splat with its parents' colours renders like the unsplit one (the detail option at strength 0).

Loads a finished styleme3d run that holds its base colours (a stylised run), renders its held-out views with the base
colours at 512 px, splits the larger half of its Gaussians at once with `models/detail.py::split_children` (the
children take their parents' colours), renders again and prints the PSNR between the two and the mean colour change.
docs/styleme3d.md ("Detail beyond the base's Gaussians") quotes it for the demo scene.

Usage: python scripts/check_split_render.py --load-config demo_out/runs/stylised/styleme3d/run/config.yml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    from styleme3d_ns.eval.render import CameraPool, load_pipeline, render_views
    from styleme3d_ns.models.detail import split_children

    _, pipeline = load_pipeline(args.load_config)
    model = pipeline.model
    pool = CameraPool.from_pipeline(pipeline, args.resolution)
    cameras = [pool[i] for i in range(pool.num_eval)]
    _, base = render_views(model, cameras, range(len(cameras)), with_base=True)
    parents = torch.exp(model.scales).max(dim=1).values.topk(model.num_points // 2).indices
    count = model.num_points
    model.resize_gaussians(*split_children(model.means, model.scales, model.quats, model.opacities, parents))
    _, split = render_views(model, cameras, range(len(cameras)), with_base=True)
    psnr = -10 * torch.log10(((split.rgb - base.rgb) ** 2).mean())
    print(f"{count} -> {model.num_points} Gaussians, {len(cameras)} views at {args.resolution} px: PSNR "
          f"{float(psnr):.1f} dB, mean colour change {float((split.rgb - base.rgb).mean()):+.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
