"""The shape of the code: a stage imports only earlier stages, and functions fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"

# The pipeline's floors, lowest first. A module may import its own floor and the floors below it, never above:
# data -> train -> predict -> ensemble -> submission -> kaggle, with what two stages share one floor below both.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("kit", "kit.errors", "kit.io", "kit.progress", "kit.registry", "kit.competitions", "kit.metrics",
              "kit.budget", "kit.console")),
    ("data", ("kit.data",)),
    ("components", ("kit.models", "kit.weights", "kit.losses", "kit.transforms", "kit.tta", "kit.gpu_augment")),
    ("config", ("kit.config",)),
    ("contracts", ("kit.records", "kit.rundir", "kit.checkpoint", "kit.oof", "kit.runtime", "kit.distributed")),
    ("train", ("kit.train", "kit.epoch_handlers", "kit.parallel_folds")),
    ("tune", ("kit.tune",)),
    ("predict", ("kit.predict",)),
    ("report", ("kit.report",)),
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


def kit_imports(path: Path) -> set[str]:
    """Every kit module ``path`` imports, at the top or inside a function (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "kit"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kit" and not node.level:
            # `from kit import tune` imports kit.tune; `from kit.x import name` imports kit.x
            found |= {f"kit.{a.name}" for a in node.names if (KIT / a.name).exists() or (KIT / f"{a.name}.py").exists()} \
                if node.module == "kit" else {node.module}
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


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(KIT.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)
