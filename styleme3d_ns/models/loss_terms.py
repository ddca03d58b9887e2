"""Declarative loss terms: what a method trains against, as data the shared model layer can build, log and call.

A method lists its terms (:meth:`GuidedSplatModel.loss_terms`); each :class:`LossTerm` names its config (weight,
enabled), how to build its guidance, which rendered views it sees and what else it reads from them. A
:class:`TermSet` builds every enabled term once when training starts, skipping or stopping on missing weights with the
guidance's one-line reason; each step the model hands it a look-up of view sets (:func:`view_lookup`: each set
rendered once, on first use) and it calls every term and logs its named outputs. Methods hold no loop of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.guidance.base import GuidanceConfig
from styleme3d_ns.guidance.weights import MissingWeightsError

Built = Callable[..., dict[str, Tensor]]
"""A built guidance: `(images [V, 3, H, W], step, **inputs) -> {"loss": ..., other scalars}`."""


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
    required: bool = False
    """Missing weights always stop the run (the method cannot do anything without this term)."""
    off_reason: str | None = None
    """Set when the method itself switches the term off (e.g. no prompt); the start-up log says why."""
    follows_style: bool = False
    """Its guidance holds a style image (``set_style``) that follows the style whose turn it is."""
    offline: bool = False
    """It runs on packaged networks only, so the offline teacher's solve stands in for it (styleme3d)."""

    def is_configured_off(self) -> str | None:
        """Why this term is off by configuration, or None when it should be built."""
        if self.off_reason is not None:
            return self.off_reason
        if self.config is not None and (not self.config.enabled or self.config.weight == 0):
            prefix = f"--pipeline.model.{self.flag.replace('_', '-')}" if self.flag else "its config"
            return f"disabled ({prefix}.enabled/{prefix}.weight)"
        return None


class TermSet:
    """The terms a run trains against, built once: ``guidance`` (name -> built guidance, a plain dict: never
    submodules, so checkpoints hold the splat only) and ``active`` (the built terms, in the method's order)."""

    def __init__(self) -> None:
        self.guidance: dict[str, Built] = {}
        self.active: list[LossTerm] = []

    def build(self, terms: Iterable[LossTerm], missing_experts: Literal["skip", "error"]) -> None:
        """Build every enabled term; one whose weights are missing is skipped with one line, or stops the run
        (``missing_experts="error"`` or a required term). A term's build may look at the ones built before it."""
        self.guidance.clear()
        self.active = []
        for term in terms:
            built = _build(term, missing_experts)
            if built is not None:
                self.guidance[term.name] = built
                self.active.append(term)

    def log_active(self, method: str, trains_without_terms: bool) -> None:
        """One line naming every active term; a run with nothing to train stops with one line."""
        if not self.active and not trains_without_terms:
            raise UserInputError(
                f"{method} has nothing to train: every loss term is off (see the 'off:' lines above); "
                "enable one, or give the weights or inputs it needs"
            )
        labels = [t.label + (f" (weight {t.config.weight})" if t.config else "") for t in self.active]
        CONSOLE.log(f"{method} terms active: " + "; ".join(labels))

    def drop(self, keep: Callable[[LossTerm], bool]) -> None:
        """Keep only the active terms for which `keep` holds (their guidance stays loaded)."""
        self.active = [t for t in self.active if keep(t)]

    def reads(self, views: str, name: str) -> bool:
        """Whether an active term seeing view set `views` reads its input `name`."""
        return any(name in t.inputs.values() for t in self.active if t.views == views)

    def losses(self, views: Callable[[str], Views], step: int, metrics: dict | None) -> dict[str, Tensor]:
        """Every active term on the views it sees: ``scale * loss`` by name; side outputs into `metrics`."""
        out: dict[str, Tensor] = {}
        for term in self.active:
            seen = views(term.views)
            if seen.images.shape[0] == 0:
                continue  # e.g. every random view fell inside a cone this term may not look at
            result = self.guidance[term.name](seen.images, step, **{k: seen[v] for k, v in term.inputs.items()})
            out[term.name] = term.scale * result["loss"]
            if metrics is not None:  # scalar side outputs (timestep, guidance scale, similarities), logged
                metrics.update({f"{term.name}_{k}": v.detach().float().mean() for k, v in result.items()
                                if k != "loss" and v.numel() <= 4})  # fmt: skip
        return out


def _build(term: LossTerm, missing_experts: Literal["skip", "error"]) -> Built | None:
    reason = term.is_configured_off()
    if reason is not None:
        CONSOLE.log(f"{term.label} off: {reason}")
        return None
    try:
        return term.build()
    except TermOff as off:
        CONSOLE.log(f"{term.label} off: {off}")
        return None
    except MissingWeightsError as err:
        if term.required or missing_experts == "error":
            raise UserInputError(str(err)) from err
        CONSOLE.log(f"{term.label} off: {err}")
        return None


def view_lookup(builders: dict[str, Callable[[Callable[[str], Views]], Views]]) -> Callable[[str], Views]:
    """This step's view sets by name, each built on first use; a builder gets the look-up (one set may derive from
    another)."""
    rendered: dict[str, Views] = {}

    def views(name: str) -> Views:
        if name not in rendered:
            rendered[name] = builders[name](views)
        return rendered[name]

    return views
