"""Gallery benchmarks: 1:N match time, gallery delta size and apply time, enrollment photos per second.

Each figure races FaceFare against a naive way of doing the same job, measured in the same run:

1. **Match** over synthetic galleries of 10,000, 100,000 and 1,000,000 templates (two per rider):
   ``edge.faces.fast_match.QuantizedGallery`` (int8 pre-filter with a proven error bound, exact
   float32 re-rank) against brute force ``edge.faces.match.Gallery`` (float32 over every template);
   the time of the float32 dot products alone (``X @ q``, one BLAS call) is shown for reference.
   Every query's answer (rider, distance, margin) is compared with brute force; the run fails if
   one differs. Queries: half genuine (a rider's template plus noise, distance ~0.35), half
   impostors (a new face). Target: under 20 ms at 1,000,000.
2. **Deltas** for 100,000 riders: the first sync of a bus (every rider) and a 1 % change (1,000
   updates, 100 erasures) built by ``GalleryDistributor``, applied by ``BusGallery`` (sealed,
   one transaction per delta). Naive peer: the whole gallery as one JSON list of decimal floats,
   stored row by row in autocommit mode (measured on a sample and scaled, noted as such).
3. **Enrollment**: photos per second of ``Enroller.check_photo`` (detect, 5-point landmarks,
   quality gate, embed) over the shipped portraits, against ``face_recognition.face_encodings``
   (detection upsampled once on the full photo, no quality check) when it is installed.

Synthetic templates imitate dlib embeddings: a common mean (norm 0.7), riders spread so that two
riders lie ~0.9 apart, a rider's templates ~0.35 apart::

    .venv/bin/python bench/gallery.py                  # everything (about 10 minutes on 2 cores)
    .venv/bin/python bench/gallery.py --quick          # 10,000 templates, 5,000 riders: a smoke test
    .venv/bin/python bench/gallery.py --only match --sizes 1000000 --queries 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_sync.gallery.bus import BusGallery  # noqa: E402
from cloud_sync.protocol import generate_key, topic_for  # noqa: E402
from edge.faces.fast_match import QuantizedGallery  # noqa: E402
from edge.faces.match import Gallery  # noqa: E402
from enrollment.distribution import GalleryDistributor  # noqa: E402
from enrollment.store import RiderRecord, TemplateStore  # noqa: E402

DIM = 128
MODEL = "0" * 64
FIXTURES = Path(__file__).resolve().parent.parent / "facefare" / "demo" / "data"


def synthetic(n_riders: int, per_rider: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (n_riders, 128), templates (n_riders * per_rider, 128)) float32."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 1, DIM)
    mean *= 0.7 / np.linalg.norm(mean)
    centres = (mean + rng.normal(0, 0.9 / np.sqrt(2 * DIM), (n_riders, DIM))).astype(np.float32)
    noise = rng.normal(0, 0.35 / np.sqrt(2 * DIM), (n_riders, per_rider, DIM)).astype(np.float32)
    return centres, (centres[:, None, :] + noise).reshape(-1, DIM)


def queries(centres: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    genuine = centres[rng.integers(len(centres), size=n - n // 2)] + rng.normal(0, 0.35 / np.sqrt(2 * DIM),
                                                                              (n - n // 2, DIM))  # fmt: skip
    impostors, _ = synthetic(n // 2, 1, seed + 1)
    return np.concatenate([genuine, impostors]).astype(np.float32)


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t) * 1000, out


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


# -- 1. match -------------------------------------------------------------------------------------


def bench_match(sizes: list[int], n_queries: int) -> list[dict]:
    rows = []
    for size in sizes:
        riders = size // 2
        centres, templates = synthetic(riders, 2, seed=size)
        ids = [f"rider-{i:07d}" for i in range(riders) for _ in range(2)]
        t = time.perf_counter()
        fast = QuantizedGallery(ids, templates, min_size=0)
        build_fast = time.perf_counter() - t
        t = time.perf_counter()
        slow = Gallery(ids, templates)
        build_slow = time.perf_counter() - t
        qs = queries(centres, n_queries, seed=size + 7)
        for q in qs[:3]:  # warm up both
            fast.match(q), slow.match(q)
        fast.shortlist_sizes.clear()
        t_fast, t_slow, t_gemv, agree = [], [], [], 0
        for q in tqdm(qs, desc=f"match {size:,}", unit="query", leave=False):
            tf, a = timed(fast.match, q)
            ts, b = timed(slow.match, q)
            tg, _ = timed(np.dot, slow.embeddings, q)
            t_fast.append(tf)
            t_slow.append(ts)
            t_gemv.append(tg)
            agree += (a.rider_id == b.rider_id and abs(a.distance - b.distance) < 1e-5
                      and (abs(a.margin - b.margin) < 1e-5 or a.margin == b.margin))  # fmt: skip
        row = {
            "templates": size,
            "queries": len(qs),
            "agree": agree,
            "fast_p50_ms": pct(t_fast, 50),
            "fast_p95_ms": pct(t_fast, 95),
            "brute_p50_ms": pct(t_slow, 50),
            "brute_p95_ms": pct(t_slow, 95),
            "gemv_p50_ms": pct(t_gemv, 50),
            "shortlist_p50": int(np.median(fast.shortlist_sizes)),
            "shortlist_max": int(max(fast.shortlist_sizes)),
            "build_fast_s": build_fast,
            "build_brute_s": build_slow,
        }
        row["ratio"] = row["brute_p50_ms"] / row["fast_p50_ms"]
        rows.append(row)
        print(f"match {size:>9,} templates: fast p50 {row['fast_p50_ms']:.2f} ms (p95 {row['fast_p95_ms']:.2f}), "
              f"brute force p50 {row['brute_p50_ms']:.2f} ms (p95 {row['brute_p95_ms']:.2f}): {row['ratio']:.1f}x; "
              f"float32 dot products alone p50 {row['gemv_p50_ms']:.2f} ms; top-1 agreement {agree}/{len(qs)}; "
              f"shortlist p50 {row['shortlist_p50']} max {row['shortlist_max']}; "
              f"build {row['build_fast_s']:.1f} s vs {row['build_brute_s']:.1f} s", flush=True)  # fmt: skip
        if agree != len(qs):
            raise SystemExit(f"FAIL: {len(qs) - agree} answers differ from brute force at {size}")
        del fast, slow, templates
        gc.collect()
    return rows


# -- 2. deltas ------------------------------------------------------------------------------------


def bench_delta(n_riders: int, tmp: Path, naive_sample: int) -> dict:
    _, templates = synthetic(n_riders, 1, seed=11)
    store = TemplateStore.open(tmp / "store.db", tmp / "store.key")
    store.db.execute("PRAGMA synchronous=OFF")  # setup only: the bench measures the bus side
    for i in tqdm(range(n_riders), desc="enrolling synthetic riders", unit="rider", leave=False):
        store.add_rider(RiderRecord(rider_id=f"rider-{i:07d}"), [templates[i]], model_sha256=MODEL)
    cloud_key = generate_key()
    dist = GalleryDistributor(store, cloud_key, MODEL)
    secret = dist.register_bus("bus-1")
    bus = BusGallery(tmp / "bus.db", "bus-1", secret, MODEL, cloud_key.public_key())
    topic = topic_for("gallery", "bus-1")

    def ship() -> tuple[list, float, float]:
        t = time.perf_counter()
        msgs = dist.build("bus-1")
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        for m in msgs:
            assert bus.handle(topic, m.payload) == "applied"
        bus.refresh()
        return msgs, build_s, time.perf_counter() - t

    full, full_build, full_apply = ship()
    rng = np.random.default_rng(5)
    changed = rng.choice(n_riders, 1_100, replace=False)
    for i in changed[:1_000]:
        store.replace_templates(f"rider-{i:07d}", [templates[i] + 0.01], model_sha256=MODEL)
    for i in changed[1_000:]:
        store.erase(f"rider-{i:07d}")
    small, small_build, small_apply = ship()
    assert len(bus.riders) == n_riders - 100
    out = {
        "riders": n_riders,
        "full_messages": len(full),
        "full_bytes": sum(len(m.payload) for m in full),
        "full_build_s": full_build,
        "full_apply_s": full_apply,
        "change_messages": len(small),
        "change_bytes": sum(len(m.payload) for m in small),
        "change_build_s": small_build,
        "change_apply_s": small_apply,
        "bus_file_bytes": (tmp / "bus.db").stat().st_size,
    }
    # naive peer: the whole gallery as JSON decimal floats, one autocommit INSERT per rider
    naive = json.dumps([{"rider_id": f"rider-{i:07d}", "template": [float(v) for v in templates[i]]}
                        for i in range(n_riders)]).encode()  # fmt: skip
    db = sqlite3.connect(tmp / "naive.db", isolation_level=None)
    db.execute("CREATE TABLE templates (rider_id TEXT PRIMARY KEY, template TEXT)")
    rows = json.loads(naive)[:naive_sample]
    t = time.perf_counter()
    for r in rows:
        db.execute("INSERT INTO templates VALUES (?, ?)", (r["rider_id"], json.dumps(r["template"])))
    naive_s = (time.perf_counter() - t) * n_riders / len(rows)
    out.update(naive_bytes=len(naive), naive_apply_s=naive_s, naive_sample=len(rows))
    mb = 1e6
    print(f"deltas, {n_riders:,} riders: first sync {out['full_messages']} deltas, {out['full_bytes'] / mb:.1f} MB, "
          f"built in {full_build:.1f} s, applied on the bus in {full_apply:.1f} s (sealed, one transaction each)")
    print(f"  1 % change (1,000 updates, 100 erasures): {out['change_messages']} delta(s), "
          f"{out['change_bytes'] / mb:.2f} MB, built in {small_build:.2f} s, applied in {small_apply:.2f} s")
    print(f"  naive: whole gallery as JSON floats {out['naive_bytes'] / mb:.1f} MB every time "
          f"({out['naive_bytes'] / out['change_bytes']:.0f}x the 1 % delta); row-by-row autocommit store "
          f"{naive_s:.1f} s for all riders (scaled from {len(rows):,}): {naive_s / full_apply:.1f}x our first sync")
    return out


# -- 3. enrollment --------------------------------------------------------------------------------


def bench_enroll(tmp: Path, repeats: int) -> dict:
    from edge.faces.engine import FaceEngine
    from enrollment.config import EnrollmentConfig
    from enrollment.enroll import Enroller
    from facefare.config import load_config

    photos = [FIXTURES / f for f in ("obama.jpg", "biden.jpg", "kit_harington1.jpeg", "alex_lacamoire2.jpg",
                                     "lin_manuel_miranda.png", "rose_leslie1.jpg", "obama-720p.jpg")]  # fmt: skip
    engine = FaceEngine(load_config(None).models.dir)
    engine.verify_all()
    enroller = Enroller(engine, TemplateStore.open(tmp / "e.db", tmp / "e.key"), EnrollmentConfig())
    enroller.check_photo("warm", photos[0])
    t = time.perf_counter()
    for _ in range(repeats):
        for p in photos:
            assert enroller.check_photo(p.name, p).ok
    ours = repeats * len(photos) / (time.perf_counter() - t)
    out = {"photos": repeats * len(photos), "ours_per_s": ours, "peer_per_s": None}
    try:
        import face_recognition as fr
    except ImportError:
        print(f"enrollment: {ours:.2f} photos/s (face_recognition not installed: no peer)")
        return out
    fr.face_encodings(fr.load_image_file(photos[0]))
    t = time.perf_counter()
    for _ in range(repeats):
        for p in photos:
            assert len(fr.face_encodings(fr.load_image_file(p))) == 1
    peer = repeats * len(photos) / (time.perf_counter() - t)
    out["peer_per_s"] = peer
    print(f"enrollment: {ours:.2f} photos/s (detect at 640 px, quality gate, embed) vs "
          f"face_recognition.face_encodings {peer:.2f} photos/s: {ours / peer:.1f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--riders", type=int, default=100_000, help="riders of the delta benchmark")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the photos of the enrollment benchmark")
    ap.add_argument("--only", choices=["match", "delta", "enroll"])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries, args.riders, args.repeats = [10_000], 60, 5_000, 1
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "match"):
            results["match"] = bench_match(args.sizes, args.queries)
        if args.only in (None, "delta"):
            results["delta"] = bench_delta(args.riders, Path(tmp), naive_sample=min(args.riders, 2_000))
        if args.only in (None, "enroll"):
            results["enroll"] = bench_enroll(Path(tmp), args.repeats)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
