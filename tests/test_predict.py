"""kit predict on tiny trained runs: test and OOF predictions with TTA, CV with and without TTA, the submission."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from kit.cli import main
from kit.competitions import get_competition
from kit.data.labels import load_test_table
from kit.errors import DataError, KitError
from kit.metrics import get_metric
from kit.predict import predict_run
from kit.records import record_text
from kit.rundir import RunDir
from kit.submission import read_submission, validate_file

HCD = "histopathologic-cancer-detection"


def _copy_run(result, tmp_path, name="copy"):
    """A private copy of a shared run folder, for tests that predict again or break something."""
    return shutil.copytree(result.run_dir, tmp_path / name)


def _spec(result):
    return get_competition(yaml.safe_load((result.run_dir / "config.yaml").read_text())["competition"])


def _data_dir(result):
    return RunDir(result.run_dir).data_dir()  # run.json holds it relative to the run folder


@pytest.mark.parametrize("name", ["hcd_a", "multi"])
def test_test_fold_files_hold_every_test_id_in_submission_order(predicted_runs, name):
    result = predicted_runs[name]
    spec = _spec(result)
    expected = load_test_table(spec, _data_dir(result))["id"].tolist()
    value_cols = ["pred"] if spec.is_binary else list(spec.classes)
    assert sorted(result.test_files) == [0, 1]
    folds = []
    for k in (0, 1):
        df = pd.read_csv(result.run_dir / f"test_fold{k}.csv", dtype={spec.id_col: str})
        assert list(df.columns) == [spec.id_col, *value_cols]
        assert df[spec.id_col].tolist() == expected
        values = df[value_cols].to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
        if not spec.is_binary:
            np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
        folds.append(values)
    assert not np.allclose(folds[0], folds[1])  # two different fold models, not one file written twice


@pytest.mark.parametrize("name", ["hcd_a", "multi"])
def test_cv_without_and_with_tta_side_by_side(predicted_runs, name):
    result = predicted_runs[name]
    run = result.run_dir
    saved = json.loads((run / "scores_tta.json").read_text())
    assert saved == record_text(result.scores)
    # "no TTA" is the CV training reported; "TTA" is recomputed here from the written oof_tta.csv
    assert saved["cv"]["no_tta"] == pytest.approx(json.loads((run / "scores.json").read_text())["cv"])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    spec = get_competition(cfg["competition"])
    oof_tta = pd.read_csv(run / "oof_tta.csv", dtype={spec.id_col: str})
    oof = pd.read_csv(run / "oof.csv", dtype={spec.id_col: str})
    assert sorted(oof_tta[spec.id_col]) == sorted(oof[spec.id_col])
    values = oof_tta["pred"].to_numpy() if spec.is_binary else oof_tta[list(spec.classes)].to_numpy()
    assert saved["cv"]["tta"] == pytest.approx(get_metric(spec.metric)(oof_tta["target"].to_numpy(), values))
    assert saved["cv"]["gain"] == pytest.approx(saved["cv"]["tta"] - saved["cv"]["no_tta"])
    assert set(saved["folds"]) == {"0", "1"}
    assert len(saved["tta"]["views"]) == {"hcd_a": 8, "multi": 4}[name]


@pytest.mark.parametrize("name", ["hcd_a", "multi"])
def test_identity_tta_reproduces_training_oof_from_the_checkpoint_alone(predicted_runs, tmp_path, name):
    run = _copy_run(predicted_runs[name], tmp_path)
    # a different model in the current config must not matter: prediction reads the checkpoints only
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["name"], cfg["model"]["img_size"], cfg["model"]["use_metadata"] = "resnet50", 224, False
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = predict_run(run, tta="1")
    spec = get_competition(cfg["competition"])
    cols = ["pred"] if spec.is_binary else list(spec.classes)
    oof = pd.read_csv(run / "oof.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
    again = pd.read_csv(result.oof_tta, dtype={spec.id_col: str}).set_index(spec.id_col).loc[oof.index]
    np.testing.assert_allclose(again[cols].to_numpy(), oof[cols].to_numpy(), atol=1e-5)
    assert (again["fold"] == oof["fold"]).all() and (again["target"] == oof["target"]).all()
    assert result.scores.cv["gain"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", ["hcd_a", "multi"])
def test_submission_is_valid_and_is_the_mean_of_the_folds(predicted_runs, name):
    result = predicted_runs[name]
    spec = _spec(result)
    assert result.submission.name.startswith(f"{spec.name}-{name}-")
    assert validate_file(spec, result.submission, _data_dir(result)) == len(load_test_table(spec, _data_dir(result)))
    sub = read_submission(result.submission)
    cols = ["pred"] if spec.is_binary else list(spec.classes)
    folds = [pd.read_csv(result.run_dir / f"test_fold{k}.csv")[cols].to_numpy() for k in (0, 1)]
    mean = np.mean(folds, axis=0)
    if not spec.is_binary:
        mean = mean / mean.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sub[list(spec.submission_columns[1:])].to_numpy(float), mean, rtol=1e-6, atol=1e-7)
    info = json.loads((result.run_dir / "predict.json").read_text())
    assert info["folds"] == [0, 1]


def test_test_ids_without_an_image_are_named(predicted_runs, tmp_path):
    result = predicted_runs["hcd_a"]
    data = shutil.copytree(_data_dir(result), tmp_path / "data")
    ids = load_test_table(HCD, data)["id"].tolist()
    for i in ids[:2]:
        (data / "test" / f"{i}.tif").unlink()
    run = _copy_run(result, tmp_path)
    before = (run / "test_fold0.csv").read_bytes()
    with pytest.raises(DataError, match=rf"2 of {len(ids)} test ids have no image, first: .*{ids[0]}\.tif"):
        predict_run(run, data_dir=data, tta="1")
    assert (run / "test_fold0.csv").read_bytes() == before  # nothing of the run was rewritten


def test_a_fold_without_checkpoint_is_named(predicted_runs, tmp_path):
    run = _copy_run(predicted_runs["hcd_a"], tmp_path)
    (run / "fold1" / "best.pt").unlink()
    with pytest.raises(KitError, match=r"no checkpoint for 1 of the folds \[0, 1\]: .*fold1/best\.pt"):
        predict_run(run, tta="1")
    only0 = predict_run(run, folds=[0], tta="2")
    assert list(only0.test_files) == [0] and set(only0.scores.folds) == {"0"}
    assert json.loads((run / "predict.json").read_text())["folds"] == [0]


def test_by_default_every_finished_fold_is_used(predicted_runs, tmp_path, capsys):
    run = _copy_run(predicted_runs["hcd_a"], tmp_path)
    (run / "fold1" / "result.json").unlink()  # fold 1 still training: its best.pt is not final
    result = predict_run(run, tta="1")
    assert result.folds == [0]
    assert "fold1 not finished (no result.json): left out" in capsys.readouterr().out


def test_cli_predict_prints_both_cvs_and_the_submission(predicted_runs, tmp_path, capsys):
    run = _copy_run(predicted_runs["hcd_b"], tmp_path)
    shutil.rmtree(run / "report")
    assert main(["predict", str(run), "--tta", "4", "--merge", "logits", "--fold-merge", "rank",
                 "--submissions", str(tmp_path / "subs"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "auc no TTA" in out and "TTA x4 (logits)" in out and "CV" in out
    written = sorted((tmp_path / "subs").glob("*.csv"))
    assert len(written) == 1 and str(written[0]) in out
    assert not (run / "report").exists()  # --no-report


def test_cli_predict_unknown_tta_is_one_line_error(predicted_runs, tmp_path, capsys):
    run = _copy_run(predicted_runs["hcd_a"], tmp_path)
    with pytest.raises(SystemExit) as e:  # a closed set: argparse's choices refuse it before anything runs
        main(["predict", str(run), "--tta", "3", "--submissions", str(tmp_path / "subs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --tta: invalid choice: '3'" in err and "'8'" in err
    assert not (tmp_path / "subs").exists()


def test_test_metadata_counts_images_per_patient_like_the_train_table(demo_data):
    from kit.data.labels import load_train_table
    from kit.data.meta import MetaEncoder

    data = demo_data("siim-isic-melanoma-classification", n=60, size=48)
    encoder = MetaEncoder.fit(load_train_table("siim-isic-melanoma-classification", data))
    test = load_test_table("siim-isic-melanoma-classification", data)
    per_patient = pd.read_csv(data / "test.csv").groupby("patient_id")["image_name"].transform("size").to_numpy()
    assert per_patient.max() > 1  # the check below would pass trivially with one image per patient
    np.testing.assert_allclose(encoder.transform(test)[:, -1], np.log1p(per_patient) / np.log(100.0), rtol=1e-6)
