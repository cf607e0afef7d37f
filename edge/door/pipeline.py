"""The bus-door pipeline: camera frames in, at most one fare decision per boarding rider out.

Per frame::

    as_rgb -> detect, every frame (the engine's detector: BlazeFace on the bus, ~2 ms a frame on
              the whole frame; HOG on a copy scaled to ``detect_side`` px longest side, boxes
              scaled back, with ``detect_regions="motion"`` scanning only the regions
              edge.door.motion plans)
      -> IouTracker -> the door-zone face (the largest face whose centre is in the zone; two faces
         of similar size in the zone -> "One at a time please", nothing else happens)
      -> for the door face only: Face Mesh V2 (its ROI from the face's own landmarks of the last
         frame, as MediaPipe tracks, or from the detection) -> blendshapes -> quality gate from
         the mesh -> smile gate on the blendshapes -> with ``liveness``: the presentation-attack
         checks (edge.door.liveness: prompt timing, head turn, screen cue, NIR), which may refuse
      -> 5-point landmarks, aligned chip and ResNet embedding, only once the smile gate has passed
         for this track and the frame passes quality
      -> match against the Gallery: a vote counts when edge.faces.match.Rule accepts it (distance
         <= the operating point's threshold, derived at start from the gallery size unless
         match_threshold is set, and margin to the next rider >= min_margin; the same rule as
         edge.faces.identify); ``agree_frames`` votes for the same rider in a row make a charge,
         or, when the gallery is too large for the face alone, a "second_factor" decision
      -> one DoorDecision per track (charge / refuse / see_driver); a charge is recorded by the
         node's ledger thread (edge.door.node), the only code that charges.

An unknown face never charges: ``agree_frames`` frames in a row that match nobody (or nobody
unambiguously) give a refusal; ``max_match_frames`` embedded frames without agreement give
"see the driver". Frames that fail ``as_rgb`` (None, wrong shape, wrong dtype) are skipped with
a WARNING and the pipeline goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.door.liveness import Liveness, LivenessConfig, LivenessState
from edge.door.motion import MotionMask, RegionPlanner
from edge.door.quality import MeshQuality, QualityConfig, assess_mesh, face_patch
from edge.door.second_factor import SecondFactor
from edge.door.smile import SmileConfig, SmileGate, SmileResult, SmileState
from edge.door.tracker import IouTracker
from edge.faces.geometry import Detection, Rect, iou, scale_rect
from edge.faces.images import ImageError, as_rgb, resize_for_detection
from edge.faces.match import (
    DEFAULT_MIN_MARGIN,
    FPIR_TARGET,
    LOOKALIKE_MAX_TEMPLATES,
    LOOKALIKE_REFRESH_TEMPLATES,
    MIN_FACE_THRESHOLD,
    SHORTLIST,
    Gallery,
    Match,
    OperatingPoint,
    Rule,
    lookalikes,
    operating_point,
    shortlist,
)
from edge.faces.mesh import INDEX, blink, roi_from_points, roi_from_rect, roi_rect, smile

if TYPE_CHECKING:
    from edge.faces.engine import FaceEngine
    from edge.fares.ledger import FareDecision

log = logging.getLogger(__name__)


class PipelineConfig(BaseModel):
    """The ``[pipeline]`` section: matching and detection settings of the door pipeline."""

    model_config = ConfigDict(extra="forbid")

    match_threshold: float | None = Field(
        None,
        gt=0,
        description="Largest embedding distance that counts as a match; unset: derived at start from the gallery's "
        "size and fpir_target (edge.faces.match.operating_point, docs/accuracy.md)",
    )
    fpir_target: float = Field(
        FPIR_TARGET, gt=0, lt=1, description="Expected wrong charges per boarding the face alone may cause (worst case)"
    )
    min_face_threshold: float = Field(
        MIN_FACE_THRESHOLD,
        gt=0,
        description="A derived threshold below this (a gallery too large for the face alone): every boarding "
        "needs the second factor",
    )
    min_margin: float = Field(
        DEFAULT_MIN_MARGIN, ge=0, description="Second-best rider's distance minus the best, at least"
    )
    agree_frames: int = Field(3, ge=1, description="Consecutive matching frames of one track naming the same rider")
    max_match_frames: int = Field(15, ge=1, description="Embedded frames without agreement before 'see the driver'")
    detect_side: int = Field(640, ge=80, description="Detection runs on a copy scaled to this longest side")
    upsample: int = Field(0, ge=0, le=2, description="HOG detector upsampling")
    detect_regions: Literal["motion", "full"] = Field(
        "motion",
        description="'motion': HOG scans only regions around motion and live tracks (see edge.door.motion), "
        "the whole frame now and then; 'full': the whole frame every frame",
    )
    full_detect_every: int = Field(
        12, ge=1, description="With 'motion': scan the whole frame every this many frames (and on the first)"
    )
    motion_width: int = Field(160, ge=16, description="Width in px of the grey copy the motion mask is computed on")
    motion_threshold: int = Field(
        25, ge=1, le=255, description="Grey-level difference from the running average that counts as motion"
    )
    region_margin: float = Field(
        0.5, ge=0, description="A motion or track box is widened on each side by this fraction of its size"
    )
    region_min_margin: int = Field(
        100, ge=0, description="A motion or track box is widened on each side by at least this many detection-scale px"
    )
    max_region_fraction: float = Field(
        0.6, gt=0, le=1, description="Regions covering more than this fraction of the frame: scan it whole"
    )
    door_zone: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 1.0, 1.0),
        description="left, top, right, bottom as fractions of the frame; a face's centre must lie in it",
    )
    similar_area: float = Field(
        0.8, gt=0, le=1, description="Two zone faces with this area ratio or more: one at a time please"
    )
    route_id: str = Field("1", min_length=1, description="Route charged for boardings")
    trip_id: str = Field("trip", min_length=1, description="Trip id used in fare ids")


Action = Literal["charge", "refuse", "see_driver"]

MESSAGES = {
    "crowded": "One at a time please",
    "smile": "Smile to pay",
    "unknown": "Sorry, we do not recognise you: please see the driver",
    "ambiguous": "Sorry, we could not confirm who you are: please see the driver",
    "frozen": "Please see the driver",
    "attempts": "Please see the driver",
    "second_factor": "Please confirm with your code, or see the driver",
    "enter_code": "Please type your code and press Enter",
    "wrong_code": "Wrong code: please try again",
    # presentation-attack defence (edge.door.liveness, docs/presentation-attacks.md)
    "wait": "Look at the camera",
    "turn_left": "Now turn your head a little to your left",
    "turn_right": "Now turn your head a little to your right",
    "flat": "Sorry, we could not confirm a live face: please see the driver",
    "turn": "Please turn your head when asked: see the driver",
    "screen": "Sorry, we could not confirm a live face: please see the driver",
    "bezel": "Sorry, we could not confirm a live face: please see the driver",
    "glare": "Sorry, we could not confirm a live face: please see the driver",
    "colour": "Sorry, we could not confirm a live face: please see the driver",
    "nir": "Sorry, we could not confirm a live face: please see the driver",
    "challenge": "Please smile when asked: see the driver",
}


@dataclass(frozen=True)
class DoorDecision:
    """The pipeline's one final word on a track."""

    track_id: int
    frame_index: int
    ts: float
    action: Action
    rider_id: str | None
    #: "matched", "unknown", "ambiguous", "frozen", "attempts", "second_factor", the liveness reasons
    #: ("challenge", "turn", "flat", "screen", "bezel", "glare", "colour", "nir") or the ledger's refusal reason
    reason: str
    message: str
    distance: float | None = None
    margin: float | None = None
    fare: FareDecision | None = None


@dataclass(frozen=True)
class Feedback:
    """What the door tells the rider: a prompt (``decision`` None) or a final decision."""

    track_id: int | None
    message: str
    decision: DoorDecision | None = None


@dataclass
class TrackState:
    smile: SmileState = field(default_factory=SmileState)
    armed: bool = False  # the smile gate passed: identity may now be checked
    votes: list[Match] = field(default_factory=list)
    embedded: int = 0
    decided: DoorDecision | None = None
    last_prompt: str = ""
    points: np.ndarray | None = None  # the face's 478 mesh points on its last frame (the next ROI)
    last_smile: SmileResult | None = None  # for displays: the gate's last score and state
    last_quality: MeshQuality | None = None
    pad: LivenessState = field(default_factory=LivenessState)  # presentation-attack checks
    awaiting_code: Match | None = None  # the face named this rider; their code is asked (second factor)
    shortlist: list[tuple[str, float]] = field(default_factory=list)  # the few riders the code may name


def _matcher(gallery):
    """The in-memory matcher (rider_ids, embeddings, distances) behind ``gallery``: a bus gallery
    serves one through ``gallery()``, a plain Gallery is its own."""
    return gallery.gallery() if callable(getattr(gallery, "gallery", None)) else gallery


def _rider_count(gallery) -> int:
    count = getattr(gallery, "rider_count", None)
    return int(count) if count is not None else len(gallery.riders)


class BusPipeline:
    def __init__(
        self,
        engine: FaceEngine,
        gallery: Gallery,
        cfg: PipelineConfig | None = None,
        *,
        quality: QualityConfig | None = None,
        smile: SmileConfig | None = None,
        feedback: Callable[[Feedback], None] | None = None,
        tracker: IouTracker | None = None,
        second_factor: SecondFactor | None = None,
        liveness: Liveness | LivenessConfig | None = None,
    ) -> None:
        self.engine = engine
        self.gallery = gallery
        self.cfg = cfg or PipelineConfig()
        self.quality_cfg = quality or QualityConfig()
        self.smile_gate = SmileGate(smile or SmileConfig())
        self.feedback = feedback or (lambda fb: None)
        self.tracker = tracker or IouTracker()
        self.second_factor = second_factor  # edge.door.second_factor; None: "see the driver" instead
        #: Presentation-attack checks (challenges, cues); None: the smile gate alone decides.
        self.liveness = Liveness(liveness) if isinstance(liveness, LivenessConfig) else liveness
        c = self.cfg
        self.regions: RegionPlanner | None = None
        if c.detect_regions == "motion" and getattr(engine, "detector_name", "hog") == "hog":
            motion = MotionMask(c.motion_width, c.motion_threshold)
            self.regions = RegionPlanner(
                c.full_detect_every, c.region_margin, c.region_min_margin, c.max_region_fraction, motion
            )
        self.point: OperatingPoint = self.operating_point(_rider_count(gallery))
        log.info("operating point: %s", self.point.describe())
        self.lookalikes = self._lookalikes(gallery)
        self._point_version = getattr(gallery, "version", None)
        self.states: dict[int, TrackState] = {}
        self.decisions: list[DoorDecision] = []
        self.skipped_frames = 0
        self.processed_frames = 0
        #: Milliseconds each stage took on the last processed frame ("detect", "mesh",
        #: "blendshapes", "quality", "smile", "embed", "match"); only the stages that ran.
        self.stage_ms: dict[str, float] = {}
        self._detections: dict[Rect, Detection] = {}
        self._nir: np.ndarray | None = None

    # -- driving ---------------------------------------------------------------------------

    def run(self, frames: Iterable) -> Iterator[DoorDecision]:
        """Process ``Frame`` objects (``index``, ``ts``, ``image``); yield decisions as they are made."""
        for frame in frames:
            yield from self.process(frame.image, frame.ts, frame.index, getattr(frame, "nir", None))

    def process(self, image: object, ts: float, index: int = -1, nir: np.ndarray | None = None) -> list[DoorDecision]:
        """One frame; returns the decisions made on it (usually none). ``nir``: the near-infrared
        picture taken with it (hardware.cameras.nir), for the liveness checks."""
        self._nir = nir
        try:
            rgb = as_rgb(image)  # type: ignore[arg-type]
        except ImageError as exc:
            self.skipped_frames += 1
            log.warning("frame %d skipped: %s", index, exc)
            return []
        self.processed_frames += 1
        self.stage_ms = {}
        t0 = time.perf_counter()
        rects = self._detect(rgb)
        self.stage_ms["detect"] = (time.perf_counter() - t0) * 1e3
        seen, ended = self.tracker.update(rects, ts)
        for track in ended:
            self.states.pop(track.id, None)
            if self.second_factor is not None:
                self.second_factor.cancel(track.id)
        candidate = self._door_face(seen, rgb.shape)
        if candidate is None:
            return []
        if candidate == "crowded":
            for track in seen:
                self._prompt(track.id, "crowded")
            return []
        track = candidate
        st = self.states.setdefault(track.id, TrackState())
        if st.decided is not None:
            return []
        decision = self._step(rgb, track.id, track.rect, st, ts, index)
        if decision is None:
            return []
        st.decided = decision
        self.decisions.append(decision)
        self.feedback(Feedback(track.id, decision.message, decision))
        return [decision]

    # -- stages ----------------------------------------------------------------------------

    def _detect(self, rgb: np.ndarray) -> list[Rect]:
        small, factor = resize_for_detection(rgb, self.cfg.detect_side)
        regions = None
        if self.regions is not None:
            tracks = [scale_rect(t.rect, 1.0 / factor) for t in self.tracker.tracks.values()]
            regions = self.regions.plan(small, tracks)
        if regions == []:  # nothing moved and no live track: nothing to scan
            return []
        # regions None: the whole frame
        if self.regions is None and getattr(self.engine, "detector_name", "hog") != "hog":
            dets = self.engine.detect(rgb, self.cfg.upsample)  # letterboxed by the detector itself
            self._detections = {d.rect: d for d in dets}
            return [d.rect for d in dets]
        dets = self.engine.detect(small, self.cfg.upsample, regions=regions)
        self._detections = {}
        return [scale_rect(d.rect, factor) for d in dets]

    def _door_face(self, seen: list, shape: tuple[int, ...]):
        """The largest track whose box centre is in the door zone, ``"crowded"``, or None."""
        h, w = shape[:2]
        zl, zt, zr, zb = self.cfg.door_zone
        in_zone = [
            t
            for t in seen
            if zl * w <= (t.rect.left + t.rect.right) / 2 <= zr * w
            and zt * h <= (t.rect.top + t.rect.bottom) / 2 <= zb * h
        ]
        if not in_zone:
            return None
        in_zone.sort(key=lambda t: t.rect.area, reverse=True)
        if len(in_zone) > 1 and in_zone[1].rect.area > self.cfg.similar_area * in_zone[0].rect.area:
            return "crowded"
        return in_zone[0]

    def _timed(self, stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.stage_ms[stage] = self.stage_ms.get(stage, 0.0) + (time.perf_counter() - t0) * 1e3
        return out

    def _roi(self, rect: Rect, st: TrackState):
        """The mesh ROI: from the face's own last landmarks while they still cover the track's box,
        else from the detection (box and eye keypoints)."""
        if st.points is not None:
            roi = roi_from_points(st.points)
            if iou(roi_rect(roi), rect) > 0.3:
                return roi
        det = self._detections.get(rect)
        return roi_from_rect(rect, det.keypoints if det is not None else None)

    def _step(
        self, rgb: np.ndarray, tid: int, rect: Rect, st: TrackState, ts: float, index: int
    ) -> DoorDecision | None:
        cfg = self.cfg
        if st.awaiting_code is not None:
            return self._code_step(tid, index, ts, st)
        face = self._timed("mesh", self.engine.mesh.landmarks, rgb, self._roi(rect, st))
        if face.presence < 0.5:
            st.points = None
            return None
        st.points = face.points
        scores = self._timed("blendshapes", self.engine.mesh.blendshapes, face.points)
        t0 = time.perf_counter()
        patch = face_patch(rgb, rect)
        q = assess_mesh(face.points, blink(scores), patch, rect, rgb.shape, self.quality_cfg)
        st.last_quality = q
        self.stage_ms["quality"] = (time.perf_counter() - t0) * 1e3
        if self.liveness is not None and not st.armed and st.pad.turning:
            # the second challenge: a turned head fails the pose gate, so it sees every mesh frame
            v = self.liveness.turn(st.pad, ts, face.points)
            if v.refuse:
                return self._decide(tid, index, ts, "see_driver", None, v.refuse)
            if not v.accept:
                self._prompt(tid, v.ask)
                return None
            st.armed = True
            log.info("track %d: head turn accepted at frame %d", tid, index)
        if not q.ok:
            self._prompt(tid, q.reasons[0], q.message)
            return None
        if not st.armed:
            t0 = time.perf_counter()
            grey = patch[::3, ::3].astype(np.int16)
            result = self.smile_gate.update(st.smile, smile(scores), float(scores[INDEX["jawOpen"]]), grey, ts)
            st.last_smile = result
            self.stage_ms["smile"] = (time.perf_counter() - t0) * 1e3
            if result.frozen:
                return self._decide(tid, index, ts, "see_driver", None, "frozen")
            if result.exhausted:
                return self._decide(tid, index, ts, "see_driver", None, "attempts")
            if self.liveness is not None:  # presentation-attack hook (edge.door.liveness)
                not_smiling = result.state in ("neutral", "talking")  # a smile starts after the last such frame
                v = self.liveness.update(
                    st.pad, ts, face.points, not_smiling, result.passed, result.state == "smile", patch,
                    self.liveness.nir_agrees(self.engine.detect, self._nir, rect), rgb, rect,
                )
                if v.refuse:
                    return self._decide(tid, index, ts, "see_driver", None, v.refuse)
                if not v.accept:
                    self._prompt(tid, v.ask)
                    return None
            elif not result.passed:
                self._prompt(tid, "smile")
                return None
            st.armed = True
            log.info("track %d: smile gate passed at frame %d (smile %.2f over baseline %.2f)",
                     tid, index, result.score, result.baseline)  # fmt: skip
        t0 = time.perf_counter()
        landmarks = self.engine.landmarks(rgb, [rect])
        chip = self.engine.chips(rgb, landmarks)[0]
        embedding = self.engine.embed(chip[None])[0]
        self.stage_ms["embed"] = (time.perf_counter() - t0) * 1e3
        self._refresh_point()
        match = self._timed("match", self.gallery.match, embedding)
        st.embedded += 1
        st.votes.append(match)
        recent = st.votes[-cfg.agree_frames :]
        if len(recent) == cfg.agree_frames:
            good = [m for m in recent if self._accepts(m)]
            if len(good) == len(recent) and len({m.rider_id for m in good}) == 1:
                best = min(good, key=lambda m: m.distance)
                if self._rule().second_factor or best.rider_id in self.lookalikes:  # face alone not enough
                    return self._ask_code(tid, index, ts, st, best, embedding)
                return self._charge(tid, index, ts, best)
            if self._rule().second_factor and all(self._rule().near(m) for m in recent):
                # a large gallery: the face finds a few riders close, none clearly; the code picks one
                return self._ask_code(tid, index, ts, st, min(recent, key=lambda m: m.distance), embedding)
            if not any(self._rule().near(m) for m in recent):
                worst = min(recent, key=lambda m: m.distance)
                return self._decide(tid, index, ts, "refuse", None, "unknown", worst)
        if st.embedded >= cfg.max_match_frames:
            return self._decide(tid, index, ts, "see_driver", None, "ambiguous", st.votes[-1])
        return None

    def operating_point(self, riders: int) -> OperatingPoint:
        """The rule for a gallery of ``riders`` (edge.faces.match.operating_point, as ``edge.faces.identify``)."""
        c = self.cfg
        return operating_point(riders, threshold=c.match_threshold, min_margin=c.min_margin,
                               fpir_target=c.fpir_target, min_face_threshold=c.min_face_threshold)  # fmt: skip

    def _ask_code(
        self, tid: int, index: int, ts: float, st: TrackState, best: Match, embedding: np.ndarray
    ) -> DoorDecision | None:
        """The face alone may not charge: ask for the code of the face's nearest few riders (1:few)."""
        assert best.rider_id is not None
        matcher = _matcher(self.gallery)
        few = shortlist(matcher, embedding, self._rule().threshold)
        if best.rider_id not in dict(few):
            few = [(best.rider_id, best.distance), *few][:SHORTLIST]
        others = [rider for rider, _ in few if rider != best.rider_id]
        if self.second_factor is None or not self.second_factor.start(tid, best.rider_id, others):
            return self._decide(tid, index, ts, "see_driver", None, "second_factor", best)
        st.awaiting_code, st.shortlist = best, few
        self._prompt(tid, "enter_code")
        return None

    def _code_step(self, tid: int, index: int, ts: float, st: TrackState) -> DoorDecision | None:
        """The second factor's hook: charge the rider whose code was typed, one of the face's few."""
        assert self.second_factor is not None and st.awaiting_code is not None
        outcome = self.second_factor.poll(tid)
        if outcome == "ok":
            rider = self.second_factor.confirmed(tid) or st.awaiting_code.rider_id
            distances = dict(st.shortlist) or {st.awaiting_code.rider_id: st.awaiting_code.distance}
            nearest_other = min((d for r, d in distances.items() if r != rider), default=float("inf"))
            distance = distances.get(rider, st.awaiting_code.distance)
            return self._charge(tid, index, ts, Match(rider, distance, nearest_other - distance))
        if outcome == "refused":
            return self._decide(tid, index, ts, "see_driver", None, "second_factor", st.awaiting_code)
        if outcome == "wrong":
            self._prompt(tid, "wrong_code")
        return None

    def _refresh_point(self) -> None:
        """A gallery delta changed the riders: the operating point follows at once (a bus that started
        empty and then received 100,000 riders must not keep a 1-rider threshold)."""
        version = getattr(self.gallery, "version", None)
        if version == self._point_version:
            return
        self._point_version = version
        point = self.operating_point(_rider_count(self.gallery))
        if point != self.point:
            self.point = point
            log.info("operating point: %s", point.describe())
        matcher = _matcher(self.gallery)
        if len(matcher.rider_ids) <= LOOKALIKE_REFRESH_TEMPLATES:
            self.lookalikes = self._lookalikes(self.gallery)

    def _lookalikes(self, gallery) -> dict[str, tuple[str, float]]:
        """Riders within threshold + margin of another rider: they confirm with the second factor."""
        matcher = _matcher(gallery)
        rule = self.point.rule
        if rule.second_factor or len(matcher.rider_ids) > LOOKALIKE_MAX_TEMPLATES:
            return {}
        found = lookalikes(matcher.rider_ids, matcher.embeddings, rule.threshold + rule.min_margin)
        if found:
            log.info("%d lookalike rider(s) confirm with the second factor", len(found))
        return found

    def _rule(self) -> Rule:
        """The identification rule (edge.faces.match.Rule, the same code as ``edge.faces.identify``)."""
        point = self.__dict__.get("point") or self.operating_point(1)
        return point.rule

    def _accepts(self, m: Match) -> bool:
        return self._rule().accepts(m)

    def _charge(self, tid: int, index: int, ts: float, m: Match) -> DoorDecision:
        """Whom to charge; the node's ledger thread records the fare and words the final message."""
        assert m.rider_id is not None
        return self._decide(tid, index, ts, "charge", m.rider_id, "matched", m, message=f"Matched {m.rider_id}")

    def _decide(
        self,
        tid: int,
        index: int,
        ts: float,
        action: Action,
        rider_id: str | None,
        reason: str,
        m: Match | None = None,
        *,
        fare: FareDecision | None = None,
        message: str | None = None,
    ) -> DoorDecision:
        d = DoorDecision(
            tid, index, ts, action, rider_id, reason, message or MESSAGES.get(reason, reason),
            m.distance if m else None, m.margin if m else None, fare,
        )  # fmt: skip
        log.info("track %d frame %d: %s %s (%s)", tid, index, action, rider_id or "-", reason)
        return d

    def _prompt(self, tid: int, key: str, message: str | None = None) -> None:
        st = self.states.setdefault(tid, TrackState())
        text = message or MESSAGES[key]
        if st.decided is None and text != st.last_prompt:
            st.last_prompt = text
            self.feedback(Feedback(tid, text))
