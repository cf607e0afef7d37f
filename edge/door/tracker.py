"""Follow faces across frames so that one rider boarding gives one decision.

A greedy IoU tracker: each new box joins the live track it overlaps most (IoU above
``min_iou``), the rest start new tracks, and a track unseen for ``max_missed`` frames ends.
That is enough at a bus door, where faces move little between frames at 10-30 fps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.faces.geometry import Rect, iou


@dataclass
class Track:
    id: int
    rect: Rect
    first_ts: float
    last_ts: float
    hits: int = 1
    missed: int = 0
    history: list[Rect] = field(default_factory=list)

    @property
    def age(self) -> float:
        return self.last_ts - self.first_ts


class IouTracker:
    def __init__(self, min_iou: float = 0.3, max_missed: int = 10) -> None:
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(self, rects: list[Rect], ts: float) -> tuple[list[Track], list[Track]]:
        """Feed one frame's boxes; return (tracks seen in this frame, tracks that just ended).

        The returned live tracks are in the same order as ``rects``.
        """
        pairs = sorted(
            ((iou(t.rect, r), tid, i) for tid, t in self.tracks.items() for i, r in enumerate(rects)),
            reverse=True,
        )
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for overlap, tid, i in pairs:
            if overlap < self.min_iou:
                break
            if tid in used_tracks or i in assigned:
                continue
            assigned[i] = tid
            used_tracks.add(tid)
        seen: list[Track] = []
        for i, rect in enumerate(rects):
            if i in assigned:
                track = self.tracks[assigned[i]]
                track.rect, track.last_ts, track.missed = rect, ts, 0
                track.hits += 1
            else:
                track = Track(self._next_id, rect, ts, ts)
                self.tracks[track.id] = track
                self._next_id += 1
            track.history.append(rect)
            del track.history[:-30]
            seen.append(track)
        ended = []
        for tid in list(self.tracks):
            if tid not in used_tracks and self.tracks[tid] not in seen:
                track = self.tracks[tid]
                track.missed += 1
                if track.missed > self.max_missed:
                    ended.append(self.tracks.pop(tid))
        return seen, ended
