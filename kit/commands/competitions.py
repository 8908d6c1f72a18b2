"""kit competitions: list the supported competitions."""

from kit.competitions import list_competitions


def add_parser(sub):
    p = sub.add_parser("competitions", help="list the supported competitions",
                       description="List the supported competitions with their task, metric and files.")
    p.set_defaults(func=run)


def run(args) -> int:
    for spec in list_competitions():
        classes = spec.classes[0] if spec.is_binary else " ".join(spec.classes)
        aliases = f" (also: {', '.join(spec.aliases)})" if spec.aliases else ""
        print(f"{spec.name}{aliases}\n  {spec.title}\n  task {spec.task} ({classes}); metric {spec.metric}; "
              f"group {spec.group_col or '-'}\n  labels {spec.labels_file}; submission {','.join(spec.submission_columns)}")
    return 0
