"""kit submit: validate a submission CSV against the competition's test ids, then upload it to Kaggle."""

from __future__ import annotations

from kit.commands import flags
from kit.commands.flags import add_competition
from kit.errors import ConfigError, KaggleError


def add_parser(sub):
    p = sub.add_parser("submit", help="validate a submission CSV, then upload it to Kaggle",
                       description="Check a submission CSV, whoever wrote it, against the competition's format "
                       "and test ids: header and column order, missing / extra / duplicate ids, NaN, infinite "
                       "and out-of-range values, multiclass rows summing to 1. Every problem is listed at once.")
    p.add_argument("file", metavar="FILE", nargs="?", default=None,
                   help="the submission CSV (a code competition: give --kernel instead)")
    add_competition(p, required=True)
    p.add_argument("--kernel", metavar="OWNER/SLUG", default=None,
                   help="code competition (isic-2024-challenge): submit this kernel, which Kaggle re-runs on the "
                   "hidden test set; its version must have finished with a submission.csv that passes validation")
    p.add_argument("--version", type=int, default=None, metavar="N",
                   help="with --kernel: the kernel version to submit (kit kernel push prints it; default the latest)")
    flags.add_data(p, default_note="the test ids come from its sample submission or test list; required unless "
                   "--ids-from is given (with --kernel: optional, the kernel output's ids are then compared)")
    p.add_argument("--ids-from", metavar="SAMPLE.csv", default=None,
                   help="take the expected test ids from this CSV's id column instead of --data")
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="the run or stack the submission came from, logged "
                   "with its CV (default: the run named in the file name, <competition>-<run>-<time>.csv, under "
                   "--runs-dir; with --kernel: the one the kernel's kit-submission.json names)")
    p.add_argument("--runs-dir", default="runs", help="where to look for that run (default runs)")
    p.add_argument("--dry-run", action="store_true", help="validate only; upload nothing")
    p.add_argument("-m", "--message", default=None, help="submission description shown on Kaggle")
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for the public score (default 600; 0: check once, do not wait)")
    p.add_argument("--poll-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between score checks (default 10)")
    p.set_defaults(func=run)


def expected_ids(spec, data_dir: str | None, ids_from: str | None, required: bool = True) -> list[str] | None:
    """The test ids to compare against: from --ids-from, else None (validate_file then reads them under --data)."""
    from kit.data.labels import check_ids, read_csv

    if ids_from is None:
        if data_dir is None and required:
            raise ConfigError("--data DIR is required (the expected test ids come from the competition folder), "
                              "or give --ids-from SAMPLE.csv")
        return None
    id_col = spec.submission_columns[0]
    df = read_csv(ids_from, [id_col], what="id list")
    check_ids(df, id_col, ids_from)
    return df[id_col].tolist()


def _with_cv(run) -> tuple[str, float | None]:
    cv, cv_tta = run.cv()
    return run.name, cv_tta if cv_tta is not None else cv


def origin(spec, path: str, run_dir: str | None, runs_dir: str = "runs") -> tuple[str, float | None]:
    """(run name, its CV: with TTA where predicted with TTA) of a submission, for the log; ("", None) if unknown."""
    import re
    from pathlib import Path

    m = re.fullmatch(rf"{re.escape(spec.name)}-(.+)-\d{{8}}-\d{{6}}\.csv", Path(path).name)
    return named_origin(run_dir, m.group(1) if m else "", runs_dir)


def named_origin(run_dir: str | None, name: str, runs_dir: str = "runs") -> tuple[str, float | None]:
    """(run name, its CV) of --run RUN_DIR (a run or a stack), else of the run or stack ``name`` under ``runs_dir``
    (its CV unknown when it is not there); ("", None) without either."""
    from pathlib import Path

    from kit.rundir import RunDir, StackDir, open_source

    if run_dir is not None:
        return _with_cv(open_source(run_dir))
    if not name:
        return "", None
    folder = Path(runs_dir) / name
    if not (RunDir(folder).is_run() or StackDir(folder).is_stack()):
        return name, None
    return _with_cv(open_source(folder))


def upload(spec, path: str, message: str | None, wait: float = 600.0, poll_every: float = 10.0,
           run: str = "", cv: float | None = None) -> int:
    """Send a validated submission to Kaggle, wait for its public score, log it in submissions/log.csv."""
    from kit.kaggle import upload_submission

    result = upload_submission(spec.name, path, message or "kit submission", timeout=wait, poll_every=poll_every,
                               run=run, cv=cv)
    if result.status == "error":
        raise KaggleError(result.summary())
    print(result.summary())
    return 0


def submit_kernel(spec, args) -> int:
    """The code-competition path: the kernel version's output is checked and validated before it is submitted."""
    import tempfile

    from kit.code_submission import fetch_submission, submit_code
    from kit.submission import validate_file

    if args.file is not None:
        raise ConfigError(f"give either a submission FILE or --kernel, not both ({args.file}, {args.kernel})")
    with tempfile.TemporaryDirectory(prefix="kit-kernel-output-") as tmp:
        path, made_from = fetch_submission(spec, args.kernel, args.version, tmp)
        rows = validate_file(spec, path, args.data, expected_ids(spec, args.data, args.ids_from, required=False))
        print(f"valid: {rows} rows in the output of kernel {args.kernel} ({spec.name})")
        name, cv = named_origin(args.run, made_from, args.runs_dir)
        if args.dry_run:
            return 0
        result = submit_code(spec, args.kernel, args.version, path, args.message or "kit code submission",
                             args.wait, args.poll_every, run=name, cv=cv)
    if result.status == "error":
        raise KaggleError(result.summary())
    print(result.summary())
    return 0


def run(args) -> int:
    from kit.competitions import get_competition
    from kit.submission import validate_file

    spec = get_competition(args.competition)
    if args.kernel is not None:
        return submit_kernel(spec, args)
    if args.file is None:
        raise ConfigError("give the submission FILE to upload (or, in a code competition, --kernel OWNER/SLUG)")
    # the upload must only ever see a file that passed validation: validate first, always
    rows = validate_file(spec, args.file, args.data, expected_ids(spec, args.data, args.ids_from))
    print(f"valid: {rows} rows in {args.file} ({spec.name})")
    name, cv = origin(spec, args.file, args.run, args.runs_dir)
    if args.dry_run:
        return 0
    if spec.code_competition:
        raise ConfigError(f"{spec.name} is a code competition: Kaggle scores a kernel re-run on the hidden test set, "
                          f"not an uploaded file; submit the kernel: kit submit -c {spec.name} --kernel OWNER/SLUG "
                          "--version N -m MESSAGE")
    return upload(spec, args.file, args.message, args.wait, args.poll_every, name, cv)
