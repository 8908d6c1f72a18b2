"""kit runs --compare A B: the paired bootstrap of kit.compare covers the true difference at its nominal rate, is
wider when rows come in correlated groups, takes the groups from the competition's real labels, and refuses runs
trained on different folds with one line."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from kit.cli import main
from kit.compare import compare_runs, paired_bootstrap, resample_rows
from kit.config import load_config
from kit.oof import prediction_frame
from kit.records import RunInfo
from kit.rundir import RunDir

TRUE_DIFF = 0.05


def accuracy(target: np.ndarray, pred: np.ndarray) -> float:
    """A cheap metric, so that a simulation of hundreds of bootstraps runs in seconds."""
    return float(np.mean((pred > 0.5) == target))


def simulated(rng: np.random.Generator, n_groups: int, size: int):
    """Rows of ``n_groups`` groups of ``size``: A is right half the time, B by a per-group margin drawn around 0.05,
    so that the rows of a group share B's advantage (one patient's lesions). The true difference is 0.05."""
    margin = rng.uniform(-0.35, 0.45, n_groups)  # mean TRUE_DIFF
    n = n_groups * size
    right_a = rng.random(n) < 0.5
    right_b = rng.random(n) < np.repeat(0.5 + margin, size)
    return np.ones(n), np.where(right_a, 0.9, 0.1), np.where(right_b, 0.9, 0.1), np.repeat(np.arange(n_groups), size)


def coverage_and_width(n_groups: int, size: int, resample_groups: bool, reps: int = 150) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    covered, widths = [], []
    for r in range(reps):
        target, a, b, groups = simulated(rng, n_groups, size)
        res = paired_bootstrap(accuracy, target, a, b, groups if resample_groups else None, resamples=300,
                               confidence=0.9, seed=r)
        covered.append(res.low <= TRUE_DIFF <= res.high)
        widths.append(res.high - res.low)
    return float(np.mean(covered)), float(np.mean(widths))


def test_the_interval_covers_the_true_difference_at_its_nominal_rate():
    coverage, _ = coverage_and_width(400, 1, resample_groups=False)
    assert abs(coverage - 0.9) <= 0.06  # 150 simulated data sets: the standard error of the rate is 0.025


def test_grouped_rows_give_a_wider_interval_that_still_covers():
    grouped_coverage, grouped_width = coverage_and_width(40, 10, resample_groups=True)
    rows_coverage, rows_width = coverage_and_width(40, 10, resample_groups=False)
    assert abs(grouped_coverage - 0.9) <= 0.06
    assert grouped_width > 1.2 * rows_width
    assert rows_coverage < grouped_coverage - 0.05  # resampling single rows of grouped data is overconfident


def test_a_group_resample_takes_whole_groups():
    groups = np.array(["p1", "p2", "p1", "p3", "p2", "p1"])
    rows = resample_rows(len(groups), groups, np.random.default_rng(0))
    picked = pd.Series(groups[rows]).value_counts()
    for g, n in picked.items():
        assert n % (groups == g).sum() == 0  # each draw of a group brings all its rows


# ------------------------------------------------------------------------------------------------ real runs
SIIM = "siim-isic-melanoma-classification"


def siim_run(path, data_dir, oof: pd.DataFrame) -> RunDir:
    """A run folder on the real SIIM-ISIC 2020 labels whose oof.csv is ``oof`` (the comparison reads no other)."""
    run = RunDir(path)
    with run.writing():
        run.write_config(load_config(SIIM, overrides=["model.name=test_resnet", "model.img_size=32"]))
        run.save_info(data_dir, [0, 1])
        run.write_csv(run.oof_path, oof)
    return run


@pytest.fixture(scope="module")
def siim_pair(shared_data, tmp_path_factory):
    """Two runs on the images of 60 real patients (several images each, 30 with a melanoma): B separates the
    classes better than A."""
    from kit.competitions import get_competition
    from kit.data.labels import load_train_table

    data_dir = shared_data / SIIM
    spec = get_competition(SIIM)
    table = load_train_table(spec, data_dir)
    ill = table.groupby("group")["target"].max()
    patients = list(ill[ill == 1].index[:30]) + list(ill[ill == 0].index[:30])
    table = table[table["group"].isin(patients)].reset_index(drop=True)
    rng = np.random.default_rng(0)
    target = table["target"].to_numpy()
    fold = pd.factorize(table["group"])[0] % 2  # whole patients per fold, as kit folds makes them

    def frame(signal):
        pred = 1 / (1 + np.exp(-(signal * (target - 0.5) + rng.normal(0, 1, len(target)))))
        return prediction_frame(spec, table["id"], pred, fold=fold, target=target)

    root = tmp_path_factory.mktemp("compare")
    return siim_run(root / "a", data_dir, frame(0.5)), siim_run(root / "b", data_dir, frame(3.0)), table


def test_compare_resamples_the_patients_of_the_real_labels(siim_pair, capsys):
    a, b, table = siim_pair
    grouped = compare_runs(a.path, b.path, resamples=200)
    assert grouped.group_col == "patient_id" and grouped.n_rows == len(table)
    assert grouped.n_groups == 60
    assert grouped.score_b > grouped.score_a and grouped.result.low > 0
    rows = compare_runs(a.path, b.path, groups=False, resamples=200)
    assert rows.group_col is None and rows.n_groups == len(table)
    assert main(["runs", "--compare", str(a.path), str(b.path), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "patient_id groups" in out and "B is better than A" in out


def test_runs_on_different_folds_are_refused_with_one_line(siim_pair, tmp_path, capsys):
    a, _, table = siim_pair
    other = tmp_path / "other"
    shutil.copytree(a.path, other)
    oof = pd.read_csv(other / RunDir.OOF)
    oof.loc[3, "fold"] = 1 - oof.loc[3, "fold"]
    oof.to_csv(other / RunDir.OOF, index=False)
    assert main(["runs", "--compare", str(a.path), str(other), "--resamples", "50"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different folds" in err and f"1 of {len(table)} ids" in err
    assert oof.loc[3, "image_name"] in err


def test_a_missing_data_folder_names_the_way_out(siim_pair, tmp_path, capsys):
    a, b, _ = siim_pair
    moved = tmp_path / "moved"
    shutil.copytree(a.path, moved)
    RunDir(moved).record_path(RunInfo).write_text('{"data": "/nowhere/siim", "folds": [0, 1]}')
    assert main(["runs", "--compare", str(moved), str(b.path), "--resamples", "50"]) == 1
    assert "--no-groups" in capsys.readouterr().err
    assert main(["runs", "--compare", str(moved), str(b.path), "--resamples", "50", "--no-groups"]) == 0
    assert "single rows" in capsys.readouterr().out


def test_compare_with_tta_needs_kit_predict(siim_pair, capsys):
    a, b, _ = siim_pair
    assert main(["runs", "--compare", str(a.path), str(b.path), "--with-tta"]) == 1
    assert "kit predict" in capsys.readouterr().err


def test_multiclass_runs_are_compared_on_their_class_columns(shared_data, tmp_path):
    """ISIC 2018 (balanced accuracy over 7 class columns): B predicts the truth, A a fixed class."""
    from kit.competitions import get_competition
    from kit.data.labels import load_train_table

    spec = get_competition("isic-2018-task3")
    data_dir = shared_data / spec.name
    table = load_train_table(spec, data_dir).head(300)
    target = table["target"].to_numpy()
    fold = np.arange(len(table)) % 2
    runs = []
    for name, guess in (("a", np.zeros_like(target)), ("b", target)):
        probs = np.eye(len(spec.classes))[guess] * 0.9 + 0.1 / len(spec.classes)
        run = RunDir(tmp_path / name)
        with run.writing():
            run.write_config(load_config(spec.name, overrides=["model.name=test_resnet", "model.img_size=32"]))
            run.save_info(data_dir, [0, 1])
            run.write_csv(run.oof_path, prediction_frame(spec, table["id"], probs, fold=fold, target=target))
        runs.append(run)
    c = compare_runs(runs[0].path, runs[1].path, resamples=50)
    assert c.metric == "balanced_accuracy" and c.score_b == 1.0 and c.score_a == pytest.approx(1 / 7)
    assert c.group_col == "lesion_id" and c.result.diff == pytest.approx(6 / 7) and c.result.low > 0.5
