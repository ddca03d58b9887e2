"""`ns-viewer` driven from a real browser: Debian's headless chromium under Playwright, against 127.0.0.1.

The helpers find viser's GUI controls by their visible label (viser renders ``<label for=id>`` beside each input),
pick dropdown entries and move sliders with the keyboard as a user would, and read the 3D canvas (nerfstudio draws
each rendered frame into it) as pixels. The run shown is the stylised fixture with a second palette entry written
into a copy of its checkpoint, so the Style dropdown has another look to switch to. Playwright's own browser
download is not used: `executable_path` points at the system chromium (`apt-get install chromium`,
scripts/install.sh), WebGL through SwiftShader.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from styleme3d_ns.models.palette import StylePalette
from tests.test_palette import second_style
from tests.test_viewer import _free_port, _stop, _tail, _wait_for_listener

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
GUI_TIMEOUT_MS = 60_000  # page load -> the control panel is built
SETTLE_TIMEOUT_S = 60.0  # a control change -> the canvas shows the new, full-resolution frame
STABLE_S = 2.0  # unchanged this long = the full-resolution frame, not the preview
PANEL_SCREENSHOT = Path(os.environ.get("STYLEME3D_PANEL_SCREENSHOT", "/tmp/styleme3d_viewer_panel.png"))

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


PALETTE = "_model.palette."  # the palette's keys in a checkpoint's pipeline state


def with_second_style(run: Path, output_dir: Path) -> Path:
    """A copy of the stylised run `run` (its config.yml) under `output_dir` whose checkpoint holds a second palette
    entry, "second" (`second_style` of the live colours); returns the copy's config.yml. The original is only read."""
    config = yaml.load(run.read_text(), Loader=yaml.Loader)
    checkpoint = sorted((run.parent / "nerfstudio_models").glob("step-*.ckpt"))[-1]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    pipeline = state["pipeline"]
    palette = StylePalette(0, 0)
    palette.load_state_dict({k.removeprefix(PALETTE): v for k, v in pipeline.items() if k.startswith(PALETTE)})
    dc, rest = pipeline["_model.gauss_params.features_dc"], pipeline["_model.gauss_params.features_rest"]
    palette.append(*second_style(dc, rest), "second")
    pipeline.update({PALETTE + k: v for k, v in palette.state_dict().items()})
    config.output_dir = output_dir
    config.save_config()
    config.get_checkpoint_dir().mkdir(parents=True)
    torch.save(state, config.get_checkpoint_dir() / checkpoint.name)
    return config.get_base_dir() / "config.yml"


@contextlib.contextmanager
def ns_viewer(config: Path, log: Path) -> Iterator[str]:
    """Run `ns-viewer --load-config config` on a free loopback port; yield its URL, stop it afterwards."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    cmd = [str(Path(sys.executable).with_name("ns-viewer")), "--load-config", str(config),
           "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        _wait_for_listener(proc, port, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def browser_page(url: str, width: int = 1000, height: int = 1400) -> Iterator:  # noqa: ANN401 - playwright Page
    """A headless chromium page showing the viewer at `url`, once its control panel is built."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.get_by_label("Output type", exact=True).wait_for(timeout=GUI_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def control_row(page, label: str):  # noqa: ANN001, ANN201 - playwright Page / Locator
    """The GUI row (label + input) whose label reads `label`."""
    return page.locator("div.mantine-Flex-root", has=page.get_by_text(label, exact=True)).last


def pick(page, label: str, option: str) -> None:  # noqa: ANN001
    """Open the dropdown labelled `label` and click `option`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def slide(page, label: str, key: str) -> None:  # noqa: ANN001
    """Move the slider labelled `label` with a key (Home = minimum, End = maximum, ArrowLeft/Right = one step)."""
    control_row(page, label).get_by_role("slider").press(key)


def panel_box(page) -> dict[str, float]:  # noqa: ANN001
    """The control panel's box on the page: it floats over the right of the canvas, from its rows' left edge."""
    left = control_row(page, "Output type").bounding_box()["x"] - 16
    viewport = page.viewport_size
    return {"x": left, "y": 0, "width": viewport["width"] - left, "height": viewport["height"]}


def canvas_pixels(page) -> np.ndarray:  # noqa: ANN001
    """The 3D canvas left of the control panel as [H, W, 3] float32 in [0, 255]."""
    canvas = page.locator("canvas").first.bounding_box()
    clip = {"x": canvas["x"], "y": canvas["y"], "width": panel_box(page)["x"] - canvas["x"], "height": canvas["height"]}
    png = page.screenshot(clip=clip)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def settled_frame(
    page, differs_from: np.ndarray | None = None, min_change: float = 2.0, close_to: np.ndarray | None = None,  # noqa: ANN001
    stable_s: float = STABLE_S,
) -> np.ndarray:  # fmt: skip
    """The canvas once it has not changed for `stable_s` (nerfstudio first shows a low-resolution preview, then the
    full frame) and, if given, differs from `differs_from` by `min_change` mean grey levels (the new frame came).

    With `close_to`, a settled frame further than 1 grey level from it is taken as a preview that stayed up for a
    while on a busy machine: waiting goes on, and at the deadline the last settled frame is returned (so the caller's
    comparison fails with the real difference)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    previous, stable_since, last = canvas_pixels(page), time.monotonic(), None
    while time.monotonic() < deadline:
        time.sleep(0.25)
        current = canvas_pixels(page)
        if np.abs(current - previous).mean() >= 0.05:
            previous, stable_since = current, time.monotonic()
            continue
        arrived = differs_from is None or np.abs(current - differs_from).mean() > min_change
        if arrived and time.monotonic() - stable_since >= stable_s:
            if close_to is None or mean_abs(current, close_to) < 1.0:
                return current
            last = current
    if last is not None:
        return last
    raise AssertionError(f"the canvas did not settle on a new frame within {SETTLE_TIMEOUT_S:.0f} s")


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_browser_controls_change_the_rendered_canvas(stylised_run: Path, tmp_path: Path) -> None:
    log = tmp_path / "ns-viewer.log"
    run = with_second_style(stylised_run, tmp_path / "runs")
    with ns_viewer(run, log) as url, browser_page(url) as page:
        styled = settled_frame(page, stable_s=2 * STABLE_S)  # the first full frame, not its preview
        assert styled.std() > 4.0, f"flat canvas (no splat drawn):\n{_tail(log)}"
        pick(page, "Output type", "content_rgb")  # the base colours, rendered in the same pass
        base = settled_frame(page, differs_from=styled)
        assert mean_abs(base, styled) > 2.0
        pick(page, "Output type", "rgb")
        assert mean_abs(settled_frame(page, differs_from=base, close_to=styled), styled) < 1.0

        page.get_by_text("Strength", exact=True).scroll_into_view_if_needed()  # the model's look controls
        page.mouse.move(0, 0)  # no tooltip over the panel
        page.screenshot(path=str(PANEL_SCREENSHOT), clip=panel_box(page))
        slide(page, "Strength", "Home")  # strength 0 = the base colours
        assert mean_abs(settled_frame(page, differs_from=styled, close_to=base), base) < 1.0
        slide(page, "Strength", "End")
        assert mean_abs(settled_frame(page, differs_from=base, close_to=styled), styled) < 1.0

        pick(page, "Style", "second")  # the other palette entry
        second = settled_frame(page, differs_from=styled)
        assert min(mean_abs(second, styled), mean_abs(second, base)) > 2.0
        slide(page, "Strength", "Home")  # strength 0 is the base whichever style is picked
        assert mean_abs(settled_frame(page, differs_from=second, close_to=base), base) < 1.0
