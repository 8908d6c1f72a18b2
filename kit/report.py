"""Plots of a run as PNG files in ``RUN_DIR/report/``: ROC curves (binary), confusion matrix and per-class recall
(multiclass), training curves per fold; then the run page ``report/index.html`` (kit.run_page) that shows them
all. Everything is read from the run's saved files (oof.csv, oof_tta.csv, fold{k}/history.csv), so a report can be
redrawn on any machine.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no global figure state, no GUI backend, safe in
threads and on headless machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kit.competitions import Competition
from kit.io import save_figure
from kit.metrics import get_metric
from kit.oof import prediction_values
from kit.records import Scores, TtaScores
from kit.run_page import write_run_page
from kit.rundir import RunDir, open_source

__all__ = ["confusion_matrix", "roc_figure", "training_curves_figure", "write_report"]

DPI = 110


def _cv(spec: Competition, oof: pd.DataFrame) -> str:
    """'CV auc 0.9123': the pooled out-of-fold score, for titles."""
    return _cv_text(spec, get_metric(spec.metric)(oof["target"].to_numpy(), prediction_values(spec, oof)))


def _save(fig: Figure, path: Path) -> Path:
    return save_figure(fig, path, dpi=DPI, bbox_inches="tight")


# ------------------------------------------------------------------------------------------------------ binary
PAUC_MIN_TPR = {"pauc80": 0.80}
"""Competition metrics that score only a part of the ROC curve: the TPR above which they count (ISIC 2024)."""


def _roc_label(spec: Competition, name: str, df: pd.DataFrame) -> str:
    """'fold 0: AUC 0.9123', plus the competition's own score where it is not the AUC (pAUC80 0.1534)."""
    from sklearn.metrics import roc_auc_score

    label = f"{name}: AUC {roc_auc_score(df['target'], df['pred']):.4f}"
    if spec.metric != "auc":
        label += f", {spec.metric} {get_metric(spec.metric)(df['target'].to_numpy(), df['pred'].to_numpy()):.4f}"
    return label


def roc_figure(spec: Competition, oof: pd.DataFrame, oof_tta: pd.DataFrame | None = None) -> Figure:
    """ROC curve of each fold (thin) and of the pooled OOF (thick), with their AUC (and the competition's partial
    AUC, whose region is shaded, where that is the metric) in the legend."""
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    if spec.metric in PAUC_MIN_TPR:
        low = PAUC_MIN_TPR[spec.metric]
        ax.axhspan(low, 1.01, color="tab:orange", alpha=0.12, label=f"{spec.metric} region: TPR >= {low:.2f}")
    for k, g in oof.groupby("fold"):
        if g["target"].nunique() < 2:
            continue  # a fold with one class has no ROC curve
        fpr, tpr, _ = roc_curve(g["target"], g["pred"])
        ax.plot(fpr, tpr, lw=1, alpha=0.6, label=_roc_label(spec, f"fold {k}", g))
    curves = [("overall, no TTA", oof, "-")] + ([("overall, TTA", oof_tta, "--")] if oof_tta is not None else [])
    for name, df, style in curves:
        fpr, tpr, _ = roc_curve(df["target"], df["pred"])
        ax.plot(fpr, tpr, style, lw=2.5, color="black" if style == "-" else "tab:red",
                label=_roc_label(spec, name, df))
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=f"{spec.name}: out-of-fold ROC (n={len(oof)}), {_cv(spec, oof)}"
           + (f", with TTA {_cv(spec, oof_tta).rsplit(' ', 1)[1]}" if oof_tta is not None else ""))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_roc(spec: Competition, oof: pd.DataFrame, path: Path, oof_tta: pd.DataFrame | None = None) -> Path:
    return _save(roc_figure(spec, oof, oof_tta), path)


# -------------------------------------------------------------------------------------------------- multiclass
def confusion_matrix(target: np.ndarray, pred_class: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts: rows are the true class, columns the predicted one."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(target, dtype=int), np.asarray(pred_class, dtype=int)), 1)
    return cm


def _class_stats(spec: Competition, oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts matrix, row-normalised matrix with NaN rows for absent classes, per-class recall)."""
    probs = oof[list(spec.classes)].to_numpy(dtype=np.float64)
    cm = confusion_matrix(oof["target"].to_numpy(), probs.argmax(axis=1), len(spec.classes))
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support > 0, cm / np.maximum(support, 1), np.nan)
    return cm, norm, np.diag(norm)


def plot_confusion(spec: Competition, oof: pd.DataFrame, path: Path, tta: str = "no TTA") -> Path:
    """Confusion matrix normalised per true class (each row sums to 1), counts in brackets."""
    cm, norm, _ = _class_stats(spec, oof)
    n = len(spec.classes)
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(norm), vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(n):
        for j in range(n):
            if np.isnan(norm[i, j]):
                continue
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), spec.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{c} (n={cm[i].sum()})" for i, c in enumerate(spec.classes)])
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{spec.name}: out-of-fold confusion, {tta} (normalised), {_cv(spec, oof)}")
    return _save(fig, path)


def plot_recall(spec: Competition, oof: pd.DataFrame, path: Path, oof_tta: pd.DataFrame | None = None,
                tta: str = "TTA") -> Path:
    """Recall of each class without TTA (and with it, side by side, once kit predict has run), with the balanced
    accuracy (their mean over present classes) of each as a line."""
    series = [("no TTA", oof, "tab:blue")] + ([(tta, oof_tta, "tab:orange")] if oof_tta is not None else [])
    fig = Figure(figsize=(1.5 + 0.6 * len(spec.classes) * len(series), 4))
    ax = fig.add_subplot()
    x, width = np.arange(len(spec.classes)), 0.8 / len(series)
    for s, (name, df, colour) in enumerate(series):
        recall = _class_stats(spec, df)[2]
        at = x + (s - (len(series) - 1) / 2) * width
        ax.bar(at, np.nan_to_num(recall), width, color=colour, label=name)
        for i, r in enumerate(recall):
            ax.text(at[i], (0 if np.isnan(r) else r) + 0.02, "n=0" if np.isnan(r) else f"{r:.2f}", ha="center",
                    fontsize=7)
        balanced = float(np.nanmean(recall))
        ax.axhline(balanced, color=colour, ls="--", label=f"balanced accuracy {balanced:.4f}, {name}")
    ax.set_xticks(x, spec.classes, rotation=45, ha="right")
    ax.set(ylim=(0, 1.15), ylabel="recall", title=f"{spec.name}: per-class recall (out-of-fold, "
           f"{' and '.join(name for name, _, _ in series)}), {_cv(spec, oof)}")
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------- training
def training_curves_figure(spec: Competition, run: RunDir) -> Figure | None:
    """Training and validation loss, validation metric and learning rate against epoch, one colour per fold; None
    when no fold has a history."""
    histories = {k: run.history(k) for k in run.fold_numbers() if run.history_path(k).is_file()}
    if not histories:
        return None
    fig = Figure(figsize=(15, 4.4), layout="constrained")  # room for the figure title above the panels' titles
    loss_ax, metric_ax, lr_ax = fig.subplots(1, 3)
    last = max(int(h["epoch"].max()) for h in histories.values())
    for k, h in sorted(histories.items()):
        line, = loss_ax.plot(h["epoch"], h["train_loss"], marker="o", ms=3, label=f"fold {k} train")
        if "val_loss" in h:
            loss_ax.plot(h["epoch"], h["val_loss"], "--", marker="s", ms=3, color=line.get_color(),
                         label=f"fold {k} validation")
        if "lr" in h:  # the lr at the end of each epoch, after the scheduler's step
            lr_ax.plot(h["epoch"], h["lr"], marker="o", ms=3, label=f"fold {k}")
        if spec.metric in h:
            metric_ax.plot(h["epoch"], h[spec.metric], marker="o", ms=3, label=f"fold {k}")
            best = h[spec.metric].idxmax()
            metric_ax.scatter(h["epoch"][best], h[spec.metric][best], s=60, facecolors="none", edgecolors="black")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss: training (solid), validation (dashed)")
    metric_ax.set(xlabel="epoch", ylabel=spec.metric, title=f"validation {spec.metric} (circle: best epoch)")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)", yscale="log")
    for ax in (loss_ax, metric_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
        ax.set_xlim(0.5, last + 0.5)  # one epoch: a tick at 1, not an axis from 0.945 to 1.050
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    scores = run.load(Scores, optional=True)
    cv = f", {_cv_text(spec, scores.cv)}" if scores is not None else ""
    fig.suptitle(f"{run.name}: training curves{cv}")
    return fig


def _cv_text(spec: Competition, value: float) -> str:
    return f"CV {spec.metric} {value:.4f}"


def plot_training_curves(spec: Competition, run: RunDir, path: Path) -> Path | None:
    fig = training_curves_figure(spec, run)
    return None if fig is None else _save(fig, path)


# ---------------------------------------------------------------------------------------------------- entry
def _multiclass(spec: Competition, run: RunDir, oof: pd.DataFrame, out: Path) -> list[Path]:
    """Confusion without TTA and, once kit predict has written oof_tta.csv, with it (each title says); one recall
    plot with both side by side."""
    oof_tta, info = run.oof_tta(), run.load(TtaScores, optional=True)
    tta = (f"TTA x{len(info.views)}" if info else "TTA") if oof_tta is not None else "TTA"
    written = [plot_confusion(spec, oof, out / "confusion.png"), plot_recall(spec, oof, out / "recall.png", oof_tta,
                                                                             tta)]
    stale = out / "recall_tta.png"  # drawn by kit before recall.png held both
    stale.unlink(missing_ok=True)
    if oof_tta is not None:
        written.append(plot_confusion(spec, oof_tta, out / "confusion_tta.png", tta))
    return written


def write_report(run_dir: str | Path) -> list[Path]:
    """Draw every plot that the run's (or a stack's) files allow into ``RUN_DIR/report/``, then (a run) the run page;
    return the paths written."""
    run = open_source(run_dir)
    spec = run.competition()
    out = run.report_dir
    is_run = isinstance(run, RunDir)  # a stack has OOF predictions but no training histories
    oof = run.oof() if is_run else run.predictions(run.oof_path)
    written = []
    with run.writing():
        if spec.is_binary:
            written.append(plot_roc(spec, oof, out / "roc.png", run.oof_tta()))
        else:
            written += _multiclass(spec, run, oof, out)
        curves = plot_training_curves(spec, run, out / "training_curves.png") if is_run else None
        if curves is not None:
            written.append(curves)
        if is_run:  # last: it shows every picture report/ holds by now
            written.append(write_run_page(run.path))
    return written
