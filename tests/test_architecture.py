"""The shape of the code: a stage imports only earlier stages, and functions fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"

# The pipeline's floors, lowest first. A module may import its own floor and the floors below it, never above:
# data -> train -> predict -> ensemble -> submission -> kaggle, with what two stages share one floor below both.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("kit", "kit.errors", "kit.words", "kit.io", "kit.progress", "kit.registry", "kit.competitions",
              "kit.metrics", "kit.budget", "kit.console")),
    ("data", ("kit.data",)),
    ("components", ("kit.models", "kit.weights", "kit.losses", "kit.transforms", "kit.tta", "kit.gpu_augment",
                    "kit.mixing")),
    ("config", ("kit.config",)),
    ("contracts", ("kit.records", "kit.rundir", "kit.checkpoint", "kit.oof", "kit.runtime", "kit.distributed")),
    ("train", ("kit.warm_start", "kit.pseudo", "kit.train", "kit.epoch_handlers", "kit.averaging",
               "kit.parallel_folds", "kit.trackers")),
    ("tune", ("kit.tune",)),
    ("predict", ("kit.predict",)),
    ("diagnostics", ("kit.diagnostics",)),  # looks at a run with its fold models; the report embeds its pictures
    ("report", ("kit.report", "kit.run_page", "kit.compare")),
    ("blend", ("kit.blend",)),
    ("ensemble", ("kit.ensemble", "kit.decision")),
    ("stack", ("kit.stack",)),
    ("submission", ("kit.submission",)),
    ("pipeline", ("kit.pipeline",)),
    ("kaggle", ("kit.kaggle", "kit.bundle", "kit.kernel", "kit.kernel_train", "kit.code_submission")),
    ("commands", ("kit.commands", "kit.cli", "kit.templates", "kit.__main__")),
]
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> int:
    """The floor of ``module``: the longest matching prefix wins (kit.data.folds is in kit.data)."""
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    if index is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it where it belongs")
    return index


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = KIT.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def kit_imports(path: Path) -> set[str]:
    """Every kit module ``path`` imports, at the top or inside a function (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "kit"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kit" and not node.level:
            # `from kit import tune` imports kit.tune; `from kit.stack import models` kit.stack.models;
            # `from kit.x import name` imports kit.x
            modules = {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
            found |= modules or ({node.module} if node.module != "kit" else set())
    return found


SOURCES = sorted(KIT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(KIT.parent)))
def test_no_module_imports_a_later_stage(path):
    me = module_name(path)
    mine = layer_of(me)
    later = sorted(f"{m} ({LAYERS[layer_of(m)][0]})" for m in kit_imports(path) if layer_of(m) > mine)
    assert not later, f"{me} ({LAYERS[mine][0]}) imports later stages: {', '.join(later)}"


def test_the_layer_check_catches_a_backward_import(tmp_path):
    bad = KIT / "predict.py"
    source = bad.read_text() + "\nfrom kit.ensemble import get_blend\n"
    (tmp_path / "predict.py").write_text(source)
    assert "kit.ensemble" in kit_imports(tmp_path / "predict.py")
    assert layer_of("kit.ensemble") > layer_of("kit.predict")


def import_graph() -> dict[str, set[str]]:
    """Module -> the kit modules it imports (each import resolved to the module or package that holds the name)."""
    paths = {module_name(p): p for p in SOURCES}

    def resolve(name: str) -> str:
        while name not in paths:
            name = name.rsplit(".", 1)[0]
        return name

    return {me: {resolve(m) for m in kit_imports(path)} - {me} for me, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, todo = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_in_kit():
    """No two modules import each other, directly or through others, lazily or not, on one floor or across."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_on_one_floor():
    graph = import_graph()
    assert "kit.weights" in graph["kit.models"]  # kit.models builds with kit.weights
    graph["kit.weights"] = graph["kit.weights"] | {"kit.models"}
    cycle = find_cycle(graph)
    assert cycle is not None and {"kit.models", "kit.weights"} <= set(cycle) and cycle[0] == cycle[-1]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


# A library logs, a command prints (kit/console.py): only these may print, and the kernel scripts run before kit exists.
MAY_PRINT = ("kit.commands", "kit.cli", "kit.templates", "kit.__main__")


def prints(path: Path) -> list[int]:
    """The lines where ``path`` calls or passes ``print`` (a print in a string or a comment does not count)."""
    return sorted(node.lineno for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Name) and node.id == "print")


def test_library_modules_log_instead_of_printing():
    library = [p for p in SOURCES if not any(module_name(p) == m or module_name(p).startswith(m + ".")
                                             for m in MAY_PRINT)]
    found = [f"{p.relative_to(KIT.parent)}:{line}" for p in library for line in prints(p)]
    assert not found, "print() in library modules (log = logging.getLogger(__name__); log.info(...)): " + \
        ", ".join(found)


def test_the_print_check_sees_calls_and_defaults_but_not_words(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('"""print(x) in a docstring"""\n# print(y)\ndef f(log=print):\n    print("z")\n')
    assert prints(source) == [3, 4]


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(KIT.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)
