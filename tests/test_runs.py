"""kit runs: the table of run folders with CV, CV with TTA and leaderboard score; kit submit logs the run and its
CV in submissions/log.csv (older logs gain the two columns)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fake_kaggle_server import FakeKaggle
from test_kaggle_submit import base_env, key_env, kit_submit

from kit.cli import main
from kit.config import load_config
from kit.kaggle import LOG_COLUMNS, SubmissionResult, append_log
from kit.records import PredictInfo, Scores, StackInfo, TtaScores
from kit.rundir import RunDir, StackDir

HCD = "histopathologic-cancer-detection"


def make_run(path: Path, model: str, cv: float | None, cv_tta: float | None = None, epochs: int = 3) -> RunDir:
    run = RunDir(path)
    cfg = load_config(HCD, overrides=[f"model.name={model}", f"train.epochs={epochs}", "model.img_size=64"])
    with run.writing():
        run.write_config(cfg)
        run.save_info(path, [0, 1])
        if cv is not None:
            run.save(Scores("auc", cv, cv, {0: cv, 1: cv}))
        if cv_tta is not None:
            run.save(TtaScores("auc", {"views": ["id"], "merge": "mean"}, {}, {"no_tta": cv, "tta": cv_tta, "gain": 0},
                               {}))
    return run


def make_stack(path: Path, cv: float, inputs: list[str]) -> StackDir:
    """A stack folder as kit stack leaves it (its record files; no config.yaml, no run.json)."""
    stack = StackDir(path)
    with stack.writing():
        stack.save(StackInfo(HCD, "auc", ["age", *(f"img_{n}" for n in inputs)],
                             [{"name": f"img_{n}", "path": f"../{n}", "oof": "oof_tta.csv", "cv": 0.9} for n in inputs],
                             None, {"models": ["lgbm", "xgb"], "seeds": 1}))
        stack.save(Scores("auc", cv, cv, {0: cv, 1: cv}, {"lgbm": cv, "xgb": cv}, {f"img_{n}": 0.9 for n in inputs}))
        stack.save(PredictInfo([0, 1], None, "oof.csv", kind="stack"))
        for k in (0, 1):
            stack.fold_dir(k).mkdir()
    return stack


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_run(root / "a-resnet", "resnet18", 0.91, 0.93)
    make_run(root / "b-effnet", "efficientnet_b0", 0.95, epochs=5)
    make_run(root / "tune" / "s" / "trial-0", "test_resnet", None)
    make_stack(root / "stack-ab", 0.97, ["a-resnet", "b-effnet"])
    (root / "not-a-run").mkdir()
    log = tmp_path / "log.csv"
    for ref, run, score in ((1, "a-resnet", 0.90), (2, "a-resnet", 0.92), (3, "", 0.99)):
        append_log(SubmissionResult(HCD, Path(f"s{ref}.csv"), "ab" * 32, "m", ref, "complete", score, run=run), log)
    return root


def test_the_table_lists_every_run_sorted_by_cv_with_the_best_lb(runs, capsys):
    assert main(["runs", str(runs), "--log", str(runs.parent / "log.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "kind", "competition", "model", "size", "epochs", "folds", "cv", "cv_tta", "lb",
                                "inputs"]
    assert [s.split()[0] for s in lines[1:]] == ["stack-ab", "b-effnet", "a-resnet", "trial-0"]  # no CV: last
    assert lines[3].split()[1:] == ["run", HCD, "resnet18", "64", "3", "0", "0.9100", "0.9300", "0.9200", "-"]
    # a stack as a stack: its GBDTs, no input size or epochs it never had, the runs it stacks
    assert lines[1].split()[1:] == ["stack", HCD, "lgbm+xgb", "-", "-", "2", "0.9700", "-", "-", "a-resnet,b-effnet"]
    assert not (runs / "stack-ab" / "config.yaml").exists()


def test_csv_and_other_sort_keys(runs, capsys):
    assert main(["runs", str(runs), "--csv", "--sort", "run", "--log", str(runs.parent / "log.csv")]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["run"] for r in rows] == ["a-resnet", "b-effnet", "stack-ab", "trial-0"]
    assert (rows[2]["kind"], rows[2]["model"], rows[2]["epochs"]) == ("stack", "lgbm+xgb", "")
    assert rows[0]["cv_tta"] == "0.93" and rows[1]["lb"] == "" and rows[1]["epochs"] == "5"
    assert main(["runs", str(runs), "--sort", "lb", "--csv", "--log", str(runs.parent / "log.csv")]) == 0
    assert list(csv.DictReader(capsys.readouterr().out.splitlines()))[0]["run"] == "a-resnet"
    assert main(["runs", str(runs / "nothing")]) == 1
    assert "not found" in capsys.readouterr().err


def test_an_old_log_gains_the_run_and_cv_columns(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(",".join(LOG_COLUMNS[:-2]) + "\n2024-01-01T00:00:00+00:00,hcd,a.csv,ab,first,1,complete,0.5\n")
    append_log(SubmissionResult(HCD, Path("b.csv"), "cd" * 32, "second", 2, "complete", 0.6, run="r", cv=0.9), log)
    rows = list(csv.DictReader(open(log, newline="")))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [(r["message"], r["run"], r["cv"]) for r in rows] == [("first", "", ""), ("second", "r", "0.9")]


def test_submit_logs_the_run_named_in_the_file_and_its_cv(tmp_path, demo_data):
    hcd = demo_data(HCD, n=20)
    make_run(tmp_path / "runs" / "my-run", "resnet18", 0.81, 0.83)
    ids = [r["id"] for r in csv.DictReader(open(hcd / "sample_submission.csv"))]
    sub = tmp_path / "submissions" / f"{HCD}-my-run-20261124-120000.csv"
    sub.parent.mkdir()
    sub.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in ids))
    with FakeKaggle(public_score="0.8") as fake:
        run = kit_submit(tmp_path, hcd, sub, {**base_env(tmp_path, fake), **key_env(fake)})
    assert run.rc == 0, run.err
    [row] = run.rows()
    assert (row["run"], row["cv"], row["public_score"]) == ("my-run", "0.83", "0.8")
    assert json.loads((tmp_path / "runs" / "my-run" / "scores_tta.json").read_text())["cv"]["tta"] == 0.83
