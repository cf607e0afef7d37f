"""The edge runs in a process where dlib, face_recognition, mediapipe and TFLite runtimes cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dlib", "face_recognition", "face_recognition_models", "onnx", "mediapipe",
                                  "tflite", "tflite_runtime", "ai_edge_litert", "tensorflow"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
try:
    import dlib  # noqa: F401
    raise SystemExit("dlib imported although blocked")
except ImportError:
    pass

from edge import faces
faces.use_models(sys.argv[1])
img = faces.load_image_file(sys.argv[2])
boxes = faces.face_locations(img, 0, "hog")
cnn = faces.face_locations(img, 0, "cnn")
codes = faces.face_encodings(img, boxes)
marks = faces.face_landmarks(img, boxes, "small")
blaze = faces.face_locations(img, model="blazeface")
shapes = faces.face_blendshapes(img, blaze)
print(json.dumps({
    "boxes": boxes, "cnn": cnn, "n_codes": len(codes), "dim": len(codes[0]), "marks": len(marks),
    "blaze": blaze, "shapes": len(shapes[0]),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("dlib", "face_recognition", "onnx", "mediapipe",
                                                                  "tflite", "ai_edge_litert", "tensorflow")),
}))
"""


def test_edge_runs_without_dlib(models_dir: Path, faces_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models_dir), str(faces_dir / "obama-480p.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["boxes"]) == 1 and len(result["cnn"]) == 1
    assert result["n_codes"] == 1 and result["dim"] == 128 and result["marks"] == 1
    assert len(result["blaze"]) == 1 and result["shapes"] == 52
    assert result["loaded"] == []
