"""LookControls (models/viewer_controls.py): widgets map to the look, install into viser, add a style, crop box."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import torch
import viser
from nerfstudio.data.scene_box import OrientedBox

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.look import LookConfig
from styleme3d_ns.models.viewer_controls import NO_BLEND, LookControls, unique_names

NAMES = ["starry", "wave", "starry"]


class Recorder:
    """on_change hook that keeps every look it is given."""

    def __init__(self) -> None:
        self.looks: list[LookConfig] = []

    def __call__(self, look: LookConfig) -> None:
        self.looks.append(look)


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "viser did not run the widget callback in time"
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[viser.ViserServer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = viser.ViserServer(host="127.0.0.1", port=port, verbose=False)
    yield server
    server.stop()


def test_widgets_set_the_look_and_show_only_what_applies() -> None:
    changes = Recorder()
    controls = LookControls(LookConfig(), NAMES, on_change=changes)
    assert controls.names == unique_names(NAMES) == ["starry", "wave", "starry (2)"]
    assert not controls.blend.visible and not controls.box_center.visible and not controls.add_style.visible
    controls.set_value(controls.style, "starry (2)")
    controls.set_value(controls.strength, 0.4)
    controls.set_value(controls.blend_to, "wave")
    controls.set_value(controls.blend, 0.25)
    controls.set_value(controls.preserve_colour, "base-colour")
    controls.set_value(controls.region, "outside")
    controls.set_value(controls.box_size, (2.0, 0.5, 1.0))
    expected = LookConfig(style=2, strength=0.4, blend_to=1, blend=0.25, preserve_colour="base-colour",
                          region="outside", box_size=(2.0, 0.5, 1.0))  # fmt: skip
    assert controls.look == expected and changes.looks[-1] == expected and len(changes.looks) == 7
    assert controls.blend.visible and controls.box_center.visible and controls.box_from_crop.visible
    controls.set_value(controls.blend_to, NO_BLEND)
    assert controls.look.blend_to is None and not controls.blend.visible


def test_installed_widgets_are_in_reading_order_and_a_gui_change_reaches_the_model(server) -> None:
    changes = Recorder()
    controls = LookControls(LookConfig(style=1), NAMES, on_change=changes, on_add_style=lambda path, report: NAMES)
    controls.install(server)
    labels = [w.gui_handle._impl.label for w in controls.widgets]  # viser 0.2.7 keeps labels on the handle's impl
    assert labels == ["Style", "Strength", "Blend to", "Blend", "Keep colour", "Region", "Box center", "Box size",
                      "Box rotation", "Box from crop", "Style image", "Add style"]  # fmt: skip
    orders = [w.gui_handle.order for w in controls.widgets]
    assert orders == sorted(orders)
    assert {w.gui_handle._impl.parent_container_id for w in controls.widgets} == {controls.gui_handle._id}
    assert controls.style.gui_handle.value == "wave" and controls.style.gui_handle.options == tuple(controls.names)
    controls.strength.gui_handle.value = 0.3  # as a browser's update does: viser runs callbacks in a thread
    _wait_for(lambda: bool(changes.looks))
    assert changes.looks[-1] == LookConfig(style=1, strength=0.3)


def test_add_style_runs_the_models_hook_and_selects_the_new_entry(server) -> None:
    calls = []

    def add(path: str, report: Callable[[str], None]) -> list[str]:
        report("solving 50%")
        calls.append((path, controls.status))
        if path.endswith(".txt"):
            raise UserInputError(f"style image {path} is not an image: give a .png or .jpg")
        return [*NAMES, "mosaic"]

    controls = LookControls(LookConfig(strength=0.5), NAMES, on_add_style=add)
    controls.install(server)
    controls.add_style.cb_hook(controls.add_style)  # what a click runs
    assert calls == [] and "path" in controls.status
    controls.set_value(controls.style_path, " notes.txt ")
    controls.add_style.cb_hook(controls.add_style)
    assert calls == [("notes.txt", "solving 50%")] and controls.status.startswith("Not added: style image notes.txt")
    controls.set_value(controls.style_path, "mosaic.png")
    controls.add_style.cb_hook(controls.add_style)
    assert controls.status == "Added mosaic." and controls._status.content == "Added mosaic."
    assert controls.style.gui_handle.options == ("starry", "wave", "starry (2)", "mosaic")
    assert controls.look == LookConfig(style=3, strength=0.5)


def test_box_from_crop_copies_the_viewers_crop_box() -> None:
    controls = LookControls(LookConfig(), NAMES)
    controls.copy_crop_box()
    assert "No viewer crop box" in controls.status and controls.look.region == "all"
    crop = OrientedBox.from_params((0.1, 0.2, -0.3), (0.2, -0.4, 1.0), (0.5, 0.6, 0.7))
    controls.viewer = SimpleNamespace(control_panel=SimpleNamespace(crop_obb=crop))  # as ViewerControl._setup does
    controls.copy_crop_box()
    look = controls.look
    assert look.region == "inside"
    torch.testing.assert_close(look.box().R, crop.R, rtol=0, atol=1e-6)
    assert look.box_center == pytest.approx((0.1, 0.2, -0.3))
    assert look.box_size == pytest.approx((0.5, 0.6, 0.7))
