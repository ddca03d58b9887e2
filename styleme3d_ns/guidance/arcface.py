"""The ArcFace face embedding IP-Adapter-FaceID conditions on (paper 001 eq. 9's I_e), found offline.

IP-Adapter-FaceID was trained on insightface's ``buffalo_l`` ArcFace embeddings (``face.normed_embedding``, 512-D).
We never download: either the user passes a precomputed embedding file, or insightface is installed and its
``buffalo_l`` models are already in ``~/.insightface/models/buffalo_l`` (insightface itself would fetch them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.guidance.weights import MissingWeightsError

ARCFACE_DIM = 512
"""Length of an insightface ArcFace embedding (IP-Adapter-FaceID's image-embedding input)."""
_HINT = (
    "pip install insightface onnxruntime and copy the buffalo_l models to ~/.insightface/models/buffalo_l, or pass "
    "--pipeline.model.face-embedding <embedding.npy> (a 512-D insightface ArcFace embedding of the photo)"
)


def read_face_embedding(path: Path) -> Tensor:
    """A saved embedding (``.npy`` or ``.pt``, shape ``[512]`` or ``[1, 512]``) as float32 ``[1, 512]``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserInputError(f"face embedding {path} does not exist; {_HINT}")
    try:
        data = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise UserInputError(f"face embedding {path} cannot be read ({type(err).__name__}); {_HINT}") from None
    embedding = torch.as_tensor(np.asarray(data), dtype=torch.float32).reshape(1, -1)
    if embedding.shape[1] != ARCFACE_DIM:
        raise UserInputError(f"face embedding {path} has {embedding.shape[1]} values, not {ARCFACE_DIM}; {_HINT}")
    return embedding


def insightface_embedding(photo: Tensor, root: Path | None = None) -> Tensor:
    """ArcFace embedding ``[1, 512]`` of the largest face in ``photo`` ``[H, W, 3]`` uint8 RGB, via insightface."""
    root = Path(root or os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser()
    if not (root / "models" / "buffalo_l").is_dir():
        raise MissingWeightsError(f"insightface buffalo_l models not found in {root / 'models' / 'buffalo_l'}; {_HINT}")
    try:
        from insightface.app import FaceAnalysis
    except ImportError as err:
        raise MissingWeightsError(f"insightface is not installed; {_HINT}") from err
    app = FaceAnalysis(name="buffalo_l", root=str(root), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(photo.numpy()[..., ::-1].copy())  # insightface expects BGR
    if not faces:
        raise UserInputError("insightface found no face in the portrait photo; use a frontal, well-lit photo")
    largest = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    return torch.from_numpy(np.asarray(largest.normed_embedding, dtype=np.float32))[None]


def load_face_embedding(photo: Tensor, path: Path | None = None) -> Tensor:
    """The photo's ArcFace embedding ``[1, 512]``: read from ``path`` if given, else computed with insightface."""
    return read_face_embedding(path) if path is not None else insightface_embedding(photo)
