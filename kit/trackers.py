"""Experiment trackers: TensorBoard and MLflow, chosen by ``train.loggers`` (none by default).

Each fold's epochs reach a tracker through an epoch-end handler (TensorBoardTracker and MlflowTracker, at the end of
this module): every number of the epoch's
history.csv row (losses, the validation metric, the learning rate, images/s, and any column another handler adds)
at step = epoch. Around the whole run, :class:`RunTracking` (used by ``kit train`` and by each ``kit tune`` trial)
logs the resolved config once, and at the end the CV and the run's plots.

- TensorBoard: event files under ``RUN/tensorboard/`` (``fold{k}/`` per fold, the config and plots at the top);
  ``tensorboard --logdir runs`` shows every run, and a study folder shows its trials side by side.
- MLflow (``train.mlflow_uri``: a local file store such as ``file:///abs/mlruns``, a database URL, or a tracking
  server ``http://host:5000``; empty: ``$MLFLOW_TRACKING_URI`` or MLflow's default): one MLflow run per kit run
  (params = the flattened config, config.yaml and the plots as artifacts, ``cv`` and ``cv_tta`` metrics), a child run
  per fold with the per-epoch metrics, and under ``kit tune`` a parent run per study with each trial nested in it.
  The kit run is found again by its tag ``kit.run_dir`` (its resolved folder), so ``kit train --resume`` and the
  folds of ``kit train --devices`` (one process each) log into the same MLflow run.

Both libraries are optional (``pip install 'kit[trackers]'``) and imported only when a run asks for them.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from kit.config import Config
from kit.epoch_handlers import EpochEnd, EpochHandler, FoldLoop
from kit.errors import ConfigError

__all__ = ["EXTRA", "LOGGERS", "MlflowTracker", "RunTracking", "TensorBoardTracker", "finish_study", "fold_run",
           "fold_writer", "log_metrics", "require_trackers", "tracker_handlers", "write_scalars"]

log = logging.getLogger(__name__)

LOGGERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""Logger name (the closed set kit.config.TRACKERS) -> the module it needs."""
EXTRA = "kit[trackers]"
TB_DIR = "tensorboard"
RUN_TAG, FOLD_TAG, STUDY_TAG = "kit.run_dir", "kit.fold", "kit.study_dir"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nesting: the UI shows the run under its parent


def require_trackers(cfg: Config) -> None:
    """Every package ``train.loggers`` needs is importable; else one line naming the extra to install."""
    missing = [name for name in cfg.train.loggers if importlib.util.find_spec(LOGGERS[name]) is None]
    if missing:
        raise ConfigError(f"train.loggers={','.join(cfg.train.loggers)} needs {' and '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: pip install '{EXTRA}'")


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a history.csv row but the epoch itself (that is the step)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_config(cfg: Config) -> dict[str, str]:
    """``section.key -> value`` as strings: MLflow params and the config table of TensorBoard."""
    out = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}": str(v) for k, v in value.items()}
        else:
            out[key] = str(value)
    return out


# --------------------------------------------------------------------------------------------------- MLflow
def mlflow_client(cfg: Config):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cfg.train.mlflow_uri or None)


def experiment_id(client, cfg: Config) -> str:
    name = cfg.train.mlflow_experiment or f"kit-{cfg.competition}"
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def find_run(client, experiment: str, tag: str, value: str, extra: str = "") -> str | None:
    """The newest MLflow run of ``experiment`` whose ``tag`` is ``value`` (and ``extra``, a filter clause)."""
    clause = f"tags.`{tag}` = '{value.replace(chr(39), chr(39) * 2)}'" + (f" and {extra}" if extra else "")
    runs = client.search_runs([experiment], clause, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def _log_batch(client, run_id: str, metrics: dict[str, float] | None = None, params: dict[str, str] | None = None,
               step: int = 0) -> None:
    """Metrics and params in batches within MLflow's limits (1000 metrics, 100 params a request)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])
    plist = [Param(k, v[:6000]) for k, v in (params or {}).items()]  # 6000: MLflow's longest param value
    for i in range(0, len(plist), 100):
        client.log_batch(run_id, params=plist[i:i + 100])


def kit_run(client, cfg: Config, run_dir: Path, parent: str | None = None, create: bool = False) -> str:
    """The MLflow run of a kit run folder: the newest one tagged with its folder, or (``create``, or none yet) a new
    one with the config as params and, under a study, nested in ``parent``."""
    experiment = experiment_id(client, cfg)
    folder = str(Path(run_dir).resolve())
    found = None if create else find_run(client, experiment, RUN_TAG, folder)
    if found is not None:
        return found
    tags = {RUN_TAG: folder, **({PARENT_TAG: parent} if parent else {})}
    run_id = client.create_run(experiment, tags=tags, run_name=Path(folder).name).info.run_id
    _log_batch(client, run_id, params=flat_config(cfg))
    return run_id


def study_run(client, cfg: Config, study_dir: Path, name: str) -> str:
    """The parent MLflow run of a ``kit tune`` study (found again by its folder: every worker shares it)."""
    experiment = experiment_id(client, cfg)
    folder = str(Path(study_dir).resolve())
    found = find_run(client, experiment, STUDY_TAG, folder)
    if found is not None:
        return found
    return client.create_run(experiment, tags={STUDY_TAG: folder}, run_name=name).info.run_id


def finish_study(cfg: Config, study_dir: str | Path, best: float | None) -> None:
    """End the study's MLflow run (each worker that finishes does; the last one's end stands), with its best CV."""
    if "mlflow" not in cfg.train.loggers:
        return
    client = mlflow_client(cfg)
    run_id = find_run(client, experiment_id(client, cfg), STUDY_TAG, str(Path(study_dir).resolve()))
    if run_id is None:  # no trial of this worker ran: nothing was opened
        return
    if best is not None:
        _log_batch(client, run_id, metrics={"best_cv": best})
    client.set_terminated(run_id, "FINISHED")


# ------------------------------------------------------------------------------------------------ per fold
def fold_writer(run_dir: Path, k: int, start_epoch: int):
    """The TensorBoard writer of fold ``k``; a resumed fold drops the events after its checkpoint (a killed run may
    have logged an epoch it redoes)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR / f"fold{k}"),
                         purge_step=start_epoch + 1 if start_epoch else None)


def write_scalars(writer, row: dict[str, Any], epoch: int) -> None:
    for key, value in epoch_scalars(row).items():
        writer.add_scalar(key, value, epoch)
    writer.flush()  # TensorBoard shows a long run while it trains


def fold_run(cfg: Config, run_dir: Path, k: int, resumed: bool):
    """(client, MLflow run id) of fold ``k``, nested in the kit run's; a resumed fold logs on into its own run."""
    client = mlflow_client(cfg)
    parent = kit_run(client, cfg, run_dir)
    experiment = experiment_id(client, cfg)
    found = find_run(client, experiment, PARENT_TAG, parent, f"tags.`{FOLD_TAG}` = '{k}'") if resumed else None
    if found is not None:
        client.update_run(found, status="RUNNING")
        return client, found
    tags = {PARENT_TAG: parent, FOLD_TAG: str(k)}
    return client, client.create_run(experiment, tags=tags, run_name=f"fold {k}").info.run_id


def log_metrics(client, run_id: str, row: dict[str, Any], epoch: int) -> None:
    _log_batch(client, run_id, metrics=epoch_scalars(row), step=epoch)


# ------------------------------------------------------------------------------------------------ the run
class RunTracking:
    """Around the training of one kit run (``kit train``, a ``kit tune`` trial): the MLflow run opened first (and
    nested in the study's under ``kit tune``); at :meth:`finish` the CV, config.yaml and the run's plots go to every
    tracker; leaving the block ends the MLflow run as FINISHED, FAILED or KILLED."""

    def __init__(self, cfg: Config, run_dir: str | Path, fresh: bool = False,
                 study: tuple[str | Path, str] | None = None, stopped: tuple[type[BaseException], ...] = (),
                 enabled: bool = True):
        """``fresh``: a new MLflow run even if one is tagged with this folder (else the folder's run goes on: a
        resume); ``study``: (folder, name) of the kit tune study to nest in; ``stopped``: exceptions that end the
        run as KILLED (a pruned trial) rather than FAILED; ``enabled``: false on the ranks of torchrun but 0."""
        self.cfg, self.run_dir, self.fresh, self.study = cfg, Path(run_dir), fresh, study
        self.stopped, self.enabled = (KeyboardInterrupt, *stopped), enabled
        self.client = self.run_id = None

    def __enter__(self) -> RunTracking:
        require_trackers(self.cfg)
        if self.enabled and "mlflow" in self.cfg.train.loggers:
            from mlflow.exceptions import MlflowException

            try:
                self.client = mlflow_client(self.cfg)
                parent = study_run(self.client, self.cfg, Path(self.study[0]), self.study[1]) if self.study else None
                self.run_id = kit_run(self.client, self.cfg, self.run_dir, parent, create=self.fresh)
            except MlflowException as e:  # a refused store or URI: the first sentence says why and what to do
                first = str(e.message).split(". ")[0]
                raise ConfigError(f"train.mlflow_uri={self.cfg.train.mlflow_uri or '(MLflow default)'}: {first}"
                                  + (" (set MLFLOW_ALLOW_FILE_STORE=true to use it anyway)"
                                     if "MLFLOW_ALLOW_FILE_STORE" in str(e.message) else "")) from None
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("mlflow: run %s in %s", self.run_id, self.client.tracking_uri)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.run_id is None:
            return
        status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, self.stopped) else "FAILED"
        if kind is not None:  # a fold stopped by an exception (a pruned trial) never reached on_fit_end
            experiment = self.client.get_run(self.run_id).info.experiment_id
            for fold in self.client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{self.run_id}' and "
                                                "attributes.status = 'RUNNING'"):
                self.client.set_terminated(fold.info.run_id, status)
        self.client.set_terminated(self.run_id, status)

    def finish(self, scores: dict[str, float], plots: list[Path] = ()) -> None:
        """Log the run's scores (``cv``, ``cv_tta``, ...), its config.yaml and its PNG plots."""
        plots = [Path(p) for p in plots if Path(p).suffix == ".png"]
        config = self.run_dir / "config.yaml"
        if self.run_id is not None:
            _log_batch(self.client, self.run_id, metrics=scores)
            for path in [config, *plots]:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), "report" if path in plots else None)
        if self.enabled and "tensorboard" in self.cfg.train.loggers:
            _tensorboard_summary(self.run_dir, config, scores, plots)


def _tensorboard_summary(run_dir: Path, config: Path, scores: dict[str, float], plots: list[Path]) -> None:
    """The run's config as text, its scores and its plots as images, in ``RUN/tensorboard/``."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run_dir / TB_DIR)) as writer:
        if config.is_file():  # four spaces: TensorBoard renders text as Markdown, this keeps the YAML as it is
            writer.add_text("config", "\n".join("    " + line for line in config.read_text().splitlines()))
        for key, value in scores.items():
            writer.add_scalar(key, value, 0)
        for path in plots:
            with Image.open(path) as im:
                writer.add_image(f"report/{path.stem}", np.asarray(im.convert("RGB")), 0, dataformats="HWC")


class TensorBoardTracker(EpochHandler):
    """train.loggers: the fold's epochs as TensorBoard scalars in ``RUN/tensorboard/fold{k}/``."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer = None

    def on_fit_start(self, trainer: FoldLoop, start_epoch: int) -> None:
        if trainer.is_main:  # rank 0 alone logs
            self.writer = fold_writer(trainer.run.path, trainer.k, start_epoch)

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if self.writer is not None:
            write_scalars(self.writer, end.row, end.epoch)

    def on_fit_end(self, trainer: FoldLoop) -> None:
        if self.writer is not None:
            self.writer.close()


class MlflowTracker(EpochHandler):
    """train.loggers: the fold's epochs as the metrics of an MLflow run nested in the kit run's."""

    name = "mlflow"

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.client, self.run_id = cfg, None, None

    def on_fit_start(self, trainer: FoldLoop, start_epoch: int) -> None:
        if trainer.is_main:
            self.client, self.run_id = fold_run(self.cfg, trainer.run.path, trainer.k, resumed=start_epoch > 0)

    def on_epoch_end(self, trainer: FoldLoop, end: EpochEnd) -> None:
        if self.run_id is not None:
            log_metrics(self.client, self.run_id, end.row, end.epoch)

    def on_fit_end(self, trainer: FoldLoop) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")


def tracker_handlers(cfg: Config) -> list[EpochHandler]:
    """The handlers of train.loggers, in their order (refused in one line when a tracker's package is missing)."""
    require_trackers(cfg)
    return [{"tensorboard": TensorBoardTracker, "mlflow": lambda: MlflowTracker(cfg)}[name]()
            for name in cfg.train.loggers]
