"""Declarative loss terms: what a method trains against, as data the shared model layer can build, log and call.

A method lists its terms (:meth:`GuidedSplatModel.loss_terms`); each :class:`LossTerm` names its config (weight,
enabled), how to build its guidance, which rendered views it sees and what else it reads from them. The model
(:class:`~styleme3d_ns.models.guided_splat.GuidedSplatModel`) builds every enabled term once when training starts,
skips or stops on missing weights with the guidance's one-line reason, renders each view set once per step, calls
every term and logs its named outputs. Methods hold no loop of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from styleme3d_ns.guidance.base import GuidanceConfig


class TermOff(Exception):  # noqa: N818 - a signal, not an error: the term is off for the reason given
    """Raised by a term's ``build`` when, given what else was built, it should not run; ``str()`` says why."""


TRAIN_VIEW = "train"
"""The view set every method has: the training camera nerfstudio hands the model this step (one view)."""


class Views:
    """One set of rendered views for one step, shared by every term that sees it.

    ``images`` are the differentiable renders; anything else a term may read (``"content"``: the same views of the
    unstylised splat, ``"photos"``: the training photos, ``"alphas"``, camera poses, ...) is either given or computed
    on first use (``lazy``), so a view set costs only what its terms ask for.
    """

    def __init__(self, images: Tensor, lazy: dict[str, Callable[[], Any]] | None = None, **given: Any) -> None:
        """
        Args:
            images: `[V, 3, H, W]` renders in [0, 1] over the background, differentiable.
            lazy: name -> zero-argument function computing that input once, when a term first asks for it.
            given: inputs already at hand, by name.
        """
        self.images = images
        self._values: dict[str, Any] = dict(given)
        self._lazy = dict(lazy or {})

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            if name not in self._lazy:
                raise KeyError(f"view set has no input '{name}' (has {sorted({*self._values, *self._lazy})})")
            self._values[name] = self._lazy.pop(name)()
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The input `name`, or `default` when this view set does not provide it."""
        return self[name] if name in self._values or name in self._lazy else default

    def add(self, name: str, compute: Callable[[], Any]) -> Views:
        """Offer one more input, computed on first use; returns this view set."""
        self._lazy[name] = compute
        return self

    def subset(self, keep: Tensor) -> Views:
        """The views where the bool mask `keep` `[V]` is true (tensors with a leading view axis are sliced)."""
        pick = {k: self[k] for k in (*self._values, *self._lazy)}
        per_view = lambda v: tuple(getattr(v, "shape", ())[:1]) == tuple(keep.shape)  # tensors and nerfstudio Cameras
        return Views(self.images[keep], **{k: v[keep] if per_view(v) else v for k, v in pick.items()})


@dataclass
class LossTerm:
    """One loss term of a method: a guidance, the views it sees and how much it counts.

    The model calls ``guidance(views.images, step, **{kw: views[name] for kw, name in inputs.items()})``, adds
    ``scale * out["loss"]`` to the loss under ``name`` and logs every other scalar output as ``<name>_<key>``.
    """

    name: str
    """Key of the term in the loss dict and the logs (``"sos"``, ``"dssd"``, ``"photo"``...)."""
    label: str
    """How the run's log lines name the term (``"SOS on efficientnet-lite0"``; its config's weight is added)."""
    build: Callable[[], Callable[..., dict[str, Tensor]]]
    """Builds the guidance (called once, when training starts); may raise MissingWeightsError."""
    config: GuidanceConfig | None = None
    """Its config: a disabled one or weight 0 switches the term off with one line naming ``flag``."""
    flag: str = ""
    """CLI prefix of the term's config (``"sos"`` -> ``--pipeline.model.sos.*``) for the one-line messages."""
    views: str = TRAIN_VIEW
    """Which view set it sees: ``"train"`` or a set the method renders (:meth:`GuidedSplatModel.view_sets`)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Extra keyword inputs of the guidance: keyword -> the view input it takes (``{"content_images": "content"}``).
    Declared, so the model renders only what some active term reads."""
    scale: float = 1.0
    """Multiplier of the guidance's ``"loss"`` (e.g. paper 000's lambda_prior over all style experts)."""
    needs_weights: bool = False
    """Its networks come from downloads: missing weights skip it with one line (or stop: ``missing_experts``)."""
    required: bool = False
    """Missing weights always stop the run (the method cannot do anything without this term)."""
    off_reason: str | None = None
    """Set when the method itself switches the term off (e.g. no prompt); the start-up log says why."""

    def is_configured_off(self) -> str | None:
        """Why this term is off by configuration, or None when it should be built."""
        if self.off_reason is not None:
            return self.off_reason
        if self.config is not None and (not self.config.enabled or self.config.weight == 0):
            prefix = f"--pipeline.model.{self.flag.replace('_', '-')}" if self.flag else "its config"
            return f"disabled ({prefix}.enabled/{prefix}.weight)"
        return None
