"""kit bundle: a Kaggle dataset folder of a run (kit's wheel, the wheels Kaggle lacks, fold checkpoints); push it."""

from __future__ import annotations

import argparse
import os

USAGE = ("kit bundle RUN_DIR --owner USER [--slug NAME] [--folds 0,1] [--out DIR] [--wheel-cache DIR]\n"
         "       kit bundle wheels --owner USER [--slug NAME] [--out DIR] [--wheel-cache DIR]\n"
         "       kit bundle push DIR [-m MESSAGE] [--public]")


def add_parser(sub):
    p = sub.add_parser("bundle", help="make a Kaggle dataset of a run's checkpoints and kit's wheels; push it",
                       usage=USAGE, description="RUN_DIR: write a dataset folder (default bundles/<slug>) holding "
                       "dataset-metadata.json, kit's wheel built from this checkout, wheels of the dependencies "
                       "Kaggle's image lacks (KAGGLE_IMAGE_LACKS in kit/bundle.py: simplejpeg) for the CPython "
                       "versions of KAGGLE_PYTHONS, and checkpoints/ (config.yaml, folds.csv, scores.json, "
                       "run.json, fold*/best.pt). wheels: the wheels only (default slug kit-wheels), what a training "
                       "kernel (kit kernel build --train) installs kit from. push DIR: create the Kaggle dataset, or add a version when it "
                       "exists, uploading the subfolder too (needs Kaggle credentials).")
    p.add_argument("target", metavar="RUN_DIR", help="a run folder written by kit train, or the word wheels or push")
    p.add_argument("folder", nargs="?", metavar="DIR", help="with push: the bundle folder to upload")
    p.add_argument("--owner", default=None, help="your Kaggle user name (the dataset is OWNER/SLUG)")
    p.add_argument("--slug", default=None, help="dataset slug (default kit-<competition>-weights, which kit kernel "
                   "build attaches by default)")
    p.add_argument("--folds", default=None, help="comma-separated folds to include (default: every finished fold)")
    p.add_argument("--out", default=None, help="output folder (default bundles/<slug>)")
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
    p.add_argument("-m", "--message", default=None, help="with push: the version notes (default 'kit bundle')")
    p.add_argument("--public", action="store_true", help="with push: make a new dataset public (default private)")
    p.set_defaults(func=run)


def _build_options(args: argparse.Namespace) -> list[str]:
    return [flag for flag, value in (("--owner", args.owner), ("--slug", args.slug), ("--folds", args.folds),
                                     ("--out", args.out), ("--kit-source", args.kit_source),
                                     ("--python", args.python), ("--license", args.license)) if value is not None]


def run(args: argparse.Namespace) -> int:
    from kit.errors import ConfigError

    if args.target == "push":
        if args.folder is None:
            raise ConfigError("kit bundle push needs the bundle folder: kit bundle push DIR")
        if _build_options(args):
            raise ConfigError(f"{', '.join(_build_options(args))} belong to building a bundle, not to push")
        from kit.bundle import push_bundle

        print(push_bundle(args.folder, args.message, args.public).summary())
        return 0
    if args.folder is not None:
        raise ConfigError(f"unexpected argument '{args.folder}': build with kit bundle RUN_DIR --owner USER, "
                          "upload with kit bundle push DIR")
    if args.owner is None:
        raise ConfigError("--owner USER is required: your Kaggle user name")
    if args.target == "wheels":
        return _wheels(args)
    from kit.bundle import DEFAULT_LICENSE, KAGGLE_PYTHONS, make_bundle
    from kit.commands import parse_folds

    out = make_bundle(args.target, args.owner, args.slug, parse_folds(args.folds) if args.folds else None, args.out,
                      args.wheel_cache, args.kit_source, args.license or DEFAULT_LICENSE, tuple(args.python or KAGGLE_PYTHONS))
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"upload it with: kit bundle push {out}")
    return 0


def _wheels(args: argparse.Namespace) -> int:
    from kit.bundle import KAGGLE_PYTHONS, WHEELS_SLUG, make_wheels_bundle
    from kit.errors import ConfigError

    if args.folds is not None:
        raise ConfigError("--folds belongs to a run's bundle, not to kit bundle wheels")
    extra = {"license_name": args.license} if args.license else {}
    out = make_wheels_bundle(args.owner, args.slug or WHEELS_SLUG, args.out, args.wheel_cache, args.kit_source,
                             pythons=tuple(args.python or KAGGLE_PYTHONS), **extra)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"upload it with: kit bundle push {out}")
    return 0
