"""A study's results: the best config as a preset for ``kit train --config``, a table of trials, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from kit.config import Config, config_to_yaml
from kit.errors import KitError
from kit.io import save_figure, write_text_atomic
from kit.tune.space import trial_config
from kit.tune.study import FAIL_REASON, study_base_config

__all__ = ["best_config", "labelled_plots", "save_plots", "trials_table", "write_best"]


def best_config(study: optuna.Study) -> Config:
    """The study's base config with its best trial's values."""
    try:
        best = study.best_trial
    except ValueError:
        raise KitError(f"study '{study.study_name}' has no completed trial yet") from None
    return trial_config(study_base_config(study), best.params)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study: optuna.Study, top: int = 10) -> str:
    """The ``top`` completed trials by score, and a count of trials by state with the failure reasons."""
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    keys = list(dict.fromkeys(k for t in complete for k in t.params))
    header = ["trial", "cv", "mean_fold", "epochs", *keys]
    rows = [[str(t.number), f"{t.value:.4f}", _fmt(t.user_attrs.get("mean_fold_score", "")),
             str(t.user_attrs.get("epochs", "")), *(_fmt(t.params.get(k, "")) for k in keys)] for t in complete[:top]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    lines.append(f"\n{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in states.items()))
    epochs = sum(t.user_attrs.get("epochs", 0) for t in trials)
    lines.append(f"{epochs} epochs trained in all")
    for t in trials:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs.get(FAIL_REASON, "its worker stopped (stale heartbeat or interrupted)")
            lines.append(f"  trial {t.number} failed: {reason}")
    return "\n".join(lines)


def _save_figure(ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = ax.figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def labelled_plots(study: optuna.Study) -> dict[str, Any]:
    """Optuna's history and intermediate-value plots (matplotlib Axes), labelled with the metric and what a step is."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    from optuna.visualization import matplotlib as vis

    from kit.competitions import get_competition

    metric = get_competition(study_base_config(study).competition).metric
    stride = study.user_attrs.get("kit", {}).get("stride", "E")
    history = vis.plot_optimization_history(study)
    history.set_ylabel(f"{metric}: pooled out-of-fold CV of the trial")
    history.set_title(f"optimisation history ({metric}, higher is better)")
    steps = vis.plot_intermediate_values(study)
    steps.set_xlabel(f"step = fold position x {stride} + epoch (the trained folds one after another, "
                     f"{stride} epochs apart)")
    steps.set_ylabel(f"running CV estimate: mean best {metric}\nof the folds so far")
    steps.set_title(f"intermediate values the pruner saw ({metric})")
    from matplotlib.ticker import MaxNLocator

    for ax in (history, steps):  # trial numbers and steps are whole numbers: no tick at trial 0.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return {"history": history, "intermediate": steps}


def save_plots(study: optuna.Study, out_dir: Path) -> dict[str, Path | str]:
    """history.png, intermediate.png and importances.png; a plot that cannot be drawn gets a reason instead."""
    from optuna.visualization import matplotlib as vis

    plots: dict[str, Path | str] = {name: _save_figure(ax, out_dir / f"{name}.png")
                                    for name, ax in labelled_plots(study).items()}
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        plots["importances"] = f"needs 2 completed trials, the study has {n_complete}"
    else:
        try:
            plots["importances"] = _save_figure(vis.plot_param_importances(study), out_dir / "importances.png")
        except (RuntimeError, ValueError) as e:  # e.g. every completed trial has the same values
            plots["importances"] = f"not computable: {e}"
    return plots


def write_best(study: optuna.Study, path: Path) -> Path:
    """The best config as a preset YAML that ``kit train --config`` accepts."""
    cfg = best_config(study)
    best = study.best_trial
    header = (f"# best trial {best.number} of study '{study.study_name}': cv {best.value:.4f}\n"
              f"# train it on all folds: kit train --competition {cfg.competition} --config {path} --data DIR --out DIR\n")
    return write_text_atomic(path, header + config_to_yaml(cfg))
