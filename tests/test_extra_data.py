"""data.extra and train.target=diagnosis (the SIIM-ISIC 2020 1st-place recipe): the 2019 images train every fold and
validate none; the model learns the nine diagnoses and the competition scores its melanoma column."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from kit.checkpoint import load_checkpoint
from kit.cli import main
from kit.competitions import DIAGNOSES, get_competition
from kit.data.dataset import JoinedImages
from kit.data.extra import load_extra_sources
from kit.data.labels import load_train_table
from kit.data.targets import DIAGNOSIS_NAMES, encode, row_diagnoses, run_targets, target_space
from kit.errors import DataError

SIIM = "siim-isic-melanoma-classification"
TINY = ["model.name=test_resnet", "model.pretrained=false", "model.img_size=32", "train.epochs=1",
        "train.warmup_epochs=0", "n_folds=2", "train.batch_size=16", "train.device=cpu"]


@pytest.fixture(scope="module")
def sources(demo_data):
    """The 2020 demo data and 2019 demo data of another seed (so that no id is shared) as the extra source."""
    return demo_data(SIIM, 60), demo_data("isic-2019", 40, seed=7)


def train_argv(main_data, out, *extra: str, target: str = "diagnosis") -> list[str]:
    argv = ["train", "--competition", SIIM, "--data", str(main_data), "--out", str(out), "--no-progress",
            "--set", f"train.target={target}"]
    for pair in TINY:
        argv += ["--set", pair]
    for source in extra:
        argv += ["--extra-data", source]
    return argv


@pytest.fixture(scope="module")
def run(sources, tmp_path_factory):
    main_data, extra = sources
    out = tmp_path_factory.mktemp("extra") / "run"
    assert main(train_argv(main_data, out, f"isic-2019={extra}")) == 0
    return out


def ids_of(folder, competition: str) -> set[str]:
    return set(load_train_table(competition, folder)["id"])


def test_oof_and_folds_hold_exactly_the_competitions_training_ids(run, sources):
    main_data, extra = sources
    own, extra_ids = ids_of(main_data, SIIM), ids_of(extra, "isic-2019")
    assert not own & extra_ids
    oof = pd.read_csv(run / "oof.csv", dtype={"image_name": str})
    assert sorted(oof["image_name"]) == sorted(own)
    assert not set(oof["image_name"]) & extra_ids
    assert set(pd.read_csv(run / "folds.csv")["image_name"]) == own


def test_every_fold_trains_on_its_own_training_rows_plus_every_extra_row(run, sources):
    folds = pd.read_csv(run / "folds.csv")
    n_extra = len(ids_of(sources[1], "isic-2019"))
    for k in (0, 1):
        history = pd.read_csv(run / f"fold{k}" / "history.csv")
        assert list(history["train_images"]) == [int((folds["fold"] != k).sum()) + n_extra]


def test_the_checkpoint_records_nine_classes_and_the_scored_one(run):
    ckpt = load_checkpoint(run / "fold0" / "best.pt")
    assert ckpt.classes == list(DIAGNOSES) and ckpt.scored == "MEL" and ckpt.task == "multiclass"
    assert ckpt.model.num_outputs == 9


def test_oof_pred_is_the_softmax_melanoma_column_of_best_pt(run, sources):
    from kit.data.meta import MetaEncoder
    from kit.data.readers import open_store
    from kit.predict import ImageSource, load_fold_model
    from kit.runtime import make_loader, predict_loader

    spec = get_competition(SIIM)
    oof = pd.read_csv(run / "fold0" / "oof.csv", dtype={"image_name": str}).head(6)
    model, ckpt, rt = load_fold_model(run / "fold0" / "best.pt", torch.device("cpu"))
    images = ImageSource(spec, sources[0], "train", open_store(spec, sources[0], "train"))
    table = load_train_table(spec, sources[0])  # the siim preset fuses metadata; patient counts need the whole table
    meta = MetaEncoder.from_dict(ckpt.meta_encoder).transform(table)[table["id"].isin(oof["image_name"]).to_numpy()]
    oof = oof.set_index("image_name").loc[table["id"][table["id"].isin(oof["image_name"])]].reset_index()
    dataset = images.dataset(oof["image_name"], ckpt.input_size, True, meta)
    probs = predict_loader(model, make_loader(dataset, 8, 0, rt.device, train=False), rt)
    assert probs.shape == (6, 9) and np.allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(oof["pred"], probs[:, DIAGNOSES.index("MEL")], rtol=1e-4, atol=1e-6)


def test_cv_is_the_auc_of_melanoma_over_the_competitions_rows(run, sources):
    oof = pd.read_csv(run / "oof.csv", dtype={"image_name": str})
    truth = load_train_table(SIIM, sources[0]).set_index("id")["target"]
    assert (oof["target"].to_numpy() == truth.loc[oof["image_name"]].to_numpy()).all()
    scores = json.loads((run / "scores.json").read_text())
    assert scores["metric"] == "auc"
    assert scores["cv"] == pytest.approx(roc_auc_score(oof["target"], oof["pred"]))


def test_predict_writes_an_image_name_target_submission(run, sources, tmp_path):
    assert main(["predict", str(run), "--tta", "2", "--device", "cpu", "--submissions", str(tmp_path), "--no-report"]) == 0
    [submission] = list(tmp_path.glob("*.csv"))
    sub = pd.read_csv(submission, dtype={"image_name": str})
    test_ids = pd.read_csv(sources[0] / "test.csv", dtype=str)["image_name"]
    assert list(sub.columns) == ["image_name", "target"] and list(sub["image_name"]) == list(test_ids)
    assert sub["target"].between(0, 1).all() and sub["target"].nunique() > 1
    oof_tta = pd.read_csv(run / "oof_tta.csv")
    assert list(oof_tta.columns) == ["image_name", "fold", "target", "pred"]


# ------------------------------------------------------------------------------------------ the mapping
def test_the_mapping_covers_every_diagnosis_of_the_real_2020_train_csv(shared_data):
    spec = get_competition(SIIM)
    folder = shared_data / SIIM
    table = load_train_table(spec, folder)
    assert set(table["diagnosis"].str.lower()) <= set(DIAGNOSIS_NAMES)
    space = target_space(spec, "diagnosis")
    targets = run_targets(space, spec, table, folder / "train.csv")  # raises if a melanoma row is not a positive
    mel = DIAGNOSES.index("MEL")
    assert (targets == mel).sum() == (table["target"] == 1).sum() == 584
    counts = pd.Series(row_diagnoses(spec, table, folder / "train.csv")).value_counts()
    assert counts["NV"] == 5193 and counts["BKL"] == 135 + 44 + 37 + 7 and counts["UNK"] == 27124 + 2


def test_extra_rows_of_a_binary_run_are_positive_exactly_when_melanoma(sources):
    spec = get_competition(SIIM)
    [source] = load_extra_sources([{"competition": "isic-2019", "data": str(sources[1])}],
                                  target_space(spec, "competition"), spec)
    classes = load_train_table("isic-2019", sources[1])["target"].to_numpy()
    assert (source.targets == (classes == DIAGNOSES.index("MEL"))).all() and source.targets.any()


def test_rows_outside_the_runs_classes_are_named():
    space = target_space(get_competition("isic-2018-task3"), "competition")
    with pytest.raises(DataError, match="2 rows of diagnosis SCC, UNK have no class"):
        encode(space, np.array(["MEL", "SCC", "UNK"]), "data.extra isic-2019")


def test_joined_images_read_each_source_in_place():
    a, b = np.arange(4 * 2).reshape(4, 2), 100 + np.arange(3 * 2).reshape(3, 2)
    joined = JoinedImages([(a, np.array([3, 0])), (b, np.array([2, 1, 0]))])
    assert len(joined) == 5
    assert [joined[i][0] for i in range(5)] == [6, 0, 104, 102, 100]
    assert np.shares_memory(joined[0], a) and np.shares_memory(joined[4], b)


# ------------------------------------------------------------------------------------------ bad input
def fails_in_one_line(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_histopathology_as_extra_data_is_one_line(sources, demo_data, tmp_path, capsys):
    hcd = demo_data("histopathologic-cancer-detection", 20)
    err = fails_in_one_line(train_argv(sources[0], tmp_path / "run", f"histopathologic-cancer-detection={hcd}"),
                            capsys)
    assert "histopathologic-cancer-detection images cannot be mapped" in err and "isic-2019" in err
    assert not (tmp_path / "run").exists()


def test_an_unmapped_2020_diagnosis_is_one_line_naming_file_column_and_value(sources, tmp_path, capsys):
    folder = tmp_path / "s20"
    shutil.copytree(sources[0], folder)
    labels = pd.read_csv(folder / "train.csv", dtype=str)
    labels.loc[3, "diagnosis"] = "blue sky"
    labels.to_csv(folder / "train.csv", index=False)
    err = fails_in_one_line(train_argv(folder, tmp_path / "run"), capsys)
    assert "train.csv" in err and "'diagnosis'" in err and "'blue sky'" in err and labels.loc[3, "image_name"] in err


def test_an_extra_folder_that_fails_validation_is_one_line(sources, tmp_path, capsys):
    folder = tmp_path / "s19"
    shutil.copytree(sources[1], folder)
    first = load_train_table("isic-2019", folder)["id"].iloc[0]
    (folder / "ISIC_2019_Training_Input" / f"{first}.jpg").unlink()
    err = fails_in_one_line(train_argv(sources[0], tmp_path / "run", f"isic-2019={folder}"), capsys)
    assert "isic-2019" in err and first in err
    err = fails_in_one_line(train_argv(sources[0], tmp_path / "run", f"isic-2019={tmp_path / 'nowhere'}"), capsys)
    assert "nowhere" in err and "not found" in err


@pytest.mark.parametrize("extra, target, expected", [
    ("isic-2019", "diagnosis", "expects COMPETITION=DIR"),
    ("isic-2019x=d", "diagnosis", "isic-2019x"),
    (None, "melanoma", "train.target=melanoma"),
])
def test_bad_flags_are_one_line(sources, tmp_path, capsys, extra, target, expected):
    argv = train_argv(sources[0], tmp_path / "run", *([extra] if extra else []), target=target)
    assert expected in fails_in_one_line(argv, capsys)


def test_a_diagnosis_target_needs_a_competition_with_diagnoses(demo_data, tmp_path, capsys):
    hcd = demo_data("histopathologic-cancer-detection", 20)
    argv = ["train", "--competition", "hcd", "--data", str(hcd), "--out", str(tmp_path / "run"),
            "--set", "train.target=diagnosis"]
    assert "train.target=diagnosis is not valid for histopathologic-cancer-detection" in fails_in_one_line(argv,
                                                                                                         capsys)


def test_the_diagnosis_is_a_label_never_a_metadata_feature(sources):
    from kit.data.meta import MetaEncoder

    main_data, extra = sources
    table = load_train_table(SIIM, main_data, features=True)
    assert "diagnosis" in table.columns  # carried for train.target=diagnosis
    encoder = MetaEncoder.fit(table)
    assert not any(name.startswith("diagnosis") for name in encoder.feature_names)
    assert {c.name for c in encoder.columns} == {"sex", "age", "site"}


def test_the_extra_folders_are_stored_relative_to_the_run_and_as_names_in_checkpoints(run, sources):
    import os

    from kit.rundir import RunDir

    _, extra = sources
    text = (run / "config.yaml").read_text()
    assert str(extra.resolve()) not in text and os.path.relpath(extra.resolve(), run.resolve()) in text
    assert RunDir(run).config().data.extra[0]["data"] == str(extra.resolve())  # what --resume trains with
    assert load_checkpoint(run / "fold0" / "best.pt").config["data"]["extra"][0]["data"] == extra.name
