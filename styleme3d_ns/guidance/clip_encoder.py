"""A frozen open_clip model as a differentiable image/text embedder, loaded from local weights only.

Every CLIP-based piece (clip-splat's text guidance, the 3DG-QA prior, the evaluation's CLIP scores) embeds through
:class:`ClipEncoder`, so resizing to the model's input size and CLIP's own normalisation happen in one place.

Weights are found by :func:`load_clip_encoder`:

- ``model_name`` is an open_clip architecture (``"ViT-B-32"``, see ``open_clip.list_models()``) or the path of a
  model config JSON in open_clip's format (a custom or fine-tuned architecture; tests use a tiny one);
- ``pretrained`` is an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``; see ``open_clip.list_pretrained()``),
  looked up in the Hugging Face cache under the repo open_clip itself downloads from, or a local checkpoint file.

Nothing is downloaded: a miss is a one-line :class:`~styleme3d_ns.guidance.weights.MissingWeightsError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights

# open_clip stores its Hub weights under one of these names (open_clip.pretrained.HF_{SAFE_,}WEIGHTS_NAME).
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _import_open_clip():  # noqa: ANN202 - the open_clip module
    try:
        with warnings.catch_warnings():  # open_clip's import warns about torch.jit deprecation; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            import open_clip
    except ImportError as err:
        raise MissingWeightsError(
            "open_clip_torch is not installed: pip install 'styleme3d-ns[guidance]' (or open_clip_torch)."
        ) from err
    return open_clip


def _architecture(model_name: str) -> str:
    """Register a config-JSON architecture with open_clip and return its name; check a built-in name exists."""
    open_clip = _import_open_clip()
    path = Path(model_name).expanduser()
    if model_name.endswith(".json"):
        if not path.is_file():
            raise MissingWeightsError(
                f"CLIP model config '{path}' does not exist; pass an open_clip model name "
                "(e.g. ViT-B-32) or the path of an open_clip model config JSON."
            )
        open_clip.add_model_config(path)
        return path.stem
    if model_name not in open_clip.list_models():
        raise MissingWeightsError(
            f"'{model_name}' is not an open_clip model; pick one of open_clip.list_models() (e.g. ViT-B-32, "
            "ViT-B-16, ViT-L-14) or pass the path of a model config JSON."
        )
    return model_name


def resolve_clip_checkpoint(model_name: str, pretrained: str, *, hint: str) -> Path:
    """Local path of the weights for ``(model_name, pretrained)``: a file path as given, or a tag via the HF cache."""
    open_clip = _import_open_clip()
    local = Path(pretrained).expanduser()
    if local.is_file():
        return local
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise MissingWeightsError(
            f"CLIP weights '{pretrained}' are neither a file nor a pretrained tag of {model_name} (tags: {tags}); "
            f"{hint}."
        )
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        raise MissingWeightsError(
            f"CLIP {model_name}/{pretrained} is only distributed by URL ({cfg.get('url')}); download it on a machine "
            f"with internet and {hint}."
        )
    error: MissingWeightsError | None = None
    for filename in _HUB_FILES:
        try:
            return resolve_weights(f"CLIP {model_name} ({pretrained})", repo, filename=filename, hint=hint)
        except MissingWeightsError as err:
            error = err
    assert error is not None
    raise error


class ClipEncoder(nn.Module):
    """Frozen open_clip model: differentiable image embeddings, cached text embeddings.

    Args:
        model: An open_clip ``CLIP``/``CustomTextCLIP`` module (weights already loaded).
        tokenizer: The matching open_clip tokenizer (``open_clip.get_tokenizer(name)``).
        image_size: CLIP's input side in pixels.
        mean, std: CLIP's per-channel normalisation (RGB, for inputs in [0, 1]).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: object,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipEncoder:
        """Keep the frozen network in eval mode whatever the enclosing module does."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> CLIP input ``[B, 3, S, S]``: resize (bilinear, antialiased) and normalise.

        Non-square renders are squashed to the square input rather than centre-cropped, so no pixel is left
        without gradient (open_clip's own transform crops, which would freeze the render's borders).
        """
        x = images.to(self.mean.device, torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean) / self.std

    def encode_images(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings ``[B, D]`` of ``images`` ``[B, 3, H, W]`` in [0, 1]; differentiable."""
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings ``[P, D]`` (no gradient: prompts are fixed). A prompt longer than CLIP's context
        (77 tokens with start/end) is cut there by the tokenizer, with a warning naming how much is lost."""
        self._warn_long(prompts)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def _warn_long(self, prompts: Sequence[str]) -> None:
        """Warn, once per prompt, when the tokenizer will drop its end (open_clip truncates silently)."""
        limit = getattr(self.tokenizer, "context_length", None)
        encode = getattr(self.tokenizer, "encode", None)
        if limit is None or encode is None:
            return
        for prompt in prompts:
            count = len(encode(prompt)) + 2  # + start and end tokens
            if count > limit:
                warnings.warn(
                    f"CLIP prompt '{prompt[:40]}...' is {count} tokens; CLIP reads only the first {limit}, the rest "
                    "is ignored: shorten it",
                    UserWarning,
                    stacklevel=3,
                )

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature exp(t) (100 for the OpenAI models): turns cosines into softmax logits."""
        return float(self.model.logit_scale.exp())


def load_clip_encoder(
    model_name: str, pretrained: str, *, device: str | torch.device = "cpu", hint: str
) -> ClipEncoder:
    """Build a frozen :class:`ClipEncoder` from local weights.

    Args:
        model_name: open_clip architecture name, or path of an open_clip model config JSON.
        pretrained: open_clip pretrained tag (looked up in the HF cache) or a local checkpoint file.
        device: Where the encoder runs.
        hint: How the user passes a local path instead (ends the one-line error), e.g.
            ``"pass --pipeline.model.clip.pretrained /path/open_clip_model.safetensors"``.

    Raises:
        MissingWeightsError: one line, when the architecture, tag or weights cannot be found locally.
    """
    open_clip = _import_open_clip()
    name = _architecture(model_name)
    checkpoint = resolve_clip_checkpoint(name, pretrained, hint=hint)
    try:
        model = open_clip.create_model(name, pretrained=str(checkpoint), device=device, load_weights_only=True)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # noqa: BLE001 - any loader failure is reported as one line naming the file
        reason = " ".join(str(err).split())[:300]
        raise MissingWeightsError(f"CLIP {name} could not load '{checkpoint}' ({reason}); {hint}.") from err
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", model.visual.image_size)
    side = size[0] if isinstance(size, (tuple, list)) else size
    return ClipEncoder(model, tokenizer, side, cfg["mean"], cfg["std"]).to(device)
