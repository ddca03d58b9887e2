"""The batch contact sheet: one PNG per method, scene rows x style columns, to compare a whole grid at a glance.

Layout: the top row shows each style (its image, or its prompt as text), the first column each scene's base render,
and each cell the stylised render of the scene's first held-out view. Renders are the first row of each job's
`eval_sheet.png` (styleme3d-eval's base | stylised | style strip, every tile the render's size), so nothing is
rendered again. A job without metrics shows a grey "failed" or "missing" tile.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from styleme3d_ns.batch.grid import Grid, Style
from styleme3d_ns.batch.jobs import Job, JobResult
from styleme3d_ns.core.atomic import atomic_path

TILE_HEIGHT = 160
"""Height of every tile in pixels (renders are scaled up or down to it, aspect kept)."""
LABEL_HEIGHT = 16


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def render_tiles(job: Job) -> tuple[Image.Image, Image.Image] | None:
    """(base, stylised) first held-out view of a scored job, cut from its eval sheet; None when it has none."""
    try:
        height, width = json.loads(job.metrics.read_text())["views"]["height_width"]
        with Image.open(job.eval_sheet) as sheet:
            sheet = sheet.convert("RGB")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sheet.crop((0, 0, width, height)), sheet.crop((width, 0, 2 * width, height))


def _labelled(image: Image.Image, label: str, size: tuple[int, int]) -> Image.Image:
    """`image` fitted (centre crop) to `size` with `label` on a dark strip at the top."""
    tile = ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.BICUBIC)
    if label:
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, size[0], LABEL_HEIGHT), fill=(20, 20, 20))
        draw.text((3, 1), label[: max(4, size[0] // 7)], fill=(255, 255, 255), font=_font())
    return tile


def _text_tile(text: str, size: tuple[int, int], label: str = "", shade: int = 255) -> Image.Image:
    """A plain tile showing wrapped `text` (a prompt, or why a cell is empty)."""
    tile = Image.new("RGB", size, (shade, shade, shade))
    draw = ImageDraw.Draw(tile)
    wrapped = "\n".join(textwrap.wrap(text, width=max(8, size[0] // 7))[:8])
    draw.multiline_text((4, LABEL_HEIGHT + 4), wrapped, fill=(30, 30, 30), font=_font())
    return _labelled(tile, label, size)


def _style_tile(style: Style, size: tuple[int, int]) -> Image.Image:
    if style.image is not None:
        try:
            with Image.open(style.image) as image:
                return _labelled(image, style.name, size)
        except OSError:
            pass
    return _text_tile(style.prompt or str(style.image), size, style.name)


def method_sheet(grid: Grid, method: str, jobs: list[Job], results: dict[str, JobResult]) -> Image.Image:
    """The sheet of one method column: its styles across, scenes down, base renders in the first column."""
    stylised = [j for j in jobs if j.kind == "stylise"]
    tiles = {j.id: render_tiles(j) for j in stylised}
    cells = {(j.scene, j.style): j for j in stylised if j.method == method}
    styles = [s for s in grid.styles if any(key[1] == s.name for key in cells)]  # styles the method can take
    first = next((t for t in tiles.values() if t is not None), None)
    width = TILE_HEIGHT if first is None else max(1, round(TILE_HEIGHT * first[0].width / first[0].height))
    size = (width, TILE_HEIGHT)
    sheet = Image.new("RGB", ((len(styles) + 1) * width, (len(grid.scenes) + 1) * TILE_HEIGHT), (255, 255, 255))
    sheet.paste(_text_tile(f"{method}: scenes x styles", size), (0, 0))
    for c, style in enumerate(styles, start=1):
        sheet.paste(_style_tile(style, size), (c * width, 0))
    for r, scene in enumerate(grid.scenes, start=1):
        # the base render is the same for every job of the scene: take it from any scored one
        base = next((tiles[j.id][0] for j in stylised if j.scene == scene.name and tiles[j.id] is not None), None)
        first_tile = (
            _labelled(base, scene.name, size) if base is not None else _text_tile("no render", size, scene.name)
        )
        sheet.paste(first_tile, (0, r * TILE_HEIGHT))
        for c, style in enumerate(styles, start=1):
            job = cells.get((scene.name, style.name))
            pair = tiles[job.id] if job is not None else None
            if pair is not None:
                tile = _labelled(pair[1], "", size)
            else:
                why = "left out (method cannot take this style)" if job is None else "failed"
                tile = _text_tile(why if job is None or job.id in results else "not run", size, shade=200)
            sheet.paste(tile, (c * width, r * TILE_HEIGHT))
    return sheet


def write_contact_sheets(grid: Grid, jobs: list[Job], results: dict[str, JobResult]) -> list[Path]:
    """Write `contact_sheet_<method>.png` per method column into the output folder (atomically); their paths."""
    paths = []
    for method in grid.methods:
        image = method_sheet(grid, method.label, jobs, results)
        path = grid.output_dir / f"contact_sheet_{method.label}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        paths.append(path)
    return paths
