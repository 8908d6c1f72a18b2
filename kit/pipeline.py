"""The chains of stages, each written once: the commands (``kit predict``, ``kit ensemble``, ``kit stack``,
``kit runs``) and the offline kernel (:func:`kit.kernel.run_kernel`) call these, and only parse, call and print.

::

    predict_and_submit   predict (kit.predict) -> blend the folds (kit.blend) -> decision weights (kit.decision)
                         -> validated submission (kit.submission) -> report
    ensemble_and_submit  load and blend several prediction sources (kit.ensemble) -> submission + JSON summary
    stack_and_submit     stack GBDTs on the runs (kit.stack) -> blend the stack's folds -> submission
    collect_runs         the summary of every run and stack folder under a folder (kit runs)

A step that cannot be done never throws away the work of the steps before it: the predictions are in the run folder
before decision weights are fitted, and a request that cannot be met fails only then, saying what is saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from kit.blend import blend_folds, get_fold_blend
from kit.errors import KitError
from kit.rundir import RunDir, StackDir, open_source

__all__ = ["collect_runs", "ensemble_and_submit", "predict_and_submit", "stack_and_submit",
           "submit_folds"]

log = logging.getLogger(__name__)


def submit_folds(source_dir: str | Path, fold_merge: str = "mean", weights: np.ndarray | None = None,
                 name: str | None = None, out_dir: str | Path = "submissions",
                 expected_ids: Sequence[str] | None = None) -> Path:
    """The validated submission of a predicted run or stack: its folds' test predictions blended by ``fold_merge``,
    decision ``weights`` applied (balanced accuracy), checked against ``expected_ids`` (default: the ids
    predicted)."""
    from kit.decision import apply_weights
    from kit.submission import write_submission

    source = open_source(source_dir)
    test_ids, test = blend_folds(source.path, fold_merge)
    test = test if weights is None else apply_weights(test, weights)  # argmax towards rare classes, rows renormalised
    ids = [str(i) for i in test_ids]
    return write_submission(source.competition(), ids, test, name or source.name, out_dir,
                            expected_ids=list(expected_ids) if expected_ids is not None else ids)


def predict_and_submit(run_dir, data=None, tta="8", merge="mean", folds=None, batch_size=None, fold_merge="mean",
                       out_dir="submissions", device="auto", workers=None, report=True, decision="auto",
                       with_oof=True, name=None):
    """``kit predict`` (and, ``with_oof=False``, the offline kernel's prediction): (PredictResult, the submission).

    With the OOF images predicted, decision weights are fitted on them (``decision``: auto, on, off); without
    (a kernel) the weights kit predict saved in decision.json are applied where it applied them.
    """
    from kit.decision import decide_run, saved_weights
    from kit.predict import predict_run

    get_fold_blend(fold_merge)  # a bad --fold-merge fails before any prediction
    result = predict_run(run_dir, data, tta, merge, folds, batch_size, device, workers, with_oof=with_oof)
    run = RunDir(result.run_dir)
    weights = decide_run(run.path, decision) if with_oof else saved_weights(run.path)
    submission = submit_folds(run.path, fold_merge, weights, name, out_dir)
    n = len(result.folds)
    log.info(f"wrote {submission} ({fold_merge} of {n} fold{'s' * (n > 1)})")
    if report:
        from kit.report import write_report

        paths = write_report(run.path)
        log.info(f"report: {len(paths) - 1} plots and the run page {run.report_dir / 'index.html'}")
    return result, submission


def ensemble_and_submit(run_dirs, method="mean", out_dir="submissions", name="ensemble", data=None,
                        fold_merge="mean", decision="auto"):
    """``kit ensemble``: (EnsembleResult, the submission's path, its JSON summary's path); for balanced accuracy
    with the blend's decision weights (``decision``: auto, on, off)."""
    from kit.ensemble import ensemble_runs, write_summary
    from kit.submission import write_submission

    result = ensemble_runs(run_dirs, method, data, fold_merge, decision=decision)
    if result.decision_note:
        log.info(result.decision_note)
    path = write_submission(result.spec, [str(i) for i in result.test_ids], result.test, name, out_dir,
                            expected_ids=result.expected_ids)
    summary = write_summary(result, path.with_suffix(".json"))
    n = len(result.members)
    log.info(f"wrote {path} ({method} blend of {n} source{'s' * (n > 1)}; summary {summary.name})")
    return result, path, summary


def stack_and_submit(competition, data, runs, out, settings=None, out_dir="submissions", submission=True):
    """``kit stack``: (StackResult, the submission's path or None)."""
    from kit.stack import format_result, run_stack

    result = run_stack(competition, data, runs, out, settings)
    log.info(format_result(result))
    log.info(f"wrote {result.path} (stack.json, oof.csv, test_fold*.csv, scores.json, report/importance.png)")
    from kit.report import write_report

    drawn = write_report(result.path)  # the ROC of the stack's OOF, as kit predict draws a run's
    log.info(f"report: {', '.join(p.name for p in drawn)} in {result.path / 'report'}")
    if not submission:
        return result, None
    path = submit_folds(result.path, "mean", out_dir=out_dir)
    log.info(f"wrote {path}")
    return result, path


def collect_runs(folder: str | Path) -> list[dict]:
    """One row per run or stack folder under ``folder`` (each source's ``summary()``: a stack as a stack, with its
    GBDTs and input runs); an unreadable one is skipped with a note."""
    folders = {p.parent for p in Path(folder).rglob(RunDir.CONFIG) if RunDir(p.parent).is_run()}
    folders |= {p.parent for p in Path(folder).rglob("*.json") if StackDir(p.parent).is_stack()}
    rows = []
    for path in sorted(folders):
        try:
            row = open_source(path).summary()
        except KitError as e:
            log.warning(f"note: {path} skipped ({e})")
            continue
        rows.append(row)
    return rows
