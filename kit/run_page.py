"""The run page: ``RUN_DIR/report/index.html``, one self-contained HTML file that opens offline in any browser.

It shows the CV score per fold with and without TTA, every picture in ``report/`` (the plots of kit.report, and
whatever else a command put there: error grids, CAMs), and the resolved config. The pictures are inlined as data
URIs and the page has no script, no stylesheet and no font from elsewhere, so it can be mailed, uploaded as a
Kaggle output or opened from a laptop without the run folder.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from kit.errors import DataError
from kit.io import write_text_atomic
from kit.oof import score_oof
from kit.records import FoldResult, TtaScores
from kit.rundir import RunDir

__all__ = ["PAGE", "page_html", "write_run_page"]

PAGE = "index.html"
FIRST = ("training_curves", "roc", "confusion", "recall", "confusion_tta", "recall_tta")
"""kit.report's own plots come first, in this order; any other picture follows, by name."""
PICTURES = (".png", ".jpg", ".jpeg")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 0.3em 0.8em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; } figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
nav a { margin-right: 1em; }
"""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fold_scores(run: RunDir, oof: pd.DataFrame | None) -> tuple[dict[int, float], float | None]:
    """Per-fold and pooled scores of a frame; a fold or pool the metric cannot score (one class) shows as '-'."""
    if oof is None:
        return {}, None
    spec = run.competition()
    try:
        return score_oof(spec, oof)
    except DataError:  # a fold with one class: score each fold that can be scored, and the pool
        per_fold = {}
        for _, g in oof.groupby("fold"):
            try:
                per_fold.update(score_oof(spec, g)[0])
            except DataError:
                continue
        return per_fold, None


def _scores_table(run: RunDir) -> str:
    """One row per fold: rows, best epoch, the score without and with TTA; then the pooled CV."""
    spec = run.competition()
    oof, oof_tta = run.oof(), run.oof_tta()
    plain, plain_cv = _fold_scores(run, oof)
    tta, tta_cv = _fold_scores(run, oof_tta)
    rows = []
    for k, g in oof.groupby("fold"):
        k = int(k)
        result = run.load(FoldResult, fold=k, optional=True)
        best = result.best_epoch if result is not None else None
        rows.append(f"<tr><td>fold {k}</td><td class=num>{len(g)}</td><td class=num>{best or '-'}</td>"
                    f"<td class=num>{_fmt(plain.get(k))}</td><td class=num>{_fmt(tta.get(k))}</td></tr>")
    rows.append(f"<tr class=total><td>CV (pooled)</td><td class=num>{len(oof)}</td><td></td>"
                f"<td class=num>{_fmt(plain_cv)}</td><td class=num>{_fmt(tta_cv)}</td></tr>")
    views = run.load(TtaScores, optional=True)
    tta_head = f"TTA x{len(views.views)}" if views is not None and views.views else "TTA"
    return (f"<table><tr><th>fold</th><th>rows</th><th>best epoch</th><th>{spec.metric}, no TTA</th>"
            f"<th>{spec.metric}, {tta_head}</th></tr>{''.join(rows)}</table>"
            + ("" if oof_tta is not None else f"<p class=sub>No TTA scores yet: run <code>kit predict "
               f"{html.escape(str(run.path))}</code>.</p>"))


def pictures(run: RunDir) -> list[Path]:
    """The pictures of ``report/``: kit.report's plots first, then the others (error grids, CAMs) by name."""
    if not run.report_dir.is_dir():
        return []
    found = [p for p in run.report_dir.rglob("*") if p.suffix.lower() in PICTURES and p.is_file()]
    rank = {name: i for i, name in enumerate(FIRST)}
    return sorted(found, key=lambda p: (rank.get(p.stem, len(FIRST)), str(p.relative_to(run.report_dir))))


def _figure(path: Path, report_dir: Path) -> str:
    name = str(path.relative_to(report_dir))
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = html.escape(path.stem.replace("_", " "))
    return (f"<figure id=\"{html.escape(name)}\"><img src=\"data:{MIME[path.suffix.lower()]};base64,{data}\" "
            f"alt=\"{html.escape(name)}\"><figcaption>{caption} ({html.escape(name)})</figcaption></figure>")


def page_html(run: RunDir) -> str:
    """The whole page as one string."""
    spec, cfg = run.competition(), run.config()
    cv, cv_tta = run.cv()
    figures = [_figure(p, run.report_dir) for p in pictures(run)]
    title = html.escape(f"{run.name}: {spec.name}")
    summary = (f"{html.escape(spec.title)}; model {html.escape(cfg.model.name)} at {cfg.model.img_size}px, "
               f"{cfg.train.epochs} epochs, {len(run.finished_folds())} of {cfg.n_folds} folds finished; "
               f"CV {spec.metric} {_fmt(cv)}" + (f", with TTA {_fmt(cv_tta)}" if cv_tta is not None else ""))
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">",
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<h1>{title}</h1><p class=sub>{summary}</p>",
        "<nav><a href=\"#scores\">scores</a><a href=\"#pictures\">pictures</a><a href=\"#config\">config</a></nav>",
        "<h2 id=scores>Scores per fold</h2>", _scores_table(run),
        "<h2 id=pictures>Pictures</h2>",
        *(figures or ["<p class=sub>No pictures in report/ yet.</p>"]),
        "<h2 id=config>Config</h2>", f"<pre>{html.escape(run.config_path.read_text())}</pre>",
        "</body></html>", ""])


def write_run_page(run_dir: str | Path) -> Path:
    """Write ``report/index.html`` of a run (the caller holds the run's write lock)."""
    run = RunDir.open(run_dir)
    path = run.report_dir / PAGE
    run.report_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, page_html(run))
