"""Where the cameras of a splat without its capture's cameras go: an orbit around an object, or, for an unbounded
capture (a scene surrounded by its background), a ring inside the background looking at the scene's core.

How `--rig auto` decides (:func:`scene_layout`, docs/ply.md "Rigs"): starting at the median of the Gaussian
centres, the background is every Gaussian farther from the centre than `far_ratio` (4) times their median distance,
the core is the rest, and the centre moves to the middle of the core's 2nd-98th percentile box (twice). When at
least `min_background` (10%) of the Gaussians are background, the scene is unbounded and gets the inside rig;
otherwise (an object, with a few floaters) the orbit. A person capturing an unbounded scene stands between the core
and the background, looking at the core: the inside rig puts the training views there (at the orbit's framing
distance for the core, times `inside_framing`, but never farther out than `inside_limit` (half) of the way to the
background's inner edge) and turns a few of them outwards, so the renders show the core and, behind and around it,
the background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from styleme3d_ns.render.camera import look_at, orbit_cameras, orbit_poses, square_cameras

RigChoice = Literal["auto", "orbit", "inside"]
_SAMPLE = 1_000_000  # torch.quantile's input limit; a strided sample has the same percentiles


def _sample(means: Tensor) -> Tensor:
    """At most 1M of the centres `[N, 3]` (every k-th), float64."""
    sample = means.double()
    return sample[:: math.ceil(sample.shape[0] / _SAMPLE)] if sample.shape[0] > _SAMPLE else sample


# --------------------------------------------------------------------------------------------------------------------
# The orbit (objects)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrbitRig:
    """Where the cameras of a `.ply` scene go: an orbit around the splat's robust bounds, framing them."""

    centre: tuple[float, float, float]
    """Middle of the percentile box of the Gaussian centres."""
    bounds_radius: float
    """Half the diagonal of that box: the sphere the views must show."""
    up: tuple[float, float, float]
    """World up of the orbit."""
    image_size: int
    """Side of the square images in pixels."""
    fov_deg: float
    """Field of view of every camera (degrees)."""
    framing: float
    """Camera distance over the one at which the bounds sphere just fills the view."""

    @classmethod
    def around(
        cls, means: Tensor, up: str | tuple[float, float, float], percentile: float, image_size: int, fov_deg: float,
        framing: float,
    ) -> OrbitRig:  # fmt: skip
        """The rig for Gaussian centres `means` `[N, 3]`: the box between the `percentile` and `100 - percentile`
        percentiles of each coordinate (floaters and far background left out); `up` an axis name ("-y") or vector."""
        q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=torch.float64)
        lo, hi = torch.quantile(_sample(means), q, dim=0)
        centre = (lo + hi) / 2
        radius = max(float((hi - lo).norm()) / 2, 1e-6)
        return cls(tuple(centre.tolist()), radius, up_vector(up), image_size, fov_deg, framing)

    @property
    def distance(self) -> float:
        """Camera distance at which the bounds sphere fills the field of view, times :attr:`framing`."""
        return framing_distance(self.bounds_radius, self.fov_deg, self.framing)

    def cameras(self, azimuth_deg: Tensor, elevation_deg: Tensor) -> Cameras:
        """Square pinhole `Cameras [V]` at these `[V]` azimuths/elevations (degrees) around :attr:`up`."""
        return orbit_cameras(
            azimuth_deg, elevation_deg, self.distance, self.image_size, self.fov_deg, target=self.centre, up=self.up
        )


def orbit_views(num_views: int, elevations_deg: tuple[float, ...], eval_views: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Azimuths and elevations `[V]` (degrees) per split: train views evenly around, cycling through the elevations;
    eval views halfway between train azimuths at the middle elevation, so they are never a training view."""
    az = torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    el = torch.tensor(elevations_deg, dtype=torch.float32).repeat(math.ceil(num_views / len(elevations_deg)))
    eval_az = az[torch.arange(eval_views) * num_views // eval_views] + 180.0 / num_views
    eval_el = torch.full((eval_views,), float(sorted(elevations_deg)[len(elevations_deg) // 2]))
    return {"train": (az, el[:num_views]), "test": (eval_az, eval_el)}


def framing_distance(radius: float, fov_deg: float, framing: float) -> float:
    """Distance at which a sphere of `radius` just fills a field of view of `fov_deg`, times `framing`."""
    return framing * radius / math.sin(math.radians(fov_deg) / 2)


UP_AXES: dict[str, tuple[float, float, float]] = {
    "+x": (1.0, 0.0, 0.0),
    "-x": (-1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0),
    "-y": (0.0, -1.0, 0.0),
    "+z": (0.0, 0.0, 1.0),
    "-z": (0.0, 0.0, -1.0),
}
"""World up of the orbit for each `--up-axis` value. "auto" reads nerfstudio's `comment Vertical Axis: z` header
(+z) and otherwise takes -y, the COLMAP-frame convention of INRIA, Postshot and SuperSplat files (docs/ply.md)."""


def up_vector(up: str | tuple[float, float, float]) -> tuple[float, float, float]:
    """An axis name of :data:`UP_AXES` or a vector, as a unit vector."""
    vector = torch.tensor(UP_AXES[up] if isinstance(up, str) else up, dtype=torch.float64)
    return tuple((vector / vector.norm()).tolist())


# --------------------------------------------------------------------------------------------------------------------
# The scene's layout: a core, and maybe a background around it
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneLayout:
    """The dense core of a splat and the background around it (module docstring: how they are found)."""

    centre: tuple[float, float, float]
    """Centre of the core (median of its Gaussian centres)."""
    core_radius: float
    """Radius holding 98% of the core's Gaussian centres."""
    background_fraction: float
    """Share of the Gaussians in the background, in [0, 1]."""
    background_radius: float
    """Inner edge of the background: the 5th percentile of its Gaussians' distance from the centre (0 without)."""
    unbounded: bool
    """Whether the scene is a capture surrounded by its background (the inside rig's case)."""

    def describe(self) -> str:
        """One clause for the log line."""
        if not self.unbounded:
            share = f" ({self.background_fraction:.0%} of the Gaussians far out)" if self.background_fraction else ""
            return f"an object{share}"
        return (
            f"an unbounded scene: {self.background_fraction:.0%} of the Gaussians are background from "
            f"{self.background_radius / self.core_radius:.1f}x the core's radius"
        )


def scene_layout(means: Tensor, far_ratio: float = 4.0, min_background: float = 0.10) -> SceneLayout:
    """The core and background of the Gaussian centres `means` `[N, 3]` (module docstring)."""
    x = _sample(means)
    centre = x.median(dim=0).values
    for _ in range(2):  # re-centre on the core: the middle of its 2-98 percentile box (a hollow object included)
        d = (x - centre).norm(dim=1)
        core = x[d <= far_ratio * max(float(d.median()), 1e-9)]
        lo, hi = torch.quantile(core, torch.tensor([0.02, 0.98], dtype=torch.float64), dim=0)
        centre = (lo + hi) / 2
    d = (x - centre).norm(dim=1)
    far = d > far_ratio * max(float(d.median()), 1e-9)
    core = d[~far]
    core_radius = max(float(torch.quantile(core, 0.98)) if core.numel() else 1e-6, 1e-6)
    fraction = float(far.double().mean())
    background_radius = float(torch.quantile(d[far], 0.05)) if bool(far.any()) else 0.0
    return SceneLayout(tuple(centre.tolist()), core_radius, fraction, background_radius, fraction >= min_background)


# --------------------------------------------------------------------------------------------------------------------
# The inside rig (unbounded captures)
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsideRig:
    """Cameras on a ring inside the background, most looking at the core, a few outwards (module docstring)."""

    layout: SceneLayout
    """The core and background the ring sits between."""
    up: tuple[float, float, float]
    """World up."""
    image_size: int
    """Side of the square images in pixels."""
    fov_deg: float
    """Field of view of every camera (degrees)."""
    framing: float
    """Distance over the one at which the core's sphere fills the view (larger: more background around it)."""
    inside_limit: float = 0.5
    """The ring's radius is at most this share of the background's inner radius."""

    @property
    def distance(self) -> float:
        """Radius of the ring: the core's framing distance, kept inside the background and outside the core."""
        layout = self.layout
        wanted = framing_distance(layout.core_radius, self.fov_deg, self.framing)
        outer = self.inside_limit * layout.background_radius
        inner = 1.2 * layout.core_radius
        return max(min(wanted, outer), min(inner, outer))

    def cameras(self, azimuth_deg: Tensor, elevation_deg: Tensor, outward: Tensor | None = None) -> Cameras:
        """Square pinhole `Cameras [V]` on the ring at these azimuths and elevations (degrees, of the camera's place
        seen from the core), looking at the core, or where `outward` `[V]` (bool) is set, away from it level with
        the ground (a person turning round)."""
        centre = torch.tensor(self.layout.centre, dtype=torch.float64)
        up = torch.tensor(self.up, dtype=torch.float64)
        poses = orbit_poses(azimuth_deg, elevation_deg, self.distance, centre, up, dtype=torch.float64)
        if outward is not None and bool(outward.any()):
            eyes = poses[outward, :, 3]
            level = eyes - centre
            level = level - (level @ up)[:, None] * up  # the horizontal direction away from the core
            targets = eyes + level / level.norm(dim=1, keepdim=True).clamp_min(1e-12)
            poses[outward] = torch.stack(
                [look_at(e, t, up, dtype=torch.float64)[0] for e, t in zip(eyes, targets, strict=True)]
            )
        return square_cameras(poses.float(), self.image_size, self.fov_deg)


def inside_views(
    num_views: int, elevations_deg: tuple[float, ...], eval_views: int, outward_every: int
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """:func:`orbit_views` with an outward flag `[V]` per view: every `outward_every`-th training view (0: none)
    looks away from the core; eval views all look at it."""
    views = orbit_views(num_views, elevations_deg, eval_views)
    az, el = views["train"]
    outward = torch.zeros(num_views, dtype=torch.bool)
    if outward_every > 0:
        outward[outward_every - 1 :: outward_every] = True
    eval_az, eval_el = views["test"]
    return {"train": (az, el, outward), "test": (eval_az, eval_el, torch.zeros(len(eval_az), dtype=torch.bool))}
