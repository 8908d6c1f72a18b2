"""kit folds: write leak-safe, stratified (and grouped) folds to a CSV."""

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("folds", help="write stratified (group-aware) folds to a CSV",
                       description="Assign each training id a fold: StratifiedGroupKFold when the competition "
                       "has groups (patient, lesion) or --groups is given, StratifiedKFold otherwise.")
    add_competition(p, required=True)
    flags.add_data(p, required=True)
    flags.add_out(p, "the folds CSV (id column, fold), e.g. DATA/folds.csv, which kit train then uses", required=True,
                  metavar="FILE")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--groups", default=None, help="CSV mapping id -> group (e.g. patch -> slide for HCD)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from kit.competitions import get_competition
    from kit.data.folds import load_group_mapping, make_folds, write_folds
    from kit.data.labels import load_train_table

    spec = get_competition(args.competition)
    table = load_train_table(spec, args.data)
    if args.groups:
        groups = load_group_mapping(args.groups, table["id"], spec.id_col)
    else:
        groups = table["group"].to_numpy() if spec.group_col else None
    class_names = None if spec.is_binary else list(spec.classes)
    fold = make_folds(table["target"].to_numpy(), groups, args.n_folds, args.seed, class_names)
    write_folds(args.out, table["id"], fold, spec.id_col)
    print(f"wrote {args.out}: {len(table)} ids in {args.n_folds} folds"
          f"{' grouped by ' + (args.groups or spec.group_col) if groups is not None else ''}")
    for k in range(args.n_folds):
        t = table["target"].to_numpy()[fold == k]
        rate = f"positive rate {t.mean():.3f}" if spec.is_binary else f"{len(np.unique(t))} classes"
        print(f"  fold {k}: {len(t)} ids, {rate}")
    return 0
