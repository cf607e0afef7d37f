"""The face API in one page, with face_recognition's signatures, running without dlib.

    >>> from edge import faces
    >>> image = faces.load_image_file("obama.jpg")          # HxWx3 uint8 RGB
    >>> boxes = faces.face_locations(image)                 # [(top, right, bottom, left), ...]
    >>> codes = faces.face_encodings(image, boxes)          # [array of 128 floats, ...]
    >>> faces.compare_faces(known_codes, codes[0])          # [True, False, ...]

Models come from the converted artefacts in ``$FACEFARE_MODELS__DIR`` (default
``~/.cache/facefare/models``; run ``facefare models convert`` once), checked against their
manifest when first used. Call :func:`use_models` to point at another folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edge.faces.engine import FaceEngine
from edge.faces.geometry import Rect
from edge.faces.images import as_rgb
from edge.faces.images import load_image_file as _load_image_file
from models.manifest import default_models_dir

Css = tuple[int, int, int, int]

_engine: FaceEngine | None = None


def use_models(models_dir: str | Path, provider: str = "cpu", threads: int = 2) -> FaceEngine:
    """Use the artefacts in ``models_dir`` from now on; returns the engine behind this API."""
    global _engine
    _engine = FaceEngine(models_dir, provider, threads)
    return _engine


def engine() -> FaceEngine:
    if _engine is None:
        use_models(default_models_dir())
    assert _engine is not None
    return _engine


def load_image_file(file, mode: str = "RGB") -> np.ndarray:
    """Load an image file (path or file object) into an HxWx3 (or HxW for mode 'L') uint8 array."""
    return _load_image_file(file, mode)


def _trim_css(rect: Rect, shape: tuple[int, ...]) -> Css:
    return (max(rect.top, 0), min(rect.right, shape[1]), min(rect.bottom, shape[0]), max(rect.left, 0))


def face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog") -> list[Css]:
    """Bounding boxes of faces as (top, right, bottom, left).

    ``model``: 'hog' (dlib-exact, the default), 'cnn' (dlib's MMOD CNN), or 'blazeface'
    (MediaPipe's detector, ~25x faster than HOG; boxes calibrated to HOG's, so that
    :func:`face_encodings` on them gives nearly the same encodings; upsampling is ignored).
    """
    img = as_rgb(img)
    return [_trim_css(d.rect, img.shape) for d in engine().detect(img, number_of_times_to_upsample, model)]


def batch_face_locations(
    images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1, batch_size: int = 128
) -> list[list[Css]]:
    """CNN face boxes for many images at once: one list of (top, right, bottom, left) per image."""
    rgbs = [as_rgb(i) for i in images]
    results = engine().mmod.detect_batch(rgbs, upsample=number_of_times_to_upsample, batch_size=batch_size)
    return [[_trim_css(d.rect, img.shape) for d in dets] for img, dets in zip(rgbs, results, strict=True)]


def _raw_landmarks(img: np.ndarray, face_locations: Iterable[Css] | None, model: str) -> list[np.ndarray]:
    if face_locations is None:
        rects = [d.rect for d in engine().detect(img, 1, "hog")]
    else:
        rects = [Rect.from_css(tuple(int(v) for v in loc)) for loc in face_locations]
    return engine().landmarks(img, rects, model)


def _mesh_faces(img: np.ndarray, face_locations: Iterable[Css] | None) -> list:
    """Face Mesh V2 results per face: ROI from the box (or BlazeFace's detection), refined once
    from the mesh's own points as MediaPipe does when tracking."""
    from edge.faces.mesh import roi_from_points, roi_from_rect

    eng = engine()
    if face_locations is None:
        dets = eng.detect(img, 0, "blazeface")
        rois = [roi_from_rect(d.rect, d.keypoints) for d in dets]
    else:
        rois = [roi_from_rect(Rect.from_css(tuple(int(v) for v in loc))) for loc in face_locations]
    out = []
    for roi in rois:
        first = eng.mesh.landmarks(img, roi)
        out.append(eng.mesh.landmarks(img, roi_from_points(first.points)))
    return out


def face_mesh(face_image: np.ndarray, known_face_locations: Iterable[Css] | None = None) -> list[np.ndarray]:
    """MediaPipe's 478 face-mesh points per face: (478, 3) float arrays of (x, y, z) image pixels."""
    return [m.points for m in _mesh_faces(as_rgb(face_image), known_face_locations)]


def face_blendshapes(
    face_image: np.ndarray, known_face_locations: Iterable[Css] | None = None
) -> list[dict[str, float]]:
    """MediaPipe's 52 blendshape scores in [0, 1] per face, in the order of the locations.

    Names as MediaPipe's (``_neutral``, ``mouthSmileLeft``, ``jawOpen``, ``eyeBlinkLeft``, ...).
    Without locations, faces are found with the 'blazeface' detector.
    """
    from edge.faces.mesh import BLENDSHAPE_NAMES

    img = as_rgb(face_image)
    eng = engine()
    result = []
    for m in _mesh_faces(img, known_face_locations):
        scores = eng.mesh.blendshapes(m.points)
        result.append({name: float(v) for name, v in zip(BLENDSHAPE_NAMES, scores, strict=True)})
    return result


def _points(arr: np.ndarray) -> list[tuple[int, int]]:
    return [(int(x), int(y)) for x, y in np.floor(np.asarray(arr) + 0.5).astype(np.int64)]


def face_landmarks(
    face_image: np.ndarray, face_locations: Iterable[Css] | None = None, model: str = "large"
) -> list[dict[str, list[tuple[int, int]]]]:
    """Per face, a dict of feature name -> list of (x, y) points (chin, eyes, nose, lips...).

    ``model``: 'large' (dlib 68 points), 'small' (dlib 5 points) or 'mesh' (MediaPipe's 478
    points under the key ``"mesh"``; :func:`face_mesh` gives them as floats with z).
    """
    img = as_rgb(face_image)
    if model == "mesh":
        return [{"mesh": _points(p[:, :2])} for p in face_mesh(img, face_locations)]
    result = []
    for raw in _raw_landmarks(img, face_locations, model):
        p = _points(raw)
        if model == "large":
            result.append(
                {
                    "chin": p[0:17],
                    "left_eyebrow": p[17:22],
                    "right_eyebrow": p[22:27],
                    "nose_bridge": p[27:31],
                    "nose_tip": p[31:36],
                    "left_eye": p[36:42],
                    "right_eye": p[42:48],
                    "top_lip": p[48:55] + [p[64], p[63], p[62], p[61], p[60]],
                    "bottom_lip": p[54:60] + [p[48], p[60], p[67], p[66], p[65], p[64]],
                }
            )
        else:
            result.append({"nose_tip": [p[4]], "left_eye": p[2:4], "right_eye": p[0:2]})
    return result


def face_encodings(
    face_image: np.ndarray,
    known_face_locations: Iterable[Css] | None = None,
    num_jitters: int = 1,
    model: str = "small",
) -> list[np.ndarray]:
    """A 128-d float64 encoding per face (found, or at ``known_face_locations``)."""
    img = as_rgb(face_image)
    landmarks = _raw_landmarks(img, known_face_locations, model)
    eng = engine()
    codes = eng.embed(eng.chips(img, landmarks), num_jitters=num_jitters)
    return [c.astype(np.float64) for c in codes]


def face_distance(face_encodings: Sequence[np.ndarray] | np.ndarray, face_to_compare: np.ndarray) -> np.ndarray:
    """Euclidean distance from ``face_to_compare`` to each known encoding (empty in, empty out)."""
    if len(face_encodings) == 0:
        return np.empty(0)
    return np.linalg.norm(np.asarray(face_encodings) - np.asarray(face_to_compare), axis=1)


def compare_faces(
    known_face_encodings: Sequence[np.ndarray] | np.ndarray, face_encoding_to_check: np.ndarray, tolerance: float = 0.6
) -> list[bool]:
    """For each known encoding, whether it is the same person (distance <= ``tolerance``)."""
    return [bool(v) for v in face_distance(known_face_encodings, face_encoding_to_check) <= tolerance]


def identify(
    known_face_encodings: Sequence[np.ndarray] | np.ndarray,
    known_names: Sequence[str],
    face_encoding_to_check: np.ndarray,
) -> str | None:
    """The name to charge for ``face_encoding_to_check``, or None: the bus's own single-frame rule.

    Unlike :func:`compare_faces` (one yes/no per known encoding at a fixed tolerance), this is a
    1:N *decision*: a name may have several encodings (its nearest counts); the nearest name must be
    within the threshold and at least the margin closer than any other name; and the threshold is
    the bus's operating point for a gallery of ``len(set(known_names))`` people with the default
    config (``edge.faces.match``; see docs/accuracy.md). None means "do not charge on the face".
    """
    from edge.faces.match import Gallery, identify_match

    if len(known_face_encodings) != len(known_names):
        raise ValueError(f"{len(known_face_encodings)} encodings but {len(known_names)} names")
    if len(known_names) == 0:
        return None
    gallery = Gallery([str(n) for n in known_names], np.asarray(known_face_encodings, dtype=np.float32))
    return identify_match(gallery, np.asarray(face_encoding_to_check))
