"""load_style_image: valid images load as [1, 3, H, W] in [0, 1]; every failure is one line naming path and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleme3d_ns.data.style_image import StyleImageError, load_style_image


def _assert_one_line_error(path: Path, match: str) -> StyleImageError:
    with pytest.raises(StyleImageError, match=match) as info:
        load_style_image(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert isinstance(info.value, ValueError)
    return info.value


def test_rgb_png_loads_as_unit_range_tensor(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "s.png")
    img = load_style_image(tmp_path / "s.png")
    assert img.shape == (1, 3, 20, 30) and img.dtype.is_floating_point
    assert np.allclose(img[0].permute(1, 2, 0).numpy() * 255, arr, atol=1e-3)


def test_rgba_is_composited_to_rgb_with_warning(tmp_path: Path) -> None:
    arr = np.zeros((8, 10, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red, fully transparent: composited over white stays white
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="RGBA"):
        img = load_style_image(tmp_path / "a.png")
    assert img.shape == (1, 3, 8, 10) and float(img.min()) == 1.0


def test_greyscale_jpg_is_expanded_to_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((12, 9), 128, dtype=np.uint8), "L").save(tmp_path / "g.jpg")
    with pytest.warns(UserWarning, match="'L'"):
        img = load_style_image(tmp_path / "g.jpg")
    assert img.shape == (1, 3, 12, 9) and abs(float(img.mean()) - 128 / 255) < 0.01


def test_large_image_is_downscaled_to_max_side(tmp_path: Path) -> None:
    Image.new("RGB", (1000, 500), (10, 20, 30)).save(tmp_path / "big.png")
    assert load_style_image(tmp_path / "big.png", max_side=256).shape == (1, 3, 128, 256)
    assert load_style_image(tmp_path / "big.png", max_side=None).shape == (1, 3, 500, 1000)


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    _assert_one_line_error(tmp_path / "missing.png", "does not exist")


def test_directory_is_a_one_line_error(tmp_path: Path) -> None:
    _assert_one_line_error(tmp_path, "directory")


def test_corrupt_bytes_are_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _assert_one_line_error(tmp_path / "bad.png", "cannot be read")


def test_truncated_jpeg_is_a_one_line_error(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    _assert_one_line_error(tmp_path / "t.jpg", "cannot be read")


def test_16_bit_png_is_rejected_in_one_line(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    err = _assert_one_line_error(tmp_path / "deep.png", "pixel mode")
    assert "8-bit RGB" in str(err)


def test_float_tiff_is_rejected_in_one_line(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).random((8, 8), dtype=np.float32), "F").save(tmp_path / "f.tif")
    _assert_one_line_error(tmp_path / "f.tif", "'F'")


def test_cmyk_is_rejected_in_one_line(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8)).save(tmp_path / "c.jpg")
    _assert_one_line_error(tmp_path / "c.jpg", "'CMYK'")
