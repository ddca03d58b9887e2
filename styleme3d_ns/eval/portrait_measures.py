"""The offline portrait's measures (issue "a head from every side"): identity off the front, the back's colour, the
sides' colour spread, background Gaussians; and a turntable sheet to look at.

Every measure compares renders of a finished ``sas-portrait`` run with the photo's own numbers, taken from the data
parser's offline prior (:class:`~styleme3d_ns.data.portrait_prior.PortraitPrior`):

- **identity at yaw 35**: dlib finds the face in the render 35 degrees round from the photo, and its descriptor's
  distance to the training image's (same person below 0.6);
- **back colour**: the mean RGB of the back view (yaw 180) over the pixels the head covers (alpha > 0.5), against the
  photo's hair colour (the median of the person's pixels above the face); the distance is Euclidean in RGB [0, 1].
  Diagnostics beside it: the share of those pixels nearer the photo's skin colour than its hair colour (the neck
  below the hairline) and the distance of the others' mean to the hair colour;
- **side colour spread**: the chroma spread of a side view (yaw 90, 270) over its head pixels divided by the chroma
  spread of the photo's face (its face-oval pixels); chroma is BT.601's (Cb, Cr), spread ``sqrt(var Cb + var Cr)``.
  For reference, the same ratio for the photo's own head pixels (head mask > 0.5: face, hair, headwear): what a head
  painted only in the photo's colours gives where hair and skin differ in chroma;
- **background Gaussians**: Gaussians (opacity >= 0.05) whose centre the photo's camera sees on a background pixel
  (person probability < 0.5), and the front render's mean alpha over the background pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from styleme3d_ns.core.atomic import write_json_atomic
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.data.face_fit import FrontCamera
from styleme3d_ns.data.portrait import HEAD_FRAME, find_portrait, portrait_start
from styleme3d_ns.data.portrait_prior import PortraitPrior
from styleme3d_ns.eval.render import load_pipeline
from styleme3d_ns.guidance.faces import FACE_OVAL, FaceIdentity
from styleme3d_ns.render.camera import orbit_cameras

SHEET_YAWS = (0.0, 35.0, 90.0, 180.0, 270.0)
"""The turntable sheet's views (degrees of azimuth from the photo's camera)."""
SHEET_SIZE = 256
"""Side in pixels of each view on the sheet and of the renders the measures use."""
VISIBLE_OPACITY = 0.05
"""Gaussians less opaque than this are not counted as background (they show nothing)."""


def chroma_spread(pixels: np.ndarray) -> float:
    """``sqrt(var Cb + var Cr)`` of RGB `pixels` `[M, 3]` in [0, 1] (BT.601 chroma)."""
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return float(np.sqrt(cb.var() + cr.var()))


def back_colour(pixels: np.ndarray, hair: np.ndarray, skin: np.ndarray) -> dict[str, Any]:
    """The back view's colour against the photo's `hair` `[3]` (and `skin` `[3]`), RGB in [0, 1], from the head's
    `pixels` `[M, 3]`: their mean (``mean_rgb``) and its Euclidean ``distance`` to the hair colour; the share of pixels
    nearer the skin colour than the hair colour (``skin_share``: the neck below the hairline) and the distance of the
    other pixels' mean to the hair colour (``hair_pixels_distance``)."""
    mean = pixels.mean(axis=0)
    skin_like = np.linalg.norm(pixels - skin, axis=1) < np.linalg.norm(pixels - hair, axis=1)
    hair_like = pixels[~skin_like].mean(axis=0) if (~skin_like).any() else mean
    return {
        "mean_rgb": mean.round(4).tolist(),
        "distance": float(np.linalg.norm(mean - hair)),
        "skin_share": float(skin_like.mean()),
        "hair_pixels_distance": float(np.linalg.norm(hair_like - hair)),
    }


def face_pixels(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """`[M, 3]` the pixels of `image` `[S, S, 3]` inside the landmarks' face oval (`landmarks` `[468, 3]`)."""
    import cv2

    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[list(FACE_OVAL), :2]).astype(np.int32)], 1)
    return image[mask.astype(bool)]


def background_gaussians(means: Tensor, opacities: Tensor, prior: PortraitPrior, fov_deg: float, radius: float) -> int:
    """How many Gaussians (centres `[N, 3]`, opacities `[N]` in [0, 1], at least :data:`VISIBLE_OPACITY`) the photo's
    camera sees on the photo's background (person probability < 0.5, or outside the image)."""
    size = prior.person.shape[0]
    pixels, _ = FrontCamera(size, fov_deg, radius).project(means.detach().double().cpu().numpy())
    cells = np.floor(pixels).astype(int)
    inside = ((cells >= 0) & (cells < size)).all(axis=1)
    person = np.zeros(len(cells))
    person[inside] = prior.person[cells[inside, 1], cells[inside, 0]]
    visible = opacities.detach().cpu().numpy() >= VISIBLE_OPACITY
    return int((visible & (person < 0.5)).sum())


def render_yaws(model: Any, yaws: tuple[float, ...] = SHEET_YAWS, size: int = SHEET_SIZE) -> tuple[Tensor, Tensor]:
    """Renders `[V, S, S, 3]` in [0, 1] and alphas `[V, S, S]` of a portrait run's model at azimuths `yaws`
    (elevation 0, the rig's distance and field of view)."""
    rig = model.rig
    yaw = torch.tensor(yaws, dtype=torch.float32)
    cameras = orbit_cameras(yaw, torch.zeros(len(yaws)), rig.radius, size, rig.fov_deg, **HEAD_FRAME)
    rgbs, alphas = [], []
    with torch.no_grad():
        for i in range(len(yaws)):
            outputs = model.get_outputs_for_camera(cameras[i : i + 1].to(model.device))
            rgbs.append(outputs["rgb"].cpu().clamp(0, 1))
            alphas.append(outputs["accumulation"][..., 0].cpu())
    return torch.stack(rgbs), torch.stack(alphas)


def measure_portrait(model: Any, prior: PortraitPrior, photo: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """The measures (module docstring) of a portrait run's `model` against its data parser's `prior` and training
    image `photo` `[S, S, 3]` uint8; also the turntable sheet `[256, 256 * 6, 3]` uint8 (photo, then
    :data:`SHEET_YAWS`)."""
    rgb, alpha = render_yaws(model)
    views = dict(zip(SHEET_YAWS, rgb.numpy(), strict=True))
    covered = dict(zip(SHEET_YAWS, (alpha > 0.5).numpy(), strict=True))
    image = photo.astype(np.float64) / 255.0

    faces = FaceIdentity()
    yaw35 = faces.identity_similarity(photo, views[35.0])
    back = back_colour(views[180.0][covered[180.0]], prior.colours.hair, prior.colours.skin)
    face_spread = chroma_spread(face_pixels(image, prior.landmarks))
    sides = {yaw: chroma_spread(views[yaw][covered[yaw]]) / face_spread for yaw in (90.0, 270.0)}
    rig = model.rig
    opacities = torch.sigmoid(model.opacities)[:, 0]
    front_alpha = torch.nn.functional.interpolate(alpha[:1, None], size=prior.person.shape, mode="bilinear")[0, 0]
    background = prior.person < 0.5
    measures = {
        "identity_yaw35": {
            "face_found": yaw35 is not None,
            "distance": None if yaw35 is None else yaw35.distance,
            "same_person_below": 0.6,
        },
        "back": {**back, "hair_rgb": prior.colours.hair.round(4).tolist(), "limit": 0.10},
        "side_chroma": {
            "face_spread": face_spread,
            "ratio_yaw90": sides[90.0],
            "ratio_yaw270": sides[270.0],
            "limit": 1.2,
            "photo_head_ratio": chroma_spread(image[prior.head_mask > 0.5]) / face_spread,
        },
        "background": {
            "gaussians": background_gaussians(model.means, opacities, prior, rig.fov_deg, rig.radius),
            "of": int(model.means.shape[0]),
            "front_alpha_on_background": float(front_alpha.numpy()[background].mean()) if background.any() else 0.0,
        },
    }
    photo_column = np.asarray(Image.fromarray(photo).resize((SHEET_SIZE, SHEET_SIZE), Image.Resampling.LANCZOS))
    sheet = np.concatenate([photo_column, *(np.round(v * 255).astype(np.uint8) for v in rgb.numpy())], axis=1)
    return measures, sheet


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the measures of a finished run and write its sheet (``python -m styleme3d_ns.eval.portrait_measures
    --load-config ... [--sheet PNG] [--json JSON]``); returns the measures."""
    parser = argparse.ArgumentParser(description="Print the offline portrait's measures for a sas-portrait run.")
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a sas-portrait run")
    parser.add_argument("--sheet", type=Path, help="write the turntable sheet PNG here (photo | yaw 0 35 90 180 270)")
    parser.add_argument("--json", type=Path, help="write the measures here")
    args = parser.parse_args(argv)
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
          f"distance {back['distance']:.3f} (< 0.10); {100 * back['skin_share']:.0f}% skin (the neck), the rest "
          f"{back['hair_pixels_distance']:.3f} from the hair")  # fmt: skip
    print(f"side chroma spread:   yaw 90 {sides['ratio_yaw90']:.2f}x, yaw 270 {sides['ratio_yaw270']:.2f}x the face's "
          f"{sides['face_spread']:.4f} (<= 1.2x); the photo's own head {sides['photo_head_ratio']:.2f}x")  # fmt: skip
    print(f"background Gaussians: {background['gaussians']} of {background['of']}; front alpha on the background "
          f"{background['front_alpha_on_background']:.4f}")  # fmt: skip
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(args.sheet)
        print(f"sheet (photo | yaw {' '.join(f'{y:.0f}' for y in SHEET_YAWS)}): {args.sheet}")
    if args.json is not None:
        write_json_atomic(args.json, measures)
    return measures


if __name__ == "__main__":
    main()
