"""Full-size crops of `bench_strokes.py`'s runs: base | each variant (before | default | detail unless `--variants`),
one row per (folder, style).

Each tile is a 256 px square cut at 1:1 from the first held-out view of the `styleme3d-eval` sheets (512 px views),
at the given top-left corner, so strokes, bands and blotches show at the size a person sees them.

Usage (the picture in docs/styleme3d.md, "Stroke size and detail at 512 px"):
    python scripts/crops_strokes.py --out docs/img/strokes_512_crops.png \
        --row /tmp/bs2 immunohistochemistry 150 200 "still life" --row /tmp/bs2 brick 150 200 "still life" \
        --row /tmp/bd immunohistochemistry 128 200 "demo scene" --row /tmp/bd brick 128 200 "demo scene"
    python scripts/crops_strokes.py --variants default fine detail --out docs/img/strokes_512_fine_crops.png ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE, VIEW = 256, 512
LABELS = {"before": "before", "default": "default", "fine": "stroke-size 1/32", "detail": "detail"}
"""bench_strokes.py's variants and their tiles' labels."""


def row_tiles(folder: Path, style: str, x: int, y: int, variants: list[str]) -> list[Image.Image]:
    """The base tile (the sheets' first column) and each variant's stylised tile (second column)."""
    base = Image.open(folder / f"{style}_default.png").crop((x, y, x + TILE, y + TILE))
    tiles = [Image.open(folder / f"{style}_{v}.png").crop((VIEW + x, y, VIEW + x + TILE, y + TILE)) for v in variants]
    return [base, *tiles]


def labelled_sheet(rows: list[list[tuple[str, Image.Image]]], tile: int, font_size: int) -> Image.Image:
    """Square tiles of side `tile`, each under its label, one sheet row per list of (label, image)."""
    band = font_size + 14
    font = ImageFont.load_default(size=font_size)
    sheet = Image.new("RGB", (tile * max(len(r) for r in rows), (tile + band) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = r * (tile + band)
        for k, (label, image) in enumerate(row):
            sheet.paste(image.convert("RGB"), (k * tile, top + band))
            draw.text((k * tile + 6, top + 5), label, fill="black", font=font)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", nargs=5, action="append", required=True, metavar=("FOLDER", "STYLE", "X", "Y", "NAME"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=tuple(LABELS), default=["before", "default", "detail"])
    args = parser.parse_args()
    rows = []
    for folder, style, x, y, name in args.row:
        labels = [f"base ({name})"] + [f"{LABELS[v]} ({style})" if v == "default" else LABELS[v] for v in args.variants]
        tiles = row_tiles(Path(folder), style, int(x), int(y), args.variants)
        rows.append(list(zip(labels, tiles, strict=True)))
    sheet = labelled_sheet(rows, TILE, 16)
    sheet.save(args.out)
    print(f"wrote {args.out}: {sheet.size[0]} x {sheet.size[1]} px")


if __name__ == "__main__":
    main()
