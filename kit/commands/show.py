"""kit show batch / errors / cam: pictures of the data and the model, written as PNG files."""

from __future__ import annotations

from kit.commands import add_config_source
from kit.commands.flags import add_data, add_device, add_out, add_run_dir


def add_parser(sub):
    p = sub.add_parser("show", help="pictures: an augmented batch, the worst OOF errors, class-activation maps",
                       description="Write PNG pictures of what the model sees and gets wrong. With a run folder "
                       "they go to RUN_DIR/report/ (where the run page finds them), otherwise to --out.")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    b = what.add_parser("batch", help="training images after augmentation (and the evaluation view), labelled",
                        description="Draw --n training images as the model receives them after the augmentation "
                        "(batch_train.png) and unaugmented (batch_eval.png), labelled with their class.")
    add_config_source(b)
    b.add_argument("--n", type=int, default=16, help="images (default 16)")
    b.add_argument("--seed", type=int, default=0, help="which images and which augmentation (default 0)")
    b.add_argument("--ids", default=None, help="comma-separated training ids to show instead of a random draw")
    _out(b)
    b.set_defaults(func=run_batch)

    e = what.add_parser("errors", help="the most confidently wrong out-of-fold images",
                        description="The out-of-fold images of highest loss: false positives and false negatives "
                        "(binary) or per true class (multiclass), titled with id, fold, truth, prediction, "
                        "probability; errors.png from oof.csv and errors_tta.png from oof_tta.csv (after kit predict).")
    add_run_dir(e)
    e.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    add_data(e, default_note="default: the run's")
    _out(e)
    e.set_defaults(func=run_errors)

    c = what.add_parser("cam", help="class-activation maps (Grad-CAM, ...) of out-of-fold images",
                        description="Overlay where each image's own fold model looks (cam.png). Needs "
                        "pytorch-grad-cam: pip install 'kit[diagnostics]'. Default images: the worst errors and a "
                        "few confident correct ones.")
    add_run_dir(c)
    c.add_argument("--ids", default=None, help="comma-separated out-of-fold ids (default: worst errors + correct)")
    c.add_argument("--methods", default="gradcam,gradcam++",
                   help="comma-separated: gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, scorecam "
                   "(default gradcam,gradcam++)")
    c.add_argument("--layer", default=None, help="the backbone module to explain, e.g. layer3 (default: its last "
                   "feature map)")
    c.add_argument("--n-errors", type=int, default=6, help="default ids: this many worst errors (default 6)")
    c.add_argument("--n-correct", type=int, default=2, help="default ids: this many confident correct (default 2)")
    add_data(c, default_note="default: the run's")
    add_device(c)
    _out(c)
    c.set_defaults(func=run_cam)


def _out(p) -> None:
    add_out(p, "the folder of the PNG files (default: RUN_DIR/report, or the current folder without a run)",
            metavar="DIR")


def _ids(text: str | None) -> list[str] | None:
    return [i.strip() for i in text.split(",") if i.strip()] if text else None


def _writing(run_dir, out):
    """The folder to write into, and the run's write lock when that folder is inside the run."""
    import contextlib
    from pathlib import Path

    from kit.rundir import RunDir

    if run_dir is None:
        return Path(out or "."), contextlib.nullcontext()
    run = RunDir.open(run_dir)
    folder = Path(out) if out else run.report_dir
    inside = folder.resolve() == run.path.resolve() or run.path.resolve() in folder.resolve().parents
    return folder, run.writing() if inside else contextlib.nullcontext()


def run_batch(args) -> int:
    from kit.commands import config_source
    from kit.diagnostics.batch import preview_batch, write_batch_grids

    cfg, data = config_source(args)
    preview = preview_batch(cfg, data, args.n, args.seed, _ids(args.ids))
    folder, lock = _writing(args.run_dirs, args.out)
    with lock:
        for grid in write_batch_grids(preview, folder):
            print(grid.path)
    return 0


def run_errors(args) -> int:
    from kit.diagnostics.errors import write_error_grids

    folder, lock = _writing(args.run_dir, args.out)
    with lock:
        for grid in write_error_grids(args.run_dir, folder, args.n, args.data):
            print(grid.path)
    return 0


def run_cam(args) -> int:
    from kit.diagnostics.cam import explain, write_cam_grid

    result = explain(args.run_dir, _ids(args.ids), _ids(args.methods) or [], args.n_errors, args.n_correct,
                     args.data, args.device, args.layer)
    folder, lock = _writing(args.run_dir, args.out)
    with lock:
        print(write_cam_grid(result, folder).path)
    return 0
