"""Print the offline portrait's measures for a finished `sas-portrait` run and write its turntable sheet.

Measures (styleme3d_ns/eval/portrait_measures.py): dlib identity at yaw 35 (found, distance < 0.6), the back view's
mean colour against the photo's hair colour (< 0.10 in RGB [0, 1]), the side views' chroma spread against the face's
own (<= 1.2x), Gaussians on the photo's background (0). The photo's numbers come from the run's data parser (its
offline prior, recomputed from the photo exactly as training did).

Usage: python scripts/measure_portrait.py --load-config outputs/.../config.yml [--sheet sheet.png] [--json out.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from styleme3d_ns.core.atomic import write_json_atomic
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.portrait import find_portrait, portrait_start
from styleme3d_ns.eval.portrait_measures import SHEET_YAWS, measure_portrait
from styleme3d_ns.eval.render import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a sas-portrait run")
    parser.add_argument("--sheet", type=Path, help="write the turntable sheet PNG here (photo | yaw 0 35 90 180 270)")
    parser.add_argument("--json", type=Path, help="write the measures here")
    args = parser.parse_args()
    with exit_on_user_error("measure_portrait"):
        _, pipeline = load_pipeline(args.load_config)
        parser_config = pipeline.datamanager.config.dataparser
        if not getattr(parser_config, "fit_face", False):
            raise UserInputError(f"{args.load_config} is not a sas-portrait run with the face fit (--fit-face True)")
        source = find_portrait(Path(parser_config.data))
        stat = source.stat()
        start = portrait_start(source, (stat.st_mtime_ns, stat.st_size), parser_config.image_size,
                               parser_config.fov_deg, parser_config.camera_radius, parser_config.num_template_points,
                               parser_config.template_seed, parser_config.align_face, True)  # fmt: skip
    measures, sheet = measure_portrait(pipeline.model, start.prior, start.image)
    identity, back, sides, background = (measures[k] for k in ("identity_yaw35", "back", "side_chroma", "background"))
    found = "found" if identity["face_found"] else "NOT found"
    distance = "" if identity["distance"] is None else f", distance {identity['distance']:.3f} (< 0.6)"
    print(f"identity at yaw 35:   dlib face {found}{distance}")
    print(f"back (yaw 180):       mean RGB {back['mean_rgb']} vs hair {back['hair_rgb']}: "
          f"distance {back['distance']:.3f} (< 0.10)")  # fmt: skip
    print(f"side chroma spread:   yaw 90 {sides['ratio_yaw90']:.2f}x, yaw 270 {sides['ratio_yaw270']:.2f}x the face's "
          f"{sides['face_spread']:.4f} (<= 1.2x)")  # fmt: skip
    print(f"background Gaussians: {background['gaussians']} of {background['of']}; front alpha on the background "
          f"{background['front_alpha_on_background']:.4f}")  # fmt: skip
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(args.sheet)
        print(f"sheet (photo | yaw {' '.join(f'{y:.0f}' for y in SHEET_YAWS)}): {args.sheet}")
    if args.json is not None:
        write_json_atomic(args.json, measures)


if __name__ == "__main__":
    main()
