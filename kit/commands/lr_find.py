"""kit lr-find: the learning-rate range test on a run's (or a preset's) setup; prints the --set train.lr to use."""

from __future__ import annotations

from kit.commands import add_config_source
from kit.commands.flags import add_out


def add_parser(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test: plot loss against lr, suggest train.lr",
                       description="Train one fold's training part for --steps steps while the learning rate rises "
                       "geometrically from --start to --end, with the config's model, weights, augmentation, loss, "
                       "optimizer and freezing stage. Writes the plot (--out) and prints the suggested "
                       "--set train.lr=...; writes no run folder and changes no file of a run.")
    add_config_source(p)
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    p.add_argument("--fold", type=int, default=0, help="whose training part (default 0)")
    p.add_argument("--stage", default="auto", help="auto (the first epoch's: frozen when model.freeze_epochs > 0), "
                   "frozen (the head alone), unfrozen (default auto)")
    add_out(p, "the plot", default="lr-find.png", metavar="FILE")
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.commands import config_source
    from kit.diagnostics.lr_find import lr_find, plot_lr_find

    cfg, data = config_source(args)
    result = lr_find(cfg, data, args.start, args.end, args.steps, args.fold, args.stage)
    path = plot_lr_find(result, args.out)
    print(f"lr-find: {len(result.losses)} steps ({result.stopped}), backbone {result.stage}; plot {path}")
    print(f"suggested learning rate: {result.suggestion:.2g} (a tenth of the rate at the smoothed loss's first "
          "minimum)")
    print(f"use: --set train.lr={result.suggestion:.2g}")
    return 0
