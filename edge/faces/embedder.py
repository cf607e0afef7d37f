"""The face embedder: 150x150 aligned RGB chips in, 128-d embeddings out (ONNX, dynamic batch)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

CHIP_SIZE = 150
EMBEDDING_SIZE = 128


class FaceEmbedder:
    """Runs the converted dlib ResNet. Faces of one person lie within about 0.6 of each other."""

    def __init__(self, session: ort.InferenceSession, max_batch: int = 32) -> None:
        self.session = session
        self.max_batch = max_batch

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """``chips``: (N, 150, 150, 3) uint8 RGB. Returns (N, 128) float32."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected chips of shape (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        out = [
            self.session.run(["embeddings"], {"chips": chips[i : i + self.max_batch].astype(np.float32)})[0]
            for i in range(0, len(chips), self.max_batch)
        ]
        return np.concatenate(out, axis=0)


def load(files) -> FaceEmbedder:
    """The ``dlib_resnet`` backend of :data:`edge.faces.backends.EMBEDDERS`: dlib's ResNet (CC0)."""
    return FaceEmbedder(files.session("face_embedder.onnx"))
