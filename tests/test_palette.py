"""A stylised run's palette and look: entries saved with the splat, the look rendered, exported and checked."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from styleme3d_ns.eval.render import load_pipeline
from styleme3d_ns.models.look import LookConfig
from tests.test_viewer_controls import _wait_for, server  # noqa: F401 - server: a viser server fixture


@pytest.fixture
def stylised(stylised_run: Path):  # noqa: ANN201 - (pipeline, camera, config.yml) of the stylised fixture, eval mode
    _, pipeline = load_pipeline(stylised_run)
    camera, _ = pipeline.datamanager.next_eval_image(0)
    return pipeline, camera.to(pipeline.model.device), stylised_run


def second_style(dc: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A visibly different colour set from SH coefficients `dc [N, 3]`, `rest [N, K-1, 3]`: channels reversed, DC
    brightened."""
    return dc.detach().flip(-1) + 0.3, rest.detach().flip(-1)


def _render(model, camera, look: LookConfig) -> dict[str, torch.Tensor]:  # noqa: ANN001
    model.config.look = look
    with torch.no_grad():
        return model.get_outputs_for_camera(camera)


def test_palette_entries_render_export_and_survive_a_checkpoint(stylised) -> None:  # noqa: ANN001
    pipeline, camera, run = stylised
    model = pipeline.model
    dc, rest = second_style(model.features_dc, model.features_rest)
    assert model.palette.append(dc, rest, "second") == 1 and model.palette_labels()[1] == "second"

    shown = _render(model, camera, LookConfig(style=1))["rgb"]
    live = _render(model, camera, LookConfig())["rgb"]
    model.features_dc.data, saved = dc.clone(), model.features_dc.data.clone()  # the same colours as the live set
    model.features_rest.data, saved_rest = rest.clone(), model.features_rest.data.clone()
    reference = _render(model, camera, LookConfig())["rgb"]
    model.features_dc.data, model.features_rest.data = saved, saved_rest
    torch.testing.assert_close(shown, reference, atol=1e-6, rtol=0)
    assert (shown - live).abs().mean() > 0.02

    model.config.look = LookConfig(style=1)
    assert torch.equal(model.shs_rest, rest) and torch.equal(model.look_coefficients()[0], dc)  # ns-export's view

    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, again = load_pipeline(run)
    again.model.load_state_dict(state)
    assert again.model.palette_labels()[1] == "second" and torch.equal(again.model.palette.dc[0], dc)


def test_strength_zero_and_outside_the_region_render_the_base_bit_for_bit(stylised) -> None:  # noqa: ANN001
    pipeline, camera, _ = stylised
    model = pipeline.model
    off = _render(model, camera, LookConfig(strength=0.0))
    assert torch.equal(off["rgb"], off["content_rgb"])
    far = LookConfig(region="inside", box_center=(100.0, 100.0, 100.0), box_size=(0.1, 0.1, 0.1))
    outside = _render(model, camera, far)
    assert torch.equal(outside["rgb"], outside["content_rgb"])
    half = _render(model, camera, LookConfig(strength=0.5))
    full = _render(model, camera, LookConfig())
    # a render is linear in the colours: half strength is halfway (up to where the clamp of the final image bites)
    inside = (full["rgb"] < 0.99).all(-1) & (full["rgb"] > 0.01).all(-1)
    torch.testing.assert_close(half["rgb"][inside], (0.5 * (full["rgb"] + full["content_rgb"]))[inside], atol=1e-5,
                               rtol=0)  # fmt: skip


def test_a_look_the_palette_cannot_show_is_one_line(stylised) -> None:  # noqa: ANN001
    pipeline, _, _ = stylised
    model = pipeline.model
    model.config.look = replace(LookConfig(), style=3)
    with pytest.raises(SystemExit) as err:
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert "look style 3 is not a palette index" in str(err.value) and "\n" not in str(err.value)


def test_an_entry_added_while_the_panel_is_up_is_listed_without_the_viewers_locked_hook(stylised, server) -> None:  # noqa: ANN001, F811
    """The training thread adds entries (prompts in turn, the teacher) while holding the trainer's lock, which
    nerfstudio's rewired hook of the panel takes: the panel must list the entry without calling that hook itself."""
    pipeline, _, _ = stylised
    model = pipeline.model
    model.palette.controls.install(server)
    trainer_lock, acquired = threading.Lock(), []

    def rewired_hook(_) -> None:  # noqa: ANN001 - as nerfstudio's Viewer wraps it: under the trainer's lock
        acquired.append(trainer_lock.acquire(timeout=2.0))
        if acquired[-1]:
            trainer_lock.release()

    model.palette.controls.cb_hook = rewired_hook
    with trainer_lock:  # a training step
        names = model.palette.add(*second_style(model.features_dc, model.features_rest), "second")
    assert names[-1] == "second" and model.palette.controls.style.gui_handle.options == tuple(names)
    _wait_for(lambda: bool(acquired))  # the re-render request comes from viser's worker thread, after the step
    assert all(acquired)
