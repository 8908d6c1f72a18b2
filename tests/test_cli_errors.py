"""Bad input through the CLI: one line that names the culprit, a non-zero exit, no traceback.

Each test copies a small synthetic demo set into its own folder and breaks one thing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest

from kit.cli import main
from kit.competitions import get_competition
from kit.data.readers import Hdf5Store
from kit.errors import DataError

HCD = "histopathologic-cancer-detection"
ISIC18 = "isic-2018-task3"
ISIC24 = "isic-2024-challenge"


@pytest.fixture
def copy_demo(demo_data, tmp_path):
    """A function competition -> a private copy of that competition's demo set, free to break."""
    def copy(competition: str) -> Path:
        out = tmp_path / competition
        shutil.copytree(demo_data(competition), out)
        return out

    return copy


def cli_error(capsys, *argv: str) -> str:
    """Run ``kit argv``; assert it failed with one line on stderr and no traceback; return that line."""
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"kit {argv[0]}: error: ")
    return lines[0]


def check_data(capsys, data: Path, *extra: str, competition: str = HCD) -> str:
    return cli_error(capsys, "check-data", "--competition", competition, "--data", str(data), *extra)


def folds(capsys, data: Path, competition: str = HCD) -> str:
    return cli_error(capsys, "folds", "--competition", competition, "--data", str(data),
                     "--out", str(data / "folds.csv"))


def edit_labels(path: Path, row: int, col: str, value) -> str:
    """Set one cell of a labels CSV (ids kept as strings); return the id of that row."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, col] = value
    df.to_csv(path, index=False)
    return df.loc[row].iloc[0]


# ---------------------------------------------------------------------------------------------------------------
# The labels file


@pytest.mark.parametrize("command", ["check-data", "folds"])
def test_labels_file_missing(copy_demo, capsys, command):
    data = copy_demo(HCD)
    (data / "train_labels.csv").unlink()
    if command == "check-data":
        line = check_data(capsys, data)
    else:
        line = folds(capsys, data)
    assert f"labels file not found: {data / 'train_labels.csv'}" in line


def test_labels_file_missing_its_label_column(copy_demo, capsys):
    data = copy_demo(HCD)
    labels = pd.read_csv(data / "train_labels.csv", dtype=str)
    labels.rename(columns={"label": "target"}).to_csv(data / "train_labels.csv", index=False)
    line = check_data(capsys, data)
    assert str(data / "train_labels.csv") in line
    assert "column 'label' missing; found ['id', 'target']" in line


def test_ground_truth_missing_a_class_column(copy_demo, capsys):
    data = copy_demo(ISIC18)
    path = data / "ISIC2018_Task3_Training_GroundTruth.csv"
    pd.read_csv(path, dtype=str).drop(columns="DF").to_csv(path, index=False)
    line = folds(capsys, data, ISIC18)
    assert str(path) in line and "column 'DF' missing" in line


def test_metadata_file_missing(copy_demo, capsys):
    data = copy_demo(ISIC18)
    (data / "HAM10000_metadata.csv").unlink()
    line = check_data(capsys, data, competition=ISIC18)
    assert f"metadata file not found: {data / 'HAM10000_metadata.csv'}" in line


def test_labels_file_with_header_only(copy_demo, capsys):
    data = copy_demo(HCD)
    (data / "train_labels.csv").write_text("id,label\n")
    assert "labels file has a header but no rows" in check_data(capsys, data)


def test_duplicate_ids_name_the_id_and_lines(copy_demo, capsys):
    data = copy_demo(HCD)
    path = data / "train_labels.csv"
    ids = pd.read_csv(path, dtype=str)["id"]
    edit_labels(path, 10, "id", ids[3])  # row 10 is line 12; row 3 is line 5
    line = check_data(capsys, data)
    assert str(path) in line
    assert f"1 duplicate ids in column 'id': '{ids[3]}' (line 5), '{ids[3]}' (line 12)" in line


def test_nan_label_names_line_id_and_column(copy_demo, capsys):
    data = copy_demo(HCD)
    path = data / "train_labels.csv"
    id_ = edit_labels(path, 7, "label", "")
    line = check_data(capsys, data)
    assert f"{path} line 9 (id {id_}): column 'label' is empty (NaN)" in line


@pytest.mark.parametrize("value", ["2", "yes", "-1", "0.5"])
def test_unknown_label_value_names_it(copy_demo, capsys, value):
    data = copy_demo(HCD)
    path = data / "train_labels.csv"
    id_ = edit_labels(path, 20, "label", value)
    line = folds(capsys, data)
    assert f"{path} line 22 (id {id_}): column 'label' is '{value}', not 0 or 1" in line
    assert not (data / "folds.csv").exists()


def test_onehot_row_with_two_classes_names_the_row(copy_demo, capsys):
    data = copy_demo(ISIC18)
    path = data / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt = pd.read_csv(path, dtype=str)
    other = "MEL" if gt.loc[4, "MEL"] == "0.0" else "NV"
    id_ = edit_labels(path, 4, other, "1.0")
    line = check_data(capsys, data, competition=ISIC18)
    assert f"{path} line 6 (id {id_}): expected exactly one 1 among MEL, NV" in line and "found 2" in line


def test_onehot_non_numeric_value_names_the_column(copy_demo, capsys):
    data = copy_demo(ISIC18)
    path = data / "ISIC2018_Task3_Training_GroundTruth.csv"
    id_ = edit_labels(path, 0, "BKL", "yes")
    line = check_data(capsys, data, competition=ISIC18)
    assert f"{path} line 2 (id {id_}): column 'BKL' is 'yes', not 0 or 1" in line


# ---------------------------------------------------------------------------------------------------------------
# Images


def test_ids_without_image_file_give_count_and_first_few(copy_demo, capsys):
    data = copy_demo(HCD)
    ids = pd.read_csv(data / "train_labels.csv", dtype=str)["id"]
    gone = [ids[i] for i in (2, 9, 11, 30, 41, 55, 70)]
    for id_ in gone:
        (data / "train" / f"{id_}.tif").unlink()
    line = check_data(capsys, data)
    assert f"7 of {len(ids)} ids have no image" in line
    assert all(str(data / "train" / f"{id_}.tif") in line for id_ in gone[:5])
    assert gone[6] not in line  # a few named, not all: the line stays short on a large set


def test_corrupt_tif_fails_decode_and_skip_lists_it(copy_demo, capsys, tmp_path):
    data = copy_demo(HCD)
    ids = pd.read_csv(data / "train_labels.csv", dtype=str)["id"]
    bad = data / "train" / f"{ids[5]}.tif"
    bad.write_bytes(bad.read_bytes()[:300])  # header intact, pixel data cut off
    gone = ids[12]
    (data / "train" / f"{gone}.tif").unlink()

    assert main(["check-data", "--competition", HCD, "--data", str(data)]) != 0  # the missing file alone fails
    capsys.readouterr()
    (data / "train" / f"{gone}.tif").write_bytes((data / "train" / f"{ids[0]}.tif").read_bytes())
    assert main(["check-data", "--competition", HCD, "--data", str(data)]) == 0  # without --decode: not read
    capsys.readouterr()
    line = check_data(capsys, data, "--decode")
    assert f"1 of {len(ids)} images cannot be read, first: {bad}: cannot decode TIFF" in line

    (data / "train" / f"{gone}.tif").unlink()
    out_csv = tmp_path / "bad.csv"
    assert main(["check-data", "--competition", HCD, "--data", str(data), "--decode",
                 "--skip-bad-images", str(out_csv)]) == 0
    assert f"ok: {len(ids) - 2} labelled images" in capsys.readouterr().out
    listed = pd.read_csv(out_csv, dtype=str)
    assert list(listed.columns) == ["id", "reason"]
    assert set(listed["id"]) == {ids[5], gone}
    reasons = dict(zip(listed["id"], listed["reason"], strict=True))
    assert "cannot decode TIFF" in reasons[ids[5]] and "no image" in reasons[gone]


def test_truncated_jpeg_fails_decode_and_skip_lists_it(copy_demo, capsys, tmp_path):
    data = copy_demo(ISIC18)
    ids = pd.read_csv(data / "ISIC2018_Task3_Training_GroundTruth.csv", dtype=str)["image"]
    bad = data / "ISIC2018_Task3_Training_Input" / f"{ids[8]}.jpg"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    line = check_data(capsys, data, "--decode", competition=ISIC18)
    assert f"1 of {len(ids)} images cannot be read, first: {bad}: cannot decode JPEG" in line
    assert "truncated" in line

    out_csv = tmp_path / "bad.csv"
    assert main(["check-data", "--competition", ISIC18, "--data", str(data), "--decode",
                 "--skip-bad-images", str(out_csv)]) == 0
    assert "1 bad images listed in" in capsys.readouterr().out
    listed = pd.read_csv(out_csv, dtype=str)
    assert list(listed["id"]) == [ids[8]] and str(bad) in listed["reason"][0]


def test_missing_hdf5_key(copy_demo, capsys):
    data = copy_demo(ISIC24)
    ids = pd.read_csv(data / "train-metadata.csv", dtype=str)["isic_id"]
    with h5py.File(data / "train-image.hdf5", "a") as h5:
        del h5[ids[6]]

    store = Hdf5Store(data / "train-image.hdf5")
    with pytest.raises(DataError, match=f"train-image.hdf5: no key '{ids[6]}' in the HDF5 file"):
        store.read(ids[6])
    assert store.read(ids[7]).shape[2] == 3  # the others still read
    assert store.missing(list(ids)) == [ids[6]]

    line = check_data(capsys, data, competition=ISIC24)
    assert f"1 of {len(ids)} ids have no image, first: {data / 'train-image.hdf5'}#{ids[6]}" in line


def test_empty_image_folder(copy_demo, capsys):
    data = copy_demo(HCD)
    shutil.rmtree(data / "train")
    (data / "train").mkdir()
    (data / "train" / "notes.txt").write_text("no images here")
    line = check_data(capsys, data)
    assert f"{data / 'train'}: image folder is empty (no *.tif files)" in line


def test_no_image_folder_at_all(copy_demo, capsys):
    data = copy_demo(ISIC18)
    shutil.rmtree(data / "ISIC2018_Task3_Training_Input")
    line = check_data(capsys, data, competition=ISIC18)
    assert f"no train images for {ISIC18} under {data}" in line
    assert str(data / get_competition(ISIC18).train_images[0].path) in line


def test_clean_demo_set_passes_check_data(demo_data, capsys):
    data = demo_data(HCD)
    assert main(["check-data", "--competition", HCD, "--data", str(data), "--decode"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    n = len(pd.read_csv(data / "train_labels.csv"))
    assert f"ok: {n} labelled images" in captured.out
