"""Folds on the real label files: stratified within 1 point, no group in two folds, seeded, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit.cli import main
from kit.competitions import get_competition
from kit.data.folds import load_group_mapping, make_folds, read_folds, write_folds
from kit.data.labels import load_train_table
from kit.errors import DataError

HCD = "histopathologic-cancer-detection"
SIIM = "siim-isic-melanoma-classification"


def run_folds(capsys, data: Path, out: Path, *extra: str, competition: str = HCD) -> tuple[int, str, str]:
    rc = main(["folds", "--competition", competition, "--data", str(data), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_folds_csv(path: Path, id_col: str) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={id_col: str})
    assert list(df.columns) == [id_col, "fold"]
    return df


def assert_stratified(fold: np.ndarray, target: np.ndarray, n_folds: int, tol: float = 0.01) -> None:
    """Every fold is non-empty and holds each class within ``tol`` of its share of the whole."""
    assert sorted(np.unique(fold)) == list(range(n_folds))
    for cls in np.unique(target):
        whole = np.mean(target == cls)
        for k in range(n_folds):
            share = np.mean(target[fold == k] == cls)
            assert abs(share - whole) <= tol, f"class {cls} fold {k}: {share:.4f} vs {whole:.4f}"


def assert_no_group_split(fold: np.ndarray, groups: np.ndarray) -> None:
    folds_per_group = pd.Series(fold).groupby(np.asarray(groups)).nunique()
    assert folds_per_group.max() == 1, f"groups in two folds: {list(folds_per_group[folds_per_group > 1].index[:5])}"


@pytest.fixture(scope="module")
def hcd_66k(shared_data, tmp_path_factory) -> Path:
    """A HCD data folder holding the 66k real labels as train_labels.csv (folds need no images)."""
    data = tmp_path_factory.mktemp("hcd66k")
    shutil.copyfile(shared_data / HCD / "labels_66k_no_images.csv", data / "train_labels.csv")
    return data


@pytest.fixture(scope="module")
def slides_csv(hcd_66k) -> Path:
    """A patch -> slide mapping over ~600 fake slides whose tumour fractions differ, as real slides' do."""
    labels = pd.read_csv(hcd_66k / "train_labels.csv", dtype={"id": str})
    rng = np.random.default_rng(7)
    tumour_share = rng.beta(2, 3, 600)
    slide = np.empty(len(labels), dtype=np.int64)
    for y, weight in ((1, tumour_share), (0, 1 - tumour_share)):
        rows = np.flatnonzero(labels["label"].to_numpy() == y)
        slide[rows] = rng.choice(600, size=len(rows), p=weight / weight.sum())
    path = hcd_66k.parent / "slides.csv"
    pd.DataFrame({"id": labels["id"], "slide": [f"slide_{s:03d}" for s in slide]}).to_csv(path, index=False)
    return path


def test_hcd_66k_folds_are_stratified(hcd_66k, tmp_path, capsys):
    rc, out, err = run_folds(capsys, hcd_66k, tmp_path / "folds.csv")
    assert rc == 0, err
    labels = pd.read_csv(hcd_66k / "train_labels.csv", dtype={"id": str})
    folds = read_folds_csv(tmp_path / "folds.csv", "id")
    assert len(folds) == 66_008 and list(folds["id"]) == list(labels["id"])
    assert_stratified(folds["fold"].to_numpy(), labels["label"].to_numpy(), 5)
    assert folds["fold"].value_counts().between(13_000, 13_400).all()
    assert "66008 ids in 5 folds" in out


def test_hcd_slide_mapping_gives_grouped_folds(hcd_66k, slides_csv, tmp_path, capsys):
    rc, out, err = run_folds(capsys, hcd_66k, tmp_path / "folds.csv", "--groups", str(slides_csv))
    assert rc == 0, err
    assert "grouped by" in out
    folds = read_folds_csv(tmp_path / "folds.csv", "id")
    slides = pd.read_csv(slides_csv, dtype=str).set_index("id")["slide"]
    labels = pd.read_csv(hcd_66k / "train_labels.csv", dtype={"id": str})
    assert slides.nunique() > 590
    assert_no_group_split(folds["fold"].to_numpy(), slides.loc[folds["id"]].to_numpy())
    assert_stratified(folds["fold"].to_numpy(), labels["label"].to_numpy(), 5)


def test_isic_2020_folds_group_patients(shared_data, tmp_path, capsys):
    data = shared_data / SIIM
    rc, out, err = run_folds(capsys, data, tmp_path / "folds.csv", competition="isic-2020")
    assert rc == 0, err
    train = pd.read_csv(data / "train.csv", dtype=str)
    folds = read_folds_csv(tmp_path / "folds.csv", "image_name")
    assert list(folds["image_name"]) == list(train["image_name"])
    assert_no_group_split(folds["fold"].to_numpy(), train["patient_id"].to_numpy())
    assert_stratified(folds["fold"].to_numpy(), train["target"].astype(int).to_numpy(), 5)
    assert "grouped by patient_id" in out


def test_isic_2018_folds_group_lesions(shared_data, tmp_path, capsys):
    data = shared_data / "isic-2018-task3"
    rc, _, err = run_folds(capsys, data, tmp_path / "folds.csv", competition="isic-2018")
    assert rc == 0, err
    folds = read_folds_csv(tmp_path / "folds.csv", "image")
    meta = pd.read_csv(data / "HAM10000_metadata.csv").set_index("image_id")
    assert len(folds) == 5_984
    assert_no_group_split(folds["fold"].to_numpy(), meta.loc[folds["image"], "lesion_id"].to_numpy())


def test_full_ham10000_folds_keep_each_lesions_photos_together(shared_data, tmp_path, capsys):
    # The shipped ground truth holds one image per lesion; the full HAM10000 (10,015 images of 7,470 lesions,
    # one-hot built from dx as the official file is) is where a lesion really has several photos.
    src = shared_data / "isic-2018-task3"
    meta = pd.read_csv(src / "HAM10000_metadata.csv")
    classes = get_competition("isic-2018").classes
    onehot = pd.DataFrame((meta["dx"].str.upper().to_numpy()[:, None] == np.array(classes)).astype(float),
                          columns=list(classes))
    onehot.insert(0, "image", meta["image_id"])
    onehot.to_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv", index=False)
    shutil.copyfile(src / "HAM10000_metadata.csv", tmp_path / "HAM10000_metadata.csv")
    assert meta["lesion_id"].value_counts().max() > 1

    rc, _, err = run_folds(capsys, tmp_path, tmp_path / "folds.csv", competition="ham10000")
    assert rc == 0, err
    folds = read_folds_csv(tmp_path / "folds.csv", "image")
    assert len(folds) == 10_015
    lesion = meta.set_index("image_id").loc[folds["image"], "lesion_id"].to_numpy()
    assert_no_group_split(folds["fold"].to_numpy(), lesion)
    target = onehot[list(classes)].to_numpy().argmax(axis=1)
    assert_stratified(folds["fold"].to_numpy(), target, 5)


def test_isic_2019_folds_group_lesions_and_keep_class_balance(shared_data):
    table = load_train_table("isic-2019", shared_data / "isic-2019")
    assert table["group"].nunique() < len(table)  # many lesions have several images
    fold = make_folds(table["target"].to_numpy(), table["group"].to_numpy(), 5, seed=0)
    assert_no_group_split(fold, table["group"].to_numpy())
    assert_stratified(fold, table["target"].to_numpy(), 5)


def test_same_seed_same_folds_other_seed_other_folds(hcd_66k, tmp_path, capsys):
    paths = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        paths[name] = tmp_path / f"folds_{name}.csv"
        assert run_folds(capsys, hcd_66k, paths[name], "--seed", seed)[0] == 0
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    a, c = (read_folds_csv(paths[k], "id")["fold"].to_numpy() for k in "ac")
    assert (a != c).mean() > 0.5  # another seed reshuffles most ids, not a few


def test_grouped_folds_are_seeded(shared_data):
    table = load_train_table("isic-2020", shared_data / SIIM)
    target, groups = table["target"].to_numpy(), table["group"].to_numpy()
    first = make_folds(target, groups, 5, seed=3)
    assert np.array_equal(first, make_folds(target, groups, 5, seed=3))
    other = make_folds(target, groups, 5, seed=4)
    assert (first != other).mean() > 0.5


def test_folds_csv_round_trips_in_any_order(tmp_path):
    ids = pd.Series([f"ISIC_{i:07d}" for i in range(50)])
    fold = np.arange(50) % 5
    write_folds(tmp_path / "folds.csv", ids, fold, "image_name")
    assert list(pd.read_csv(tmp_path / "folds.csv").columns) == ["image_name", "fold"]
    shuffled = ids.sample(frac=1, random_state=0).reset_index(drop=True)
    assert np.array_equal(read_folds(tmp_path / "folds.csv", shuffled, "image_name"),
                          shuffled.map(dict(zip(ids, fold, strict=True))).to_numpy())
    with pytest.raises(DataError, match=r"1 of 51 ids have no fold, first: ISIC_new"):
        read_folds(tmp_path / "folds.csv", pd.concat([ids, pd.Series(["ISIC_new"])]), "image_name")


def test_too_few_positives_for_the_folds_names_the_class(tmp_path, capsys):
    ids = [f"{i:040x}" for i in range(40)]
    pd.DataFrame({"id": ids, "label": [1] * 3 + [0] * 37}).to_csv(tmp_path / "train_labels.csv", index=False)
    rc, _, err = run_folds(capsys, tmp_path, tmp_path / "folds.csv")
    assert rc != 0 and "Traceback" not in err and err.count("\n") == 1
    assert "class 1 has 3" in err and "5 folds" in err
    assert not (tmp_path / "folds.csv").exists()
    rc, _, err = run_folds(capsys, tmp_path, tmp_path / "folds.csv", "--n-folds", "3")
    assert rc == 0, err


def test_too_few_images_of_a_diagnosis_names_it(demo_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(demo_data("isic-2018-task3"), data)
    gt_path = data / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt = pd.read_csv(gt_path, dtype={"image": str})
    classes = list(get_competition("isic-2018").classes)
    target = gt[classes].to_numpy().argmax(axis=1)
    df, nv = classes.index("DF"), classes.index("NV")
    target[target == df] = nv
    target[np.flatnonzero(target == nv)[:2]] = df  # exactly two DF images: too few for 5 folds
    gt[classes] = np.eye(len(classes))[target]
    gt.to_csv(gt_path, index=False)
    assert int(gt["DF"].sum()) == 2
    rc, _, err = run_folds(capsys, data, tmp_path / "folds.csv", competition="isic-2018")
    assert rc != 0 and "Traceback" not in err
    assert "too few samples for 5 folds: class " in err and "DF has 2" in err


def test_fewer_folds_than_two_or_groups_than_folds_raise():
    target = np.array([0, 1] * 10)
    with pytest.raises(DataError, match="at least 2"):
        make_folds(target, None, n_folds=1)
    with pytest.raises(DataError, match="only 3 groups for 5 folds"):
        make_folds(target, np.arange(20) % 3, n_folds=5)


def test_group_mapping_with_unmapped_ids_names_them(tmp_path):
    ids = pd.Series([f"p{i}" for i in range(10)])
    pd.DataFrame({"id": ids[:8], "slide": "s1"}).to_csv(tmp_path / "slides.csv", index=False)
    with pytest.raises(DataError, match=r"slides.csv: 2 of 10 ids have no group, first: p8, p9"):
        load_group_mapping(tmp_path / "slides.csv", ids, "id")
    pd.DataFrame({"id": ids}).to_csv(tmp_path / "one_col.csv", index=False)
    with pytest.raises(DataError, match="expected an id column"):
        load_group_mapping(tmp_path / "one_col.csv", ids, "id")
