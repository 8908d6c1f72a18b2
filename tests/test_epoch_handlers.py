"""The fold loop's epoch-end handlers: a new concern joins without touching the loop, adds history columns, stops a
fold, and has its state saved in last.pt and restored on resume."""

from __future__ import annotations

import pandas as pd

import kit.train
from kit.checkpoint import load_checkpoint
from kit.config import load_config
from kit.epoch_handlers import EarlyStopping, EpochHandler, History, LastCheckpoint
from kit.train import build_handlers, train_folds

HCD = "histopathologic-cancer-detection"
TINY = ["model.name=test_resnet", "model.img_size=32", "train.batch_size=16", "n_folds=2", "train.warmup_epochs=0",
        "train.device=cpu", "train.keep_last=true"]


class Counting(EpochHandler):
    """Counts epochs across a resume, writes the count into the history, and stops the fold at ``stop_at``."""

    name = "counting"

    def __init__(self, stop_at: int | None = None):
        self.count, self.stop_at, self.started_at = 0, stop_at, None

    def on_fit_start(self, trainer, start_epoch):
        self.started_at = start_epoch

    def on_epoch_end(self, trainer, end):
        self.count += 1
        end.row["count"] = self.count
        if end.epoch == self.stop_at:
            trainer.stop = "stopped by the counting handler"

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _with(monkeypatch, handler: EpochHandler) -> None:
    """Insert ``handler`` before the history handler (where build_handlers' concerns go)."""

    def build(*args, **kwargs):
        handlers = build_handlers(*args, **kwargs)
        at = next(i for i, h in enumerate(handlers) if isinstance(h, History))
        return [*handlers[:at], handler, *handlers[at:]]

    monkeypatch.setattr(kit.train, "build_handlers", build)


def test_the_standard_handlers_run_in_order():
    cfg = load_config(HCD, overrides=TINY + ["train.early_stopping=2"])
    names = [h.name for h in build_handlers(cfg, "auc", lambda: None, on_epoch=lambda *a: None)]
    assert names == ["best", "history", "last", "callback", "early_stopping"]
    handlers = build_handlers(load_config(HCD, overrides=TINY), "auc", lambda: None)
    assert not any(isinstance(h, EarlyStopping) for h in handlers)
    assert isinstance(handlers[-1], LastCheckpoint)


def test_a_new_handler_adds_history_columns_stops_and_resumes(demo_data, tmp_path, monkeypatch, capsys):
    data, run = demo_data(HCD, n=48), tmp_path / "run"
    cfg = load_config(HCD, overrides=TINY + ["train.epochs=3"])
    first = Counting(stop_at=2)
    _with(monkeypatch, first)
    result = train_folds(cfg, data, run, folds=[0])
    history = pd.read_csv(run / "fold0" / "history.csv")
    assert list(history["count"]) == [1, 2]  # stopped after epoch 2 of 3
    assert "fold 0: stopped by the counting handler" in capsys.readouterr().out
    assert result.fold_scores[0] == history["auc"].max()
    assert load_checkpoint(run / "fold0" / "last.pt").training.handlers["counting"] == {"count": 2}

    # resume the unfinished fold: the handler's state comes back from last.pt
    (run / "fold0" / "result.json").unlink()
    second = Counting()
    _with(monkeypatch, second)
    train_folds(cfg, data, run, folds=[0])
    assert second.started_at == 2 and second.count == 3
    assert list(pd.read_csv(run / "fold0" / "history.csv")["count"]) == [1, 2, 3]
