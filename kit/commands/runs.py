"""kit runs: a table of the run folders under a folder, with their CV and leaderboard scores."""

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


def run(args) -> int:
    import csv
    import sys
    from pathlib import Path

    from kit.errors import KitError

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
