"""Cost of `--data scene.ply`: reading a 3DGS .ply and rendering its orbit views (cold cache), then a re-parse
(warm cache, what ns-export / ns-render / ns-viewer pay). Prints seconds for N Gaussians at the parser defaults.

    python scripts/bench_ply_import.py --gaussians 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for the test's .ply writer

from styleme3d_ns.data.ply_scene import PlySceneDataParserConfig, read_splat_ply  # noqa: E402
from tests.test_ply_scene import tiny_splat, write_inria_ply  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--sh-degree", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_inria_ply(Path(tmp) / "scene.ply", tiny_splat(args.gaussians, degree=args.sh_degree))
        start = time.perf_counter()
        read_splat_ply(path)
        read_s = time.perf_counter() - start
        config = PlySceneDataParserConfig(data=path, cache_dir=Path(tmp) / "cache", image_size=args.image_size)
        start = time.perf_counter()
        out = config.setup().get_dataparser_outputs("train")
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        config.setup().get_dataparser_outputs("train")
        warm_s = time.perf_counter() - start
        views = config.num_views + config.num_eval_views
        size_mb = path.stat().st_size / 2**20
    print(f"{args.gaussians} Gaussians, SH degree {args.sh_degree}, {size_mb:.1f} MB, torch threads "
          f"{torch.get_num_threads()}, {len(out.image_filenames)} train + {config.num_eval_views} eval views at "
          f"{args.image_size} px")  # fmt: skip
    print(f"read .ply {read_s:.2f} s | parse + render (cold) {cold_s:.2f} s = {cold_s / views:.3f} s/view "
          f"| re-parse (warm cache) {warm_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
