"""kit demo-data: write a synthetic dataset in a competition's real layout."""

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("demo-data", help="write a synthetic dataset in a competition's file layout",
                       description="Write a synthetic, learnable dataset in the competition's own file layout "
                       "(labels CSV, image folder or HDF5, test list), deterministic from --seed.")
    add_competition(p, required=True)
    flags.add_out(p, "the data folder: new, empty, or an earlier demo set (replaced whole)", required=True,
                  metavar="DIR")
    p.add_argument("--n", type=int, default=400, help="training images (default 400)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default n/4)")
    p.add_argument("--size", type=int, default=None, help="side of the skin-lesion images (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from kit.data.synthetic import DEMO_MARK, make_demo_data

    if (Path(args.out) / DEMO_MARK).is_file():
        print(f"replacing the demo data in {args.out} (every file of it: labels, images, sample submission, folds)")
    out = make_demo_data(args.competition, args.out, n=args.n, seed=args.seed, n_test=args.n_test, size=args.size)
    print(f"wrote {args.n} training images for {args.competition} to {out}")
    return 0
