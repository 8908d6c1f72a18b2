"""kit pseudo: one pseudo-label round; a new run like a predicted one, its folds trained also on confident test images."""

from kit.commands import flags, train


def add_parser(sub):
    p = sub.add_parser("pseudo", help="train a run again with its confident test predictions as extra training rows",
                       description="Train a new run with the config, folds and data of a predicted run (kit "
                       "predict), fold k also on the test images that run's fold k model is confident about, with its "
                       "probabilities as soft labels (data.pseudo). The test images never validate and never enter "
                       "oof.csv or the CV; history.csv counts them (pseudo_images).")
    flags.add_run_dir(p, help="a predicted run folder (test_fold{k}.csv of every fold)")
    flags.add_out(p, "the new run folder", required=True, metavar="RUN")
    p.add_argument("--threshold", type=float, default=None, help="keep a test image when its top probability "
                   "(binary: p or 1 - p) is at least this (data.pseudo_threshold, default 0.9)")
    p.add_argument("--hard", action="store_true", help="the argmax class as the label instead of the probabilities")
    flags.add_set(p, "applies to the new run")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    from kit.config import config_to_yaml
    from kit.records import RunInfo
    from kit.rundir import RunDir

    source = RunDir.open(args.run_dir)
    cfg, data_dir, folds = source.config(), source.data_dir(), source.load(RunInfo).folds
    pairs = [f"data.pseudo={source.path.resolve()}", *(["data.pseudo_hard=true"] if args.hard else []),
             *([f"data.pseudo_threshold={args.threshold}"] if args.threshold is not None else []), *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        preset = Path(tmp) / "config.yaml"  # the source's config, its paths resolved, as the new run's preset
        preset.write_text(config_to_yaml(cfg, with_provenance=False))
        argv = ["train", "-c", cfg.competition, "--data", str(data_dir), "--out", args.out, "--config", str(preset),
                "--folds-file", str(source.folds_path), "--folds", ",".join(map(str, folds)),
                *(f"--set={pair}" for pair in pairs)]
        argv += [flag for flag, on in (("--overwrite", args.overwrite), ("--no-progress", args.no_progress)) if on]
        parser = argparse.ArgumentParser(prog="kit")
        train.add_parser(parser.add_subparsers())
        train_args = parser.parse_args(argv)
        return train_args.func(train_args)
