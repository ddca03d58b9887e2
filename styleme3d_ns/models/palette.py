"""A stylised run's styles as one component: the palette, its style turns, the look and its viewer panel.

Several colour sets over one frozen geometry, saved with the splat. Entry 0 is always the model's live colours
(`features_dc`/`features_rest`, what training optimises); the palette stores entries 1..S-1 as buffers, so
checkpoints hold every style a run made and `ns-render`/`ns-export` can show any of them. A checkpoint written before
palettes existed loads with an empty one.

What a method says about its configured styles is a :class:`StyleSet`: their names, whether its optimiser trains them
one after another (:class:`StyleTurns`: clip-splat's prompts, style images without the offline teacher) or a solve
fills the further entries at once (the teacher), how to point its terms at a style, and how the viewer adds one.

The look (:mod:`styleme3d_ns.models.look`) is applied here for the three readers of a stylised splat: a rendered view
(:meth:`StylePalette.look_colours`), the exported coefficients (:meth:`StylePalette.look_coefficients`) and the
viewer's Style panel (:meth:`StylePalette.make_controls`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.models.look import LookConfig, apply_look, apply_look_sh, check_look, styles_used
from styleme3d_ns.models.viewer_controls import AddStyle, LookControls

ColourSet = tuple[Tensor, Tensor]
"""SH colours of every Gaussian: `dc [N, 3]` (sigmoid logits at sh_degree 0) and `rest [N, K-1, 3]`."""
COLOUR_KEYS = ("features_dc", "features_rest")
"""The optimiser groups of the live colours, in ColourSet order."""


@dataclass(frozen=True)
class StyleSet:
    """A method's configured styles and how they become palette entries (the method's turn policy)."""

    names: tuple[str, ...] = ()
    """The configured styles in palette order (style images' stems, prompts)."""
    in_turn: bool = False
    """Its optimiser trains them one after another (:class:`StyleTurns`); else a solve fills the further entries."""
    point_at: Callable[[int], None] = lambda index: None
    """Points the method's terms at configured style `index` when its turn starts (keeping loaded networks)."""
    add: AddStyle | None = None
    """The viewer's "Add style": (image path, report) -> the palette's names; None: no such button."""


@dataclass(frozen=True)
class StyleTurns:
    """S configured styles trained one after another over the stylise steps `[start, end)`, an equal share each.

    Turn j (0-based) trains style `j + 1` for j < S - 1 and style 0 last; when turn j ends, the live colours are
    stored as palette entry j + 1. How many turns have ended is then the palette's stored count, which a
    checkpoint saves, so a resumed run continues the turn it stopped in.
    """

    num_styles: int
    """S, the configured styles (images or prompts), in palette order."""
    start: int
    """First step of the stylise phase (0 with a base splat, else the reconstruction's length)."""
    end: int
    """The run's last step + 1 (the trainer's planned --max-num-iterations)."""

    @property
    def length(self) -> int:
        """Steps each style trains (the last turn also takes the remainder)."""
        return (self.end - self.start) // self.num_styles

    def turn_end(self, turn: int) -> int:
        """The step at which turn `turn` ends and its colours are stored."""
        return self.start + (turn + 1) * self.length

    def turn_span(self, turn: int) -> tuple[int, int]:
        """First step of turn `turn` and the step after its last (the last turn runs to `end`)."""
        return self.start + turn * self.length, self.turn_end(turn) if turn < self.num_styles - 1 else self.end


def style_of_turn(turn: int, num_styles: int) -> int:
    """Configured style index trained in turn `turn` of `num_styles` (the further styles first, style 0 last and
    after the last turn: the live colours then hold style 0)."""
    return turn + 1 if turn < num_styles - 1 else 0


class StylePalette(nn.Module):
    """Stored colour sets `dc [S-1, N, 3]`, `rest [S-1, N, K-1, 3]` (SH coefficients as the splat's) and their names,
    with the run's styles, turns, look and viewer panel.

    Args:
        num_gaussians, rest_bands: the splat's size (entries are resized to a checkpoint's when it loads).
        styles: the method's configured styles.
        live: the model's live colours (entry 0), read when needed (their tensors change on load and at turns).
        base: the model's base colours (the look's strength 0), likewise.
    """

    def __init__(
        self,
        num_gaussians: int,
        rest_bands: int,
        styles: StyleSet | None = None,
        live: Callable[[], ColourSet] | None = None,
        base: Callable[[], ColourSet] | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("dc", torch.zeros(0, num_gaussians, 3))
        self.register_buffer("rest", torch.zeros(0, num_gaussians, rest_bands, 3))
        # names as UTF-8 bytes joined by newlines: plain tensor data, so checkpoints stay weights_only-loadable
        self.register_buffer("names_utf8", torch.zeros(0, dtype=torch.uint8))
        self.styles = styles or StyleSet()
        self._live, self._base = live, base
        self.controls: LookControls | None = None  # the viewer's Style panel (nerfstudio finds it on this module)
        self._on_look: Callable[[LookConfig], None] = lambda look: None  # the model's answer to a changed look
        self._announced: int | None = None  # the configured style whose turn was last announced to the method

    # ---------------------------------------------------------------- entries
    @property
    def stored(self) -> int:
        """How many entries are stored (the palette has one more: the live colours)."""
        return int(self.dc.shape[0])

    @property
    def names(self) -> list[str]:
        """Names of the stored entries, in order."""
        text = bytes(self.names_utf8.tolist()).decode("utf-8")
        return text.split("\n") if text else []

    @property
    def size(self) -> int:
        """Entries of the palette: the live colours and the stored ones."""
        return 1 + self.stored

    def entry(self, index: int) -> ColourSet:
        """SH colours of entry `index` (0: the live, trained colours)."""
        return self._live() if index == 0 else (self.dc[index - 1], self.rest[index - 1])

    def live_index(self) -> int:
        """Configured style the live colours hold: 0, or while styles train in turn, the one whose turn it is (the
        stored count is the number of finished turns)."""
        if not self.styles.in_turn:
            return 0
        return style_of_turn(self.stored, max(1, len(self.styles.names)))

    def labels(self) -> list[str]:
        """A name per entry, for the viewer and logs ("style" for live colours without a configured name)."""
        names = self.styles.names
        return [names[self.live_index()] if names else "style", *self.names]

    def reset(self, num_gaussians: int, rest_bands: int) -> None:
        """Empty the palette for a splat of `num_gaussians` (e.g. when reconstruction has just fixed the geometry)."""
        self.dc = self.dc.new_zeros(0, num_gaussians, 3)
        self.rest = self.rest.new_zeros(0, num_gaussians, rest_bands, 3)
        self.names_utf8 = self.names_utf8.new_zeros(0)

    def gather(self, source: Tensor) -> None:
        """Resize every stored entry to a new set of Gaussians: new Gaussian j takes old Gaussian `source[j]`'s colours
        (`source [N']`, e.g. a split's children their parent's). The live and base colours are the model's
        (``GuidedSplatModel.resize_gaussians`` resizes all three together)."""
        self.dc = self.dc[:, source]
        self.rest = self.rest[:, source]

    def append(self, dc: Tensor, rest: Tensor, name: str) -> int:
        """Store a colour set (`dc [N, 3]`, `rest [N, K-1, 3]`) named `name`; returns its palette index."""
        self.dc = torch.cat([self.dc, dc.detach()[None].to(self.dc)])
        self.rest = torch.cat([self.rest, rest.detach()[None].to(self.rest)])
        names = [*self.names, name.replace("\n", " ")]
        self.names_utf8 = torch.tensor(list("\n".join(names).encode("utf-8")), dtype=torch.uint8)
        return self.stored

    def add(self, dc: Tensor, rest: Tensor, name: str) -> list[str]:
        """Store a colour set as a new entry and list it in a panel already up; returns the palette's labels."""
        self.append(dc, rest, name)
        if self.controls is not None and self.controls.gui_handle is not None:
            # a panel already up (the live training viewer) lists the new entry; it re-renders on its own
            self.controls.set_palette(self.labels(), rerender=False)
        return self.labels()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # take the checkpoint's sizes; a checkpoint from before palettes existed has none: keep this empty one
        for name in ("dc", "rest", "names_utf8"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
            else:
                state_dict[key] = getattr(self, name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- styles trained in turn
    def plan_turns(self, start: int, end: int | None, method: str) -> StyleTurns | None:
        """The turns of the configured styles over the stylise steps `[start, end)`, when they train in turn."""
        count = len(self.styles.names)
        if count < 2 or not self.styles.in_turn or end is None:
            return None
        turns = StyleTurns(count, start, end)
        if turns.length < 1:
            raise UserInputError(f"{count} styles train in turn, one step each at least: raise --max-num-iterations "
                                 f"{end} to {turns.start + count} or more")  # fmt: skip
        CONSOLE.log(f"{method}: {count} styles trained in turn over one geometry, {turns.length} steps each from "
                    f"step {turns.start}: {', '.join(repr(n) for n in self.styles.names)}")  # fmt: skip
        return turns

    def take_turns(self, turns: StyleTurns | None, step: int, optimizers) -> None:  # noqa: ANN001 - nerfstudio's
        """Before step `step`: when a style's turn ends, store the live colours as its entry and start the next style
        from the base colours with fresh optimiser state (Adam's moments belong to the finished style); point the
        method's terms at the style whose turn it is."""
        while turns is not None and self.stored < turns.num_styles - 1 and step >= turns.turn_end(self.stored):
            finished = self.styles.names[self.live_index()]
            self.add(*self._live(), finished)
            for key, live, base in zip(COLOUR_KEYS, self._live(), self._base(), strict=True):
                live.data.copy_(base)
                optimizer = optimizers.optimizers.get(key)
                if optimizer is not None:
                    optimizer.state.pop(live, None)
            CONSOLE.log(f"Step {step}: '{finished}' stored as palette entry {self.stored}; "
                        f"'{self.styles.names[self.live_index()]}' trains from the base colours")  # fmt: skip
        if self._announced != self.live_index():
            self._announced = self.live_index()
            self.styles.point_at(self._announced)

    # ---------------------------------------------------------------- the look
    def check(self, look: LookConfig) -> None:
        """One line (UserInputError) if `look` does not fit this palette."""
        check_look(look, self.size)

    def look_colours(self, rgb_of: Callable[[Tensor, Tensor], Tensor], look: LookConfig, means: Tensor) -> Tensor:
        """Per-Gaussian colours `[N, 3]` of `look` for one view, and the base's beside them: `[N, 6]`.

        `rgb_of(dc, rest)` evaluates a colour set as the rasteriser would for this view (SH for the camera); only the
        entries the look reads are evaluated.
        """
        base = rgb_of(*self._base())
        used = styles_used(look)
        styles = {k: rgb_of(*self.entry(k)) for k in used}
        return torch.cat([apply_look(base, styles, means, look), base], dim=-1)

    def look_coefficients(self, look: LookConfig, means: Tensor, sh_degree: int) -> ColourSet:
        """The look as one set of SH coefficients: what `ns-export` writes.

        At sh_degree 0 the coefficients are sigmoid logits, so the look is applied to their colours and mapped back.
        """
        used = styles_used(look)
        entries = {k: self.entry(k) for k in used}
        base_dc, base_rest = self._base()
        if sh_degree > 0:
            dc = {k: e[0] for k, e in entries.items()}
            rest = {k: e[1] for k, e in entries.items()}
            return apply_look_sh(base_dc, base_rest, dc, rest, means, look)
        styles = {k: torch.sigmoid(e[0]) for k, e in entries.items()}
        rgb = apply_look(torch.sigmoid(base_dc), styles, means, look)
        return torch.logit(rgb.clamp(1e-6, 1 - 1e-6)), self._live()[1]

    def make_controls(self, look: LookConfig, on_change: Callable[[LookConfig], None]) -> LookControls:
        """The viewer's Style panel (nerfstudio installs the ViewerElements it finds on the model and its modules),
        showing `look`, or the first style while the palette does not hold the look's entries yet."""
        if max(look.style, look.blend_to or 0) >= self.size:
            look = replace(look, style=0, blend_to=None)
        self._on_look = on_change
        self.controls = LookControls(look, self.labels(), on_change=on_change, on_add_style=self.styles.add)
        return self.controls

    def refresh_controls(self, look: LookConfig) -> None:
        """After a checkpoint loaded: build the panel (ns-viewer builds the viewer after the load) or relist the
        entries of the panel already up (ns-train --load-dir)."""
        if self.controls is None or self.controls.gui_handle is None:
            self.make_controls(look, self._on_look)
        else:
            self.controls.set_palette(self.labels())
