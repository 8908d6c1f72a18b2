"""kit pack: decode a split's images once into the packed image cache (kit.data.pack), or check the one there."""

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("pack", help="decode a split's images once into a uint8 cache file on disk",
                       description="Decode every image of a split (the labelled ids for train, the test list for "
                       "test), resized to SIZE x SIZE, into one raw uint8 file, read row by row through the page cache (not memory-mapped). A valid pack "
                       "is reused, an interrupted build resumes where it stopped, and a pack whose images or ids "
                       "changed is rebuilt with a line naming what changed. Where: --cache-dir, else "
                       "$KIT_CACHE_DIR, else /kaggle/working/kit-cache on Kaggle, else DATA/.kit-cache when "
                       "writable, else ~/.cache/kit. Disk: N x SIZE x SIZE x 3 bytes.")
    add_competition(p, required=True)
    flags.add_data(p, required=True)
    p.add_argument("--size", type=int, required=True, help="side of the packed images in pixels, e.g. 128")
    p.add_argument("--split", choices=("train", "test"), default="train", help="default train")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="the folder that holds the packs (default: see "
                   "above)")
    flags.deprecated(p, ["--out"], "--cache-dir", "cache_dir")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(8, CPUs))")
    p.add_argument("--rebuild", action="store_true", help="rebuild the pack even when it is valid")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from kit.competitions import get_competition
    from kit.data.labels import load_test_table, load_train_table
    from kit.data.pack import ensure_pack, human_bytes

    spec = get_competition(args.competition)
    table = load_train_table(spec, args.data) if args.split == "train" else load_test_table(spec, args.data)
    # progress and status lines go to stderr; stdout keeps the one summary line a script can read
    pack = ensure_pack(spec, args.data, args.split, args.size, table["id"].tolist(), cache_dir=args.cache_dir,
                       workers=args.workers, rebuild=args.rebuild, log=lambda line: print(line, file=sys.stderr))
    print(f"{pack.status} {pack.path}: {len(pack)} images at {pack.size}x{pack.size} px, "
          f"{human_bytes(pack.disk_bytes())} on disk")
    return 0
