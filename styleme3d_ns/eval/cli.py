"""`styleme3d-eval`: score a stylised run against its base in one command (JSON + contact sheet).

    styleme3d-eval --load-config outputs/scene/styleme3d/<ts>/config.yml --output metrics.json

Every metric, its source paper and the published numbers to compare with are in docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro
from torch import Tensor

from styleme3d_ns.core.atomic import atomic_path, check_writable, new_folders, write_json_atomic
from styleme3d_ns.core.errors import UserInputError, exit_on_user_error
from styleme3d_ns.eval.consistency import (
    DEFAULT_DEPTH_TOLERANCE,
    PairError,
    PinholeCamera,
    ViewPair,
    mean_defined,
    pair_errors,
    select_pairs,
    sh_dc_only,
    view_dependent_share,
)
from styleme3d_ns.eval.image_metrics import lpips_missing_note, mean_lpips, mean_psnr, mean_saturation, mean_ssim
from styleme3d_ns.eval.orbit import orbit_around_cameras
from styleme3d_ns.eval.render import CameraPool, RenderedViews, load_pipeline, render_views
from styleme3d_ns.eval.run_logs import read_run_cost
from styleme3d_ns.eval.sheet import sheet_pixels, write_png
from styleme3d_ns.eval.style_metrics import (
    clip_scores,
    csd_scores,
    gram_scores,
    learned_style_scores,
    no_style_scores,
    texture_scores,
)
from styleme3d_ns.guidance.csd import CSD_REPO
from styleme3d_ns.guidance.faces import FaceIdentity, MissingFaceModelsError
from styleme3d_ns.models.clip_splat import prompt_shown
from styleme3d_ns.models.style_reference import style_paths

SCHEMA_VERSION = 1


@dataclass
class EvalConfig:
    """Score a stylised run against its base: content kept, style matched, multi-view consistency, cost.

    Renders the run's held-out cameras (and their neighbours, for consistency) for the stylised and the base splat,
    writes the metrics as JSON and a contact sheet (base | stylised | style per held-out view).
    """

    load_config: Path
    """config.yml of the stylised run to score (as for ns-eval / ns-render)."""
    output: Path = Path("metrics.json")
    """Where to write the metrics JSON (written atomically: a temporary file, then renamed)."""
    base_config: Path | None = None
    """config.yml of the base run to compare with. Default: the colours the stylised run started from (its
    base checkpoint's colours, kept inside the run), rendered on the same geometry, so no second run is needed."""
    style_image: Path | None = None
    """Style reference for the style metrics and the sheet. Default: the run's --pipeline.model.style-image."""
    sheet: Path | None = None
    """Contact sheet PNG. Default: next to --output, named <output stem>_sheet.png."""
    max_views: int | None = None
    """Score at most this many held-out views (default: all of them)."""
    resolution: int | None = None
    """Render and score every view with this longer side in pixels (e.g. 512, the size people look at); default: the
    run's own camera resolution."""
    long_range_deg: float = 90.0
    """Long-range consistency pairs each held-out view with the camera whose viewing direction is closest to this
    many degrees away (short-range pairs use the nearest camera)."""
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE
    """Relative depth disagreement above which a warped pixel counts as occluded and is left out."""
    portrait: bool = False
    """Also compute portrait metrics (paper 001 Table 1): mean saturation over an orbit of --orbit-views renders."""
    orbit_views: int = 120
    """Renders in the portrait orbit (paper 001: 120 around the subject)."""
    clip_model: str = "ViT-B-32"
    """open_clip architecture for the CLIP scores (or an open_clip model config JSON)."""
    clip_pretrained: str | None = "openai"
    """open_clip tag looked up in the local Hugging Face cache, or a checkpoint file; missing = CLIP scores null.
    None: no CLIP scores, and no open_clip import (about 5 s on 2 cores; the offline demo passes it)."""
    prompt: str | None = None
    """Text the CLIP text/directional scores use. Default: the run's --pipeline.model.prompt (or style-prompt)."""
    source_prompt: str = "a photo"
    """Text describing the unstyled scene, for the CLIP directional similarity."""
    csd_weights: str | None = CSD_REPO
    """CSD ViT-L checkpoint for the CSD style similarity (paper 000's CSD expert): checkpoint.pth /
    pytorch_model.bin, its folder, or a repo id in the local Hugging Face cache; missing = CSD scores null."""


# ------------------------------------------------------------------------------------------------ inputs
def _check(config: EvalConfig) -> None:
    """Reject option values that cannot give a meaningful score, one line each."""
    if config.max_views is not None and config.max_views < 1:
        raise UserInputError(f"--max-views must be at least 1 (got {config.max_views})")
    if config.resolution is not None and not 16 <= config.resolution <= 4096:
        raise UserInputError(f"--resolution must be between 16 and 4096 px (got {config.resolution})")
    if not 0 < config.long_range_deg <= 180:
        raise UserInputError(f"--long-range-deg must be in (0, 180] degrees (got {config.long_range_deg})")
    if config.depth_tolerance <= 0:
        raise UserInputError(f"--depth-tolerance must be positive (got {config.depth_tolerance})")
    if config.orbit_views < 1:
        raise UserInputError(f"--orbit-views must be at least 1 (got {config.orbit_views})")


def _style_reference(config: EvalConfig, run_config: Any) -> tuple[Tensor | None, Path | None, str | None]:
    """The style image `[1, 3, H, W]`, its path, and why it is missing (None when present).

    An explicit --style-image that cannot be read is the user's error; a path stored in the run's config that has
    since moved only makes the style metrics null.
    """
    from styleme3d_ns.data.style_image import StyleImageError, load_style_image

    if config.style_image is not None:
        return load_style_image(config.style_image), config.style_image, None
    model = run_config.pipeline.model
    stored_paths = style_paths(getattr(model, "style_image", None))
    if not stored_paths:
        return None, None, "no style image: the run has none; pass --style-image PATH"
    look = getattr(model, "look", None)
    # the style the run shows (its look's palette entry); a viewer-added entry has no configured image: the first
    stored = stored_paths[look.style] if look is not None and look.style < len(stored_paths) else stored_paths[0]
    try:
        return load_style_image(stored), Path(stored), None
    except StyleImageError as err:
        return None, Path(stored), f"the run's style image is not readable ({err}); pass --style-image PATH"


def _base_cost(config: EvalConfig, base_info: dict[str, Any]) -> dict[str, Any]:
    """Cost of the base run, from the logs of --base-config's run or of the run the base checkpoint came from."""
    from styleme3d_ns.models.checkpoint import resolve_checkpoint

    if config.base_config is not None:
        return read_run_cost(config.base_config.parent)
    checkpoint = base_info.get("base_checkpoint")
    if checkpoint is None:
        return {"cost_note": "the base was reconstructed inside this run: its cost is part of the run's"}
    try:
        # <run>/nerfstudio_models/step-*.ckpt
        return read_run_cost(resolve_checkpoint(Path(checkpoint)).parent.parent)
    except UserInputError as err:
        return {"cost_note": f"base checkpoint no longer readable, so neither are its logs: {err}"}


# ------------------------------------------------------------------------------------------------ scoring
def content_scores(base: RenderedViews, stylised: RenderedViews, lpips: torch.nn.Module | None) -> dict[str, Any]:
    """Paper 000 Table 1: PSNR / SSIM / LPIPS of stylised vs base renders of the held-out views."""
    content: dict[str, Any] = {
        "psnr_db": mean_psnr(stylised.rgb, base.rgb),
        "ssim": mean_ssim(stylised.rgb, base.rgb),
        "lpips": mean_lpips(lpips, stylised.rgb, base.rgb) if lpips is not None else None,
    }
    if lpips is None:
        content["lpips_note"] = lpips_missing_note()
    return content


def _range_summary(
    pairs: list[ViewPair], base: list[PairError], stylised: list[PairError], pool: CameraPool
) -> dict[str, Any]:
    """Base vs stylised warped error of one range (short or long); pairs weighted by their valid pixels."""
    rmse_base = mean_defined([e.rmse for e in base], [e.valid_fraction for e in base])
    rmse_stylised = mean_defined([e.rmse for e in stylised], [e.valid_fraction for e in stylised])
    return {
        "pairs": [
            {
                "target": pool.label(p.target),
                "source": pool.label(p.source),
                "angle_deg": p.angle_deg,
                "rmse_base": b.rmse,
                "rmse_stylised": s.rmse,
                "valid_fraction": s.valid_fraction,
            }
            for p, b, s in zip(pairs, base, stylised, strict=True)
        ],  # fmt: skip
        "mean_angle_deg": mean_defined([p.angle_deg for p in pairs]),
        "rmse_base": rmse_base,
        "rmse_stylised": rmse_stylised,
        "rmse_increase": None if rmse_base is None or rmse_stylised is None else rmse_stylised - rmse_base,
        "valid_fraction": mean_defined([e.valid_fraction for e in stylised]),
        "lpips_base": mean_defined([e.lpips for e in base]),
        "lpips_stylised": mean_defined([e.lpips for e in stylised]),
    }


def _consistency(
    base: RenderedViews,
    stylised: RenderedViews,
    pool: CameraPool,
    ranges: dict[str, list[ViewPair]],
    config: EvalConfig,
    lpips: torch.nn.Module | None,
) -> dict[str, Any]:
    """StyleGaussian / SGSST short- and long-range warped error, base and stylised (each warped with its own depth)."""
    cameras = {i: PinholeCamera.from_cameras(pool[i]) for i in stylised.camera_indices}
    result: dict[str, Any] = {"depth_tolerance": config.depth_tolerance}
    for name, pairs in ranges.items():
        kw = {"depth_tolerance": config.depth_tolerance, "lpips": lpips}
        errors_base = pair_errors(base, cameras, pairs, **kw)
        errors_stylised = pair_errors(stylised, cameras, pairs, **kw)
        result[name] = _range_summary(pairs, errors_base, errors_stylised, pool)
    if lpips is None:
        result["lpips_note"] = lpips_missing_note()
    if not any(ranges.values()):
        result["note"] = "the run has a single camera: no pair of views to compare"
    return result


def identity_scores(
    reference: Any, stylised_rgb: Tensor, base_rgb: Tensor | None = None, *, face: FaceIdentity | None = None
) -> dict[str, Any]:
    """Identity of orbit renders against the input photo, by dlib's 128-d face descriptor (paper 001 Table 1 "ID").

    Args:
        reference: the input photo `[H, W, 3]` (uint8, or float in [0, 1]).
        stylised_rgb, base_rgb: orbit renders `[V, H, W, 3]` in [0, 1] (base optional).
        face: a loaded :class:`FaceIdentity`; default: loaded here (missing packages make the scores null).

    Returns:
        per render set (`_base` suffix for the base): `identity_similarity` (mean cosine of the descriptors over the
        views where a face is found; 1 = same direction), `identity_distance` (mean Euclidean distance, dlib's
        measure: the same person below 0.6) and `identity_views_with_face` (count); `identity_note` says why
        anything is null (no face models, no face in the photo or in any view).
    """
    sets = {"_base": base_rgb, "": stylised_rgb} if base_rgb is not None else {"": stylised_rgb}
    scores: dict[str, Any] = {"identity_model": "dlib ResNet face descriptor (128-d), same person below 0.6"}
    for suffix in sets:
        scores.update({f"identity_{key}{suffix}": None for key in ("similarity", "distance", "views_with_face")})
    try:
        face = face if face is not None else FaceIdentity()
    except MissingFaceModelsError as err:
        scores["identity_note"] = f"not computed: {err}"
        return scores
    box = face.detect(reference)
    if box is None:
        scores["identity_note"] = "not computed: no face found in the reference photo"
        return scores
    descriptor = face.embedding(reference, box)
    faceless = []
    for suffix, views in sets.items():
        summary = face.views_identity(descriptor, list(views))
        count = round(summary.detected * len(views))
        scores[f"identity_views_with_face{suffix}"] = count
        if count:
            scores[f"identity_similarity{suffix}"] = summary.cosine
            scores[f"identity_distance{suffix}"] = summary.distance
        else:
            faceless.append("base" if suffix else "stylised")
    if faceless:
        scores["identity_note"] = f"no face found in any {' or '.join(faceless)} orbit view: those scores are null"
    return scores


def _training_photo(pipeline: Any) -> tuple[Tensor, str]:
    """The run's first training image `[H, W, 3 or 4]` uint8 and its file: a portrait run's input photo."""
    dataset = pipeline.datamanager.train_dataset
    return dataset.get_image_uint8(0), str(dataset.image_filenames[0])


def _portrait(
    config: EvalConfig, pool: CameraPool, stylised_model: Any, base_model: Any | None, photo: tuple[Tensor, str]
) -> dict[str, Any]:
    """Paper 001 Table 1: mean saturation and identity to the input photo `photo` (image, file) over an orbit."""
    orbit = orbit_around_cameras(pool.camera_to_worlds(), pool[0], config.orbit_views)
    cams = [orbit[i : i + 1] for i in range(config.orbit_views)]
    ids = list(range(config.orbit_views))
    stylised, base = render_views(stylised_model, cams, ids, with_base=base_model is None)
    if base_model is not None:
        base, _ = render_views(base_model, cams, ids)
    reference, reference_file = photo
    return {
        "orbit_views": config.orbit_views,
        "saturation_base": mean_saturation(base.rgb, base.alpha),
        "saturation_stylised": mean_saturation(stylised.rgb, stylised.alpha),
        "identity_reference": reference_file,
        **identity_scores(reference, stylised.rgb, base.rgb),
    }


# ------------------------------------------------------------------------------------------------ output
def _sheet_path(config: EvalConfig) -> Path:
    return config.sheet or config.output.with_name(f"{config.output.stem}_sheet.png")


def _write_outputs(config: EvalConfig, metrics: dict[str, Any], sheet_rows: list[list[Tensor]], start: float) -> None:
    """The contact sheet and the metrics JSON, each whole or not at all, and together: the sheet is renamed into place
    only once the JSON is written, so a failed write leaves neither a temporary file nor a sheet without metrics."""
    sheet = _sheet_path(config)
    pixels = sheet_pixels(sheet_rows)
    with new_folders(sheet.parent), atomic_path(sheet, hint="free some space or choose another --sheet") as sheet_tmp:
        write_png(pixels, sheet_tmp)  # a plain write: the error of a failed write names the sheet, not this temp
        metrics["sheet"] = str(sheet)
        metrics["eval_seconds"] = time.perf_counter() - start
        write_json_atomic(config.output, metrics)


def _check_outputs_writable(config: EvalConfig) -> None:
    """Before any rendering: the JSON and the sheet can be written where asked (one line if not)."""
    for what, path in (("--output", config.output), ("--sheet", _sheet_path(config))):
        check_writable(path, what=what, hint="choose another path")


# ------------------------------------------------------------------------------------------------ driver
def _base_source(config: EvalConfig, run_config: Any) -> dict[str, Any]:
    """Describe where the base comes from; refuse runs that have no base to compare with."""
    model_config = run_config.pipeline.model
    if config.base_config is not None:
        return {"source": "base run", "config": str(config.base_config)}
    checkpoint = getattr(model_config, "base_checkpoint", None)
    if checkpoint is None and not style_paths(getattr(model_config, "style_image", None)):
        raise UserInputError(
            f"{config.load_config} is a reconstruction (no base checkpoint, no style image), so it has no base "
            "colours to compare with; pass --base-config <base run config.yml>"
        )
    source = {
        "source": "base colours stored in the run",
        "base_checkpoint": None if checkpoint is None else str(checkpoint),
    }
    if getattr(model_config, "train_opacity", False):
        source["note"] = "the run trained opacities: base renders use its trained opacities; pass --base-config"
    return source


def _load_base(config: EvalConfig, pool: CameraPool) -> Any:
    """The base run's model, after checking it was trained on the same cameras."""
    _, pipeline = load_pipeline(config.base_config)
    base_pool = CameraPool.from_pipeline(pipeline, config.resolution)
    same = len(base_pool) == len(pool) and torch.allclose(
        base_pool.camera_to_worlds(), pool.camera_to_worlds(), atol=1e-4
    )
    if not same:
        raise UserInputError(
            f"the base run {config.base_config} was trained on other cameras than {config.load_config} (different "
            "data or data-parser settings), so its renders cannot be compared view by view; pass the --base-config "
            "of the run this one was stylised from (same --data), or leave --base-config out to compare with the "
            "base colours stored in the run"
        )
    return pipeline.model


def _view_pairs(config: EvalConfig, pool: CameraPool) -> tuple[list[int], dict[str, list[ViewPair]]]:
    """The held-out views to score, and their short- and long-range partners among all cameras."""
    targets = list(range(pool.num_eval if config.max_views is None else min(config.max_views, pool.num_eval)))
    c2ws = pool.camera_to_worlds()
    ranges = {
        "short_range": select_pairs(c2ws, targets, 0.0),
        "long_range": select_pairs(c2ws, targets, config.long_range_deg),
    }
    return targets, ranges


def _render_both(
    model: Any, base_model: Any | None, cameras: list[Any], ids: list[int]
) -> tuple[RenderedViews, RenderedViews]:
    """Stylised and base renders of the same cameras: the base from its own run, or from the stored base colours."""
    stylised, base = render_views(model, cameras, ids, with_base=base_model is None)
    if base_model is not None:
        base, _ = render_views(base_model, cameras, ids)
    return stylised, base


def _consistency_dc_only(
    model: Any, base_model: Any | None, pool: CameraPool, ids: list[int], ranges: dict[str, list[ViewPair]],
    config: EvalConfig,
) -> dict[str, Any]:  # fmt: skip
    """The same warped errors with both splats rendered from their SH DC only, and the share view-dependent colour
    adds to the full renders' error (`view_dependent_added`: full / DC-only - 1)."""
    with sh_dc_only(model), sh_dc_only(base_model) if base_model is not None else contextlib.nullcontext():
        stylised, base = _render_both(model, base_model, [pool[i] for i in ids], ids)
    return _consistency(base, stylised, pool, ranges, config, None)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Render, score and write the JSON and contact sheet; returns the metrics as written."""
    _check(config)
    _check_outputs_writable(config)
    start = time.perf_counter()
    run_config, pipeline = load_pipeline(config.load_config)
    if hasattr(pipeline.model, "rig"):
        return _evaluate_portrait(config, run_config, pipeline, start)
    model, pool = pipeline.model, CameraPool.from_pipeline(pipeline, config.resolution)
    if pool.num_eval == 0:
        raise UserInputError(f"{config.load_config} has no evaluation (held-out) cameras to score")
    base_info = _base_source(config, run_config)
    targets, ranges = _view_pairs(config, pool)
    ids = sorted({*targets, *(p.source for pairs in ranges.values() for p in pairs)})
    base_model = _load_base(config, pool) if config.base_config is not None else None
    stylised, base = _render_both(model, base_model, [pool[i] for i in ids], ids)
    style, style_path, style_missing = _style_reference(config, run_config)
    lpips = getattr(model, "lpips", None)

    held_out_base, held_out_stylised = base.select(targets), stylised.select(targets)
    style_scores = (
        gram_scores(held_out_base.rgb, held_out_stylised.rgb, style)
        if style is not None
        else no_style_scores(style_missing)
    )
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run": str(config.load_config),
        "base": base_info,
        "style_image": None if style_path is None else str(style_path),
        "views": {"held_out": [pool.label(i) for i in targets], "height_width": list(stylised.rgb.shape[1:3])},
        "content": content_scores(held_out_base, held_out_stylised, lpips),
        "style": {
            **style_scores,
            **_clip(config, run_config, held_out_base, held_out_stylised, style),
            **csd_scores(held_out_base.rgb, held_out_stylised.rgb, style, config.csd_weights),
            **learned_style_scores(held_out_base.rgb, held_out_stylised.rgb, style),
            **texture_scores(held_out_base, held_out_stylised, style),
        },
        "consistency": _consistency(base, stylised, pool, ranges, config, lpips),
        "consistency_sh_dc_only": _consistency_dc_only(model, base_model, pool, ids, ranges, config),
        "portrait": _portrait(config, pool, model, base_model, _training_photo(pipeline)) if config.portrait else None,
        "cost": {"run": read_run_cost(config.load_config.parent), "base": _base_cost(config, base_info)},
    }
    metrics["consistency_sh_dc_only"]["view_dependent_added"] = view_dependent_share(
        metrics["consistency"], metrics["consistency_sh_dc_only"]
    )
    extra = [style[0].permute(1, 2, 0)] if style is not None else []
    rows = [[b, s, *extra] for b, s in zip(held_out_base.rgb, held_out_stylised.rgb, strict=True)]
    _write_outputs(config, metrics, rows, start)
    return metrics


def _evaluate_portrait(config: EvalConfig, run_config: Any, pipeline: Any, start: float) -> dict[str, Any]:
    """A generated portrait (sas-portrait) has no base to compare with: score it as paper 001 Table 1 does.

    Identity to the input photo (front view, and over a turntable of --orbit-views renders), CLIP similarity of the
    turntable to the style prompt (the photo's score as the reference), mean saturation, and the run's cost.
    """
    model = pipeline.model
    photo, photo_file = _training_photo(pipeline)
    reference = photo[..., :3].float() / 255.0
    front, _ = render_views(model, [model.rig.front()], [0])
    turntable = model.rig.turntable(config.orbit_views)
    orbit, _ = render_views(model, [turntable[i : i + 1] for i in range(config.orbit_views)], range(config.orbit_views))
    model_config = run_config.pipeline.model
    prompt = config.prompt or getattr(model_config, "style_prompt", None) or None
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run": str(config.load_config),
        "kind": "portrait",
        "portrait": {
            "orbit_views": config.orbit_views,
            "identity_reference": photo_file,
            "front": identity_scores(photo, front.rgb),
            **identity_scores(photo, orbit.rgb),
            "saturation": mean_saturation(orbit.rgb, orbit.alpha),
        },
        "style": clip_scores(
            reference[None],
            orbit.rgb,
            style=None,
            prompt=prompt,
            source_prompt=config.source_prompt,
            model_name=config.clip_model,
            pretrained=config.clip_pretrained,
        ),  # fmt: skip
        "cost": {"run": read_run_cost(config.load_config.parent)},
    }
    every = max(1, config.orbit_views // 4)
    columns = [reference, front.rgb[0], *(orbit.rgb[i] for i in range(0, config.orbit_views, every))][:6]
    _write_outputs(config, metrics, [columns], start)
    return metrics


def _clip(config: EvalConfig, run_config: Any, base: RenderedViews, stylised: RenderedViews, style: Tensor | None):  # noqa: ANN202
    """CLIP scores against the style image and the run's prompt (null with a note without CLIP weights)."""
    model_config = run_config.pipeline.model
    prompt = config.prompt or prompt_shown(model_config) or getattr(model_config, "style_prompt", None)
    return clip_scores(base.rgb, stylised.rgb, style=style, prompt=prompt, source_prompt=config.source_prompt,
                       model_name=config.clip_model, pretrained=config.clip_pretrained)  # fmt: skip


def _portrait_summary(metrics: dict[str, Any]) -> str:
    portrait, front = metrics["portrait"], metrics["portrait"]["front"]
    lines = [f"portrait: saturation {portrait['saturation']:.1f} over {portrait['orbit_views']} views"]
    if front.get("identity_distance") is not None:
        lines.append(f"front view identity: dlib distance {front['identity_distance']:.3f} (same person < 0.6)")
    else:
        lines.append(f"front view identity: {front.get('identity_note')}")
    if portrait.get("identity_distance") is not None:
        lines.append(
            f"turntable identity: distance {portrait['identity_distance']:.3f} on "
            f"{portrait['identity_views_with_face']} views with a face"
        )
    run = metrics["cost"]["run"]
    if run.get("wall_time_s") is not None:
        lines.append(f"generation time: {run['wall_time_s']:.0f} s")
    return "\n".join(lines)


def _summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal; the JSON holds everything."""
    if metrics.get("kind") == "portrait":
        return _portrait_summary(metrics)
    content, style, consistency = metrics["content"], metrics["style"], metrics["consistency"]
    lines = [f"content: PSNR {content['psnr_db']:.2f} dB, SSIM {content['ssim']:.3f}, LPIPS {content['lpips']}"]
    if style["gram_reduction"] is not None:
        lines.append(
            f"style: Gram distance {style['gram_distance_base']:.4g} -> {style['gram_distance_stylised']:.4g} "
            f"(reduction {style['gram_reduction']:.2f})"
        )
    if style.get("clip_text_score") is not None:
        lines.append(
            f"CLIP text score {style['clip_text_score_base']:.3f} -> {style['clip_text_score']:.3f}, "
            f"directional {style['clip_directional_similarity']:.3f}"
        )
    if style.get("clip_style_similarity") is not None:
        lines.append(
            f"CLIP style similarity {style['clip_style_similarity_base']:.3f} -> {style['clip_style_similarity']:.3f}"
        )
    if style.get("csd_similarity") is not None:
        lines.append(f"CSD style similarity {style['csd_similarity_base']:.3f} -> {style['csd_similarity']:.3f}")
    if style.get("learned_style_similarity") is not None:
        lines.append(
            f"learned style similarity {style['learned_style_similarity_base']:.3f} -> "
            f"{style['learned_style_similarity']:.3f}"
        )
    if style.get("patch_distance") is not None:
        lines.append(
            f"patch distance to the style {style['patch_distance_base']:.3f} -> {style['patch_distance']:.3f} "
            f"({100 * style['patch_reduction']:.0f}% closer); colour distance {style['colour_distance_base']:.3f} -> "
            f"{style['colour_distance']:.3f} ({100 * style['colour_reduction']:.0f}% closer)"
        )
    for name in ("short_range", "long_range"):
        r = consistency[name]
        if r["rmse_base"] is not None and r["rmse_stylised"] is not None:
            lines.append(f"{name}: warped RMSE base {r['rmse_base']:.4f} -> stylised {r['rmse_stylised']:.4f}")
    return "\n".join(lines)


def main(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation, turning user mistakes into one-line errors; print a summary."""
    with exit_on_user_error("styleme3d-eval"):
        metrics = evaluate(config)
    print(_summary(metrics))
    print(f"metrics: {config.output}\nsheet:   {metrics['sheet']}")
    return metrics


def entrypoint() -> None:
    """Console script `styleme3d-eval`."""
    main(tyro.cli(EvalConfig))


if __name__ == "__main__":
    entrypoint()
