"""styleme3d composes its four experts (tiny random networks stand in for SD 1.5, CSD and CLIP weights)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from styleme3d_ns.guidance.clip_encoder import load_clip_encoder
from styleme3d_ns.guidance.csd import CSDStyleLoss
from styleme3d_ns.guidance.dssd import DynamicStyleScoreDistillation
from styleme3d_ns.guidance.quality_prior import QualityPrior
from styleme3d_ns.models.checkpoint import load_gaussians
from styleme3d_ns.models.styleme3d import StyleMe3DModel
from tests.conftest import styleme3d_config
from tests.tiny_models import (
    TINY_RESOLUTION,
    tiny_csd,
    tiny_image_encoder,
    tiny_ip_adapter_state_dict,
    tiny_sd_components,
)

EXPERTS = ("sos", "dssd", "csd", "qa")


@pytest.fixture
def tiny_experts(monkeypatch: pytest.MonkeyPatch, tiny_clip: tuple[Path, Path]) -> None:
    """Replace the weight loading of DSSD, CSD and 3DG-QA with tiny random networks; the model code is unchanged."""

    def dssd(self: StyleMe3DModel) -> DynamicStyleScoreDistillation:
        components = tiny_sd_components(seed=0)
        config = replace(self.config.dssd, resolution=TINY_RESOLUTION, prompt=self.config.style_prompt)
        adapter = tiny_ip_adapter_state_dict(components.unet)
        guidance = DynamicStyleScoreDistillation(
            config, components, tiny_image_encoder(), ip_adapter_state_dict=adapter
        )
        guidance.set_style(self.style_image())
        return guidance

    def csd(self: StyleMe3DModel) -> CSDStyleLoss:
        loss = CSDStyleLoss(self.config.csd, tiny_csd(seed=0))
        loss.set_style(self.style_image())
        return loss

    def qa(self: StyleMe3DModel) -> QualityPrior:
        return QualityPrior(self.config.qa, load_clip_encoder(*(str(p) for p in tiny_clip), hint="-"))

    monkeypatch.setattr(StyleMe3DModel, "_build_dssd", dssd)
    monkeypatch.setattr(StyleMe3DModel, "_build_csd", csd)
    monkeypatch.setattr(StyleMe3DModel, "_build_qa", qa)


def _trainer(config):  # noqa: ANN001, ANN202
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_all_four_experts_train_the_colours_only(
    tiny_experts: None, scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path,
    one_torch_thread: None,
) -> None:  # fmt: skip
    config = styleme3d_config(scene_dir, tmp_path, 3, base_checkpoint=base_checkpoint, style_image=style_path,
                              style_prompt="a watercolor painting")  # fmt: skip
    trainer = _trainer(config)
    model = trainer.pipeline.model
    assert set(model.guidance) == set(EXPERTS)
    camera, batch = trainer.pipeline.datamanager.next_train(0)
    model.train()
    losses = model.get_loss_dict(model(camera), batch)
    assert set(losses) == set(EXPERTS)
    for name in EXPERTS:  # each expert alone moves the colours and nothing else
        model.zero_grad(set_to_none=True)
        losses = model.get_loss_dict(model(camera), batch)
        losses[name].backward()
        grads = {k: p.grad for k, p in model.gauss_params.items()}
        assert grads["features_dc"] is not None and grads["features_dc"].abs().sum() > 0, name
        assert all(grads[k] is None for k in ("means", "scales", "quats", "opacities")), name
    trainer.train()
    base = load_gaussians(base_checkpoint)
    for key in ("means", "scales", "quats", "opacities"):
        assert torch.equal(model.gauss_params[key].detach().cpu(), base[key].float())
    # the experts' networks are not part of the model: checkpoints hold the splat only
    saved = torch.load(sorted((config.get_base_dir() / "nerfstudio_models").glob("*.ckpt"))[-1], weights_only=True)
    assert not [k for k in saved["pipeline"] if any(f"_model.{e}." in k for e in EXPERTS)]


def test_experts_without_weights_are_skipped_with_a_reason_or_stop_the_run(
    scene_dir: Path, base_checkpoint: Path, style_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    logged: list[str] = []
    monkeypatch.setattr(
        "styleme3d_ns.models.guided_splat.CONSOLE.log", lambda *a, **k: logged.append(" ".join(map(str, a)))
    )
    config = styleme3d_config(scene_dir, tmp_path / "a", 1, base_checkpoint=base_checkpoint, style_image=style_path)
    model = _trainer(config).pipeline.model
    assert set(model.guidance) == {"sos"}
    for name, flag in (("DSSD", "--pipeline.model.dssd.sd-model"), ("CSD", "--pipeline.model.csd.weights"),
                       ("3DG-QA", "--pipeline.model.qa.pretrained")):  # fmt: skip
        line = next(entry for entry in logged if entry.startswith(f"{name} off:"))
        assert flag in line and "\n" not in line
    assert any(entry.startswith("styleme3d terms active: SOS on efficientnet-lite0") for entry in logged)

    strict = styleme3d_config(scene_dir, tmp_path / "b", 1, base_checkpoint=base_checkpoint, style_image=style_path,
                              missing_experts="error")  # fmt: skip
    with pytest.raises(SystemExit) as err:
        _trainer(strict)
    assert "--pipeline.model.dssd.sd-model" in str(err.value) and "\n" not in str(err.value)
