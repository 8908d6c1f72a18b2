"""kit kernel: build an offline Kaggle kernel for a competition, push it, read its status; `run` is what it runs."""

from __future__ import annotations

import argparse

from kit.commands import add_competition


def add_parser(sub):
    p = sub.add_parser("kernel", help="build, push and check an offline Kaggle kernel that predicts with a bundle",
                       description="An offline Kaggle kernel (internet off, GPU on) that installs kit from an attached "
                       "wheels dataset, predicts the test images with the fold checkpoints of a bundle (kit bundle) "
                       "and TTA, and writes a validated submission.csv.")
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
    b.add_argument("--tta", default="8", help="TTA view set: 1, 2, 4 or 8 (default 8)")
    b.add_argument("--out", default=None, help="output folder (default kernels/<competition>)")
    b.set_defaults(func=_build)

    u = actions.add_parser("push", help="push a kernel folder to Kaggle (needs credentials); it runs at once")
    u.add_argument("folder", metavar="DIR", help="a folder written by kit kernel build")
    u.set_defaults(func=_push)

    s = actions.add_parser("status", help="the status of a kernel's latest run (needs credentials)")
    s.add_argument("ref", metavar="OWNER/SLUG")
    s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="poll until the run is over or SECONDS have passed (default 0: ask once)")
    s.add_argument("--poll-every", type=float, default=30.0, metavar="SECONDS", help="seconds between polls "
                   "(default 30)")
    s.set_defaults(func=_status)

    r = actions.add_parser("run", help="what the kernel runs: predict with a checkpoints folder, write "
                           "submission.csv", description="Predict the test images with every fold of a bundle's "
                           "checkpoints folder and TTA, average the folds, write WORKING/submission.csv and "
                           "validate it against the competition's test ids.")
    add_competition(r, required=True)
    r.add_argument("--data", required=True, help="the competition data folder")
    r.add_argument("--weights", required=True, help="a bundle's checkpoints folder (run.json, fold*/best.pt)")
    r.add_argument("--out", "--working", dest="working", default="/kaggle/working",
                   help="where submission.csv goes (default /kaggle/working)")
    r.add_argument("--tta", default="8", help="TTA view set: 1, 2, 4 or 8 (default 8)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    r.set_defaults(func=_run)


def _build(args: argparse.Namespace) -> int:
    from kit.kernel import build_kernel

    out = build_kernel(args.competition, args.owner, args.wheels_dataset, args.weights_dataset, args.tta, args.out)
    print(f"wrote {out}/kernel-metadata.json and {out}/kernel.py; push it with: kit kernel push {out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from kit.kernel import push_kernel

    print(push_kernel(args.folder).summary())
    return 0


def _status(args: argparse.Namespace) -> int:
    import time

    from kit.errors import KaggleError
    from kit.kernel import kernel_status

    status, failure = kernel_status(args.ref)
    deadline = time.monotonic() + args.wait  # from the first answer: importing the client takes a while
    while status in ("queued", "running", "new_script") and time.monotonic() < deadline:
        time.sleep(min(args.poll_every, max(0.0, deadline - time.monotonic())))
        status, failure = kernel_status(args.ref)
    if status == "error":
        raise KaggleError(f"kernel {args.ref} failed: {failure or 'no message'}; its log: "
                          f"https://www.kaggle.com/code/{args.ref}/log")
    print(f"{args.ref}: {status}" + (f" ({failure})" if failure else ""))
    if status == "complete":
        print(f"its submission.csv: kaggle kernels output {args.ref} -p OUT_DIR")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kit.kernel import run_kernel

    run_kernel(args.competition, args.data, args.weights, args.working, args.tta, args.device)
    return 0
