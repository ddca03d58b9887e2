"""The prompt processor shared by the diffusion guidances (guidance/prompts.py): one config, one encode path."""

from __future__ import annotations

import pytest
import torch
import yaml

from styleme3d_ns.guidance.dssd import DSSDConfig
from styleme3d_ns.guidance.mvdream import MVDreamSDSConfig
from styleme3d_ns.guidance.prompts import PromptConfig, with_fallback_prompt
from styleme3d_ns.guidance.sas import SASConfig
from tests.tiny_models import TINY_RESOLUTION


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny models: intra-op threads only add contention on the shared machine."""


def test_the_three_diffusion_configs_take_their_prompt_fields_from_one_config() -> None:
    for config in (DSSDConfig, SASConfig, MVDreamSDSConfig):
        assert issubclass(config, PromptConfig)
        assert {"prompt", "negative_prompt", "guidance_scale"} <= set(config.__dataclass_fields__)
        for name in ("prompt", "negative_prompt"):
            assert name not in vars(config).get("__annotations__", {}), f"{config.__name__} redeclares {name}"
    # each keeps its paper's guidance scale (paper 000 lambda_max 20, paper 001 SAS 50, MVDream 10)
    assert (DSSDConfig().guidance_scale, SASConfig().guidance_scale, MVDreamSDSConfig().guidance_scale) == (20, 50, 10)


def test_an_empty_prompt_takes_the_methods_style_text_and_a_given_one_stays() -> None:
    assert with_fallback_prompt(SASConfig(), "3D cartoon style").prompt == "3D cartoon style"
    given = SASConfig(prompt="a watercolor portrait")
    assert with_fallback_prompt(given, "3D cartoon style") is given
    assert with_fallback_prompt(MVDreamSDSConfig(), "").prompt == ""


def test_every_diffusion_guidance_encodes_its_prompts_once_through_the_shared_path() -> None:
    from tests.test_dssd import _dssd
    from tests.test_mvdream import tiny_mvdream
    from tests.test_sas import make_sas

    dssd = DSSDConfig(resolution=TINY_RESOLUTION, prompt="a lego bulldozer", negative_prompt="blurry", seed=0)
    for guidance in (_dssd(dssd), make_sas(identity=False), tiny_mvdream()):
        config = guidance.config
        expected = (
            guidance.components.encode_text([config.prompt]),
            guidance.components.encode_text([config.negative_prompt]),
        )
        torch.testing.assert_close(guidance.cond_embeds, expected[0], atol=0, rtol=0)
        torch.testing.assert_close(guidance.uncond_embeds, expected[1], atol=0, rtol=0)
        assert not torch.equal(guidance.cond_embeds, guidance.uncond_embeds) or config.prompt == config.negative_prompt


def test_a_dssd_config_saved_with_the_old_guidance_scale_names_loads_them() -> None:
    text = yaml.dump(DSSDConfig(guidance_scale=12.0, guidance_scale_end=3.0))
    old = text.replace("guidance_scale: 12.0", "guidance_scale_max: 12.0").replace(
        "guidance_scale_end: 3.0", "guidance_scale_min: 3.0"
    )
    assert "guidance_scale_max" in old and "guidance_scale_end" not in old
    loaded = yaml.load(old, Loader=yaml.Loader)  # as nerfstudio reads config.yml
    assert (loaded.guidance_scale, loaded.guidance_scale_end) == (12.0, 3.0)
    assert not hasattr(loaded, "guidance_scale_max") and not hasattr(loaded, "guidance_scale_min")
