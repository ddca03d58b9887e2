"""Loading the style reference image, with one-line errors a user can act on.

Accepted: anything PIL reads as 8-bit RGB, greyscale, palette or bilevel, with or without alpha. Greyscale/palette
images are expanded to RGB; an alpha channel is composited over white (transparent areas of a style PNG are
"paper", and black would inject dark colours into the style statistics), both with a warning. Rejected with
:class:`StyleImageError`: missing or unreadable files, and modes with no faithful 8-bit RGB reading (16-bit or float
TIFF/PNG, CMYK, LAB, YCbCr, multi-band images). Warned about, then used: images under :data:`MIN_STYLE_SIDE` pixels
on a side, and animated images (GIF, APNG, WebP), read as their first frame.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError

# 8-bit modes whose conversion to RGB is lossless up to dropping alpha.
_RGB_MODES = {"RGB"}
_CONVERTIBLE_MODES = {"L", "P", "1", "RGBA", "LA", "PA", "RGBa", "La"}
_FIX = "save it as an 8-bit RGB PNG or JPG"
MIN_STYLE_SIDE = 32
"""Shorter sides below this many pixels are warned about. The deepest style taps (VGG r51, EfficientNet block4) see
the image at 1/16 of its size: a smaller image gives them at most one feature cell, a flat colour, no texture."""


def _warn_once(message: str) -> None:
    # Attributed to this line, not the caller's: Python's default filter then shows a message once per process,
    # although the pre-flight and the model both read the image (pytest.warns still sees every call).
    warnings.warn(message, UserWarning, stacklevel=1)


class StyleImageError(UserInputError):
    """The style image cannot be used; the message is one line naming the path and the fix."""


def _error(path: Path, problem: str, fix: str = _FIX) -> StyleImageError:
    return StyleImageError(" ".join(f"Style image '{path}': {problem}; {fix}.".split()))


def load_style_image(path: str | Path, max_side: int | None = 512) -> Tensor:
    """Read a style image as a float tensor ``[1, 3, H, W]`` in [0, 1].

    Args:
        path: PNG/JPG (or any 8-bit image PIL reads).
        max_side: If the longer side exceeds this, downscale (Lanczos, aspect kept) so it equals it; ``None`` keeps
            the full size. 512 keeps style Gram matrices cheap while retaining brush-stroke detail.

    Raises:
        StyleImageError: missing/unreadable file or a mode with no faithful RGB reading.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise _error(path, what, "check the path (e.g. --style-image PATH)")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            img.load()
            image = img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _error(path, f"cannot be read as an image ({type(err).__name__})", f"re-export it; {_FIX}") from None

    if min(image.size) < MIN_STYLE_SIDE:
        _warn_once(
            f"Style image '{path}' is only {image.width}x{image.height} pixels: the style network downsamples by 16, "
            f"so below {MIN_STYLE_SIDE} px it sees little more than a flat colour; use a picture of 256 px or more."
        )
    if frames > 1:
        _warn_once(f"Style image '{path}' is animated ({frames} frames): only the first frame is used as the style.")
    mode = image.mode
    if mode not in _RGB_MODES | _CONVERTIBLE_MODES:
        raise _error(path, f"has pixel mode '{mode}' ({len(image.getbands())} bands), not 8-bit RGB/greyscale", _FIX)
    if mode in _CONVERTIBLE_MODES:
        has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in image.info)
        if has_alpha:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            note = "alpha composited over white"
        else:
            image = image.convert("RGB")
            note = "expanded to RGB"
        _warn_once(f"Style image '{path}' has mode '{mode}': {note}.")

    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)

    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div_(255.0)
