"""kit demo-data: write a synthetic dataset in a competition's real layout."""

from kit.commands import add_competition


def add_parser(sub):
    p = sub.add_parser("demo-data", help="write a synthetic dataset in a competition's file layout",
                       description="Write a synthetic, learnable dataset in the competition's own file layout "
                       "(labels CSV, image folder or HDF5, test list), deterministic from --seed.")
    add_competition(p, required=True)
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--n", type=int, default=400, help="training images (default 400)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default n/4)")
    p.add_argument("--size", type=int, default=None, help="side of the skin-lesion images (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from kit.data.synthetic import make_demo_data

    out = make_demo_data(args.competition, args.out, n=args.n, seed=args.seed, n_test=args.n_test, size=args.size)
    print(f"wrote {args.n} training images for {args.competition} to {out}")
    return 0
