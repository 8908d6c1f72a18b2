"""Which training rows an epoch sees: every positive plus a fresh random subset of the negatives.

ISIC 2024 has 393 positives in 401,059 images; an epoch over all of them spends almost all its steps on negatives
the model already scores near zero. The winners trained each epoch on every positive and 3 to 20 negatives per
positive, drawing new negatives each epoch so that over the epochs the model still sees most of them. The draw is a
function of (seed, fold, epoch) alone, so a resumed fold draws the same subsets as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np


def subsample_negatives(rows: np.ndarray, targets: np.ndarray, negatives_per_positive: float,
                        seed: int) -> np.ndarray:
    """``rows`` (indices into ``targets``) with every positive and round(ratio x positives) negatives drawn without
    replacement by ``seed``, sorted (the loader shuffles); every row when the ratio is 0 or asks for them all."""
    rows = np.asarray(rows, dtype=np.int64)
    if negatives_per_positive <= 0:
        return rows
    positive = targets[rows] == 1
    if not positive.any():
        return rows
    n_neg = min(int(round(negatives_per_positive * positive.sum())), int((~positive).sum()))
    negatives = np.random.default_rng(seed).choice(rows[~positive], size=n_neg, replace=False)
    return np.sort(np.concatenate([rows[positive], negatives]))
