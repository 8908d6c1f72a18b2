"""The typed records between the stages: one reader and one writer per file (found by scanning kit/), a format
version, and one clear line for a missing, malformed or newer-version file."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from kit.cli import main
from kit.config import load_config
from kit.errors import KitError
from kit.records import (
    RECORDS,
    Decision,
    FoldResult,
    PredictInfo,
    RunInfo,
    Scores,
    StackInfo,
    TtaScores,
    read_record,
)
from kit.rundir import RunDir, StackDir, open_source

HCD = "histopathologic-cancer-detection"
KIT = Path(__file__).resolve().parents[1] / "kit"

SAMPLES = [
    RunInfo("../data", [0, 1]),
    FoldResult(1, 0.9, 3, 4),
    Scores("auc", 0.91, 0.9, {0: 0.89, 1: 0.91}),
    Scores("pauc80", 0.15, 0.14, {0: 0.13}, {"lgbm": 0.15}, {"img_a": 0.12}),
    TtaScores("auc", {"views": ["identity", "hflip"], "merge": "mean"}, {"0": {"no_tta": 0.8, "tta": 0.82,
              "gain": 0.02}}, {"no_tta": 0.8, "tta": 0.82, "gain": 0.02}, {"no_tta": 0.8, "tta": 0.82}),
    PredictInfo([0, 1], "../data", "oof_tta.csv", {"views": ["identity"], "merge": "mean"}),
    PredictInfo([0], None, "oof.csv", kind="stack"),
    Decision([0.5, 2.0], ["a", "b"], True, "auto", "oof_tta.csv", 0.5, 0.6, 0.5, 0.6, {0: 0.5}, {0: 0.6}, 0.7, True),
    StackInfo(HCD, "auc", ["age", "img_a"], [{"name": "img_a", "path": "../a", "oof": "oof_tta.csv", "cv": 0.9}],
              {"format": 1, "models": []}, {"models": ["lgbm"], "seeds": 2}),
]


def test_every_record_has_a_sample_here():
    assert {type(s) for s in SAMPLES} == set(RECORDS)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: f"{type(r).__name__}")
def test_a_record_reads_back_what_was_written_with_its_version(tmp_path, record):
    folder = StackDir(tmp_path / "folder")
    fold = 1 if isinstance(record, FoldResult) else None
    with folder.writing():
        path = folder.save(record, fold=fold)
    assert json.loads(path.read_text())["version"] == type(record).VERSION
    assert folder.load(type(record), fold=fold) == record


def test_files_written_before_records_had_a_version_still_read(tmp_path):
    """kit 0.2's files: no version (read as 1), a stack's predict.json saying "stack": true."""
    (tmp_path / "predict.json").write_text(json.dumps({"folds": [0, 1], "data": "../d", "oof": "oof.csv",
                                                       "stack": True}))
    assert read_record(PredictInfo, tmp_path / "predict.json") == PredictInfo([0, 1], "../d", "oof.csv", kind="stack")
    (tmp_path / "run.json").write_text(json.dumps({"data": "/abs/data", "folds": [2]}))
    assert read_record(RunInfo, tmp_path / "run.json") == RunInfo("/abs/data", [2])


def make_run(path: Path) -> RunDir:
    run = RunDir(path)
    with run.writing():
        run.write_config(load_config(HCD))
        run.save_info(path, [0])
    return run


@pytest.mark.parametrize("text, message", [
    (json.dumps({"version": 7, "data": ".", "folds": [0]}),
     r"run\.json is of format 7; this kit reads RunInfo up to format 1: upgrade kit"),
    (json.dumps({"data": ".", "folds": "zero"}), r"run\.json: key 'folds' is malformed \('zero'"),
    (json.dumps({"version": "one", "data": "."}), r"run\.json: key 'version' is malformed"),
    ('{"data": ', r"run\.json is not valid JSON \(line 1\)"),
])
def test_a_newer_or_malformed_run_json_gives_one_line_through_the_cli(tmp_path, capsys, text, message):
    run = make_run(tmp_path / "run")
    (run.path / "run.json").write_text(text)
    assert main(["predict", str(run.path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kit predict: error: ")
    assert __import__("re").search(message, err), err


def test_a_malformed_predict_json_names_the_file_and_key_in_kit_ensemble(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run.path / "predict.json").write_text(json.dumps({"version": 1, "data": None}))
    assert main(["ensemble", str(run.path), "--submissions", str(tmp_path / "subs")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run.path / 'predict.json'}: key 'folds' is missing" in err
    assert not (tmp_path / "subs").exists()


def test_a_missing_record_says_which_command_writes_it(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(KitError, match=r"has no test predictions \(no predict\.json\): run `kit predict"):
        run.load(PredictInfo)
    assert run.load(Scores, optional=True) is None


def test_a_stack_folder_is_a_prediction_source_and_not_a_run(tmp_path):
    stack = StackDir(tmp_path / "stack")
    with stack.writing():
        stack.save(SAMPLES[-1])
    assert isinstance(open_source(stack.path), StackDir) and open_source(stack.path).competition().name == HCD
    with pytest.raises(Exception, match="is a stack folder \\(kit stack\\), not a run"):
        RunDir.open(stack.path)
    assert isinstance(open_source(make_run(tmp_path / "run").path), RunDir)


# ------------------------------------------------------------------------------------------ one reader, one writer
READS = {"loads", "json.load", "read_json_file", "read_csv", "read_text"}
WRITES = {"dumps", "dump", "write_text_atomic", "write_csv_atomic", "to_csv", "write_text"}
# file -> (the names that point at it in code, the function that parses it, the function that writes it); a
# function is "module:qualname". Readers and writers elsewhere go through these (RunDir.load/save/predictions).
OWNERS = {
    **{r.FILE: ({r.__name__, r.FILE}, "kit.records:read_record", "kit.rundir:Folder.save") for r in RECORDS},
    "folds.csv": ({"folds_path", "FOLDS", "folds.csv"}, "kit.data.folds:load_folds", "kit.data.folds:write_folds"),
    "oof.csv, oof_tta.csv, test_fold{k}.csv": ({"oof_path", "oof_tta_path", "fold_oof_path", "test_path", "OOF",
                                                "OOF_TTA", "oof.csv", "oof_tta.csv"},
                                               "kit.rundir:Folder.predictions", "kit.rundir:Folder.write_csv"),
}
OWNERS["run.json"][0].add("INFO")
OWNERS["result.json"][0].add("result_path")
OWNERS["stack.json"][0].add("STACK_INFO")


def _names(node: ast.AST) -> set[str]:
    """Every name, attribute and string constant inside ``node`` (f-strings included)."""
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.add(n.id)
        elif isinstance(n, ast.Attribute):
            found.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            found.add(n.value)
    return found


def _func(call: ast.Call) -> str:
    """The called function's name: ``read_csv`` for ``pd.read_csv``, ``json.load`` for json's (not RunDir.load)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return f"json.{func.attr}" if isinstance(func.value, ast.Name) and func.value.id == "json" and \
            func.attr == "load" else func.attr
    return getattr(func, "id", "")


def file_io(module: str, source: str) -> list[tuple[str, str, str]]:
    """(file, "reads" or "writes", "module:function") for every raw read or write call in ``source`` whose
    arguments (or the object it is called on) name a record file."""
    out = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, scope + [child.name])
                continue
            if isinstance(child, ast.Call):
                func = _func(child)
                kind = "reads" if func in READS else "writes" if func in WRITES else None
                if kind:
                    names = _names(child) - {func}
                    for file, (tokens, _, _) in OWNERS.items():
                        if names & tokens:
                            out.append((file, kind, f"{module}:{'.'.join(scope)}"))
            visit(child, scope)

    visit(ast.parse(source), [])
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _function_source(where: str) -> str:
    module, qualname = where.split(":")
    path = KIT.parent / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    node: ast.AST = tree
    for name in qualname.split("."):
        node = next(n for n in ast.iter_child_nodes(node) if getattr(n, "name", None) == name)
    return ast.unparse(node)


def test_each_record_file_has_exactly_one_reader_and_one_writer():
    """Scan kit/ (the kernel templates aside: they run before kit is installed): a raw read or write of a record
    file happens only in its owner's parser and writer, and each of those does read or write."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(KIT.rglob("*.py")):
        if "templates" in path.parts:
            continue
        for file, kind, where in file_io(_module(path), path.read_text()):
            found.setdefault((file, kind), set()).add(where.split(":")[0])
    for file, (_, parser, writer) in OWNERS.items():
        assert found.get((file, "reads"), set()) <= {parser.split(":")[0]}, f"{file} parsed outside {parser}"
        assert found.get((file, "writes"), set()) <= {writer.split(":")[0]}, f"{file} written outside {writer}"
        reads = {_func(c) for c in ast.walk(ast.parse(_function_source(parser))) if isinstance(c, ast.Call)}
        writes = {_func(c) for c in ast.walk(ast.parse(_function_source(writer))) if isinstance(c, ast.Call)}
        assert reads & READS, f"{parser} reads no file"
        assert writes & WRITES, f"{writer} writes no file"


def test_the_scan_finds_a_second_reader_and_writer():
    source = ("def f(run):\n    info = json.loads(run.record_path(PredictInfo).read_text())\n"
              "    pd.read_csv(run.folds_path)\n    write_text_atomic(run.path / 'decision.json', '{}')\n")
    assert sorted(file_io("kit.somewhere", source)) == [
        ("decision.json", "writes", "kit.somewhere:f"), ("folds.csv", "reads", "kit.somewhere:f"),
        ("predict.json", "reads", "kit.somewhere:f"), ("predict.json", "reads", "kit.somewhere:f")]
