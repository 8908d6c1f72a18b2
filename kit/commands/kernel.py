"""kit kernel: build, push and check Kaggle kernels that predict (offline) or train (on Kaggle's GPUs, resuming
across sessions); pull a training kernel's run folder; `train` = build + push + wait + pull; `run` is what an
inference kernel runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("kernel", help="Kaggle kernels: predict offline with a bundle, or train on Kaggle's GPUs",
                       description="An offline Kaggle kernel (internet off, GPU on) that installs kit from an attached "
                       "wheels dataset and either predicts the test images with the fold checkpoints of a bundle "
                       "(kit bundle) and TTA, writing a validated submission.csv, or (build --train, train) trains "
                       "a run on Kaggle's GPU with a time budget, continuing it session after session.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="write kernel-metadata.json and kernel.py for a competition",
                           description="Write a pushable kernel folder: kernel-metadata.json (private, GPU, internet "
                           "off, the competition and the datasets attached) and kernel.py.")
    add_competition(b, required=True)
    b.add_argument("--owner", required=True, help="your Kaggle user name (the kernel is OWNER/kit-<competition>)")
    b.add_argument("--weights-dataset", default=None, metavar="OWNER/SLUG",
                   help="the bundle with the checkpoints (default OWNER/kit-<competition>-weights, kit bundle's "
                   "default name)")
    b.add_argument("--wheels-dataset", default=None, metavar="OWNER/SLUG",
                   help="the dataset with kit's wheel (default: the weights dataset; kit bundle puts both in one)")
    flags.add_tta(b)
    flags.add_out(b, "the kernel folder (default kernels/<competition>, with --train kernels/train-<competition>)",
                  metavar="DIR")
    _train_options(b.add_argument_group("training kernels (--train)"))
    b.set_defaults(func=_build)

    u = actions.add_parser("push", help="push a kernel folder to Kaggle (needs credentials); it runs at once")
    u.add_argument("folder", metavar="DIR", help="a folder written by kit kernel build")
    u.set_defaults(func=_push)

    s = actions.add_parser("status", help="the status of a kernel's latest run (needs credentials)")
    s.add_argument("ref", metavar="OWNER/SLUG")
    _wait_options(s, 0.0, 30.0)
    s.set_defaults(func=_status)

    _add_training_actions(actions)

    r = actions.add_parser("run", help="what the kernel runs: predict with a checkpoints folder, write "
                           "submission.csv", description="Predict the test images with every fold of a bundle's "
                           "checkpoints folder and TTA, average the folds, write WORKING/submission.csv and "
                           "validate it against the competition's test ids.")
    add_competition(r, required=True)
    flags.add_data(r, required=True)
    r.add_argument("--weights", required=True, help="a bundle's checkpoints folder (run.json, fold*/best.pt), or "
                   "a stack bundle's stack folder (stack.json: the image runs, then the stack's saved GBDTs)")
    r.add_argument("--working", default=None, metavar="DIR",
                   help="the folder submission.csv goes into (default /kaggle/working inside a Kaggle kernel, "
                   "else the current folder)")
    flags.deprecated(r, ["--out"], "--working", "working")
    flags.add_tta(r)
    flags.add_device(r)
    r.set_defaults(func=_run)


def _add_training_actions(actions) -> None:
    """pull and train: the training kernel's way back and its one-command loop."""
    g = actions.add_parser("pull", help="wait for a training kernel, download its output as a local run folder",
                           description="Wait for the kernel's latest version (status polling), download its output "
                           "and make the run folder in it the local run folder OUT, which kit predict, ensemble, "
                           "bundle and report accept. A failed kernel's log tail is shown, with a non-zero exit; "
                           "an unfinished run (stopped by its time budget) exits 75.")
    g.add_argument("ref", metavar="OWNER/SLUG")
    flags.add_out(g, "the local run folder (a run folder there is replaced)", required=True, metavar="RUN")
    _wait_options(g, 0.0, 30.0)
    _data_option(g)
    g.set_defaults(func=_pull)

    t = actions.add_parser("train", help="train on Kaggle's GPU: build --train + push + wait + pull",
                           description="Build a training kernel, push it, wait for it and pull its run folder into "
                           "--run. With --sessions N, an unfinished run (stopped by its time budget) is "
                           "continued by up to N pushes in all. Needs Kaggle credentials and the wheels dataset "
                           "(kit bundle wheels --owner USER, then kit bundle push).")
    add_competition(t, required=True)
    t.add_argument("--owner", required=True, help="your Kaggle user name")
    flags.add_out(t, "the kernel folder", default="kernels/train-<competition>", metavar="DIR")
    t.set_defaults(out=None)
    t.add_argument("--run", dest="out_run", metavar="RUN",
                   help="the local run folder the result is pulled into (required)")
    flags.deprecated(t, ["--out-run"], "--run", "out_run")
    t.add_argument("--sessions", type=int, default=1, help="pushes at most, each a Kaggle session (default 1)")
    _train_options(t, with_flag=False)
    _wait_options(t, 13 * 3600.0, 60.0)
    _data_option(t)
    t.set_defaults(func=_train)


def _train_options(g, with_flag: bool = True) -> None:
    if with_flag:
        g.add_argument("--train", action="store_true", help="a training kernel instead of an inference one")
    flags.add_config(g, "e.g. a run's config.yaml; default: the competition's preset")
    flags.add_set(g, "model.weights may name a file of an attached dataset")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training cleanly when the next epoch would end after SECONDS from the script's start "
                   "(default 39600, 11 h: a GPU session ends at 12 h)")
    g.add_argument("--continue", dest="resume", action="store_true", help="continue the run in the output of the "
                   "kernel's previous version (attached as its input)")
    g.add_argument("--internet", action="store_true", help="internet on (default off; some competitions forbid it)")
    g.add_argument("--accelerator", default=None, choices=("t4x2", "p100"), help="GPU: t4x2 (default, Kaggle's two "
                   "T4s) or p100")
    g.add_argument("--attach", action="append", default=[], metavar="OWNER/SLUG",
                   help="another dataset to attach, e.g. pretrained weights (repeatable)")
    if not with_flag:
        g.add_argument("--wheels-dataset", default=None, metavar="OWNER/SLUG",
                       help="the dataset with kit's wheel (default OWNER/kit-wheels, kit bundle wheels' name)")


def _wait_options(p, wait: float, poll_every: float) -> None:
    p.add_argument("--wait", type=float, default=wait, metavar="SECONDS",
                   help=f"poll until the kernel is over or SECONDS have passed (default {wait:g}: ask once)"
                   if not wait else f"poll until the kernel is over or SECONDS have passed (default {wait:g})")
    p.add_argument("--poll-every", type=float, default=poll_every, metavar="SECONDS",
                   help=f"seconds between polls (default {poll_every:g})")


def _data_option(p) -> None:
    flags.add_data(p, default_note="your local copy, recorded in the pulled run; default: keep Kaggle's path")


TRAIN_ONLY = {"config": "--config", "overrides": "--set", "time_budget": "--time-budget", "resume": "--continue",
              "internet": "--internet", "accelerator": "--accelerator", "attach": "--attach"}


def _build_train(args: argparse.Namespace, out: str | None) -> Path:
    from kit.kernel_train import DEFAULT_TIME_BUDGET, build_train_kernel

    budget = DEFAULT_TIME_BUDGET if args.time_budget is None else args.time_budget
    return build_train_kernel(args.competition, args.owner, args.wheels_dataset, args.config, args.overrides,
                              budget, args.internet, args.accelerator or "t4x2", args.resume, args.attach, out)


def _build(args: argparse.Namespace) -> int:
    from kit.errors import ConfigError
    from kit.kernel import build_kernel

    if args.train:
        if args.weights_dataset or args.tta != "8":
            raise ConfigError("--weights-dataset and --tta belong to inference kernels, not to --train")
        out = _build_train(args, args.out)
    else:
        given = [flag for name, flag in TRAIN_ONLY.items() if getattr(args, name) not in (None, False, [])]
        if given:
            verb = "belongs" if len(given) == 1 else "belong"
            raise ConfigError(f"{', '.join(given)} {verb} to training kernels: add --train")
        out = build_kernel(args.competition, args.owner, args.wheels_dataset, args.weights_dataset, args.tta, args.out)
    print(f"wrote {out}/kernel-metadata.json and {out}/kernel.py; push it with: kit kernel push {out}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from kit.budget import EXIT_BUDGET
    from kit.kernel_train import pull_kernel

    result = pull_kernel(args.ref, args.out, args.data, args.wait, args.poll_every, say=_say)
    print(result.summary())
    return 0 if result.finished else EXIT_BUDGET


def _train(args: argparse.Namespace) -> int:
    from kit.budget import EXIT_BUDGET
    from kit.errors import ConfigError
    from kit.kernel import push_kernel
    from kit.kernel_train import pull_kernel, script_build

    if not args.out_run:  # not argparse's required=True: the old spelling --out-run fills it too
        raise ConfigError("missing --run RUN: the local run folder the result is pulled into")
    if args.sessions < 1:
        raise ConfigError(f"--sessions must be at least 1, got {args.sessions}")
    result = None
    for session in range(args.sessions):
        args.resume = args.resume or session > 0
        folder = _build_train(args, args.out)
        pushed = push_kernel(folder)
        print(pushed.summary().split(":")[0] + f" (session {session + 1} of at most {args.sessions})", flush=True)
        result = pull_kernel(pushed.ref, args.out_run, args.data, args.wait, args.poll_every, script_build(folder),
                             say=_say)
        print(result.summary(), flush=True)
        if result.finished:
            return 0
    return EXIT_BUDGET


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _push(args: argparse.Namespace) -> int:
    from kit.kernel import push_kernel

    print(push_kernel(args.folder).summary())
    return 0


def _status(args: argparse.Namespace) -> int:
    from kit.kernel_train import failed, wait_for_kernel

    status, failure = wait_for_kernel(args.ref, args.wait, args.poll_every)
    if status == "error":
        raise failed(args.ref, failure)
    print(f"{args.ref}: {status}" + (f" ({failure})" if failure else ""))
    if status == "complete":
        if args.ref.split("/")[-1].startswith("kit-train-"):
            print(f"its run folder: kit kernel pull {args.ref} --out RUN")
        else:
            print(f"its submission.csv: kaggle kernels output {args.ref} -p OUT_DIR")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kit.kernel import DEFAULT_WORKING, run_kernel

    working = args.working or (DEFAULT_WORKING if Path(DEFAULT_WORKING).is_dir() else ".")
    run_kernel(args.competition, args.data, args.weights, working, args.tta, args.device)
    return 0
