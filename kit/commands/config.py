"""kit config: the resolved config (defaults <- preset <- --set) as YAML, and every valid key."""

from kit.commands import flags
from kit.commands.flags import add_competition


def add_parser(sub):
    p = sub.add_parser("config", help="show the resolved config, or list every config key",
                       description="`kit config show` prints the config a `kit train` with the same --competition, "
                       "--config and --set would use, checked the same way; `kit config keys` lists every key with "
                       "its type, default, help and valid values.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML",
                              description="Print the resolved config as YAML (what config.yaml of a run would hold, "
                              "without the provenance).")
    add_competition(show, help="its preset is the default --config")
    flags.add_config(show)
    flags.add_set(show)
    show.set_defaults(func=run_show)
    keys = actions.add_parser("keys", help="list every config key with its type, default and help",
                              description="List every config key: type, default, help, and the valid values of "
                              "closed sets and ranges.")
    keys.set_defaults(func=run_keys)


def run_show(args) -> int:
    import contextlib
    import sys

    from kit.config import config_to_yaml, load_config

    with contextlib.redirect_stdout(sys.stderr):  # its notes (a preset's value lowered, ...): stdout is the YAML
        cfg = load_config(args.competition, args.config, args.overrides)
    print(config_to_yaml(cfg, with_provenance=False), end="")
    return 0


def run_keys(args) -> int:
    from kit.config import describe_keys

    rows = describe_keys()
    widths = [max(len(r[c]) for r in rows) for c in ("key", "type", "default")]
    for r in rows:
        valid = f"; valid: {r['valid']}" if r["valid"] else ""
        print(f"{r['key']:<{widths[0]}}  {r['type']:<{widths[1]}}  {r['default']:<{widths[2]}}  {r['help']}{valid}")
    return 0
