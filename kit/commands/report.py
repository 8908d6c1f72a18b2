"""kit report: PNG plots of a run (ROC, confusion matrix, per-class recall, training curves) in RUN_DIR/report/,
and the run page RUN_DIR/report/index.html that shows them with the scores and the config."""

from __future__ import annotations

from kit.commands import flags


def add_parser(sub):
    p = sub.add_parser("report", help="draw a run's ROC / confusion matrix / training curves as PNG, and its HTML "
                       "run page",
                       description="Read the run's oof.csv (and oof_tta.csv) and fold histories and write PNGs to "
                       "RUN_DIR/report/: ROC with AUC per fold and overall (binary), normalised confusion matrix and "
                       "per-class recall (multiclass), loss and metric against epoch per fold; then (a run) "
                       "report/index.html, one self-contained page (scores per fold with and without TTA, every "
                       "picture in report/, the config) that opens offline in a browser.")
    flags.add_run_dir(p, "a run folder written by kit train (or a stack folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0
