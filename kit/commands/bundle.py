"""kit bundle: build a Kaggle dataset folder of a run (kit's wheel, the wheels Kaggle lacks, fold checkpoints) or of
the wheels alone; push it. The same shape as kit kernel: ``build``, then ``push DIR``."""

from __future__ import annotations

import argparse
import os

from kit.commands import flags


def add_parser(sub):
    p = sub.add_parser("bundle", help="make a Kaggle dataset of a run's checkpoints and kit's wheels; push it",
                       description="build RUN_DIR: a dataset folder of a run; wheels: a dataset folder of the wheels "
                       "alone; push DIR: upload either (as kit kernel build, then kit kernel push DIR).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="a dataset folder of a run: kit's wheel, the wheels Kaggle lacks, the folds",
                           description="Write a dataset folder (default bundles/<slug>) holding "
                           "dataset-metadata.json, kit's wheel built from this checkout, wheels of the dependencies "
                           "Kaggle's image lacks (KAGGLE_IMAGE_LACKS in kit/bundle.py: simplejpeg) for the CPython "
                           "versions of KAGGLE_PYTHONS, and checkpoints/ (config.yaml, folds.csv, scores.json, "
                           "run.json, fold*/best.pt). Upload it with kit bundle push DIR.")
    flags.add_run_dir(b, "a run folder written by kit train, or a stack folder written by kit stack (ISIC 2024): "
                      "stack/ then holds its saved GBDTs and the image runs it names")
    b.add_argument("--folds", default=None, help="comma-separated folds to include (default: every finished fold; "
                   "of a stack, of each image run)")
    _build_options(b, "dataset slug (default kit-<competition>-weights, which kit kernel build attaches by default)")
    b.set_defaults(func=_build)

    w = actions.add_parser("wheels", help="a dataset folder of the wheels alone (what a training kernel installs)",
                           description="Write a dataset folder of kit's wheel and the wheels Kaggle's image lacks: "
                           "what a training kernel (kit kernel build --train) installs kit from. Upload it with kit "
                           "bundle push DIR.")
    _build_options(w, "dataset slug (default kit-wheels)")
    w.set_defaults(func=_wheels)

    u = actions.add_parser("push", help="create the Kaggle dataset of a bundle folder, or add a version to it",
                           description="Create the Kaggle dataset, or add a version when it exists, uploading the "
                           "subfolder too (needs Kaggle credentials).")
    u.add_argument("folder", metavar="DIR", help="a folder written by kit bundle build or kit bundle wheels")
    u.add_argument("-m", "--message", default=None, help="the version notes (default 'kit bundle')")
    u.add_argument("--public", action="store_true", help="make a new dataset public (default private)")
    u.set_defaults(func=_push)


def _build_options(p: argparse.ArgumentParser, slug_help: str) -> None:
    p.add_argument("--owner", default=None, help="your Kaggle user name (the dataset is OWNER/SLUG); required")
    p.add_argument("--slug", default=None, help=slug_help)
    flags.add_out(p, "the dataset folder", default="bundles/<slug>", metavar="DIR")
    p.set_defaults(out=None)
    p.add_argument("--wheel-cache", default=os.environ.get("KIT_WHEEL_CACHE"), metavar="DIR",
                   help="take the dependency wheels from this folder only, offline (default $KIT_WHEEL_CACHE; unset: "
                   "download them from PyPI)")
    p.add_argument("--kit-source", default=None, metavar="DIR",
                   help="the kit checkout to build the wheel from (default: the one kit runs from)")
    p.add_argument("--python", action="append", default=None, metavar="X.Y",
                   help="a CPython version of Kaggle's image to fetch wheels for; repeatable (default: "
                   "KAGGLE_PYTHONS in kit/bundle.py, 3.11 and 3.12)")
    p.add_argument("--license", default=None, help="the dataset's license name on Kaggle (default other: the "
                   "weights come from competition data, whose rules apply)")


def _need_owner(args: argparse.Namespace) -> None:
    """--owner checked here, not by argparse: the same one line (exit 1) as every other bad input."""
    if args.owner is None:
        from kit.errors import ConfigError

        raise ConfigError("--owner USER is required: your Kaggle user name")


def _build(args: argparse.Namespace) -> int:
    from kit.bundle import DEFAULT_LICENSE, KAGGLE_PYTHONS, make_bundle
    from kit.commands import parse_folds

    _need_owner(args)
    out = make_bundle(args.run_dir, args.owner, args.slug, parse_folds(args.folds) if args.folds else None, args.out,
                      args.wheel_cache, args.kit_source, args.license or DEFAULT_LICENSE,
                      tuple(args.python or KAGGLE_PYTHONS))
    return _wrote(out)


def _wheels(args: argparse.Namespace) -> int:
    from kit.bundle import KAGGLE_PYTHONS, WHEELS_SLUG, make_wheels_bundle

    _need_owner(args)
    extra = {"license_name": args.license} if args.license else {}
    out = make_wheels_bundle(args.owner, args.slug or WHEELS_SLUG, args.out, args.wheel_cache, args.kit_source,
                             pythons=tuple(args.python or KAGGLE_PYTHONS), **extra)
    return _wrote(out)


def _wrote(out) -> int:
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"upload it with: kit bundle push {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from kit.bundle import push_bundle

    print(push_bundle(args.folder, args.message, args.public).summary())
    return 0
