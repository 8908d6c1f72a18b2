"""Synthetic datasets in each competition's real file layout, for the demo and for fast tests.

Deterministic from a seed (each image from its own child generator, so ``n`` does not change the first images).
Learnable but not trivial:
- Histopathology: H&E-like stroma with small nuclei. A positive has a cluster of larger, darker tumour nuclei (from
  a handful to a crowd, moderately dark) that reaches into the centre 32x32 (the competition's label definition); a
  third of the negatives carry the same tumour texture, but only in the margin, so a model must learn *where* the
  tumour is, not just whether there is one; a few enlarged nuclei (reactive atypia) appear anywhere in either class;
  and 8% of the written labels disagree with their patch (``HCD_LABEL_NOISE``), so a perfect model's CV AUC is ~0.91
  and the demo's CV, its TTA gain and more epochs show real differences.
- Skin lesions: a lesion on skin with lighting, hair and noise. Each diagnosis has its own distribution of size,
  colour, border irregularity and texture; the distributions overlap. Several images per patient (or per lesion).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition, get_competition
from kit.errors import ConfigError
from kit.io import atomic_path, write_csv_atomic, write_text_atomic

CENTRE = (32, 64)  # PCam: the label is decided by the centre 32x32 of a 96x96 patch


def _child_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _stamp_disk(img: np.ndarray, cy: float, cx: float, r: float, colour: np.ndarray, alpha: float) -> None:
    """Alpha-blend a soft disk into img (float HxWx3) in place."""
    h, w = img.shape[:2]
    y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), h)
    x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    a = alpha * np.clip(r + 0.5 - d, 0, 1)[..., None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + colour * a


# ---------------------------------------------------------------------------------------------------------------
# Histopathology patches


def histo_patch(rng: np.random.Generator, positive: bool, size: int = 96) -> np.ndarray:
    stroma = np.array([232, 160, 200]) + rng.normal(0, 12, 3)  # eosin pink, stain varies per slide
    haem = np.array([90, 50, 140]) + rng.normal(0, 10, 3)  # haematoxylin purple
    img = np.ones((size, size, 3)) * stroma
    # fibrous texture: low-frequency noise
    coarse = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
    img += np.kron(coarse, np.ones((8, 8)))[:size, :size, None] * 10
    for _ in range(rng.integers(40, 90)):  # normal nuclei: small, sparse, round
        _stamp_disk(img, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.2, 2.4), haem, rng.uniform(.5, .9))

    def tumour_cluster(cy, cx, spread, n_lo=8, n_hi=30):
        # few, moderately dark nuclei in some patches: a weak signal that a short training does not fully learn
        for _ in range(int(rng.integers(n_lo, n_hi))):
            r = rng.uniform(2.2, 4.0)
            _stamp_disk(img, cy + rng.normal(0, spread), cx + rng.normal(0, spread), r,
                        haem * rng.uniform(0.55, 0.8), rng.uniform(.6, 1.0))

    if rng.random() < 0.3:  # reactive atypia: a few enlarged, darker nuclei anywhere, in either class
        for _ in range(int(rng.integers(2, 6))):
            _stamp_disk(img, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2.0, 3.0),
                        haem * rng.uniform(0.6, 0.85), rng.uniform(.6, .9))
    c0, c1 = CENTRE
    if positive:
        # centre of the cluster inside the centre square, so tumour pixels are there whatever the spread
        tumour_cluster(rng.uniform(c0 + 2, c1 - 2), rng.uniform(c0 + 2, c1 - 2), rng.uniform(3, 9))
    elif rng.random() < 0.35:
        # tumour in the margin only: keep the whole cluster at least ~14 px outside the centre square
        side = rng.integers(4)
        a, b = rng.uniform(4, 14), rng.uniform(8, size - 8)
        cy, cx = [(a, b), (size - a, b), (b, a), (b, size - a)][side]
        tumour_cluster(cy, cx, 2.5)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Skin lesions


@dataclass(frozen=True)
class LesionLook:
    colour: tuple[int, int, int]
    radius: tuple[float, float]  # fraction of the image side
    irregularity: float  # amplitude of border harmonics
    variegation: float  # how many colour blotches
    dots: float  # density of dark dots / vessels


# One look per diagnosis; the ranges overlap so that the task is not trivial.
LOOKS: dict[str, LesionLook] = {
    "MEL": LesionLook((70, 45, 35), (0.22, 0.36), 0.22, 0.9, 0.4),
    "NV": LesionLook((125, 85, 60), (0.12, 0.26), 0.05, 0.1, 0.1),
    "BCC": LesionLook((200, 130, 135), (0.14, 0.28), 0.10, 0.3, 0.8),
    "AKIEC": LesionLook((185, 95, 80), (0.14, 0.26), 0.15, 0.5, 0.3),
    "AK": LesionLook((185, 95, 80), (0.14, 0.26), 0.15, 0.5, 0.3),
    "SCC": LesionLook((190, 110, 95), (0.16, 0.30), 0.18, 0.6, 0.5),
    "BKL": LesionLook((150, 110, 70), (0.16, 0.30), 0.12, 0.3, 0.6),
    "DF": LesionLook((140, 90, 75), (0.10, 0.18), 0.06, 0.2, 0.0),
    "VASC": LesionLook((165, 40, 70), (0.10, 0.20), 0.05, 0.2, 0.2),
    "UNK": LesionLook((130, 100, 90), (0.12, 0.30), 0.12, 0.4, 0.3),
    "benign": LesionLook((125, 85, 60), (0.14, 0.28), 0.07, 0.2, 0.15),
    "malignant": LesionLook((75, 48, 38), (0.20, 0.34), 0.20, 0.8, 0.4),
}


def lesion_image(rng: np.random.Generator, look: LesionLook, size: int = 128,
                 lesion_seed: int | None = None) -> np.ndarray:
    """A dermoscopy-like image. ``lesion_seed`` fixes the lesion's shape so several photos show one lesion."""
    shape_rng = np.random.default_rng(lesion_seed) if lesion_seed is not None else rng
    skin = np.array([225, 180, 155]) + rng.normal(0, 12, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 1 - 0.25 * ((yy - rng.uniform(.3, .7)) ** 2 + (xx - rng.uniform(.3, .7)) ** 2)
    img = skin * light[..., None]
    # lesion mask: a radius that varies with angle (harmonics give an irregular border)
    cy, cx = 0.5 + shape_rng.normal(0, .05, 2)
    r0 = shape_rng.uniform(*look.radius)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = r0 * (1 + sum(shape_rng.normal(0, look.irregularity / k) * np.cos(k * theta + shape_rng.uniform(0, 6.3))
                           for k in range(2, 7)))
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    mask = np.clip((radius - dist) * size / 2.0, 0, 1)
    colour = np.array(look.colour) + rng.normal(0, 10, 3)
    lesion = np.ones_like(img) * colour
    for _ in range(int(shape_rng.poisson(look.variegation * 4))):  # colour blotches: darker or blue-grey
        by, bx = cy + shape_rng.normal(0, r0 / 2), cx + shape_rng.normal(0, r0 / 2)
        blotch = np.exp(-(((yy - by) ** 2 + (xx - bx) ** 2) / (2 * (r0 / 3) ** 2)))[..., None]
        tint = np.array([40, 40, 60]) if shape_rng.random() < 0.5 else np.array([95, 105, 125])
        lesion = lesion * (1 - 0.8 * blotch) + tint * 0.8 * blotch
    img = img * (1 - mask[..., None]) + lesion * mask[..., None]
    for _ in range(int(rng.poisson(look.dots * 25))):  # dots / vessels inside the lesion
        ang, rr = rng.uniform(0, 6.3), rng.uniform(0, r0) * size
        _stamp_disk(img, cy * size + rr * np.sin(ang), cx * size + rr * np.cos(ang), rng.uniform(.8, 1.8),
                    np.array([60, 30, 30]), 0.8)
    for _ in range(int(rng.integers(0, 4))):  # hairs
        y, x, ang = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, 6.3)
        for t in np.linspace(0, size * 0.6, int(size * 0.8)):
            _stamp_disk(img, y + t * np.sin(ang), x + t * np.cos(ang), 0.6, np.array([50, 35, 30]), 0.7)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Writers, one per layout


def _hex_id(seed: int, i: int, split: str = "train") -> str:
    return hashlib.sha1(f"kit-demo-{seed}-{i}{'' if split == 'train' else '-' + split}".encode()).hexdigest()


def _encode_jpeg(img: np.ndarray) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(img, quality=92, colorspace="RGB")


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


HCD_LABEL_NOISE = 0.08
"""The share of written HCD training labels that disagree with the patch (annotators disagree on real patches too):
the CV of a perfect model stays near 0.91, so the demo's numbers can move."""


def histo_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(what each training patch shows, the label written for it): the same draw as write_histopathology's."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)  # the real train set is ~40% positive
    flip = _child_rng(seed, 2**31 - 1).random(n) < HCD_LABEL_NOISE
    return truth, np.where(flip, 1 - truth, truth)


def write_histopathology(out: Path, n: int, seed: int, n_test: int) -> None:
    import tifffile

    rng = np.random.default_rng(seed)
    truth, labels = histo_labels(n, seed)
    rng.random(n)  # the draw histo_labels made: the test patches below stay those of earlier versions' seeds
    ids = [_hex_id(seed, i) for i in range(n)]
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    for i, (id_, y) in enumerate(zip(ids, truth, strict=True)):
        with atomic_path(out / "train" / f"{id_}.tif") as tmp:
            tifffile.imwrite(tmp, histo_patch(_child_rng(seed, i), bool(y)), photometric="rgb")
    # test ids and patches keyed apart from every seed's training ones (seed + 1 made them seed + 1's train set)
    test_ids = [_hex_id(seed, i, "test") for i in range(n_test)]
    for i, id_ in enumerate(test_ids):
        with atomic_path(out / "test" / f"{id_}.tif") as tmp:
            tifffile.imwrite(tmp, histo_patch(_child_rng(seed, i, 1), rng.random() < 0.4), photometric="rgb")
    write_csv_atomic(pd.DataFrame({"id": ids, "label": labels}), out / "train_labels.csv")
    write_csv_atomic(pd.DataFrame({"id": test_ids, "label": 0}), out / "sample_submission.csv")


SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]


def _patients(rng: np.random.Generator, n: int, prefix: str, per: tuple[int, int], first: int = 0) -> list[dict]:
    """Rows for n images spread over patients with ``per`` images each, numbered from ``first``."""
    rows, p = [], first
    while len(rows) < n:
        k = int(rng.integers(*per))
        sex = "male" if rng.random() < 0.5 else "female"
        age = float(np.clip(round(rng.normal(50, 15) / 5) * 5, 10, 90))
        for _ in range(k):
            rows.append({"patient": f"{prefix}_{p:07d}", "sex": sex, "age": age, "site": SITES[rng.integers(4)]})
        p += 1
    return rows[:n]


def _binary_lesions(spec: Competition, out: Path, n: int, seed: int, n_test: int, size: int, pos_rate: float):
    rng = np.random.default_rng(seed)
    rows = _patients(rng, n, "IP", (2, 7))
    # test patients are new people, as in the competitions: no patient on both sides of the train/test split
    rows += _patients(rng, n_test, "IP", (2, 7), first=len({r["patient"] for r in rows}))
    for i, row in enumerate(rows):
        # older patients carry more melanoma, as in the real data: the metadata branch has something to learn
        p = pos_rate * (0.4 + 1.2 * (row["age"] - 10) / 80)
        row["target"] = int(rng.random() < p)
        row["id"] = f"ISIC_{seed % 1000:03d}{i:04d}" if n + n_test <= 10_000 else f"ISIC_{seed}_{i:07d}"
        look = LOOKS["malignant" if row["target"] else "benign"]
        row["image"] = lesion_image(_child_rng(seed, i), look, size)
    return pd.DataFrame(rows[:n]), pd.DataFrame(rows[n:])


def write_siim_isic(spec: Competition, out: Path, n: int, seed: int, n_test: int, size: int) -> None:
    train, test = _binary_lesions(spec, out, n, seed, n_test, size, pos_rate=0.2)
    for split, df in (("train", train), ("test", test)):
        for id_, img in zip(df["id"], df["image"], strict=True):
            _write_bytes(out / "jpeg" / split / f"{id_}.jpg", _encode_jpeg(img))
    cols = {"id": "image_name", "patient": "patient_id", "site": "anatom_site_general_challenge", "age": "age_approx"}
    # diagnoses as the real file spells them: every positive a melanoma, the negatives mostly unknown or nevus
    benign = np.array(["unknown", "unknown", "nevus", "unknown", "seborrheic keratosis"])[np.arange(len(train)) % 5]
    train = train.assign(diagnosis=np.where(train["target"] == 1, "melanoma", benign),
                         benign_malignant=np.where(train["target"] == 1, "malignant", "benign"))
    write_csv_atomic(train.drop(columns="image").rename(columns=cols)[
        ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
         "benign_malignant", "target"]], out / "train.csv")
    write_csv_atomic(test.rename(columns=cols)[["image_name", "patient_id", "sex", "age_approx",
                                                "anatom_site_general_challenge"]], out / "test.csv")
    write_csv_atomic(pd.DataFrame({"image_name": test["id"], "target": 0}), out / "sample_submission.csv")


# The columns of the real ISIC 2024 test-metadata.csv, in order; train-metadata.csv has ``target`` after the id and
# the train-only columns (which the test lacks) at the end.
ISIC_2024_TEST_COLUMNS = [
    "isic_id", "patient_id", "age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm", "image_type",
    "tbp_tile_type", "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext", "tbp_lv_H",
    "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext", "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean",
    "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm", "tbp_lv_eccentricity",
    "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM", "tbp_lv_nevi_confidence",
    "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM", "tbp_lv_radial_color_std_max", "tbp_lv_stdL",
    "tbp_lv_stdLExt", "tbp_lv_symm_2axis", "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z",
    "attribution", "copyright_license"]
ISIC_2024_TRAIN_ONLY = list(get_competition("isic-2024-challenge").train_only_columns)
ISIC_2024_TRAIN_COLUMNS = ["isic_id", "target", *ISIC_2024_TEST_COLUMNS[1:], *ISIC_2024_TRAIN_ONLY]
_ISIC_2024_PLACES = {  # synthetic site -> (tbp_lv_location, tbp_lv_location_simple) choices
    "torso": [("Torso Back Top Third", "Torso Back"), ("Torso Front Top Half", "Torso Front"),
              ("Torso Back Middle Third", "Torso Back")],
    "lower extremity": [("Left Leg - Upper", "Left Leg"), ("Right Leg - Lower", "Right Leg")],
    "upper extremity": [("Left Arm - Upper", "Left Arm"), ("Right Arm - Lower", "Right Arm")],
    "head/neck": [("Head & Neck", "Head & Neck")],
}
_ISIC_2024_SOURCES = [("Memorial Sloan Kettering Cancer Center", "CC-BY"),
                      ("Department of Dermatology, Hospital Clinic de Barcelona", "CC-BY-NC"),
                      ("Frazer Institute, The University of Queensland, Dermatology Research Centre", "CC-BY"),
                      ("ViDIR Group, Department of Dermatology, Medical University of Vienna", "CC-BY-NC"),
                      ("University Hospital of Basel", "CC-0")]


def _per_patient(rng: np.random.Generator, codes: np.ndarray, n_patients: int, draw) -> np.ndarray:
    """One value per patient from ``draw(rng, n)``, repeated onto each of the patient's rows."""
    return np.asarray(draw(rng, n_patients))[codes]


def _tbp_colour(rng: np.random.Generator, codes: np.ndarray, n_pat: int, y: np.ndarray) -> dict[str, np.ndarray]:
    """CIELAB colour of lesion and surrounding skin: each patient has a skin tone and a typical lesion colour; a
    malignant lesion departs from its patient's typical colour (the "ugly duckling"), so the colour says more
    relative to the patient's other lesions than in absolute terms."""
    n = len(y)
    ext = {c: _per_patient(rng, codes, n_pat, lambda r, m, mu=mu, sd=sd: r.normal(mu, sd, m))
           for c, mu, sd in (("L", 62, 7), ("A", 15, 3.5), ("B", 24, 4))}
    typical = {c: _per_patient(rng, codes, n_pat, lambda r, m, mu=mu, sd=sd: r.normal(mu, sd, m))
               for c, mu, sd in (("L", -12, 4), ("A", 6, 2.5), ("B", 4, 2.5))}
    direction = rng.normal(0, 1, (n, 3)) * np.array([1.5, 1.0, 1.0]) - np.array([1.0, -0.3, 0.0])
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    shift = direction * (y * rng.gamma(4.0, 2.2, n))[:, None]
    out = {}
    for j, c in enumerate("LAB"):
        delta = typical[c] + rng.normal(0, 2.2, n) + shift[:, j]
        out[f"tbp_lv_{c}ext"], out[f"tbp_lv_{c}"] = ext[c] + rng.normal(0, 1.0, n), ext[c] + delta
        out[f"tbp_lv_delta{c}"] = out[f"tbp_lv_{c}"] - out[f"tbp_lv_{c}ext"]
    for suffix in ("", "ext"):
        a, b = out[f"tbp_lv_A{suffix}"], out[f"tbp_lv_B{suffix}"]
        out[f"tbp_lv_C{suffix}"] = np.hypot(a, b)
        out[f"tbp_lv_H{suffix}"] = np.degrees(np.arctan2(b, a))
    out["tbp_lv_deltaLB"] = np.hypot(out["tbp_lv_deltaL"], out["tbp_lv_deltaB"])
    out["tbp_lv_deltaLBnorm"] = out["tbp_lv_deltaLB"] * rng.normal(1.05, 0.05, n)
    return out


def _tbp_shape(rng: np.random.Generator, codes: np.ndarray, n_pat: int, y: np.ndarray) -> dict[str, np.ndarray]:
    """Size, shape, border and colour variation: malignant lesions are larger, more eccentric and asymmetric, with
    a more irregular border and more colour variation; the distributions overlap widely."""
    n = len(y)
    scale = _per_patient(rng, codes, n_pat, lambda r, m: r.lognormal(np.log(3.2), 0.25, m))
    diam = scale * rng.lognormal(0.35 * y, 0.3)
    ecc = np.where(y == 1, rng.beta(5, 3, n), rng.beta(4, 4, n)) * 0.97
    minor = diam * np.sqrt(1 - ecc ** 2)
    area = np.pi / 4 * diam * minor
    border = np.clip(rng.normal(3.6 + 1.0 * y, 1.3), 0, 10)
    a, b = diam / 2, minor / 2  # Ramanujan's ellipse perimeter, stretched by the border's irregularity
    perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))) * (1 + 0.04 * border)
    colour_std = rng.gamma(2.0 + 1.0 * y, 0.35)
    return {"clin_size_long_diam_mm": diam, "tbp_lv_minorAxisMM": minor, "tbp_lv_areaMM2": area,
            "tbp_lv_perimeterMM": perimeter, "tbp_lv_area_perim_ratio": perimeter ** 2 / area,
            "tbp_lv_eccentricity": ecc, "tbp_lv_norm_border": border,
            "tbp_lv_symm_2axis": np.clip(np.where(y == 1, rng.beta(3.5, 6, n), rng.beta(3, 8, n)), 0, 1),
            "tbp_lv_symm_2axis_angle": rng.integers(0, 36, n) * 5.0,
            "tbp_lv_color_std_mean": colour_std, "tbp_lv_norm_color": np.clip(colour_std * 2.2, 0, 10),
            "tbp_lv_radial_color_std_max": colour_std * rng.uniform(0.3, 1.2, n),
            "tbp_lv_stdL": colour_std * rng.uniform(1.2, 2.4, n), "tbp_lv_stdLExt": rng.normal(2.0, 0.4, n).clip(0.3),
            "tbp_lv_nevi_confidence": 100 * np.where(y == 1, rng.beta(1.6, 3, n), rng.beta(2.5, 2, n))}


def _tbp_context(rng: np.random.Generator, codes: np.ndarray, n_pat: int, site: pd.Series) -> dict[str, np.ndarray]:
    """Where the lesion is (3D coordinates, location names), and the capture's provenance."""
    n = len(site)
    places = [_ISIC_2024_PLACES.get(s, [("Unknown", "Unknown")]) for s in site]
    place = [p[int(k)] for p, k in zip(places, rng.integers(0, 6, n) % [len(p) for p in places], strict=True)]
    source = _per_patient(rng, codes, n_pat, lambda r, m: r.integers(0, len(_ISIC_2024_SOURCES), m))
    return {"image_type": np.full(n, "TBP tile: close-up"),
            "tbp_tile_type": _per_patient(rng, codes, n_pat, lambda r, m: np.where(r.random(m) < 0.7, "3D: XP",
                                                                                   "3D: white")),
            "tbp_lv_location": np.array([p[0] for p in place]), "tbp_lv_location_simple": np.array([p[1] for p in place]),
            "tbp_lv_x": rng.normal(0, 150, n), "tbp_lv_y": rng.normal(1000, 400, n), "tbp_lv_z": rng.normal(0, 80, n),
            "attribution": np.array([_ISIC_2024_SOURCES[k][0] for k in source]),
            "copyright_license": np.array([_ISIC_2024_SOURCES[k][1] for k in source])}


def _tbp_train_only(rng: np.random.Generator, y: np.ndarray, first: int) -> dict[str, np.ndarray]:
    """The train-only columns; like the real ones they give the diagnosis away, which is why the test lacks them."""
    n = len(y)
    has_lesion = (y == 1) | (rng.random(n) < 0.05)
    nan = np.full(n, np.nan)
    mel = (y == 1) & (rng.random(n) < 0.4)
    return {"lesion_id": np.where(has_lesion, [f"IL_{first + i:07d}" for i in range(n)], None),
            "iddx_full": np.where(y == 1, "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive",
                                  "Benign"),
            "iddx_1": np.where(y == 1, "Malignant", "Benign"),
            "iddx_2": np.where(y == 1, "Malignant melanocytic proliferations (Melanoma)", None),
            "iddx_3": np.where(y == 1, "Melanoma Invasive", None), "iddx_4": nan, "iddx_5": nan,
            "mel_mitotic_index": np.where(mel, "<1/mm^2", None),
            "mel_thick_mm": np.where(mel, np.round(rng.gamma(2, 0.3, n), 2), np.nan),
            "tbp_lv_dnn_lesion_confidence": np.round(100 * rng.beta(8, 1.5, n), 4)}


def isic_2024_metadata(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The lesion measurements of ISIC 2024's metadata for the rows of ``df`` (patient, site, target), carrying
    signal as the real ones do; drawn from a generator of their own, so the images and targets do not change."""
    rng = np.random.default_rng([seed, 2024])
    codes, uniques = pd.factorize(df["patient"])
    y = df["target"].to_numpy()
    cols = {**_tbp_colour(rng, codes, len(uniques), y), **_tbp_shape(rng, codes, len(uniques), y),
            **_tbp_context(rng, codes, len(uniques), df["site"])}
    out = pd.DataFrame({k: np.round(v, 5) if np.asarray(v).dtype.kind == "f" else v for k, v in cols.items()},
                       index=df.index)
    return pd.concat([out, pd.DataFrame(_tbp_train_only(rng, y, 0), index=df.index)], axis=1)


def isic_2024_table(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``rows`` (id, patient, sex, age, site, target; a fresh index) with ISIC 2024's metadata, in its column names:
    select ``ISIC_2024_TRAIN_COLUMNS`` for train-metadata.csv, ``ISIC_2024_TEST_COLUMNS`` for test-metadata.csv."""
    both = pd.concat([rows, isic_2024_metadata(rows, seed)], axis=1)
    return both.rename(columns={"id": "isic_id", "patient": "patient_id", "site": "anatom_site_general",
                                "age": "age_approx"})


def write_isic_2024(spec: Competition, out: Path, n: int, seed: int, n_test: int, size: int) -> None:
    import h5py

    train, test = _binary_lesions(spec, out, n, seed, n_test, size, pos_rate=0.15)
    for name, df in (("train-image.hdf5", train), ("test-image.hdf5", test)):
        with atomic_path(out / name) as tmp, h5py.File(tmp, "w") as h5:
            for id_, img in zip(df["id"], df["image"], strict=True):
                h5.create_dataset(id_, data=np.bytes_(_encode_jpeg(img)))
    both = isic_2024_table(pd.concat([train.drop(columns="image"), test.drop(columns="image")], ignore_index=True),
                           seed)
    write_csv_atomic(both.iloc[:n][ISIC_2024_TRAIN_COLUMNS], out / "train-metadata.csv")
    write_csv_atomic(both.iloc[n:][ISIC_2024_TEST_COLUMNS], out / "test-metadata.csv")
    write_csv_atomic(pd.DataFrame({"isic_id": test["id"], "target": 0.3}), out / "sample_submission.csv")


# HAM10000-like class balance (ISIC 2018 order); UNK gets none, as in the real ISIC 2019 training data.
CLASS_WEIGHTS = {"MEL": .11, "NV": .55, "BCC": .07, "AKIEC": .05, "AK": .05, "BKL": .11, "DF": .04, "VASC": .04,
                 "SCC": .03, "UNK": 0.0}


def _multiclass_lesions(spec: Competition, n: int, seed: int, n_test: int, size: int):
    rng = np.random.default_rng(seed)
    weights = np.array([CLASS_WEIGHTS[c] for c in spec.classes])
    weights /= weights.sum()
    rows, lesion = [], 0
    for end in (n, n + n_test):  # train lesions, then new ones for test: no lesion on both sides
        while len(rows) < end:
            cls = int(rng.choice(len(spec.classes), p=weights))
            patient = _patients(rng, 1, "IP", (1, 2))[0]
            for _ in range(int(rng.integers(1, 4))):  # 1-3 photos of one lesion, as in HAM10000
                rows.append({**patient, "cls": cls, "lesion": f"HAM_{seed % 100:02d}{lesion:05d}",
                             "lesion_seed": seed * 100_003 + lesion})
            lesion += 1
        rows = rows[:end]
    for i, row in enumerate(rows):
        row["id"] = f"ISIC_{seed % 1000:03d}{i:04d}" if n + n_test <= 10_000 else f"ISIC_{seed}_{i:07d}"
        row["image"] = lesion_image(_child_rng(seed, i), LOOKS[spec.classes[row["cls"]]], size, row["lesion_seed"])
    df = pd.DataFrame(rows)
    # the test split takes whole lesions from the end, so no lesion is on both sides
    return df.iloc[:n].reset_index(drop=True), df.iloc[n:].reset_index(drop=True)


def write_isic_multiclass(spec: Competition, out: Path, n: int, seed: int, n_test: int, size: int) -> None:
    train, test = _multiclass_lesions(spec, n, seed, n_test, size)
    train_dir = out / spec.train_images[0].path
    test_dir = out / spec.test_images[0].path
    for folder, df in ((train_dir, train), (test_dir, test)):
        for id_, img in zip(df["id"], df["image"], strict=True):
            _write_bytes(folder / f"{id_}.jpg", _encode_jpeg(img))
    onehot = pd.DataFrame(np.eye(len(spec.classes))[train["cls"]], columns=list(spec.classes))
    write_csv_atomic(pd.concat([train[["id"]].rename(columns={"id": spec.id_col}), onehot], axis=1),
                     out / spec.labels_file)
    if spec.name == "isic-2018-task3":
        meta = pd.DataFrame({"lesion_id": train["lesion"], "image_id": train["id"],
                             "dx": [spec.classes[c].lower() for c in train["cls"]], "dx_type": "histo",
                             "age": train["age"], "sex": train["sex"], "localization": train["site"]})
    else:
        meta = pd.DataFrame({"image": train["id"], "age_approx": train["age"], "anatom_site_general": train["site"],
                             "lesion_id": train["lesion"], "sex": train["sex"]})
        write_csv_atomic(pd.DataFrame({"image": test["id"], "age_approx": test["age"],
                                       "anatom_site_general": test["site"], "sex": test["sex"]}),
                         out / spec.test_lists[0].file)
    write_csv_atomic(meta, out / spec.metadata_file)


WRITERS = {
    "siim-isic-melanoma-classification": write_siim_isic,
    "isic-2024-challenge": write_isic_2024,
    "isic-2019": write_isic_multiclass,
    "isic-2018-task3": write_isic_multiclass,
}


def make_demo_data(competition: str, out: str | Path, n: int = 400, seed: int = 0, n_test: int | None = None,
                   size: int | None = None) -> Path:
    """Write a synthetic dataset for ``competition`` under ``out`` in the competition's own layout."""
    spec = get_competition(competition)
    out = Path(out)
    if n < 10:
        raise ConfigError(f"--n must be at least 10, got {n}")
    n_test = max(n // 4, 4) if n_test is None else n_test
    _clear_for_demo(out)
    # first: a set interrupted half-way is still known as kit's, and replaced by the next run
    write_text_atomic(out / DEMO_MARK, json.dumps({"competition": spec.name, "n": n, "n_test": n_test, "seed": seed}))
    if spec.name == "histopathologic-cancer-detection":
        if size not in (None, 96):
            raise ConfigError("histopathology patches are always 96x96 (the PCam format); drop --size")
        write_histopathology(out, n, seed, n_test)
    else:
        WRITERS[spec.name](spec, out, n, seed, n_test, size or 128)
    return out


DEMO_MARK = ".kit-demo.json"
"""Marks a folder written by make_demo_data: only such a folder is replaced by the next one."""


def _clear_for_demo(out: Path) -> bool:
    """An empty ``out`` for a new demo set: a previous demo set there is removed whole (labels, images, sample
    submission, folds, packs), so nothing of it mixes with the new one; any other non-empty folder is refused. True
    when a demo set was replaced."""
    import shutil

    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return False
    if not (out / DEMO_MARK).is_file():
        raise ConfigError(f"{out} is not empty and was not written by kit demo-data; choose another --out (an empty "
                          "or new folder)")
    for path in out.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return True
