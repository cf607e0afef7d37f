"""Enroll riders: check each photo (one face, good quality, same person), embed it, refuse duplicates.

A photo is refused with a reason the operator can act on:

============== =================================================================
reason         meaning
============== =================================================================
unreadable     not an image, corrupt, empty or too large (edge.faces.images' message)
no_face        no face found
several_faces  more than one face: the photo must show the rider alone
too_small ...  a quality-gate reason of ``edge.door.quality`` (too small, outside the
               frame, head turned, blurred, too dark, too bright)
other_person   does not look like the rider's first accepted photo
============== =================================================================

One person, one account: a new rider whose templates lie within ``duplicate_threshold`` of an
enrolled rider's is **not** added; the result says ``duplicate`` and names the enrolled rider,
and the operator decides (``allow_duplicate=True`` enrolls anyway and says so in the audit log).

Folder layout for :meth:`Enroller.enroll_folder`: one sub-folder per rider, named by rider id,
holding their photos and optionally ``rider.json`` (``display_name``, ``reference``,
``concession``, ``account``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from edge.door.quality import REASONS as QUALITY_REASONS
from edge.door.quality import QualityConfig, assess
from edge.door.second_factor import valid_code
from edge.faces.geometry import scale_rect
from edge.faces.images import ImageError, as_rgb, load_image_file, resize_for_detection
from edge.faces.match import LOOKALIKE_DISTANCE, Gallery
from enrollment.config import EnrollmentConfig
from enrollment.store import RiderRecord, StoreError, TemplateStore

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
REASONS = {
    "unreadable": "The file is not a usable image",
    "no_face": "No face found: the rider's face must be clearly in the photo",
    "several_faces": "More than one face: the rider must be alone in the photo",
    "other_person": "This photo does not look like the rider's other photos",
    **QUALITY_REASONS,
}
#: Longest side a photo is scaled to for face detection (landmarks and quality use the full photo).
DETECT_SIDE = 640


@dataclass
class PhotoCheck:
    name: str
    ok: bool
    reason: str = ""
    message: str = ""
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass
class EnrollResult:
    rider_id: str
    status: Literal["enrolled", "duplicate", "refused"]
    accepted: list[str] = field(default_factory=list)
    refused: list[PhotoCheck] = field(default_factory=list)
    duplicate_of: str | None = None
    distance: float | None = None
    message: str = ""
    lookalike_of: str | None = None  # an enrolled rider within LOOKALIKE_DISTANCE: the bus asks for the second factor

    def as_dict(self) -> dict[str, Any]:
        return {
            "rider_id": self.rider_id,
            "status": self.status,
            "accepted": self.accepted,
            "refused": [{"photo": c.name, "reason": c.reason, "message": c.message} for c in self.refused],
            "duplicate_of": self.duplicate_of,
            "distance": self.distance,
            "message": self.message,
            "lookalike_of": self.lookalike_of,
        }


class Enroller:
    """Turns photos into a rider's templates in a :class:`TemplateStore`."""

    def __init__(
        self,
        engine: Any,  # edge.faces.engine.FaceEngine
        store: TemplateStore,
        cfg: EnrollmentConfig | None = None,
        quality: QualityConfig | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.cfg = cfg or EnrollmentConfig()
        self.quality = quality or QualityConfig()
        self.model_sha256: str = engine.embedder_sha256
        self._known: Gallery | None = None
        self._known_mark = -1

    # -- one photo -----------------------------------------------------------------------------

    def check_photo(self, name: str, image: bytes | Path | np.ndarray) -> PhotoCheck:
        """Load, detect, quality-check and embed one photo; never raises for a bad photo."""
        try:
            if isinstance(image, np.ndarray):
                rgb = as_rgb(image)
            elif isinstance(image, bytes):
                import io

                rgb = load_image_file(io.BytesIO(image))
            else:
                rgb = load_image_file(image)
        except ImageError as exc:
            return PhotoCheck(name, False, "unreadable", f"{REASONS['unreadable']}: {exc}")
        small, factor = resize_for_detection(rgb, DETECT_SIDE)
        rects = [scale_rect(d.rect, factor) for d in self.engine.detect(small, self.cfg.upsample, "hog")]
        if not rects:
            return PhotoCheck(name, False, "no_face", REASONS["no_face"])
        if len(rects) > 1:
            return PhotoCheck(name, False, "several_faces", f"{REASONS['several_faces']} ({len(rects)} found)")
        landmarks = self.engine.landmarks(rgb, rects, "small")
        chip = self.engine.chips(rgb, landmarks)[0]
        q = assess(landmarks[0], chip, rects[0], rgb.shape, self.quality)
        if not q.ok:
            return PhotoCheck(name, False, q.reasons[0], q.message)
        return PhotoCheck(name, True, embedding=self.engine.embed(chip[None])[0])

    # -- one rider -----------------------------------------------------------------------------

    def known(self) -> Gallery:
        """Enrolled riders' templates of this model, cached while the store has not changed.

        Every call checks the store's change mark (the audit log's newest entry), so an erasure
        made by the API, by ``facefare erase`` in another process or by anyone else takes effect
        at the next duplicate check: an erased rider is never in this copy.
        """
        mark = self.store.change_mark()
        if self._known is None or mark != self._known_mark:
            self._known = self.store.gallery(self.model_sha256)
            self._known_mark = mark
        return self._known

    def _remember(self, rider_id: str, embeddings: list[np.ndarray]) -> None:
        g = self._known
        if g is None or self.store.changed_since(self._known_mark, except_rider=rider_id):
            self._known = None  # not cached, or someone else changed the store meanwhile: read it again
            return
        ids = [str(r) for r in g.rider_ids] + [rider_id] * len(embeddings)
        self._known = Gallery(ids, np.concatenate([g.embeddings, np.stack(embeddings)]))
        self._known_mark = self.store.change_mark()

    def forget(self) -> None:
        """Drop the cached gallery (after riders were erased or re-embedded elsewhere)."""
        self._known = None

    def accept(
        self, photos: Iterable[tuple[str, bytes | Path | np.ndarray]]
    ) -> tuple[list[PhotoCheck], list[PhotoCheck]]:
        """Check photos; returns (accepted, refused). Stops accepting at ``max_photos``."""
        accepted: list[PhotoCheck] = []
        refused: list[PhotoCheck] = []
        for name, image in photos:
            if len(accepted) >= self.cfg.max_photos:
                break
            check = self.check_photo(name, image)
            if check.ok and accepted:
                assert check.embedding is not None and accepted[0].embedding is not None
                distance = float(np.linalg.norm(check.embedding - accepted[0].embedding))
                if distance > self.cfg.same_person_threshold:
                    check = PhotoCheck(name, False, "other_person", f"{REASONS['other_person']} ({distance:.2f})")
            (accepted if check.ok else refused).append(check)
            if not check.ok:
                log.info("photo %s refused: %s", name, check.message)
        return accepted, refused

    def enroll(
        self,
        record: RiderRecord,
        photos: Iterable[tuple[str, bytes | Path | np.ndarray]],
        *,
        allow_duplicate: bool = False,
        actor: str = "operator",
        code: str | None = None,
    ) -> EnrollResult:
        """Check the photos and, if enough pass and nobody enrolled looks the same, store the rider
        (and their second-factor ``code``, kept only as a sealed digest: TemplateStore.set_code)."""
        photos = list(photos)
        if code is not None and not valid_code(code):
            return EnrollResult(record.rider_id, "refused", message="the code must be 4 to 8 digits")
        accepted, refused = self.accept(photos)
        result = EnrollResult(record.rider_id, "refused", [c.name for c in accepted], refused)
        if len(accepted) < self.cfg.min_photos:
            result.message = f"{len(accepted)} usable photo(s), {self.cfg.min_photos} needed"
            return result
        embeddings = [c.embedding for c in accepted if c.embedding is not None]
        dup = self.find_duplicate(embeddings, exclude=record.rider_id)
        detail: dict[str, Any] = {"photos_refused": len(refused)}
        if dup is not None:
            result.duplicate_of, result.distance = dup
            if not allow_duplicate:
                result.status = "duplicate"
                result.message = f"looks like enrolled rider {dup[0]} (distance {dup[1]:.3f}); not added"
                with self.store.transaction() as db:
                    self.store.audit(db, actor, "duplicate_flagged", record.rider_id, similar_to=dup[0],
                                     distance=round(dup[1], 3))  # fmt: skip
                return result
            detail.update(duplicate_override=dup[0], distance=round(dup[1], 3))
        by_name = dict(photos)
        kept = [(c.name, _raw(by_name[c.name])) for c in accepted] if self.store.keep_photos else []
        try:
            self.store.add_rider(record, embeddings, model_sha256=self.model_sha256, photos=kept, actor=actor,
                                 detail=detail)  # fmt: skip
        except StoreError as exc:
            result.message = str(exc)
            return result
        if code is not None:
            self.store.set_code(record.rider_id, code, actor=actor)
        known = self.known()
        self._remember(record.rider_id, embeddings)
        result.status = "enrolled"
        result.message = f"enrolled with {len(embeddings)} template(s)"
        near = self.find_lookalike(known, embeddings, record.rider_id)
        if near is not None:
            result.lookalike_of = near[0]
            result.message += f"; looks like {near[0]} (distance {near[1]:.3f}): the bus will ask for the second factor"
            with self.store.transaction() as db:
                self.store.audit(db, actor, "lookalike_flagged", record.rider_id, similar_to=near[0],
                                 distance=round(near[1], 3))  # fmt: skip
        return result

    @staticmethod
    def find_lookalike(known: Gallery, embeddings: list[np.ndarray], rider_id: str) -> tuple[str, float] | None:
        """The nearest other enrolled rider within ``LOOKALIKE_DISTANCE``: the rule of
        edge.faces.match.lookalikes, for one new rider against the enrolled (O(N), not all pairs)."""
        best: tuple[str, float] | None = None
        others = known.rider_ids.astype(str) != rider_id
        for emb in embeddings:
            if not others.any():
                break
            dist = np.where(others, known.distances(emb), np.inf)
            i = int(np.argmin(dist))
            if dist[i] <= LOOKALIKE_DISTANCE and (best is None or dist[i] < best[1]):
                best = (str(known.rider_ids[i]), float(dist[i]))
        return best

    def find_duplicate(self, embeddings: list[np.ndarray], exclude: str | None = None) -> tuple[str, float] | None:
        """The nearest enrolled rider within ``duplicate_threshold`` of any of ``embeddings``, or None."""
        gallery = self.known()
        best: tuple[str, float] | None = None
        for emb in embeddings:
            if len(gallery) == 0:
                break
            dist = gallery.distances(emb)
            order = np.argsort(dist)
            for i in order[:8]:
                rider = str(gallery.rider_ids[i])
                if rider != exclude and dist[i] <= self.cfg.duplicate_threshold:
                    if best is None or dist[i] < best[1]:
                        best = (rider, float(dist[i]))
                    break
        return best

    # -- many riders ---------------------------------------------------------------------------

    def enroll_folder(
        self, folder: Path, *, progress: bool = True, allow_duplicate: bool = False, actor: str = "operator"
    ) -> list[EnrollResult]:
        """Enroll every sub-folder of ``folder`` as one rider (see the module docstring)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        riders = sorted(p for p in folder.iterdir() if p.is_dir())
        if not riders:
            raise ValueError(f"{folder} has no rider sub-folders (one folder of photos per rider)")
        results = []
        for sub in tqdm(riders, desc="enrolling", unit="rider", disable=not progress):
            try:
                record = read_record(sub)
            except ValueError as exc:
                results.append(EnrollResult(sub.name, "refused", message=str(exc)))
                continue
            results.append(self.enroll(record, photo_files(sub), allow_duplicate=allow_duplicate, actor=actor))
        return results

    def enroll_camera(
        self,
        record: RiderRecord,
        frames: Iterable[Any],
        *,
        count: int = 3,
        every: int = 5,
        max_frames: int = 300,
        allow_duplicate: bool = False,
        actor: str = "operator",
    ) -> EnrollResult:
        """Enroll from a camera: keep every ``every``-th frame that passes the checks, up to ``count``.

        ``frames`` yields ``hardware.cameras.Frame`` objects or RGB arrays. Frames that fail are
        counted and their reasons summarised in the result's message when too few pass.
        """
        shots: list[tuple[str, np.ndarray]] = []
        reasons: dict[str, int] = {}
        for i, frame in enumerate(frames):
            if i >= max_frames or len(shots) >= count:
                break
            if i % every:
                continue
            image = getattr(frame, "image", frame)
            if image is None:
                continue
            check = self.check_photo(f"frame-{i}", image)
            if check.ok:
                shots.append((check.name, np.asarray(image)))
            else:
                reasons[check.reason] = reasons.get(check.reason, 0) + 1
        result = self.enroll(record, shots, allow_duplicate=allow_duplicate, actor=actor)
        if result.status == "refused" and reasons:
            result.message += "; frames refused: " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
        return result

    # -- model migration -----------------------------------------------------------------------

    def reembed(self, folder: Path | None = None, *, progress: bool = True, actor: str = "operator") -> dict[str, str]:
        """Re-embed every active rider whose templates come from another model.

        Photos come from ``folder`` (one sub-folder per rider id) or, without it, from the photos
        the store kept (``keep_photos``). Returns rider id -> outcome (``reembedded``, ``current``,
        or why not: such a rider must be enrolled again).
        """
        outcome: dict[str, str] = {}
        for row in tqdm(self.store.riders(), desc="re-embedding", unit="rider", disable=not progress):
            rider = row["rider_id"]
            models = {t.model_sha256 for t in self.store.templates(rider)}
            if models == {self.model_sha256}:
                outcome[rider] = "current"
                continue
            if folder is not None:
                sub = Path(folder) / rider
                photos: list[tuple[str, Any]] = list(photo_files(sub)) if sub.is_dir() else []
            else:
                photos = list(self.store.photos(rider))
            if not photos:
                outcome[rider] = "no photos: enroll again"
                continue
            accepted, _ = self.accept(photos)
            if len(accepted) < self.cfg.min_photos:
                outcome[rider] = f"{len(accepted)} usable photo(s): enroll again"
                continue
            self.store.replace_templates(rider, [c.embedding for c in accepted if c.embedding is not None],
                                         model_sha256=self.model_sha256, actor=actor, action="reembed")  # fmt: skip
            outcome[rider] = "reembedded"
        self.forget()
        return outcome


def _raw(image: bytes | Path | np.ndarray) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        import cv2

        ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        return buf.tobytes() if ok else b""
    return Path(image).read_bytes()


def photo_files(folder: Path) -> list[tuple[str, Path]]:
    """The photos of one rider's folder, by name."""
    return [(p.name, p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES]


def read_record(folder: Path) -> RiderRecord:
    """The rider record of a rider folder: its name is the id, ``rider.json`` adds the rest."""
    extra: dict[str, Any] = {}
    meta = Path(folder) / "rider.json"
    if meta.exists():
        try:
            extra = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta}: not valid JSON ({exc})") from None
    try:
        return RiderRecord(rider_id=Path(folder).name, **extra)
    except Exception as exc:  # pydantic.ValidationError, TypeError for non-dict JSON
        raise ValueError(f"{folder}: bad rider record: {exc}") from None
