"""kit stack: GBDTs on metadata + image OOF scores, on the image runs' own folds, written as a run-like folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit.competitions import get_competition
from kit.config import load_config
from kit.data.folds import make_folds
from kit.data.labels import load_test_table, load_train_table
from kit.data.synthetic import ISIC_2024_TEST_COLUMNS, ISIC_2024_TRAIN_ONLY
from kit.errors import ConfigError, DataError, KitError
from kit.oof import prediction_frame
from kit.records import PredictInfo, Scores
from kit.rundir import RunDir, StackDir, open_source
from kit.stack import StackSettings, run_stack

pytest.importorskip("lightgbm")

ISIC = "isic-2024-challenge"
FAST = dict(models=["lgbm"], seeds=1, trees=25)
TINY_CFG = ["model.name=test_resnet", "model.img_size=32"]


def fake_run(path: Path, data: Path, fold_seed: int = 0, n_folds: int = 3, competition: str = ISIC,
             strength: float = 1.2, predicted: bool = True) -> Path:
    """The files a trained and predicted run has, with OOF scores that carry signal the metadata lacks."""
    spec = get_competition(ISIC)
    table, test = load_train_table(spec, data), load_test_table(spec, data)
    ids, y = table["id"].to_numpy(), table["target"].to_numpy()
    fold = make_folds(y, table["group"].to_numpy(), n_folds, fold_seed)
    rng = np.random.default_rng(fold_seed + 100)
    score = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1.0, len(y)))))
    run = RunDir(path)
    with run.writing():
        run.write_config(load_config(competition, overrides=TINY_CFG))
        run.save_info(data, list(range(n_folds)))
        run.write_csv(run.folds_path, pd.DataFrame({spec.id_col: ids, "fold": fold}))
        oof = prediction_frame(spec, ids, score, fold=fold, target=y)
        run.write_csv(run.oof_path, oof)
        if predicted:
            run.write_csv(run.oof_tta_path, oof)
            for k in range(n_folds):
                run.write_csv(run.test_path(k), prediction_frame(spec, test["id"].to_numpy(),
                                                                 rng.uniform(0, 1, len(test))))
            run.save(PredictInfo(list(range(n_folds)), str(data), run.OOF_TTA, {"views": ["id"], "merge": "mean"}))
    return path


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(ISIC, n=400, size=16)


@pytest.fixture(scope="module")
def image_run(data, tmp_path_factory) -> Path:
    return fake_run(tmp_path_factory.mktemp("runs") / "img", data)


@pytest.fixture(scope="module")
def meta_stack(data, tmp_path_factory):
    return run_stack(ISIC, data, [], tmp_path_factory.mktemp("stacks") / "meta", StackSettings(**FAST, n_folds=3))


@pytest.fixture(scope="module")
def full_stack(data, image_run, tmp_path_factory):
    return run_stack(ISIC, None, [image_run], tmp_path_factory.mktemp("stacks") / "full",
                     StackSettings(**FAST))


def copy_data(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest, ignore=shutil.ignore_patterns("*.hdf5"))
    return dest


# --------------------------------------------------------------------------------------------- synthetic data
def test_synthetic_isic_2024_metadata_has_the_real_layout_and_signal(data, shared_data):
    real = pd.read_csv(shared_data / ISIC / "test-metadata.csv")
    test = pd.read_csv(data / "test-metadata.csv")
    train = pd.read_csv(data / "train-metadata.csv")
    assert list(test.columns) == list(real.columns) == ISIC_2024_TEST_COLUMNS
    assert list(train.columns) == ["isic_id", "target", *ISIC_2024_TEST_COLUMNS[1:], *ISIC_2024_TRAIN_ONLY]
    pos, neg = train[train["target"] == 1], train[train["target"] == 0]
    assert pos["clin_size_long_diam_mm"].median() > neg["clin_size_long_diam_mm"].median()
    assert pos["tbp_lv_norm_border"].mean() > neg["tbp_lv_norm_border"].mean()
    assert pos["tbp_lv_symm_2axis"].mean() > neg["tbp_lv_symm_2axis"].mean()
    # the colour of a malignant lesion departs from its patient's other lesions
    lab = ["tbp_lv_L", "tbp_lv_A", "tbp_lv_B"]
    dist = np.sqrt(((train[lab] - train.groupby("patient_id")[lab].transform("mean")) ** 2).sum(axis=1))
    assert dist[train["target"] == 1].mean() > 1.5 * dist[train["target"] == 0].mean()


# ------------------------------------------------------------------------------------------------ the folder
def test_metadata_only_stack_is_a_stack_folder(meta_stack, data):
    stack = open_source(meta_stack.path)
    assert isinstance(stack, StackDir) and stack.competition().name == ISIC
    assert not (stack.path / "config.yaml").exists() and not (stack.path / "run.json").exists()  # no fake run
    assert stack.summary()["kind"] == "stack" and stack.summary()["inputs"] == "metadata"
    info = json.loads((stack.path / "stack.json").read_text())
    assert info["runs"] == [] and info["models"] == ["lgbm"]
    features = set(info["features"])
    assert not features & {*ISIC_2024_TRAIN_ONLY, "target", "isic_id", "patient_id"}  # they would leak the label
    assert {"lesion_size_ratio", "hue_contrast", "tbp_lv_L_pnorm", "patient_lesion_count", "attribution"} <= features
    oof = pd.read_csv(stack.oof_path)
    assert list(oof.columns) == ["isic_id", "fold", "target", "pred"] and len(oof) == 400
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    # patient-grouped folds of its own
    patients = pd.read_csv(data / "train-metadata.csv").set_index("isic_id")["patient_id"]
    assert oof.groupby(oof["isic_id"].map(patients))["fold"].nunique().max() == 1
    scores = stack.load(Scores)
    assert scores.metric == "pauc80" and 0.1 < scores.cv <= 0.2 and scores.cv == meta_stack.cv
    assert sorted(stack.load(PredictInfo).folds) == [0, 1, 2] and stack.load(PredictInfo).kind == "stack"
    assert (stack.report_dir / "importance.png").stat().st_size > 1000
    test = pd.read_csv(stack.test_path(0))
    assert list(test["isic_id"]) == list(pd.read_csv(data / "test-metadata.csv")["isic_id"])


def test_each_oof_row_comes_from_trees_that_never_saw_it(full_stack, image_run):
    stack = open_source(full_stack.path)
    folds = pd.read_csv(stack.folds_path)
    assert folds.equals(pd.read_csv(RunDir(image_run).folds_path))  # the image run's own folds
    oof = pd.read_csv(stack.oof_path)
    for k in sorted(oof["fold"].unique()):
        trained = set(pd.read_csv(stack.fold_dir(k) / "train_ids.csv")["isic_id"])
        held = set(oof.loc[oof["fold"] == k, "isic_id"])
        assert trained and held and not trained & held
        assert trained == set(folds.loc[folds["fold"] != k, "isic_id"])


def test_an_image_run_lifts_the_stack_above_metadata_alone(full_stack, meta_stack):
    assert {"img_img", "img_img_pnorm", "img_img_rank"} <= set(full_stack.features)
    assert full_stack.cv > meta_stack.cv
    assert full_stack.cv > full_stack.inputs["img_img"]


def test_kit_ensemble_and_kit_submit_take_the_stack(full_stack, image_run, data, tmp_path):
    from kit.cli import main
    from kit.pipeline import ensemble_and_submit

    result, path, _ = ensemble_and_submit([full_stack.path, image_run], method="fit", out_dir=tmp_path)
    assert {m.name for m in result.members} == {full_stack.path.name, "img"}
    assert main(["submit", "--competition", ISIC, "--data", str(data), str(path), "--dry-run"]) == 0


def test_the_command_writes_a_valid_submission(data, tmp_path, capsys, monkeypatch):
    from kit.cli import main

    monkeypatch.setenv("KIT_PROGRESS_EVERY", "0")  # stderr is no terminal here: a progress line per model fitted
    code = main(["stack", "--competition", ISIC, "--data", str(data), "--out", str(tmp_path / "s"), "--models",
                 "lgbm,xgb", "--seeds", "1", "--trees", "10", "--n-folds", "2", "--submissions", str(tmp_path / "sub")])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "stack lgbm" in out and "stack xgb" in out
    assert "stack: fitting: 4/4 models (100%)" in captured.err  # 2 folds x 2 models x 1 seed
    assert (tmp_path / "s" / "report" / "roc.png").is_file() and "report: roc.png" in out  # no kit report by hand
    submission = next((tmp_path / "sub").glob("*.csv"))
    assert main(["submit", "--competition", ISIC, "--data", str(data), str(submission), "--dry-run"]) == 0


def test_tuning_is_nested_in_each_outer_fold(data, tmp_path):
    pytest.importorskip("optuna")
    result = run_stack(ISIC, data, [], tmp_path / "t", StackSettings(models=["lgbm"], seeds=1, trees=10, tune=2,
                                                                    n_folds=2))
    info = json.loads((result.path / "stack.json").read_text())
    assert info["tune"] == 2 and info["tuning"].startswith("nested")
    assert set(info["fold_params"]) == {"0", "1"}
    assert all("num_leaves" in p["lgbm"] for p in info["fold_params"].values())


# ------------------------------------------------------------------------------------------------ bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_runs_on_other_folds_are_refused(data, image_run, tmp_path):
    other = fake_run(tmp_path / "other", data, fold_seed=5)
    with pytest.raises(DataError, match="differ") as e:
        run_stack(ISIC, data, [image_run, other], tmp_path / "s", StackSettings(**FAST))
    one_line(e)


def test_a_run_of_another_competition_is_refused(data, tmp_path):
    siim = fake_run(tmp_path / "siim", data, competition="siim-isic-melanoma-classification")
    with pytest.raises(ConfigError, match="is a siim-isic-melanoma-classification run") as e:
        run_stack(ISIC, data, [siim], tmp_path / "s", StackSettings(**FAST))
    one_line(e)


def test_a_run_not_predicted_is_refused(data, tmp_path):
    run = fake_run(tmp_path / "unpredicted", data, predicted=False)
    with pytest.raises(KitError, match="no test predictions") as e:
        run_stack(ISIC, data, [run], tmp_path / "s", StackSettings(**FAST))
    one_line(e)
    assert not (tmp_path / "s").exists()


def test_a_feature_missing_from_the_test_metadata_is_named(data, tmp_path):
    copy = copy_data(data, tmp_path / "data")
    test = pd.read_csv(copy / "test-metadata.csv")
    test.drop(columns="tbp_lv_norm_border").to_csv(copy / "test-metadata.csv", index=False)
    with pytest.raises(DataError, match="'tbp_lv_norm_border'") as e:
        run_stack(ISIC, copy, [], tmp_path / "s", StackSettings(**FAST))
    one_line(e)


def test_a_category_unseen_in_training_becomes_unknown_with_one_warning(data, tmp_path, capsys):
    copy = copy_data(data, tmp_path / "data")
    test = pd.read_csv(copy / "test-metadata.csv")
    test.loc[:4, "attribution"] = "A New Hospital"
    test.to_csv(copy / "test-metadata.csv", index=False)
    result = run_stack(ISIC, copy, [], tmp_path / "s", StackSettings(**FAST, n_folds=2))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "'attribution'" in warnings[0] and "A New Hospital" in warnings[0]
    assert json.loads((result.path / "stack.json").read_text())["unknown_categories"] == {"attribution": 5}
    assert np.isfinite(pd.read_csv(result.path / "test_fold0.csv")["pred"]).all()


@pytest.mark.parametrize("competition", ["isic-2019", "histopathologic-cancer-detection"])
def test_competitions_without_binary_metadata_are_refused(competition, tmp_path):
    with pytest.raises(ConfigError, match="binary competition with tabular metadata") as e:
        run_stack(competition, tmp_path, [], tmp_path / "s", StackSettings(**FAST))
    one_line(e)


def test_a_missing_library_says_how_to_install_it(data, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "catboost":
            raise ImportError("No module named 'catboost'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match="pip install catboost") as e:
        run_stack(ISIC, data, [], tmp_path / "s", StackSettings(models=["lgbm", "cat"]))
    one_line(e)


def test_a_run_folder_is_not_overwritten(data, image_run, tmp_path):
    target = tmp_path / "img"
    shutil.copytree(image_run, target)
    with pytest.raises(KitError, match="is a kit run folder, not a stack"):
        run_stack(ISIC, data, [], target, StackSettings(**FAST, n_folds=2))


# --- the saved models: what the offline kernel predicts a hidden test set with ------------------------------------

def saved_copy(stack: Path, dest: Path) -> tuple[Path, dict]:
    """A copy of a stack folder and its stack.json."""
    shutil.copytree(stack, dest)
    return dest, json.loads((dest / "stack.json").read_text())


def test_the_saved_models_repredict_each_folds_test_predictions(full_stack, image_run, data):
    from kit.stack.saved import image_test_scores, predict_folds, predict_test

    info = json.loads((full_stack.path / "stack.json").read_text())
    [run] = info["runs"]
    assert info["saved"]["images"] == ["img_img"] and run["name"] == "img_img"
    assert [m["file"] for m in info["saved"]["models"]] == ["fold0/lgbm_seed0.txt", "fold1/lgbm_seed0.txt",
                                                            "fold2/lgbm_seed0.txt"]
    scores = {"img_img": image_test_scores(image_run)}
    ids, per_fold = predict_folds(full_stack.path, data, scores)
    assert sorted(per_fold) == [0, 1, 2]
    for k, pred in per_fold.items():
        written = pd.read_csv(full_stack.path / f"test_fold{k}.csv", dtype={"isic_id": str})
        assert list(ids) == written["isic_id"].tolist()
        assert np.array_equal(pred, written["pred"].to_numpy())  # repr-exact CSV: the same numbers, bit for bit
    assert np.array_equal(predict_test(full_stack.path, data, scores)[1], np.mean(list(per_fold.values()), axis=0))
    # the image scores are features: other scores give other predictions
    shifted = {"img_img": scores["img_img"].rank(pct=True) ** 3}
    assert not np.allclose(predict_folds(full_stack.path, data, shifted)[1][0], per_fold[0])


@pytest.mark.parametrize("model", ["lgbm", "xgb", "cat"])
def test_every_gbdt_is_saved_in_its_own_format_and_repredicts(data, tmp_path, model):
    from kit.stack.models import GBDTS
    from kit.stack.saved import predict_folds

    pytest.importorskip(GBDTS.get(model).module)
    result = run_stack(ISIC, data, [], tmp_path / "s", StackSettings(models=[model], seeds=2, trees=8, n_folds=2))
    suffix, magic = GBDTS.get(model).suffix, GBDTS.get(model).magic
    files = sorted(str(p.relative_to(result.path)) for p in result.path.glob("fold*/*") if p.suffix == suffix)
    assert files == [f"fold{k}/{model}_seed{s}{suffix}" for k in (0, 1) for s in (0, 1)]
    assert all((result.path / f).read_bytes().startswith(magic) for f in files)
    ids, per_fold = predict_folds(result.path, data, {})
    for k, pred in per_fold.items():
        written = pd.read_csv(result.path / f"test_fold{k}.csv")["pred"].to_numpy()
        assert pred.dtype == written.dtype or pred.dtype == np.float32  # XGBoost predicts float32
        assert np.array_equal(pred, written.astype(pred.dtype))  # the CSV holds the shortest repr of each value


def test_test_features_need_no_training_metadata(meta_stack, data, tmp_path):
    from kit.stack.saved import predict_test

    copy = copy_data(data, tmp_path / "data")
    (copy / "train-metadata.csv").unlink()  # the recipe saved in stack.json carries what training taught
    ids, pred = predict_test(meta_stack.path, copy, {})
    blended = np.mean([pd.read_csv(meta_stack.path / f"test_fold{k}.csv")["pred"] for k in range(3)], axis=0)
    assert np.allclose(pred, blended, rtol=0, atol=1e-15)


def test_a_changed_or_missing_model_file_is_named_in_one_line(full_stack, image_run, data, tmp_path):
    from kit.stack.saved import image_test_scores, predict_test

    stack, _ = saved_copy(full_stack.path, tmp_path / "s")
    scores = {"img_img": image_test_scores(image_run)}
    model = stack / "fold1" / "lgbm_seed0.txt"
    model.write_text(model.read_text().replace("shrinkage=", "shrinkage=9", 1))
    with pytest.raises(DataError) as e:
        predict_test(stack, data, scores)
    assert one_line(e) == (f"model file {model} differs from the one kit stack saved (SHA-256 mismatch with "
                           f"{stack / 'stack.json'}): refused")
    model.unlink()
    with pytest.raises(KitError) as e:
        predict_test(stack, data, scores)
    assert one_line(e) == f"model file {model} is missing: the stack folder (or its bundle) is incomplete"


def test_a_pickle_where_a_model_belongs_is_refused_unread(full_stack, image_run, data, tmp_path):
    import hashlib
    import pickle

    from kit.stack.saved import image_test_scores, predict_test

    class Trap:  # unpickling it would create the marker file
        def __reduce__(self):
            return (Path.touch, (tmp_path / "unpickled",))

    stack, info = saved_copy(full_stack.path, tmp_path / "s")
    model = stack / "fold0" / "lgbm_seed0.txt"
    model.write_bytes(pickle.dumps(Trap()))
    info["saved"]["models"][0]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()  # even with a new checksum
    (stack / "stack.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as e:
        predict_test(stack, data, {"img_img": image_test_scores(image_run)})
    assert one_line(e) == (f"model file {model} is a pickle, which kit never loads: refused (kit stack writes "
                           "LightGBM model texts only)")
    assert not (tmp_path / "unpickled").exists()


def test_a_stack_without_saved_models_says_to_run_kit_stack_again(full_stack, data, tmp_path):
    from kit.stack.saved import predict_test

    stack, info = saved_copy(full_stack.path, tmp_path / "s")
    del info["saved"]
    (stack / "stack.json").write_text(json.dumps(info))
    with pytest.raises(KitError, match="records no saved models .* run kit stack again") as e:
        predict_test(stack, data, {})
    one_line(e)


def test_the_stack_stores_its_paths_relative_to_its_folder(full_stack, image_run, data):
    """stack.json and predict.json travel in a bundle: no absolute path of this machine in them."""
    from kit.stack.saved import open_stack

    stack = full_stack.path
    for name in ("stack.json", "predict.json"):
        assert str(Path(data).resolve().parent) not in (Path(stack) / name).read_text()
    assert open_stack(stack).run_dir(open_stack(stack).images[0]).resolve() == Path(image_run).resolve()
