"""How each method takes a style: which `ns-train` option receives a style image or a prompt, and which it needs.

A grid crosses every scene with every style and method; a (method, style) pair the method cannot use (clip-splat
with an image-only style, say) is left out with a one-line note instead of failing at its first training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodInputs:
    """The ns-train options a method's style goes into."""

    image_option: str | None
    """Option taking the style image path (None: the method has no style image)."""
    prompt_option: str | None
    """Option taking the text prompt (None: the method takes no text)."""
    needs: Literal["image", "prompt"]
    """The style input without which the method has nothing to stylise with."""


BATCH_METHODS: dict[str, MethodInputs] = {
    "styleme3d": MethodInputs("--pipeline.model.style-image", "--pipeline.model.style-prompt", "image"),
    "clip-splat": MethodInputs(None, "--pipeline.model.prompt", "prompt"),
}
"""Methods styleme3d-batch runs. sas-portrait is left out: it makes a head from one photo, not a styled scene."""

RECONSTRUCT_METHOD = "styleme3d"
"""The method that reconstructs a base splat from a dataset (styleme3d without a style image only reconstructs)."""

BASE_CHECKPOINT_OPTION = "--pipeline.model.base-checkpoint"
"""Where every batch method reads the base splat it stylises."""


def style_arguments(method: str, image: str | None, prompt: str | None) -> list[str] | str:
    """The ns-train arguments passing a style to `method`, or a one-line reason the pair cannot run.

    Args:
        method: a key of `BATCH_METHODS`.
        image: the style image path, if the style has one.
        prompt: the style prompt, if the style has one.
    """
    inputs = BATCH_METHODS[method]
    given = {"image": image, "prompt": prompt}
    if given[inputs.needs] is None:
        return f"{method} needs a style {inputs.needs}"
    args: list[str] = []
    if image is not None and inputs.image_option is not None:
        args += [inputs.image_option, image]
    if prompt is not None and inputs.prompt_option is not None:
        args += [inputs.prompt_option, prompt]
    return args
