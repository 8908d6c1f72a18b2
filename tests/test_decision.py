"""Balanced-accuracy decision weights: fitted on OOF, scored nested over the folds, applied as a valid probability
table, and wired into kit predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from kit.decision import apply_weights, balanced_accuracy_of_labels, fit_nested, fit_weights

PRIOR = np.array([0.11, 0.67, 0.05, 0.03, 0.11, 0.01, 0.02])  # HAM10000's class shares


def skewed(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of a calibrated but prior-dominated model: argmax favours the common class."""
    rng = np.random.default_rng(seed)
    target = rng.choice(len(PRIOR), n, p=PRIOR)
    logits = rng.normal(size=(n, len(PRIOR))) + np.log(PRIOR)
    logits[np.arange(n), target] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, target, np.arange(n) % 3


def test_balanced_accuracy_of_labels_matches_sklearn():
    rng = np.random.default_rng(1)
    target, labels = rng.integers(0, 5, 300), rng.integers(0, 6, 300)
    assert balanced_accuracy_of_labels(target, labels, 6) == pytest.approx(
        balanced_accuracy_score(target, labels), abs=1e-12)


def test_weights_raise_balanced_accuracy_in_nested_cv():
    probs, target, fold = skewed()
    fit = fit_nested(probs, target, fold)
    assert fit.cv_after > fit.cv_before + 0.1 and fit.mean_after > fit.mean_before + 0.1
    assert fit.helps and fit.in_sample >= fit.cv_after - 0.05
    w = np.asarray(fit.weights)
    assert w[1] < 1 < w[5]  # the common class (NV) down, the rarest (DF) up
    assert np.log(w).mean() == pytest.approx(0.0, abs=1e-9)


def test_weights_that_cannot_help_stay_at_one_and_are_not_applied():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 4, 400)
    probs = np.full((400, 4), 0.02)
    probs[np.arange(400), target] = 0.94  # a perfect classifier: nothing to gain
    fit = fit_nested(probs, target, np.arange(400) % 2)
    np.testing.assert_allclose(fit.weights, 1.0)
    assert not fit.helps and fit.cv_after == fit.cv_before == 1.0


def test_applied_weights_keep_a_probability_table():
    probs, target, _ = skewed(500)
    out = apply_weights(probs, fit_weights(probs, target))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)
    assert (out >= 0).all() and (out <= 1).all()


def test_kit_predict_fits_reports_and_applies_them(predicted_runs, tmp_path, capsys):
    """A copy of the session's multiclass (ISIC 2018) run: decision.json beside the predictions, and the submission
    is the fold blend with the weights applied (``on``) or not (``off``)."""
    from kit.ensemble import blend_folds
    from kit.pipeline import predict_and_submit

    run = tmp_path / "multi"
    shutil.copytree(predicted_runs["multi"].run_dir, run)  # the session's runs are shared with other tests
    _, submission = predict_and_submit(run, tta="1", out_dir=run / "subs", report=False, decision="on")
    out = capsys.readouterr().out
    assert "decision weights: balanced_accuracy CV" in out and "nested" in out
    saved = json.loads((run / "decision.json").read_text())
    assert saved["applied"] and saved["mode"] == "on" and len(saved["weights"]) == 7
    sub = pd.read_csv(submission)
    classes = saved["classes"]
    np.testing.assert_allclose(sub[classes].sum(axis=1), 1.0, atol=1e-6)
    _, blended = blend_folds(run)
    np.testing.assert_allclose(sub[classes].to_numpy(), apply_weights(blended, np.asarray(saved["weights"])),
                               atol=1e-6)
    _, plain = predict_and_submit(run, tta="1", out_dir=run / "subs_off", report=False, decision="off")
    np.testing.assert_allclose(pd.read_csv(plain)[classes].to_numpy(), blended, atol=1e-6)


def test_binary_competitions_get_no_decision_weights(predicted_runs):
    from kit.decision import decide_run

    assert decide_run(predicted_runs["hcd_a"].run_dir, "on") is None
    assert not (predicted_runs["hcd_a"].run_dir / "decision.json").exists()
