"""Text conditioning of the diffusion guidances (DSSD, SAS, MVDream): one config, one encode path, one fallback.

As threestudio's prompt processor: a guidance's config takes :class:`PromptConfig`'s fields (the prompt, the negative
prompt of classifier-free guidance's unconditional branch, the guidance scale) instead of redeclaring them, encodes
them once through :meth:`~styleme3d_ns.guidance.diffusion.ScheduledDiffusionGuidance.set_prompt`, and a method fills
an empty prompt from its own style text with :func:`with_fallback_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from styleme3d_ns.core.config_defaults import DefaultsOnLoad


@dataclass
class PromptConfig(DefaultsOnLoad):
    """Text condition and classifier-free guidance of a diffusion guidance (a guidance config inherits these)."""

    prompt: str = ""
    """Text condition y of the guided branch; empty: the method's --pipeline.model.style-prompt."""
    negative_prompt: str = ""
    """Text condition of classifier-free guidance's unconditional branch (empty, as in SDS)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale s: eps_uncond + s (eps_cond - eps_uncond)."""


Prompted = TypeVar("Prompted", bound=PromptConfig)


def with_fallback_prompt(config: Prompted, fallback: str) -> Prompted:
    """`config` with its own prompt, or `fallback` (the method's style text) where it has none."""
    return config if config.prompt else replace(config, prompt=fallback)
