"""A tiny randomly initialised open_clip model written to disk as a real (config JSON, checkpoint) pair.

It goes through the same loader as real weights (`load_clip_encoder`), so tests exercise the user's code path;
its scores mean nothing about style, only that the maths and plumbing are right.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# open_clip's config format; the text tower keeps CLIP's BPE vocabulary (49408) and context (77) so the packaged
# SimpleTokenizer works unchanged; everything else is as small as a transformer gets.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def write_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``tiny-clip.json`` and ``tiny-clip.pt`` into ``folder``; return (config path, checkpoint path)."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-clip")
    checkpoint = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint
