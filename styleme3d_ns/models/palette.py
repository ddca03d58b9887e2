"""A stylised run's palette: several colour sets over one frozen geometry, saved with the splat.

Entry 0 is always the model's live colours (`features_dc`/`features_rest`, what training optimises); the palette
stores entries 1..S-1 as buffers, so checkpoints hold every style a run made and `ns-render`/`ns-export` can show any
of them (:mod:`styleme3d_ns.models.look`). A checkpoint written before palettes existed loads with an empty one.

A method whose styles are trained by its optimiser (clip-splat's prompts) trains them in turn (:class:`StyleTurns`):
the further styles first, each stored when its share of the steps ends, and the first style last, so that the live
colours end as entry 0 and entry k holds configured style k, as when a solve fills the palette at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class StylePalette(nn.Module):
    """Stored colour sets `dc [S-1, N, 3]`, `rest [S-1, N, K-1, 3]` (SH coefficients as the splat's) and their names."""

    def __init__(self, num_gaussians: int, rest_bands: int) -> None:
        super().__init__()
        self.register_buffer("dc", torch.zeros(0, num_gaussians, 3))
        self.register_buffer("rest", torch.zeros(0, num_gaussians, rest_bands, 3))
        # names as UTF-8 bytes joined by newlines: plain tensor data, so checkpoints stay weights_only-loadable
        self.register_buffer("names_utf8", torch.zeros(0, dtype=torch.uint8))

    @property
    def stored(self) -> int:
        """How many entries are stored (the palette has one more: the live colours)."""
        return int(self.dc.shape[0])

    @property
    def names(self) -> list[str]:
        """Names of the stored entries, in order."""
        text = bytes(self.names_utf8.tolist()).decode("utf-8")
        return text.split("\n") if text else []

    def reset(self, num_gaussians: int, rest_bands: int) -> None:
        """Empty the palette for a splat of `num_gaussians` (e.g. when reconstruction has just fixed the geometry)."""
        self.dc = self.dc.new_zeros(0, num_gaussians, 3)
        self.rest = self.rest.new_zeros(0, num_gaussians, rest_bands, 3)
        self.names_utf8 = self.names_utf8.new_zeros(0)

    def append(self, dc: Tensor, rest: Tensor, name: str) -> int:
        """Store a colour set (`dc [N, 3]`, `rest [N, K-1, 3]`) named `name`; returns its palette index."""
        self.dc = torch.cat([self.dc, dc.detach()[None].to(self.dc)])
        self.rest = torch.cat([self.rest, rest.detach()[None].to(self.rest)])
        names = [*self.names, name.replace("\n", " ")]
        self.names_utf8 = torch.tensor(list("\n".join(names).encode("utf-8")), dtype=torch.uint8)
        return self.stored

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # take the checkpoint's sizes; a checkpoint from before palettes existed has none: keep this empty one
        for name in ("dc", "rest", "names_utf8"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
            else:
                state_dict[key] = getattr(self, name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
