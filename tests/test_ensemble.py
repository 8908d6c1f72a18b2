"""kit ensemble: blend methods, Caruana weights, nested CV of fitted weights, run compatibility checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from kit.cli import main
from kit.competitions import get_competition
from kit.ensemble import (
    Member,
    caruana_weights,
    ensemble_runs,
    format_scores,
    get_blend,
    list_blends,
    load_member,
    score_blends,
)
from kit.errors import ConfigError, DataError, KitError
from kit.metrics import auc, get_metric
from kit.pipeline import ensemble_and_submit
from kit.rundir import RunDir
from kit.submission import read_submission, validate_file

HCD = "histopathologic-cancer-detection"


def _data_dir(result) -> str:
    return RunDir(result.run_dir).data_dir()  # run.json holds it relative to the run folder


# ---------------------------------------------------------------------------------------------- on real runs
@pytest.mark.parametrize("method", ["mean", "rank", "gmean", "fit"])
def test_each_method_blends_two_runs_into_a_valid_submission(predicted_runs, tmp_path, method):
    a, b = predicted_runs["hcd_a"], predicted_runs["hcd_b"]
    result, submission, summary = ensemble_and_submit([a.run_dir, b.run_dir], method, tmp_path)
    assert validate_file(HCD, submission, _data_dir(a)) == len(pd.read_csv(a.test_files[0]))
    assert sum(result.weights.values()) == pytest.approx(1.0)
    assert set(result.weights) == {"hcd_a", "hcd_b"} and all(w >= 0 for w in result.weights.values())
    names = [r.name for r in result.scores]
    assert names == ["hcd_a", "hcd_b", "blend mean", "blend rank", "blend gmean", "blend fit"]
    # the members' CVs are those kit predict measured with TTA
    assert result.scores[0].cv == pytest.approx(a.scores.cv["tta"])
    assert result.scores[1].cv == pytest.approx(b.scores.cv["tta"])
    fit = result.scores[-1]
    assert fit.nested and fit.in_sample is not None and "nested" in fit.note
    assert not any(r.nested for r in result.scores[:-1])
    # the test predictions of the chosen method: each run's folds blended, then the runs
    members = [load_member(r.run_dir) for r in (a, b)]  # each run's folds: mean, the default --fold-merge
    blend = get_blend(method)
    expected = blend.combine([m.test for m in members], np.array(list(result.weights.values())), "binary")
    np.testing.assert_allclose(read_submission(submission)["label"].to_numpy(float), expected, rtol=1e-6)
    summary = json.loads(summary.read_text())
    assert summary["method"] == method and summary["weights"] == result.weights


def test_rank_blend_is_the_mean_of_percentile_ranks(predicted_runs, tmp_path):
    a, b = predicted_runs["hcd_a"], predicted_runs["hcd_b"]
    result, submission, _ = ensemble_and_submit([a.run_dir, b.run_dir], "rank", tmp_path, fold_merge="rank")
    folds = [[pd.read_csv(r.test_files[k])["pred"].to_numpy() for k in (0, 1)] for r in (a, b)]
    per_run = [np.mean([rankdata(f) / len(f) for f in run], axis=0) for run in folds]
    expected = np.mean([rankdata(p) / len(p) for p in per_run], axis=0)
    np.testing.assert_allclose(read_submission(submission)["label"].to_numpy(float), expected, rtol=1e-6)


def test_multiclass_rank_falls_back_to_mean_and_says_so(predicted_runs, tmp_path, capsys):
    run = predicted_runs["multi"].run_dir
    twin = shutil.copytree(run, tmp_path / "multi_twin")
    _, rank, _ = ensemble_and_submit([run, twin], "rank", tmp_path / "subs")
    out = capsys.readouterr().out
    assert "multiclass uses mean" in out
    _, mean, _ = ensemble_and_submit([run, twin], "mean", tmp_path / "subs")
    cols = list(get_competition("isic-2018-task3").classes)
    np.testing.assert_allclose(read_submission(rank)[cols].to_numpy(float),
                               read_submission(mean)[cols].to_numpy(float))
    assert validate_file("isic-2018-task3", rank, _data_dir(predicted_runs["multi"])) > 0


def test_runs_with_different_folds_are_refused(predicted_runs, tmp_path):
    a, b = predicted_runs["hcd_a"], predicted_runs["hcd_b"]
    other = shutil.copytree(b.run_dir, tmp_path / "hcd_c")
    folds = pd.read_csv(other / "folds.csv", dtype=str)
    i, j = folds.index[folds["fold"] == "0"][0], folds.index[folds["fold"] == "1"][0]
    folds.loc[[i, j], "fold"] = ["1", "0"]
    folds.to_csv(other / "folds.csv", index=False)
    with pytest.raises(DataError, match=rf"hcd_c/folds\.csv differ: 2 of {len(folds)} ids in another fold") as e:
        ensemble_and_submit([a.run_dir, other], "mean", tmp_path / "subs")
    assert folds["id"][i] in str(e.value) and folds["id"][j] in str(e.value)
    assert not (tmp_path / "subs").exists()


def test_runs_of_different_competitions_are_refused(predicted_runs, tmp_path):
    with pytest.raises(ConfigError, match="is an isic-2018-task3 run but .* is histopathologic-cancer-detection"):
        ensemble_runs([predicted_runs["hcd_a"].run_dir, predicted_runs["multi"].run_dir], "mean")


def test_a_run_not_yet_predicted_is_named(predicted_runs, tmp_path):
    bare = shutil.copytree(predicted_runs["hcd_b"].run_dir, tmp_path / "bare")
    (bare / "predict.json").unlink()
    with pytest.raises(KitError, match=r"no test predictions .* run `kit predict .*bare`"):
        ensemble_runs([predicted_runs["hcd_a"].run_dir, bare], "mean")


def test_unknown_method_lists_the_known_ones(predicted_runs, tmp_path):
    with pytest.raises(ConfigError, match="unknown blend 'rnak'. Did you mean 'rank'.* Known: mean, rank"):
        ensemble_runs([predicted_runs["hcd_a"].run_dir], "rnak")


def test_cli_ensemble_prints_members_and_blends_side_by_side(predicted_runs, tmp_path, capsys):
    a, b = predicted_runs["hcd_a"].run_dir, predicted_runs["hcd_b"].run_dir
    assert main(["ensemble", str(a), str(b), "--method", "fit", "--submissions", str(tmp_path), "--name", "ab"]) == 0
    out = capsys.readouterr().out
    for line in ("hcd_a", "hcd_b", "blend mean", "blend rank", "blend gmean", "blend fit"):
        assert line in out
    assert "nested CV" in out and "in-sample" in out and "optimistic" in out
    written = list(tmp_path.glob(f"{HCD}-ab-*.csv"))
    assert len(written) == 1 and str(written[0]) in out


# ------------------------------------------------------------------------------------------- on constructed data
def _member(name: str, oof: np.ndarray, target: np.ndarray, fold: np.ndarray) -> Member:
    ids = np.array([f"id{i}" for i in range(len(target))])
    return Member(name, Path(name), get_competition(HCD), ids, fold, target, oof, "oof.csv", ids[:3], oof[:3], [0, 1])


def test_caruana_puts_all_weight_on_a_perfect_member():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 200)
    perfect, noise = target + rng.uniform(-0.1, 0.1, 200), rng.uniform(0, 1, 200)
    w = caruana_weights([noise, perfect], target, auc)
    np.testing.assert_allclose(w, [0.0, 1.0])


def test_caruana_mixes_complementary_members_and_beats_each():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 2, 400)
    signal = target + rng.normal(0, 1.0, 400)
    a, b = signal + rng.normal(0, 1.5, 400), signal + rng.normal(0, 1.5, 400)  # independent errors
    w = caruana_weights([a, b], target, auc)
    assert w.sum() == pytest.approx(1.0) and (w > 0.2).all()
    assert auc(target, w[0] * a + w[1] * b) > max(auc(target, a), auc(target, b))


def test_fit_on_a_rank_based_metric_gives_a_useless_squeezed_member_no_big_weight():
    # "useless" has AUC ~0.5 and scores squeezed into [0.01, 0.03]: on raw probabilities it barely moves the blend's
    # order, so selection piled 0.84 of the weight on it for in-sample noise. On ranks it gets what it is worth.
    rng = np.random.default_rng(0)
    for _ in range(10):  # the 10th draw is the one that misled the raw fit (trial 9 of the scan)
        target = (rng.random(300) < 0.3).astype(int)
        good = 1 / (1 + np.exp(-(2 * (target - 0.5) * 1.5 + rng.normal(0, 1.5, 300))))
        useless = 0.01 + rng.uniform(0.0005, 0.05) * rng.random(300)
    assert abs(auc(target, useless) - 0.5) < 0.02 and auc(target, good) > 0.9
    assert caruana_weights([good, useless], target, auc)[1] > 0.8  # what fit did before
    fit = get_blend("fit")
    w = fit.weights([good, useless], target, get_metric("auc"))
    assert w[1] < 0.1, w
    assert auc(target, fit.combine([good, useless], w, "binary")) > 0.9
    rows, _ = score_blends([_member("good", good, target, np.arange(300) % 2),
                            _member("useless", useless, target, np.arange(300) % 2)], ["fit"])
    assert "percentile ranks" in rows[-1].note
    table = format_scores("auc", rows, "fit")
    assert table.splitlines()[-1].endswith("<- chosen") and "<- chosen" not in table.splitlines()[1]


def test_fitted_weights_are_scored_by_nested_cv_not_in_sample():
    # member "lucky" is perfect on fold 0 and noise on fold 1; "steady" is fair everywhere. Weights fitted on all
    # OOF favour "lucky", flattering the in-sample score; the nested fold 1 uses weights fitted on fold 0 only.
    rng = np.random.default_rng(2)
    target = np.tile([0, 1], 150)
    fold = np.repeat([0, 1], 150)
    steady = target + rng.normal(0, 0.8, 300)
    lucky = np.where(fold == 0, target + rng.uniform(-0.1, 0.1, 300), rng.uniform(0, 1, 300))
    rows, weights = score_blends([_member("steady", steady, target, fold), _member("lucky", lucky, target, fold)])
    fit = next(r for r in rows if r.name == "blend fit")
    assert fit.nested and weights["fit"].sum() == pytest.approx(1.0)
    w_fold0 = caruana_weights([steady[fold == 0], lucky[fold == 0]], target[fold == 0], auc)
    held = fold == 1
    assert fit.folds[1] == pytest.approx(auc(target[held], w_fold0[0] * steady[held] + w_fold0[1] * lucky[held]))
    assert fit.cv < fit.in_sample - 0.02


def test_every_registered_blend_keeps_probabilities_valid():
    rng = np.random.default_rng(3)
    binary = [rng.uniform(0, 1, 50) for _ in range(3)]
    multi = [rng.dirichlet(np.ones(4), 50) for _ in range(3)]
    w = np.array([0.5, 0.3, 0.2])
    for name in list_blends():
        blend = get_blend(name)
        p = blend.combine(binary, w, "binary")
        assert p.shape == (50,) and (p >= 0).all() and (p <= 1).all()
        q = blend.combine(multi, w, "multiclass")
        assert q.shape == (50, 4)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)


def test_a_balanced_accuracy_blend_gets_its_decision_weights(predicted_runs, tmp_path, capsys):
    """kit ensemble fits decision weights on the blend's OOF (nested CV) like kit predict on one run's, and applies
    them to the blended test predictions when they gain (auto) or always (on); never for AUC."""
    from kit.decision import apply_weights

    run = predicted_runs["multi"].run_dir
    twin = shutil.copytree(run, tmp_path / "multi_twin")
    cols = list(get_competition("isic-2018-task3").classes)
    off, plain, _ = ensemble_and_submit([run, twin], "mean", tmp_path / "off", decision="off")
    assert off.decision is None and "decision weights" not in capsys.readouterr().out
    on, weighted, summary = ensemble_and_submit([run, twin], "mean", tmp_path / "on", decision="on")
    assert "decision weights: balanced_accuracy CV" in capsys.readouterr().out
    weights = np.asarray(on.decision["weights"])
    assert on.decision["applied"] and len(weights) == len(cols) and not np.allclose(weights, weights[0])
    np.testing.assert_allclose(read_submission(weighted)[cols].to_numpy(float),
                               apply_weights(read_submission(plain)[cols].to_numpy(float), weights), rtol=1e-5)
    assert json.loads(summary.read_text())["decision"]["weights"] == pytest.approx(list(weights))
    auto, _, _ = ensemble_and_submit([run, twin], "mean", tmp_path / "auto")
    assert auto.decision["applied"] == auto.decision["helps"]
    hcd, _, _ = ensemble_and_submit([predicted_runs["hcd_a"].run_dir, predicted_runs["hcd_b"].run_dir], "mean",
                                    tmp_path / "hcd", decision="on")
    assert hcd.decision is None  # AUC: a ranking metric, no decision to weigh
