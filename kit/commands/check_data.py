"""kit check-data: check a competition folder before training (labels, files, and optionally every image)."""

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("check-data", help="check labels and images; optionally quarantine bad images",
                       description="Load the labels (ids, targets, groups), check that every id has an image, "
                       "and with --decode decode every image. Exits non-zero on the first problem, unless "
                       "--skip-bad-images, which writes the bad ones to a CSV that `kit train --exclude` reads.")
    add_competition(p, required=True)
    flags.add_data(p, required=True)
    p.add_argument("--decode", action="store_true", help="decode every image (one full pass over the data)")
    p.add_argument("--skip-bad-images", metavar="CSV", default=None,
                   help="instead of failing on bad images, write their ids and reasons to this CSV")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from kit.competitions import get_competition
    from kit.data.labels import load_train_table
    from kit.data.readers import check_images_exist, find_bad_images, open_store
    from kit.errors import DataError
    from kit.io import write_csv_atomic

    spec = get_competition(args.competition)
    table = load_train_table(spec, args.data)
    store = open_store(spec, args.data, "train")
    ids = list(table["id"])
    bad: list[tuple[str, str]] = []
    if args.skip_bad_images:
        bad += [(k, f"{store.ref(k)}: no image") for k in store.missing(ids)]
    else:
        check_images_exist(store, ids)
    if args.decode:
        missing = {k for k, _ in bad}
        bad += find_bad_images(store, [k for k in ids if k not in missing])
    if bad and not args.skip_bad_images:
        raise DataError(f"{len(bad)} of {len(ids)} images cannot be read, first: {bad[0][1]}")
    if args.skip_bad_images:
        write_csv_atomic(pd.DataFrame(bad, columns=["id", "reason"]), args.skip_bad_images)
        print(f"{len(bad)} bad images listed in {args.skip_bad_images}")
    print(f"ok: {len(ids) - len(bad)} labelled images in {store.location}")
    return 0
