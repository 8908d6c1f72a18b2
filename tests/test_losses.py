"""Losses and metrics: label smoothing reaches every loss, and the partial AUC matches the official code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kit.losses import build_loss

TARGETS = np.array([0, 1, 1, 0])


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_binary_label_smoothing_changes_the_loss_of_a_confident_right_answer(name):
    logits, target = torch.tensor([8.0, -8.0]), torch.tensor([1.0, 0.0])
    plain = build_loss(name, 2, TARGETS, weighted=False, label_smoothing=0.0)(logits, target)
    smooth = build_loss(name, 2, TARGETS, weighted=False, label_smoothing=0.2)(logits, target)
    assert plain < 1e-3 and smooth > 0.1  # smoothing penalises overconfidence


def test_binary_smoothing_is_bce_against_soft_targets():
    logits, target = torch.randn(16), torch.randint(0, 2, (16,)).float()
    got = build_loss("bce", 2, TARGETS, weighted=False, label_smoothing=0.1)(logits, target)
    want = F.binary_cross_entropy_with_logits(logits, target * 0.9 + 0.05)
    assert got == pytest.approx(want.item())


def test_multiclass_focal_with_smoothing_reduces_to_smoothed_ce_at_gamma_zero():
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    targets = np.arange(5).repeat(2)
    got = build_loss("focal", 5, targets, weighted=False, gamma=0.0, label_smoothing=0.1)(logits, target)
    assert got == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-5)
    plain = build_loss("focal", 5, targets, weighted=False, gamma=2.0)(logits, target)
    assert build_loss("focal", 5, targets, weighted=False, gamma=2.0, label_smoothing=0.1)(logits, target) != plain


# ----------------------------------------------------------------------------------------------------- pAUC
def _official_pauc(y_true: np.ndarray, y_pred: np.ndarray, min_tpr: float) -> float:
    """The ISIC 2024 scoring code: sklearn's McClish-standardised partial AUC, un-standardised."""
    from sklearn.metrics import roc_auc_score

    max_fpr = abs(1 - min_tpr)
    scaled = roc_auc_score(np.abs(y_true - 1), -y_pred, max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)


@pytest.mark.parametrize("min_tpr", [0.8, 0.9])
def test_pauc_matches_the_official_scoring_code(min_tpr):
    from kit.metrics import pauc_above_tpr

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    pred = y * 0.3 + rng.uniform(0, 1, 500)
    assert pauc_above_tpr(y, pred, min_tpr) == pytest.approx(_official_pauc(y, pred, min_tpr), abs=1e-9)
    assert pauc_above_tpr(y, y.astype(float), min_tpr) == pytest.approx(1 - min_tpr)
