"""Verification accuracy of FaceFare's encodings against face_recognition, measured in the same run.

    .venv/bin/python bench/accuracy.py [--models DIR] [--faces DIR]

Photos: every image in ``facefare/demo/data`` whose MANIFEST.tsv identity names exactly one
person (no ``+``, no ``unnamed``, no video) and in which *both* pipelines find exactly one face
(HOG, upsampled once: face_recognition's defaults). Both sides encode that face with their own
``face_encodings`` (5-point landmarks, one jitter).

Every unordered pair of photos is *genuine* (same identity) or *impostor* (different). For
FaceFare we then pick a bus operating point, where charging the wrong person must never happen:

* threshold: halfway between the largest genuine and the smallest impostor distance, capped
  just below the smallest impostor distance so that no impostor pair is accepted on this set;
* margin: for each accepted genuine pair, the gap between the distance to the nearest photo of
  any *other* identity and the genuine distance (the matcher's "best other rider" margin); the
  margin is the smallest such gap, the largest one that still accepts every accepted genuine pair.

The same photos are also encoded through the bus's front end: BlazeFace boxes (calibrated to
dlib's box convention) -> the same 5-point landmarks and ResNet, and both FaceFare paths are
reported at the bus threshold (``[pipeline] match_threshold`` = 0.5) next to each other. With
``--london`` (default on when the folder is shipped) the 40 people of the London set add 40
genuine pairs (neutral photo vs smiling photo of one person) and 3,120 impostor pairs.

True-accept rate (TAR) = genuine pairs with distance <= threshold / genuine pairs; false-accept
rate (FAR) = impostor pairs with distance <= threshold / impostor pairs. The peer is reported at
its default tolerance 0.6, and at the operating point derived the same way from its own pairs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge import faces  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
NAMED = re.compile(r"^[a-z][a-z_]*$")  # one person, e.g. "kit_harington"
PEER_TOLERANCE = 0.6
FA_CAP_EPS = 1e-4  # how far below the smallest impostor distance the threshold is capped
BUS_THRESHOLD = 0.5  # [pipeline] match_threshold


@dataclass
class Pairs:
    genuine: np.ndarray  # distances of same-identity pairs
    impostor: np.ndarray  # distances of different-identity pairs
    dist: np.ndarray  # (N, N) distance matrix
    ids: list[str]


@dataclass
class OperatingPoint:
    threshold: float
    margin: float
    capped: bool  # True when genuine and impostor distances overlap and the cap cut genuine pairs


def read_manifest(folder: Path) -> dict[str, str]:
    with open(folder / "MANIFEST.tsv", newline="") as fh:
        return {row["file"]: row["identity"] for row in csv.DictReader(fh, delimiter="\t")}


def select_photos(folder: Path, manifest: dict[str, str]) -> tuple[list[Path], list[str]]:
    """Image files present on disk whose identity is exactly one named person; and the skipped."""
    chosen, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name == "MANIFEST.tsv":
            continue
        identity = manifest.get(path.name)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path.name}: not a photo")
        elif identity is None:
            skipped.append(f"{path.name}: not in MANIFEST.tsv")
        elif not NAMED.match(identity):
            skipped.append(f"{path.name}: identity {identity!r} is not one named person")
        else:
            chosen.append(path)
    return chosen, skipped


def pair_distances(codes: np.ndarray, ids: list[str]) -> Pairs:
    dist = np.linalg.norm(codes[:, None, :] - codes[None, :, :], axis=2)
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(ids)), 2):
        (genuine if ids[i] == ids[j] else impostor).append(dist[i, j])
    return Pairs(np.asarray(genuine), np.asarray(impostor), dist, ids)


def operating_point(p: Pairs) -> OperatingPoint:
    g_max, i_min = float(p.genuine.max()), float(p.impostor.min())
    threshold = (g_max + i_min) / 2.0
    capped = threshold >= i_min
    if capped:
        threshold = i_min - FA_CAP_EPS
    gaps = []
    n = len(p.ids)
    for a in range(n):
        others = [p.dist[a, b] for b in range(n) if p.ids[b] != p.ids[a]]
        nearest_other = min(others) if others else float("inf")
        for b in range(n):
            if b != a and p.ids[b] == p.ids[a] and p.dist[a, b] <= threshold:
                gaps.append(nearest_other - p.dist[a, b])
    margin = max(0.0, float(min(gaps))) if gaps else 0.0
    return OperatingPoint(threshold, margin, capped)


def rates(p: Pairs, threshold: float) -> tuple[float, float, int, int]:
    ta = int((p.genuine <= threshold).sum())
    fa = int((p.impostor <= threshold).sum())
    return ta / len(p.genuine), fa / len(p.impostor), ta, fa


def stats_row(name: str, values: np.ndarray) -> str:
    return f"{name:<28} {len(values):>5} {values.min():>7.3f} {np.median(values):>7.3f} {values.max():>7.3f}"


def histogram(p: Pairs, title: str, width: float = 0.05, bar: int = 40) -> list[str]:
    top = max(float(p.genuine.max()), float(p.impostor.max()))
    edges = np.arange(0.0, top + width, width)
    g, _ = np.histogram(p.genuine, edges)
    i, _ = np.histogram(p.impostor, edges)
    scale = max(int(g.max()), int(i.max()), 1)
    lines = [f"{title}: pairs per distance bin (G = genuine, I = impostor)"]
    for k in range(len(edges) - 1):
        if g[k] == 0 and i[k] == 0:
            continue
        gbar = "G" * max(1, round(g[k] * bar / scale)) if g[k] else ""
        ibar = "I" * max(1, round(i[k] * bar / scale)) if i[k] else ""
        lines.append(f"  {edges[k]:.2f}-{edges[k + 1]:.2f} | {g[k]:>3} {gbar:<{bar}} | {i[k]:>3} {ibar}".rstrip())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="converted models (default: the config's)")
    parser.add_argument("--faces", type=Path, default=ROOT / "facefare" / "demo" / "data")
    parser.add_argument("--london", type=Path, default=ROOT / "facefare" / "demo" / "data" / "london")
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition as fr

    if args.models is not None:
        faces.use_models(args.models)

    manifest = read_manifest(args.faces)
    photos, skipped = select_photos(args.faces, manifest)

    used, ids, ours, peer, blaze = [], [], [], [], []
    for path in tqdm(photos, desc="encoding", unit="photo"):
        img = faces.load_image_file(path)
        our_codes = faces.face_encodings(img)
        blaze_codes = faces.face_encodings(img, faces.face_locations(img, model="blazeface"))
        peer_codes = fr.face_encodings(fr.load_image_file(path))
        if len(our_codes) != 1 or len(peer_codes) != 1 or len(blaze_codes) != 1:
            skipped.append(f"{path.name}: faces found facefare={len(our_codes)} face_recognition={len(peer_codes)} "
                           f"blazeface={len(blaze_codes)}")
            continue
        used.append(path.name)
        ids.append(manifest[path.name])
        ours.append(our_codes[0])
        blaze.append(blaze_codes[0])
        peer.append(np.asarray(peer_codes[0], dtype=np.float64))

    ours_arr, peer_arr = np.asarray(ours), np.asarray(peer)
    identities = sorted(set(ids))
    print(f"\nphotos used: {len(used)}, identities: {len(identities)}")
    for name in identities:
        print(f"  {name:<20} {ids.count(name)}")
    print(f"skipped: {len(skipped)}")
    for line in skipped:
        print(f"  {line}")

    same = np.linalg.norm(ours_arr - peer_arr, axis=1)
    print(
        f"\nfacefare vs face_recognition encoding of the same photo: "
        f"min {same.min():.2e} median {np.median(same):.2e} max {same.max():.2e}"
    )

    pf, pp = pair_distances(ours_arr, ids), pair_distances(peer_arr, ids)
    delta = np.abs(pf.dist - pp.dist).max()
    print(f"largest difference between the two pipelines' pair distances: {delta:.2e}")

    print(f"\n{'distance distribution':<28} {'pairs':>5} {'min':>7} {'median':>7} {'max':>7}")
    print("-" * 58)
    print(stats_row("facefare genuine", pf.genuine))
    print(stats_row("facefare impostor", pf.impostor))
    print(stats_row("face_recognition genuine", pp.genuine))
    print(stats_row("face_recognition impostor", pp.impostor))

    for p, title in ((pf, "facefare"), (pp, "face_recognition")):
        print()
        print("\n".join(histogram(p, title)))

    op_f, op_p = operating_point(pf), operating_point(pp)
    rows = [
        ("facefare", "bus operating point", op_f.threshold, op_f.margin, pf),
        ("face_recognition", "default tolerance", PEER_TOLERANCE, None, pp),
        ("face_recognition", "same rule as bus", op_p.threshold, op_p.margin, pp),
        ("facefare", "tolerance 0.6", PEER_TOLERANCE, None, pf),
    ]
    print(f"\n{'pipeline':<17} {'setting':<20} {'threshold':>9} {'margin':>7} {'TAR':>15} {'FAR':>15}")
    print("-" * 88)
    for name, setting, thr, margin, p in rows:
        tar, far, ta, fa = rates(p, thr)
        m = f"{margin:.3f}" if margin is not None else "-"
        print(
            f"{name:<17} {setting:<20} {thr:>9.3f} {m:>7} "
            f"{tar:>7.1%} {ta:>3}/{len(p.genuine):<3} {far:>6.2%} {fa:>3}/{len(p.impostor)}"
        )
    pb = pair_distances(np.asarray(blaze), ids)
    front_ends = [("shipped photos", pf, pb)]
    if args.london.is_dir():
        front_ends.append(("London set", *london_pairs(args.london)))
    print(f"\nat the bus threshold {BUS_THRESHOLD}: dlib-exact (HOG boxes) vs the bus's BlazeFace front end")
    print(f"{'set':<16} {'front end':<22} {'TAR':>15} {'FAR':>17}")
    for set_name, hog_p, bf_p in front_ends:
        for fe, p in (("dlib-exact HOG boxes", hog_p), ("BlazeFace boxes", bf_p)):
            tar, far, ta, fa = rates(p, BUS_THRESHOLD)
            counts = f"{ta:>3}/{len(p.genuine):<3} {far:>7.2%} {fa:>4}/{len(p.impostor)}"
            print(f"{set_name:<16} {fe:<22} {tar:>7.1%} {counts}")
        same_decisions = ((hog_p.dist <= BUS_THRESHOLD) == (bf_p.dist <= BUS_THRESHOLD)).mean()
        print(f"{set_name:<16} same accept/reject decision on {same_decisions:.2%} of pairs; "
              f"|distance difference| max {np.abs(hog_p.dist - bf_p.dist).max():.3f}")

    for name, op, p in (("facefare", op_f, pf), ("face_recognition", op_p, pp)):
        note = "overlap: capped below the smallest impostor" if op.capped else "separated"
        print(
            f"\n{name}: largest genuine {p.genuine.max():.3f}, smallest impostor {p.impostor.min():.3f} "
            f"({note}; gap {p.impostor.min() - p.genuine.max():+.3f})"
        )


def london_pairs(folder: Path) -> tuple[Pairs, Pairs]:
    """Pairs of the London set's faces encoded on HOG boxes and on BlazeFace boxes."""
    ids, hog, blaze = [], [], []
    for path in tqdm(sorted(folder.glob("*.jpg")), desc="London set", unit="photo"):
        img = faces.load_image_file(path)
        h = faces.face_encodings(img)
        b = faces.face_encodings(img, faces.face_locations(img, model="blazeface"))
        if len(h) == 1 and len(b) == 1:
            ids.append(path.name.split("_")[0])
            hog.append(h[0])
            blaze.append(b[0])
    return pair_distances(np.asarray(hog), ids), pair_distances(np.asarray(blaze), ids)


if __name__ == "__main__":
    main()
