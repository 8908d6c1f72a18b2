"""Synthetic demo data: deterministic from the seed, learnable where the real label lives, ISIC-like structure."""

from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest

from kit.competitions import get_competition, list_competitions
from kit.data.labels import load_train_table
from kit.data.readers import open_store
from kit.data.synthetic import HCD_LABEL_NOISE, _multiclass_lesions, histo_labels, make_demo_data
from kit.errors import ConfigError

HCD = "histopathologic-cancer-detection"
NAMES = [s.name for s in list_competitions()]
DARK = 75  # grey level below which a pixel is tumour-nucleus dark; stroma and normal nuclei stay well above


def contents(folder: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path; an HDF5 file by its entries (its container bytes are not the point)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if path.suffix == ".hdf5":
            with h5py.File(path, "r") as h5:
                out.update({f"{rel}#{k}": bytes(h5[k][()]) for k in h5})
        else:
            out[rel] = path.read_bytes()
    return out


def images(files: dict[str, bytes]) -> list[bytes]:
    return [v for k, v in files.items() if k.endswith((".tif", ".jpg")) or ".hdf5#" in k]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes_other_seed_other_data(name, tmp_path):
    size = None if name == HCD else 32
    a, b, c = (contents(make_demo_data(name, tmp_path / tag, n=12, seed=seed, n_test=4, size=size))
               for tag, seed in (("a", 5), ("b", 5), ("c", 6)))
    assert a == b  # labels CSVs, metadata and every image byte-identical
    spec = get_competition(name)
    assert spec.labels_file in a and a[spec.labels_file] != c[spec.labels_file]
    assert len(images(a)) == 16 and len(images(c)) == 16
    assert not set(images(a)) & set(images(c))  # no image of one seed reappears under the other


def hcd_darkness(demo_data) -> pd.DataFrame:
    """Per patch: what it shows (before label noise), mean darkness of the centre 32x32, and tumour-dark pixel counts in centre, margin, all."""
    data = demo_data(HCD)
    table = load_train_table(HCD, data)
    store = open_store(get_competition(HCD), data, "train")
    truth, written = histo_labels(len(table), 0)  # what each patch shows; the labels file has some flipped
    assert (table["target"].to_numpy() == written).all()
    rows = []
    for key, y in zip(table["id"], truth, strict=True):
        grey = store.read(key).astype(float).mean(axis=2)
        dark = grey < DARK
        margin = dark.copy()
        margin[20:76, 20:76] = False  # the outer band, at least 12 px away from the centre square
        rows.append({"y": y, "centre_darkness": 255 - grey[32:64, 32:64].mean(),
                     "centre_dark": int(dark[32:64, 32:64].sum()), "margin_dark": int(margin.sum()),
                     "all_dark": int(dark.sum())})
    return pd.DataFrame(rows)


def test_hcd_positives_have_tumour_texture_in_the_centre(demo_data):
    df = hcd_darkness(demo_data)
    pos, neg = df[df["y"] == 1], df[df["y"] == 0]
    assert 0.2 < df["y"].mean() < 0.6 and len(pos) >= 15  # near the real ~40% positives
    assert (pos["centre_dark"] >= 30).all()  # every positive: tumour nuclei inside the centre square
    assert (neg["centre_dark"] > 0).mean() <= 0.05  # negatives: (almost) never
    assert pos["centre_darkness"].mean() > neg["centre_darkness"].mean() + 20


def test_hcd_some_negatives_carry_tumour_in_the_margin_only(demo_data):
    df = hcd_darkness(demo_data)
    pos, neg = df[df["y"] == 1], df[df["y"] == 0]
    assert (neg["margin_dark"] >= 30).mean() >= 0.15
    # so "is there tumour anywhere" does not separate the classes; only "is it in the centre" does
    assert neg["all_dark"].max() > pos["all_dark"].min()


def test_hcd_labels_carry_some_noise_so_the_demo_cv_is_below_1(demo_data):
    """8% of the written labels disagree with the patch: deterministic from the seed, the same in the file."""
    truth, written = histo_labels(2000, 0)
    assert abs((truth != written).mean() - HCD_LABEL_NOISE) < 0.02
    again = histo_labels(2000, 0)
    assert (again[0] == truth).all() and (again[1] == written).all()
    table = load_train_table(HCD, demo_data(HCD))
    assert (table["target"].to_numpy() != histo_labels(len(table), 0)[0]).sum() >= 1


@pytest.mark.parametrize("name, group_col, meta_cols", [
    ("siim-isic-melanoma-classification", "patient_id", ["sex", "age_approx", "anatom_site_general_challenge"]),
    ("isic-2024-challenge", "patient_id", ["sex", "age_approx", "anatom_site_general"]),
])
def test_binary_isic_sets_have_several_images_per_patient(demo_data, name, group_col, meta_cols):
    data = demo_data(name)
    spec = get_competition(name)
    train = pd.read_csv(data / spec.labels_file)
    assert train[meta_cols].notna().all().all()
    assert set(train["sex"]) == {"male", "female"} and train["age_approx"].between(10, 90).all()
    per_patient = train[group_col].value_counts()
    assert per_patient.max() >= 3 and len(train) / len(per_patient) >= 2
    assert 0 < train[spec.target_col].mean() < 0.5
    test = pd.read_csv(data / spec.test_lists[0].file)
    assert test[meta_cols].notna().all().all()
    assert not set(test[group_col]) & set(train[group_col])  # test patients are new people


@pytest.mark.parametrize("name", ["isic-2018-task3", "isic-2019"])
def test_multiclass_isic_sets_have_several_images_per_lesion(demo_data, name):
    data = demo_data(name)
    spec = get_competition(name)
    meta = pd.read_csv(data / spec.metadata_file)
    assert {"lesion_id", "sex"} <= set(meta.columns) and meta[["lesion_id", "sex"]].notna().all().all()
    per_lesion = meta["lesion_id"].value_counts()
    assert per_lesion.max() >= 2 and per_lesion.min() >= 1
    table = load_train_table(spec, data)
    assert table["group"].nunique() == len(per_lesion) < len(table)
    assert table.groupby("group")["target"].nunique().max() == 1  # photos of one lesion share its diagnosis
    assert table["target"].nunique() >= 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_lesion_on_both_sides_of_the_train_test_split(seed):
    train, test = _multiclass_lesions(get_competition("isic-2018-task3"), 40, seed, 20, 8)
    assert len(train) == 40 and len(test) == 20
    assert not set(train["lesion"]) & set(test["lesion"])


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--n must be at least 10, got 5"):
        make_demo_data(HCD, tmp_path, n=5)
    with pytest.raises(ConfigError, match="always 96x96"):
        make_demo_data("hcd", tmp_path, n=10, size=64)
