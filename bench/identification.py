"""1:N identification error rates of the bus rule, against gallery size, and what they extrapolate to.

    .venv/bin/python bench/identification.py [--london DIR] [--faces DIR] [--models DIR] [--plots DIR] [--json FILE]

Another embedder (``facefare models convert --embedder FILE.dat --out DIR``) has its own impostor
tail: run this with ``--models DIR`` and put its fit into ``edge.faces.match.IMPOSTOR_TAIL``.

Faces (every labelled face the project can use; one face per photo, the largest, HOG upsampled once,
5-point landmarks, as ``edge.faces.face_encodings``):

* the London set, ``--london`` (default ``/work/shared/data/london`` if present, else the project's
  copy of a few of its people in ``tests/data/london``): each person enrolled with the *neutral*
  photo, probed with the *smiling* one (a rider smiles at the bus door); ``london_info.csv`` gives
  the groups for the fairness table;
* the demo photos, ``--faces`` (``facefare/demo/data``): every single-person photo; the rider is
  enrolled with the photo ``tests/helpers.ENROLL`` uses and probed with the others.

Terms (NIST FRTE 1:N): a *mated* probe belongs to an enrolled rider, a *non-mated* probe to a person
not enrolled. FNIR = mated probes not charged to their own rider (refused, or charged to someone
else); FPIR = non-mated probes charged to anyone. A *wrong charge* is any charge to another
person's account: a non-mated probe charged, or a mated probe charged to the wrong rider.

Single frame: ``edge.faces.match.Rule`` (the code the bus and ``edge.faces.identify`` run) on one
embedding. Multi-frame: each probe photo gives ``FRAMES`` frames (the photo and jittered copies:
shifted, rotated, scaled, mirrored chips), and the bus's agreement rule charges when every frame is
accepted for the same rider; "mean" combines the frames' normalised embeddings into one query.
Jittered copies of one photo are *more alike than real video frames* are: the multi-frame figures
are an upper bound of what agreement adds (the same stranger looks the same on every frame).

Extrapolation: the lower tail of the impostor distance distribution (each enrolled template
against every other person's probe) is fitted with a normal on probit scale (the lowest
``TAIL`` fraction of pairs); the per-comparison false-match probability ``p(t)`` then gives
``FPIR(N, t) = 1 - (1 - p(t))^N`` for a gallery of N riders (rank-1 above threshold, margin
ignored: conservative). The uncertainty is a bootstrap over *people* (pairs of one person are not
independent). The threshold table keeps the expected wrong charges per boarding under
``TARGET`` (1 per 1,000,000) at the bootstrap's 95th percentile, and reports the genuine rate
that remains at that threshold on this data.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge import faces  # noqa: E402
from edge.faces.engine import _jitter  # noqa: E402
from edge.faces.match import (  # noqa: E402
    DEFAULT_MIN_MARGIN,
    DEFAULT_THRESHOLD,
    FPIR_TARGET,
    TARGET_FPIR,
    Gallery,
    Rule,
    operating_point,
)

SHARED_LONDON = Path("/work/shared/data/london")
PROJECT_LONDON = ROOT / "tests" / "data" / "london"
DEMO = ROOT / "facefare" / "demo" / "data"
CACHE = ROOT / "artifacts" / "bench" / "identification_cache.npz"
DEMO_ENROLL = {  # identity -> enrollment photo (as tests/helpers.ENROLL)
    "lin_manuel_miranda": "lin_manuel_miranda.png",
    "obama": "obama.jpg",
    "biden": "biden.jpg",
    "rose_leslie": "rose_leslie1.jpg",
    "kit_harington": "kit_harington1.jpeg",
    "alex_lacamoire": "alex_lacamoire2.jpg",
}
FRAMES = 3  # the bus's agree_frames
TAIL = 0.25  # fraction of the impostor distances the tail is fitted on
TARGET = 1e-6  # expected wrong charges per boarding
SIZES = [1, 2, 5, 10, 20, 30, 40, 45]
BIG = [100, 1_000, 10_000, 100_000, 1_000_000]
DRAWS = 100
BOOT = 300


@dataclass
class Face:
    person: str
    photo: str
    role: str  # "enroll" or "probe"
    frames: np.ndarray  # (FRAMES, 128): the photo's embedding first, then jittered copies
    group: dict[str, str] = field(default_factory=dict)


# -- faces ---------------------------------------------------------------------------------------


def _embed(path: Path, cache: dict[str, np.ndarray]) -> np.ndarray | None:
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    if key in cache:
        return cache[key] if cache[key].size else None
    eng = faces.engine()
    img = faces.load_image_file(path)
    dets = eng.detect(img, 1, "hog")
    if not dets:
        cache[key] = np.zeros(0, np.float32)
        return None
    rect = max(dets, key=lambda d: d.rect.area).rect
    chip = eng.chips(img, eng.landmarks(img, [rect], "small"))[0]
    rng = np.random.default_rng(int(key[:8], 16))
    batch = np.stack([chip] + [_jitter(chip, rng) for _ in range(FRAMES - 1)])
    cache[key] = eng.embedder.embed(batch).astype(np.float32)
    return cache[key]


def london_faces(folder: Path, cache: dict) -> list[Face]:
    info = {}
    with open(folder / "london_info.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            age = row["face_age"]
            band = "NA" if not age.isdigit() else "<25" if int(age) < 25 else "25-34" if int(age) < 35 else "35+"
            eth = row["face_eth"]
            info[row["face_id"]] = {"gender": row["face_gender"], "ethnicity": eth, "age": band,
                                    "white": "white" if eth == "white" else "not white"}  # fmt: skip
    out = []
    for fid, group in sorted(info.items()):
        for kind, role in (("neutral", "enroll"), ("smiling", "probe")):
            path = folder / f"{fid}_{kind}.jpg"
            if not path.exists():
                continue
            emb = _embed(path, cache)
            if emb is not None:
                out.append(Face(f"london_{fid}", path.name, role, emb, group))
    return out


def demo_faces(folder: Path, cache: dict) -> list[Face]:
    out = []
    with open(folder / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r and not r[0].startswith("#")]
    for row in rows:
        name, person = row[0], row[1]
        if person not in DEMO_ENROLL or not (folder / name).exists():
            continue
        emb = _embed(folder / name, cache)
        if emb is not None:
            out.append(Face(person, name, "enroll" if DEMO_ENROLL[person] == name else "probe", emb))
    return out


def clip_faces(path: Path, cache: dict, step: int = 1) -> np.ndarray:
    """(M, 129): frame index and embedding of every face HOG finds in every ``step``-th clip frame."""
    from edge.faces.geometry import scale_rect
    from edge.faces.images import resize_for_detection
    from hardware.cameras import VideoFileSource

    key = "clip_" + hashlib.sha256(path.read_bytes()).hexdigest()[:24] + f"_{step}"
    if key in cache:
        return cache[key]
    eng = faces.engine()
    rows = []
    for frame in VideoFileSource(path):
        if frame.index % step:
            continue
        small, factor = resize_for_detection(frame.image, 640)
        for det in eng.detect(small, 1, "hog"):
            rect = scale_rect(det.rect, factor)
            chip = eng.chips(frame.image, eng.landmarks(frame.image, [rect], "small"))
            rows.append(np.concatenate([[frame.index], eng.embed(chip)[0]]))
    cache[key] = np.array(rows, np.float32).reshape(-1, 129)
    return cache[key]


# -- 1:N against gallery size ---------------------------------------------------------------------


@dataclass
class Trial:
    mated: int = 0
    mated_right: int = 0
    mated_wrong: int = 0  # charged to another rider
    nonmated: int = 0
    nonmated_charged: int = 0

    def add(self, other: Trial) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def fnir(self) -> float:
        return 1 - self.mated_right / self.mated if self.mated else float("nan")

    @property
    def fpir(self) -> float:
        return self.nonmated_charged / self.nonmated if self.nonmated else float("nan")

    @property
    def wrong(self) -> int:
        return self.mated_wrong + self.nonmated_charged


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def decide(gallery: Gallery, frames: np.ndarray, rule: Rule, mode: str) -> str | None:
    """Whom the bus charges for one probe: 'single' (first frame), 'agree' (every frame), 'mean'."""
    if mode == "single":
        return rule.charges(gallery.match(frames[0]))
    if mode == "mean":
        q = _unit(_unit(frames).mean(axis=0)) * float(np.linalg.norm(frames, axis=1).mean())
        return rule.charges(gallery.match(q))
    names = {rule.charges(gallery.match(f)) for f in frames}
    return names.pop() if len(names) == 1 else None


def trial(enrolled: list[Face], probes: list[Face], rule: Rule, mode: str) -> Trial:
    gallery = Gallery([f.person for f in enrolled], np.stack([f.frames[0] for f in enrolled]))
    ids = {f.person for f in enrolled}
    t = Trial()
    for p in probes:
        who = decide(gallery, p.frames, rule, mode)
        if p.person in ids:
            if p.role != "probe":
                continue  # the enrollment photo itself is no probe
            t.mated += 1
            t.mated_right += who == p.person
            t.mated_wrong += who is not None and who != p.person
        else:
            t.nonmated += 1
            t.nonmated_charged += who is not None
    return t


def by_size(all_faces: list[Face], rule, mode: str, rng: np.random.Generator) -> dict[int, Trial]:
    """``rule``: a Rule, or a function of the gallery size giving one (the bus's operating point)."""
    people = sorted({f.person for f in all_faces if f.role == "enroll"})
    enroll = {f.person: f for f in all_faces if f.role == "enroll"}
    out = {}
    for n in SIZES:
        if n > len(people):
            continue
        total = Trial()
        for _ in range(DRAWS if n < len(people) else 1):
            chosen = rng.choice(len(people), n, replace=False)
            r = rule(n) if callable(rule) else rule
            total.add(trial([enroll[people[i]] for i in chosen], all_faces, r, mode))
        out[n] = total
    return out


# -- the tail and its extrapolation ---------------------------------------------------------------


def pair_tables(all_faces: list[Face]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Impostor and genuine distances: every enrollment template against every probe's first frame."""
    enr = [f for f in all_faces if f.role == "enroll"]
    prb = [f for f in all_faces if f.role == "probe"]
    e0, p0 = np.stack([f.frames[0] for f in enr]), np.stack([p.frames[0] for p in prb])
    d = np.linalg.norm(e0[:, None] - p0[None], axis=2)
    same = np.array([[e.person == p.person for p in prb] for e in enr])
    return d, same, np.array([p.person for p in prb]), [e.person for e in enr], [p.person for p in prb]


def fit_tail(impostor: np.ndarray, fraction: float | None = None) -> tuple[float, float]:
    """(mu, sigma) of the normal whose lower tail fits the lowest ``fraction`` (TAIL) of ``impostor``, probit scale."""
    from statistics import NormalDist

    x = np.sort(impostor)
    n = len(x)
    k = max(int(n * (fraction or TAIL)), 5)
    q = (np.arange(1, k + 1) - 0.5) / n
    z = np.array([NormalDist().inv_cdf(v) for v in q])
    slope, intercept = np.polyfit(x[:k], z, 1)  # z = (x - mu) / sigma
    sigma = 1.0 / slope
    return float(-intercept * sigma), float(sigma)


def p_false(t: float | np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """Per-comparison false-match probability at threshold ``t`` (normal lower tail)."""
    z = (np.asarray(t, dtype=float) - mu) / sigma
    return np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)))(z)


def fpir(n: int, t: float | np.ndarray, mu: float, sigma: float) -> np.ndarray:
    p = p_false(t, mu, sigma)
    return -np.expm1(n * np.log1p(-np.minimum(p, 1 - 1e-16)))


def threshold_for(n: int, mu: float, sigma: float, target: float = TARGET) -> float:
    """Largest threshold with FPIR(n) <= target."""
    from statistics import NormalDist

    p = -math.expm1(math.log1p(-target) / n)
    return float(mu + sigma * NormalDist().inv_cdf(p))


def bootstrap(d: np.ndarray, same: np.ndarray, enr_ids: list[str], prb_ids: list[str], rng) -> np.ndarray:
    """(BOOT, 2) fits (mu, sigma) on people resampled with replacement."""
    people = sorted(set(enr_ids) | set(prb_ids))
    e_idx = {p: [i for i, e in enumerate(enr_ids) if e == p] for p in people}
    p_idx = {p: [j for j, q in enumerate(prb_ids) if q == p] for p in people}
    fits = []
    for _ in range(BOOT):
        pick = [people[i] for i in rng.integers(0, len(people), len(people))]
        vals = []
        for a_n, a in enumerate(pick):
            rows = e_idx[a]
            if not rows:
                continue
            for b_n, b in enumerate(pick):
                if a == b or a_n == b_n:
                    continue
                cols = p_idx[b]
                if cols:
                    vals.append(d[np.ix_(rows, cols)].ravel())
        fits.append(fit_tail(np.concatenate(vals)))
    return np.array(fits)


# -- report ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--london", type=Path, default=SHARED_LONDON if SHARED_LONDON.exists() else PROJECT_LONDON)
    ap.add_argument("--faces", type=Path, default=DEMO)
    ap.add_argument("--models", type=Path, default=None, help="converted models (another embedder: its own fit)")
    ap.add_argument("--plots", type=Path, default=None, help="write the PNGs here (docs/ for docs/accuracy.md)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure as JSON here")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--boot", type=int, default=BOOT)
    args = ap.parse_args(argv)
    globals().update(DRAWS=args.draws, BOOT=args.boot)
    rng = np.random.default_rng(16)
    if args.models:
        faces.use_models(args.models)
    cache_file = CACHE.with_name(f"{CACHE.stem}_{faces.engine().embedder_sha256[:12]}.npz")

    cache: dict[str, np.ndarray] = {}
    if cache_file.exists():
        cache = dict(np.load(cache_file))
    all_faces = london_faces(args.london, cache) + demo_faces(args.faces, cache)
    clip = args.faces / "short_hamilton_clip.mp4"
    clip_codes = clip_faces(clip, cache) if clip.exists() else np.zeros((0, 129), np.float32)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache_file, **cache)
    people = sorted({f.person for f in all_faces})
    n_enr = sum(f.role == "enroll" for f in all_faces)
    n_prb = sum(f.role == "probe" for f in all_faces)
    print(f"faces: {len(all_faces)} photos of {len(people)} people ({n_enr} enrolled templates, {n_prb} probe photos)")
    print(f"  London set: {args.london}; demo photos: {args.faces}")
    report: dict = {"people": len(people), "templates": n_enr, "probes": n_prb}

    # 1. FNIR / FPIR against gallery size, at the default rule
    rule = Rule(DEFAULT_THRESHOLD, DEFAULT_MIN_MARGIN)
    print(f"\n1:N at the default rule (threshold {rule.threshold}, margin {rule.min_margin}), {DRAWS} random "
          f"galleries per size; every non-enrolled person's photos are non-mated probes")  # fmt: skip
    print("(op1e-3 / op1e-6: the bus's operating point for each gallery size at fpir_target 1e-3 (default) / 1e-6)")
    print(f"{'mode':<13}{'N':>4}{'mated':>8}{'FNIR':>8}{'wrong':>7}{'nonmated':>10}{'FPIR':>9}")
    report["by_size"] = {}
    runs = [("single", rule, "single"), ("agree", rule, "agree"), ("mean", rule, "mean")]
    for target, label in ((FPIR_TARGET, "op1e-3"), (TARGET_FPIR, "op1e-6")):
        point = lambda n, target=target: operating_point(n, fpir_target=target).rule  # noqa: E731
        runs += [(f"{label}", point, "single"), (f"{label}+agree", point, "agree")]
    for name, r, how in runs:
        rows = by_size(all_faces, r, how, np.random.default_rng(16))  # the same galleries in every run
        mode = name
        report["by_size"][mode] = {n: vars(t) | {"fnir": t.fnir, "fpir": t.fpir} for n, t in rows.items()}
        for n, t in rows.items():
            print(f"{mode:<13}{n:>4}{t.mated:>8}{t.fnir:>8.3f}{t.mated_wrong:>7}{t.nonmated:>10}{t.fpir:>9.5f}")

    # 1b. real video frames as strangers: nobody in the clip is in the London set
    london_enr = [f for f in all_faces if f.role == "enroll" and f.person.startswith("london_")]
    if len(clip_codes) and london_enr:
        g = Gallery([f.person for f in london_enr], np.stack([f.frames[0] for f in london_enr]))
        matches = [g.match(c) for c in clip_codes[:, 1:]]
        rules = {"0.5/0.1": Rule(), "op 1e-3": operating_point(len(london_enr)).rule,
                 "op 1e-6": operating_point(len(london_enr), fpir_target=TARGET_FPIR).rule}  # fmt: skip
        charged = {k: sum(r.charges(m) is not None for m in matches) for k, r in rules.items()}
        frames = len(set(clip_codes[:, 0].astype(int)))
        nearest = min(m.distance for m in matches)
        print(f"\nclip frames as strangers: {len(matches)} faces in {frames} frames against the "
              f"{len(london_enr)} London riders; nearest {nearest:.3f}; charged: "
              + ", ".join(f"{k} {v}" for k, v in charged.items()))  # fmt: skip
        report["clip"] = {"faces": len(matches), "frames": frames, "gallery": len(london_enr), "nearest": nearest,
                          "charged": charged}  # fmt: skip

    # 2. distance distributions and the fitted tail
    d, same, _, enr_ids, prb_ids = pair_tables(all_faces)
    genuine, impostor = d[same], d[~same]
    mu, sigma = fit_tail(impostor)
    fits = bootstrap(d, same, enr_ids, prb_ids, rng)
    print(f"\ngenuine distances:  n={len(genuine)} min {genuine.min():.3f} median {np.median(genuine):.3f} "
          f"max {genuine.max():.3f}")  # fmt: skip
    print(f"impostor distances: n={len(impostor)} min {impostor.min():.3f} median {np.median(impostor):.3f} "
          f"max {impostor.max():.3f}")  # fmt: skip
    print(f"lower-tail fit (lowest {TAIL:.0%} on probit scale): mu {mu:.4f} sigma {sigma:.4f}; "
          f"bootstrap over people ({BOOT}): mu {np.percentile(fits[:, 0], 5):.4f}-{np.percentile(fits[:, 0], 95):.4f}, "
          f"sigma {np.percentile(fits[:, 1], 5):.4f}-{np.percentile(fits[:, 1], 95):.4f}")  # fmt: skip
    report["genuine"] = {"n": len(genuine), "min": genuine.min(), "median": np.median(genuine), "max": genuine.max()}
    report["impostor"] = {"n": len(impostor), "min": impostor.min(), "median": np.median(impostor),
                          "max": impostor.max()}  # fmt: skip
    report["tail"] = {"mu": mu, "sigma": sigma, "fraction": TAIL}

    # 3. threshold table: expected wrong charges <= TARGET per boarding
    print(f"\nthreshold for <= {TARGET * 1e6:g} expected wrong charge per 1,000,000 boardings (every boarding a "
          f"stranger; margin ignored), and the genuine rate left on this data")  # fmt: skip
    print(f"{'riders':>10}{'t (fit)':>9}{'genuine':>9}{'t (95%)':>9}{'genuine':>9}{'FPIR@0.5 fit':>14}"
          f"{'FPIR@0.5 95%':>14}{'t@1e-3':>8}{'genuine':>9}")  # fmt: skip
    table = []
    mated_best = _mated_rank1(d, same)
    for n in [*SIZES[-2:], *BIG]:
        t_fit = threshold_for(n, mu, sigma)
        t_boot = np.array([threshold_for(n, m, s) for m, s in fits])
        t95 = max(float(np.percentile(t_boot, 5)), 0.0)  # the threshold that holds for 95 % of the fits
        gen = float(np.mean(mated_best <= t95))
        gen_fit = float(np.mean(mated_best <= t_fit))
        t_3 = min(threshold_for(n, mu, sigma, FPIR_TARGET), DEFAULT_THRESHOLD)  # the default config's target
        gen_3 = float(np.mean(mated_best <= t_3))
        f_fit = float(fpir(n, DEFAULT_THRESHOLD, mu, sigma))
        f_boot = np.array([fpir(n, DEFAULT_THRESHOLD, m, s) for m, s in fits])
        f95 = float(np.percentile(f_boot, 95))
        table.append({"riders": n, "threshold_fit": t_fit, "genuine_rate_fit": gen_fit, "threshold_95": t95,
                      "genuine_rate_95": gen, "fpir_default_fit": f_fit, "fpir_default_95": f95,
                      "threshold_1e-3": t_3, "genuine_rate_1e-3": gen_3})  # fmt: skip
        print(f"{n:>10,}{t_fit:>9.3f}{gen_fit:>9.3f}{t95:>9.3f}{gen:>9.3f}{f_fit:>14.2e}{f95:>14.2e}{t_3:>8.3f}"
              f"{gen_3:>9.3f}")  # fmt: skip
    report["thresholds"] = table
    report["face_alone_max_riders"] = {"fit": _max_riders(mu, sigma),
                                       "95": int(np.percentile([_max_riders(m, s) for m, s in fits], 5))}  # fmt: skip
    print(f"largest gallery the face alone serves at this target (threshold >= {MIN_FACE:.2f}): "
          f"{report['face_alone_max_riders']['fit']:,} riders on the fit, "
          f"{report['face_alone_max_riders']['95']:,} at the bootstrap's pessimistic 5 %")  # fmt: skip

    # 3b. does the fit predict what we can measure? rank-1 FPIR of the whole data set at loose thresholds
    report["validation"] = validate(all_faces, d, same, mu, sigma)

    # 3c. how much the answer depends on the fitted fraction
    print("\nsensitivity to the fitted fraction of the tail (threshold for 10,000 riders at the target)")
    report["sensitivity"] = {}
    for frac in (0.05, 0.10, 0.25, 0.50):
        m_, s_ = fit_tail(impostor, frac)
        report["sensitivity"][frac] = {"mu": m_, "sigma": s_, "t_10000": threshold_for(10_000, m_, s_)}
        print(f"  lowest {frac:>4.0%}: mu {m_:.4f} sigma {s_:.4f} -> t(10,000) {threshold_for(10_000, m_, s_):.3f}")

    # 4. fairness: genuine and false-match rates by group (London set only: it has the groups)
    report["groups"] = fairness(all_faces, d, same, enr_ids, prb_ids, table)

    if args.plots:
        plots(args.plots, report, genuine, impostor, mu, sigma, fits)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


MIN_FACE = 0.30  # edge.faces.match.MIN_FACE_THRESHOLD


def _max_riders(mu: float, sigma: float) -> int:
    p = float(p_false(MIN_FACE, mu, sigma))
    return int(math.log1p(-TARGET) / math.log1p(-p)) if p > 0 else 2**31


def validate(all_faces, d, same, mu, sigma) -> dict:
    """Measured open-set FPIR with everyone else enrolled (leave-one-person-out), against the fit's prediction."""
    enr_ids = [f.person for f in all_faces if f.role == "enroll"]
    prb = [f for f in all_faces if f.role == "probe"]
    n = len(enr_ids) - 1
    print(f"\nthe fit against what can be measured: leave one person out ({n} enrolled, each probe photo a "
          f"stranger), rank-1 distance only")  # fmt: skip
    print(f"{'threshold':>10}{'measured FPIR':>15}{'charged':>9}{'fit FPIR':>10}")
    out = {}
    for t in (0.45, 0.50, 0.55, 0.60, 0.65):
        hits = 0
        for j in range(len(prb)):
            others = ~same[:, j]
            hits += bool(d[others, j].min() <= t)
        measured = hits / len(prb)
        predicted = float(fpir(n, t, mu, sigma))
        out[t] = {"measured": measured, "charged": hits, "probes": len(prb), "fit": predicted}
        print(f"{t:>10.2f}{measured:>15.4f}{hits:>5}/{len(prb):<3}{predicted:>10.4f}")
    return out


def _mated_rank1(d: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Each mated probe's distance to its own template (inf for non-mated)."""
    g = np.where(same, d, np.inf).min(axis=0)
    return g[np.isfinite(g)]


def fairness(all_faces, d, same, enr_ids, prb_ids, table) -> dict:
    group_of = {f.person: f.group for f in all_faces if f.group}
    t_full = next(r["threshold_fit"] for r in table if r["riders"] == SIZES[-2])
    print("\nby group (London set; genuine = own smiling photo within the threshold; FMR = impostor pairs "
          "within the threshold, probe in the group; nearest = closest impostor)")  # fmt: skip
    print(f"{'group':<26}{'people':>7}{'gen@0.5':>9}{f'gen@{t_full:.3f}':>10}{'FMR@0.5':>9}{'FMR@0.6':>9}"
          f"{'pairs':>7}{'nearest':>9}")  # fmt: skip
    out = {}
    for key in ("gender", "white", "ethnicity", "age"):
        for value in sorted({g[key] for g in group_of.values()}):
            members = {p for p, g in group_of.items() if g[key] == value}
            cols = [j for j, p in enumerate(prb_ids) if p in members]
            if not cols:
                continue
            sub_d, sub_same = d[:, cols], same[:, cols]
            gen = np.where(sub_same, sub_d, np.inf).min(axis=0)
            gen = gen[np.isfinite(gen)]
            imp = sub_d[~sub_same]
            row = {"people": len(members), "genuine_0.5": float(np.mean(gen <= 0.5)),
                   "genuine_t": float(np.mean(gen <= t_full)), "t": t_full,
                   "fmr_0.5": float(np.mean(imp <= 0.5)), "fmr_0.6": float(np.mean(imp <= 0.6)),
                   "pairs": int(imp.size), "nearest": float(imp.min())}  # fmt: skip
            out[f"{key}={value}"] = row
            print(f"{key + '=' + value:<26}{len(members):>7}{row['genuine_0.5']:>9.2f}{row['genuine_t']:>10.2f}"
                  f"{row['fmr_0.5']:>9.4f}{row['fmr_0.6']:>9.4f}{row['pairs']:>7}{row['nearest']:>9.3f}")  # fmt: skip
    return out


def plots(folder: Path, report: dict, genuine, impostor, mu, sigma, fits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    styles = (("single", "o-"), ("agree", "s--"), ("mean", "^:"), ("op1e-3", "v-"), ("op1e-6", "D-"),
              ("op1e-6+agree", "x--"))  # fmt: skip
    for mode, style in styles:
        rows = report["by_size"][mode]
        ns = sorted(rows)
        ax[0].plot(ns, [rows[n]["fnir"] for n in ns], style, label=f"FNIR {mode}")
        ax[1].plot(ns, [rows[n]["fpir"] for n in ns], style, label=f"FPIR {mode}")
    ax[0].set(xlabel="gallery size (riders)", ylabel="FNIR", title="Genuine riders not charged", ylim=(-0.01, 0.5))
    ax[1].set(xlabel="gallery size (riders)", ylabel="FPIR", title="Strangers charged (measured)", ylim=(-0.001, 0.01))
    for a in ax:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "accuracy_by_size.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1.2, 61)
    ax.hist(genuine, bins, alpha=0.6, label=f"genuine ({len(genuine)})", density=True)
    ax.hist(impostor, bins, alpha=0.6, label=f"impostor ({len(impostor)})", density=True)
    xs = np.linspace(0.2, 1.2, 200)
    pdf = np.exp(-0.5 * ((xs - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    ax.plot(xs, pdf, "k-", lw=1, label=f"tail fit N({mu:.3f}, {sigma:.3f})")
    ax.axvline(DEFAULT_THRESHOLD, color="r", ls="--", lw=1, label="default threshold 0.5")
    ax.set(xlabel="distance", ylabel="density", title="Enrolled template vs probe distances")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "accuracy_distances.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = np.logspace(0, 6, 61)
    for t in (0.35, 0.40, 0.45, 0.50):
        mid = [float(fpir(int(n), t, mu, sigma)) for n in ns]
        boot = np.array([[float(fpir(int(n), t, m, s)) for n in ns] for m, s in fits[:: max(len(fits) // 200, 1)]])
        line = ax.plot(ns, np.maximum(mid, 1e-16), label=f"t = {t:.2f}")[0]
        lo, hi = (np.maximum(np.percentile(boot, q, axis=0), 1e-16) for q in (5, 95))
        ax.fill_between(ns, lo, hi, color=line.get_color(), alpha=0.2)
    ax.axhline(TARGET, color="k", ls=":", lw=1, label="1 per 1,000,000")
    ax.set(xscale="log", yscale="log", xlabel="gallery size (riders)", ylabel="FPIR (expected)", ylim=(1e-14, 1),
           title="Extrapolated FPIR, 90 % bootstrap band")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(folder / "accuracy_extrapolated.png", dpi=100)
    plt.close(fig)

    groups = report["groups"]
    keys = [k for k in groups if not k.startswith("ethnicity")]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(keys, [groups[k]["nearest"] for k in keys])
    ax.axvline(DEFAULT_THRESHOLD, color="r", ls="--", lw=1)
    ax.set(xlabel="closest impostor distance (smaller = nearer lookalike)", title="By group (London set)")
    fig.tight_layout()
    fig.savefig(folder / "accuracy_groups.png", dpi=100)
    plt.close(fig)
    print(f"\nplots in {folder}")


if __name__ == "__main__":
    main()
