"""kit runs: a table of the run folders under a folder, with their CV and leaderboard scores; ``--compare A B``: is
B really better than A (the paired bootstrap of kit.compare)."""

from __future__ import annotations

import math

COLUMNS = ("run", "kind", "competition", "model", "size", "epochs", "folds", "cv", "cv_tta", "lb", "inputs", "path")
SORTS = ("cv", "cv_tta", "lb", "run", "kind", "competition", "model", "epochs")


def add_parser(sub):
    p = sub.add_parser("runs", help="a table of the runs and stacks under a folder: model, size, epochs, CV, CV "
                       "with TTA, leaderboard score", description="Every kit run folder and stack folder under DIR "
                       "(searched recursively: tune trials too), one row each: name, kind (run or stack), "
                       "competition, model (a stack: its GBDTs), input size, epochs, finished folds, CV, CV with TTA "
                       "(after kit predict), the best public leaderboard score that submissions/log.csv holds for "
                       "it, and a stack's input runs.")
    p.add_argument("dir", metavar="DIR", nargs="?", default="runs", help="folder holding run folders (default runs)")
    p.add_argument("--sort", default="cv", choices=SORTS, help="sort by this column (scores: best first; names: "
                   "alphabetical); default cv")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--log", default="submissions/log.csv", help="the submissions log (default submissions/log.csv)")
    g = p.add_argument_group("comparing two runs")
    g.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None, help="two run folders trained on the "
                   "same folds: the difference B - A of their CV scores with a paired bootstrap confidence interval "
                   "(whole patients or lesions resampled where the competition has them)")
    g.add_argument("--with-tta", dest="tta", action="store_true", help="compare the CV with TTA (oof_tta.csv of kit predict)")
    g.add_argument("--no-groups", action="store_true", help="resample single rows even where the competition has "
                   "groups (needed when the runs' data folder is not on this machine)")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence of the interval (default 0.95)")
    g.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.set_defaults(func=run)


def _lb_scores(log_path) -> dict[str, float]:
    """Run name -> best public score in the submissions log (rows without a run or a score are skipped)."""
    import csv
    from pathlib import Path

    path = Path(log_path)
    if not path.is_file():
        return {}
    best: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            run, score = row.get("run") or "", row.get("public_score") or ""
            if run and score:
                best[run] = max(best.get(run, -math.inf), float(score))
    return best


def collect_runs(folder, log_path="submissions/log.csv") -> list[dict]:
    """:func:`kit.pipeline.collect_runs` with each row's best public score from the submissions log."""
    from kit.pipeline import collect_runs as summaries

    lb = _lb_scores(log_path)
    return [{**row, "lb": lb.get(row["run"])} for row in summaries(folder)]


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Scores best first (missing last); names and numbers ascending."""
    if key in ("cv", "cv_tta", "lb"):
        return sorted(rows, key=lambda r: (r[key] is None, -(r[key] or 0.0)))
    return sorted(rows, key=lambda r: (r[key] is None, r[key] if r[key] is not None else 0))


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict]) -> str:
    shown = COLUMNS[:-1]
    cells = [[_cell(r[c]) for c in shown] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def format_comparison(c) -> str:
    """The two scores, B - A with its interval, and what the interval says."""
    r = c.result
    unit = f"{c.n_groups} {c.group_col} groups" if c.group_col else "single rows"
    level = f"{100 * r.confidence:g}%"
    verdict = (f"B is better than A: the {level} interval lies above 0" if r.low > 0 else
               f"A is better than B: the {level} interval lies below 0" if r.high < 0 else
               f"the {level} interval holds 0: the difference may be chance")
    return "\n".join([
        f"{c.metric}, {'TTA' if c.tta else 'no TTA'}, {c.n_rows} OOF rows; {r.resamples} paired resamples of {unit}",
        f"A  {c.a}  {c.score_a:.4f}",
        f"B  {c.b}  {c.score_b:.4f}",
        f"B - A  {r.diff:+.4f}  {level} CI [{r.low:+.4f}, {r.high:+.4f}]; B no better than A in "
        f"{100 * r.p_not_better:.1f}% of resamples",
        verdict])


def compare(args) -> int:
    from kit.compare import compare_runs

    result = compare_runs(args.compare[0], args.compare[1], tta=args.tta, groups=not args.no_groups,
                          resamples=args.resamples, confidence=args.confidence, seed=args.seed, progress=True)
    print(format_comparison(result))
    return 0


def run(args) -> int:
    import csv
    import sys
    from pathlib import Path

    from kit.errors import KitError

    if args.compare:
        return compare(args)
    if not Path(args.dir).is_dir():
        raise KitError(f"folder {args.dir} not found")
    rows = sort_rows(collect_runs(args.dir, args.log), args.sort)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    elif rows:
        print(format_table(rows))
    else:
        print(f"no run folders under {args.dir}")
    return 0
