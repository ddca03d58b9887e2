"""The look's controls in nerfstudio's viser viewer: style, strength, two-style blend, colour, region, add a style.

nerfstudio 1.1.5's `Viewer` scans the pipeline (`viewer/utils.py::parse_object`) for `ViewerElement` attributes of
the model and of its `nn.Module` children, installs each inside its "Custom Elements" folder of the Control tab,
and rewires the element's `cb_hook` to run under the trainer's lock and then re-render every client
(`Viewer._trigger_rerender`). It orders elements by attribute name, so `LookControls` is one composite element
that installs its widgets itself, in reading order, and calls its own (rewired) `cb_hook` whenever one of them
changes. It is also a `ViewerControl`: the viewer hands those its own instance (`ViewerControl._setup`), which is
how the region box can be copied from the viewer's crop box.

The model's style palette owns one (:meth:`~styleme3d_ns.models.palette.StylePalette.make_controls`); each change
calls its `on_change(look)`, which checks the look and stores it as the model's `config.look`, what every render
reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import viser.transforms as vtf
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
    ViewerParameter,
    ViewerSlider,
    ViewerText,
    ViewerVec3,
)
from viser import ViserServer

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.look import COLOUR_PRESERVATION, REGIONS, LookConfig

NO_BLEND = "none"
"""The blend-to entry meaning no second style."""

Report = Callable[[str], None]
"""Shows one line of progress or status text under the add-style button."""
AddStyle = Callable[[str, Report], Sequence[str]]
"""The model's add-style hook: (image path, report) -> the palette's names afterwards (the new entry last)."""


def unique_names(names: Sequence[str]) -> list[str]:
    """Palette names as dropdown entries: repeated names get " (2)", " (3)", ... so each picks one index."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


class LookControls(ViewerElement[LookConfig], ViewerControl):
    """Viewer widgets bound to a `LookConfig`; any change calls `on_change(look)` and re-renders.

    Args:
        look: the initial look (copied; the live one is `self.look`).
        palette_names: one display name per palette entry (e.g. the style images' file stems).
        on_change: called with the new look after every widget change (under the viewer's lock when installed).
        on_add_style: the model's hook for "Add style" (runs in a viewer worker thread, may take seconds and call
            `report` with progress); None hides the add-style widgets.
        folder: label of the folder holding the widgets.
    """

    def __init__(
        self,
        look: LookConfig,
        palette_names: Sequence[str],
        on_change: Callable[[LookConfig], None] = lambda look: None,
        on_add_style: AddStyle | None = None,
        folder: str = "Style look",
    ) -> None:
        super().__init__(folder, cb_hook=lambda element: on_change(element.look))
        self.look = replace(look)
        self.names = unique_names(palette_names)
        self._on_add_style = on_add_style
        self._adding = threading.Lock()
        self._status: Any = None  # viser markdown handle once installed
        self._status_text = ""
        names, hooked = self.names, self._widget_changed
        self.style = ViewerDropdown("Style", names[look.style], names, cb_hook=hooked, hint="Palette entry shown")
        self.strength = ViewerSlider("Strength", look.strength, 0.0, 1.0, 0.05, cb_hook=hooked,
                                     hint="0 = the base colours, 1 = the style")  # fmt: skip
        blend_to = NO_BLEND if look.blend_to is None else names[look.blend_to]
        self.blend_to = ViewerDropdown("Blend to", blend_to, [NO_BLEND, *names], cb_hook=hooked,
                                       hint="A second style to interpolate towards")  # fmt: skip
        self.blend = ViewerSlider("Blend", look.blend, 0.0, 1.0, 0.05, cb_hook=hooked,
                                  hint="0 = Style, 1 = Blend to", visible=look.blend_to is not None)  # fmt: skip
        self.preserve_colour = ViewerDropdown("Keep colour", look.preserve_colour, list(COLOUR_PRESERVATION),
                                              cb_hook=hooked, hint="base-colour: base hues with the style's "
                                              "luminance; style-colour: the reverse")  # fmt: skip
        self.region = ViewerDropdown("Region", look.region, list(REGIONS), cb_hook=hooked,
                                     hint="Stylise everywhere, or only inside / outside the box")  # fmt: skip
        boxed = look.region != "all"
        self.box_center = ViewerVec3("Box center", _vec3(look.box_center), step=0.01, cb_hook=hooked, visible=boxed)
        self.box_size = ViewerVec3("Box size", _vec3(look.box_size), step=0.01, cb_hook=hooked, visible=boxed)
        self.box_rotation = ViewerVec3(
            "Box rotation", _vec3(look.box_rotation), step=0.01, cb_hook=hooked, visible=boxed
        )
        self.box_from_crop = ViewerButton("Box from crop", cb_hook=lambda _: self.copy_crop_box(), visible=boxed)
        self.style_path = ViewerText("Style image", "", hint="Path of an image to add to the palette",
                                     visible=on_add_style is not None)  # fmt: skip
        self.add_style = ViewerButton("Add style", cb_hook=lambda _: self._add_style_clicked(),
                                      visible=on_add_style is not None)  # fmt: skip

    # ------------------------------------------------------------------ widgets -> look
    @property
    def widgets(self) -> list[ViewerElement]:
        """The widgets in the order they are shown."""
        return [self.style, self.strength, self.blend_to, self.blend, self.preserve_colour, self.region,
                self.box_center, self.box_size, self.box_rotation, self.box_from_crop, self.style_path,
                self.add_style]  # fmt: skip

    def read_look(self) -> LookConfig:
        """The look the widgets show now."""
        blend_to = None if self.blend_to.value == NO_BLEND else self.names.index(self.blend_to.value)
        return replace(
            self.look,
            style=self.names.index(self.style.value),
            strength=float(self.strength.value),
            blend_to=blend_to,
            blend=float(self.blend.value),
            preserve_colour=self.preserve_colour.value,
            region=self.region.value,
            box_center=_vec3(self.box_center.value),
            box_size=_vec3(self.box_size.value),
            box_rotation=_vec3(self.box_rotation.value),
        )

    def _widget_changed(self, _: ViewerElement) -> None:
        self.look = self.read_look()
        self._show(self.blend, self.look.blend_to is not None)
        for widget in (self.box_center, self.box_size, self.box_rotation, self.box_from_crop):
            self._show(widget, self.look.region != "all")
        self.cb_hook(self)  # looked up now: the viewer rewires it to lock, notify and re-render

    def _show(self, widget: ViewerElement, visible: bool) -> None:
        if widget.gui_handle is None:
            widget.visible = visible
        else:
            widget.set_visible(visible)

    # ------------------------------------------------------------------ viewer side
    def install(self, viser_server: ViserServer) -> None:
        """Create the folder and its widgets on `viser_server` (the viewer calls this)."""
        self.gui_handle = viser_server.gui.add_folder(self.name)
        with self.gui_handle:
            for widget in self.widgets:
                widget.install(viser_server)
            self._status = viser_server.gui.add_markdown(self._status_text, visible=self._on_add_style is not None)

    def _create_gui_handle(self, viser_server: ViserServer) -> None:
        self.install(viser_server)

    def report(self, text: str) -> None:
        """Show one line of status text under the add-style button."""
        self._status_text = text
        if self._status is not None:
            self._status.content = text

    @property
    def status(self) -> str:
        """The status text shown."""
        return self._status_text

    def set_palette(self, palette_names: Sequence[str], select: int | None = None, rerender: bool = True) -> None:
        """Replace the palette's entries in both dropdowns, keeping the current choice (or showing `select`).

        `rerender=False` from the training thread: the viewer's rewired hook takes the trainer's lock, which that
        thread holds; an installed dropdown whose value changes re-renders through viser's worker threads anyway.
        """
        look = self.look
        self.names = unique_names(palette_names)
        keep = lambda index: self.names[index] if index is not None and index < len(self.names) else None  # noqa: E731
        self.style.set_options(self.names)
        self.blend_to.set_options([NO_BLEND, *self.names])
        self.blend_to.value = keep(look.blend_to) or NO_BLEND
        self.style.value = self.names[select] if select is not None else keep(look.style) or self.names[0]
        if rerender:
            self._widget_changed(self.style)
        else:
            self.look = self.read_look()

    def set_value(self, widget: ViewerParameter, value: Any) -> None:
        """Set a widget as a user would (its change handler runs; the viewer runs it in a worker thread)."""
        widget.value = value
        if widget.gui_handle is None:  # not installed: nothing else calls the hook
            widget.cb_hook(widget)

    def copy_crop_box(self) -> None:
        """Take the region box from the viewer's crop box (Crop Viewport), and stylise inside it if region is all."""
        viewer = getattr(self, "viewer", None)
        if viewer is None:
            self.report("No viewer crop box here: set Box center/size/rotation instead.")
            return
        obb = viewer.control_panel.crop_obb
        rpy = vtf.SO3.from_matrix(obb.R.numpy()).as_rpy_radians()
        self.set_value(self.box_center, _vec3(obb.T.tolist()))
        self.set_value(self.box_size, _vec3(obb.S.tolist()))
        self.set_value(self.box_rotation, (float(rpy.roll), float(rpy.pitch), float(rpy.yaw)))
        if self.region.value == "all":
            self.set_value(self.region, "inside")

    def _add_style_clicked(self) -> None:
        """Run the model's add-style hook with the typed path; one add at a time, errors shown as one line."""
        path = str(self.style_path.value).strip()
        if self._on_add_style is None or not path:
            self.report("Type the path of a style image first.")
            return
        if not self._adding.acquire(blocking=False):
            self.report("Still adding the previous style.")
            return
        try:
            self.report(f"Adding {path} ...")
            names = self._on_add_style(path, self.report)
            self.set_palette(names, select=len(names) - 1)
            self.report(f"Added {self.names[-1]}.")
        except UserInputError as err:
            self.report(f"Not added: {err}")
        except Exception as err:  # a viewer thread has no console the user watches: say it in the panel too
            CONSOLE.print_exception()
            self.report(f"Not added: {type(err).__name__}: {err}")
        finally:
            self._adding.release()


def _vec3(value: Sequence[float]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in value)
    return (x, y, z)
