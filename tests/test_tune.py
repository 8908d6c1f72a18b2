"""kit tune: search-space validation, fold-aware pruning values, failed trials, kill-and-restart, two workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from kit import tune
from kit.cli import main
from kit.config import load_config
from kit.errors import ConfigError, DataError
from kit.train import train_folds

HCD = "histopathologic-cancer-detection"
# tiny and fast: 80 synthetic patches, 32 px, a 5M-parameter ResNet, 2 folds x 2 epochs
TINY = ["model.name=resnet10t", "model.img_size=32", "n_folds=2", "train.epochs=2", "train.batch_size=16",
        "train.warmup_epochs=0"]
SPACE = """\
train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}
train.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
"""


def tune_args(data: Path, out: Path, study: str, space: Path, trials: int, *extra: str) -> list[str]:
    args = ["tune", "--competition", HCD, "--data", str(data), "--space", str(space), "--trials", str(trials),
            "--study", study, "--out", str(out), "--sampler", "random", "--seed", "0", "--pruner", "none"]
    for pair in TINY:
        args += ["--set", pair]
    return args + list(extra)


def load(out: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=tune.default_storage_url(out, study))


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Search space


def test_space_parses_every_type_and_both_layouts():
    flat = tune.parse_space({
        "train.lr": {"type": "float", "low": "1e-4", "high": 1e-2, "log": True},  # YAML reads 1e-4 as a string
        "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "model.name": {"type": "categorical", "choices": ["resnet10t", "resnet18"]}})
    assert flat["train.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert flat["train.batch_size"] == IntDistribution(16, 64, step=16)
    assert flat["model.name"] == CategoricalDistribution(["resnet10t", "resnet18"])
    nested = tune.parse_space({"train": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}})
    assert nested == {"train.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    shipped = sorted(tune.SPACE_DIR.glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert tune.load_space(path), path


@pytest.mark.parametrize("data, culprit", [
    ({"train.lrr": {"type": "float", "low": 0.1, "high": 1.0}}, "unknown config key 'train.lrr'. Did you mean train.lr"),
    ({"n_folds": {"type": "int", "low": 3, "high": 5}}, "'n_folds' cannot be searched"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "'train.lr'"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "'train.lr'"),
    ({"train.lr": {"type": "gaussian", "low": 0.0, "high": 0.1}}, "'train.lr': unknown type 'gaussian'"),
    ({"train.lr": {"type": "float", "low": 0.1, "hi": 0.2}}, "'train.lr': unknown field(s) hi"),
    ({"train.epochs": {"type": "int", "low": 1.5, "high": 3}}, "'train.epochs': low must be an integer"),
    ({"model.name": {"type": "categorical", "choices": []}}, "'model.name': choices must be a non-empty list"),
    ({"train.lr": 0.01}, "'train.lr' must be a mapping with a type"),
])
def test_space_errors_name_the_key(data, culprit):
    with pytest.raises(ConfigError) as e:
        tune.parse_space(data, "space.yaml")
    assert culprit in str(e.value) and str(e.value).startswith("space.yaml: ")


def test_space_values_are_checked_against_the_config_types_before_training(tmp_path, capsys):
    base = load_config(HCD)
    with pytest.raises(ConfigError, match=r"'train.epochs' value 1.0 is not valid: .*must be int"):
        tune.check_space(tune.parse_space({"train.epochs": {"type": "float", "low": 1, "high": 3}}), base)
    with pytest.raises(ConfigError, match=r"'train.ema' value 'yes' is not valid"):
        tune.check_space(tune.parse_space({"train.ema": {"type": "categorical", "choices": [True, "yes"]}}), base)
    # through the command: a one-line error naming the key, nothing trained, no study created
    space = tmp_path / "bad.yaml"
    space.write_text("train.lerning_rate: {type: float, low: 0.001, high: 0.01}\n")
    rc = main(["tune", "--competition", HCD, "--data", str(tmp_path), "--space", str(space), "--trials", "2",
               "--study", "s", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "unknown config key 'train.lerning_rate'" in err and str(space) in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Fold-aware pruning: steps and values


def test_steps_of_sequential_folds_never_collide_and_keep_epoch_order():
    steps = [tune.pruning_step(p, e, 4) for p in range(3) for e in range(4)]
    assert steps == list(range(12))
    # a trial that stops a fold early (or trains fewer epochs) leaves gaps, never reuses a step
    assert tune.pruning_step(1, 0, 4) == 4 and tune.pruning_step(0, 1, 4) == 1
    base = load_config(HCD, overrides=TINY)
    assert tune.epoch_stride({}, base) == 2
    assert tune.epoch_stride({"train.epochs": IntDistribution(2, 6)}, base) == 6
    assert tune.epoch_stride({"train.epochs": CategoricalDistribution([3, 8, 5])}, base) == 8
    assert tune.intermediate_value([], 0.7) == 0.7
    assert tune.intermediate_value([0.9, 0.7], 0.5) == pytest.approx(0.7)


def write_history(fold_dir: Path, aucs: list[float]) -> None:
    fold_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(1, len(aucs) + 1), "train_loss": 0.5, "auc": aucs}).to_csv(
        fold_dir / "history.csv", index=False)


def test_pruning_callback_reports_running_cv_estimate_and_prunes_below_the_median(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    # a completed trial: 2 folds x 3 epochs at steps 0..5
    study.add_trial(optuna.create_trial(value=0.8, intermediate_values={0: .6, 1: .7, 2: .8, 3: .75, 4: .76, 5: .8}))
    folds, stride = [1, 0], 3  # trained in this order: fold 1 first, so fold 0 sits at position 1

    good = study.ask()
    write_history(tmp_path / "good" / "fold1", [0.62, 0.71, 0.69])  # best 0.71 (epoch 2)
    write_history(tmp_path / "good" / "fold0", [0.79])
    callback = tune.FoldPruningCallback(good, tmp_path / "good", folds, stride, "auc")
    callback(0, 0, 0.79)  # fold 0 epoch 1 -> step 3, value mean(0.71, 0.79) = 0.75: not below the median 0.75
    # as for a trial resuming a dead worker's folder, the steps of fold 1 found on disk are filled in first
    assert study.trials[1].intermediate_values == pytest.approx({0: 0.62, 1: 0.71, 2: 0.71, 3: 0.75})
    write_history(tmp_path / "good" / "fold0", [0.79, 0.85])
    callback(0, 1, 0.85)  # step 4: mean(0.71, 0.85) = 0.78
    assert study.trials[1].intermediate_values[4] == pytest.approx(0.78) and len(study.trials[1].intermediate_values) == 5

    bad = study.ask()
    write_history(tmp_path / "bad" / "fold1", [0.55])
    callback = tune.FoldPruningCallback(bad, tmp_path / "bad", folds, stride, "auc")
    with pytest.raises(optuna.TrialPruned, match=r"fold 1 epoch 1 \(step 0\)"):
        callback(1, 0, 0.55)  # step 0: 0.55 < 0.6
    assert study.trials[2].user_attrs["pruned_at"] == {"fold": 1, "epoch": 1, "step": 0, "value": 0.55}


def test_sampler_seeds_each_trial_from_its_number():
    def draws(sampler_name: str, n: int = 4) -> list[dict]:
        study = optuna.create_study(sampler=tune.make_sampler(sampler_name, seed=3))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append({"lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True), "m": trial.suggest_int("m", 0, 10**6)})
            study.tell(trial, 0.5)
        return out

    for name in ("random", "tpe"):
        first, second = draws(name), draws(name)
        assert first == second  # same seed and history: the same search
        assert len({d["m"] for d in first}) == 4  # each trial number its own draw: a restart repeats nothing


# ---------------------------------------------------------------------------------------------------------------
# A whole study through the command, then its results


@pytest.mark.slow
def test_three_trial_study_best_preset_trains(demo_data, tmp_path, space_file, capsys):
    data, out = demo_data(HCD, n=80), tmp_path / "tune"
    assert main(tune_args(data, out, "s3", space_file, 3)) == 0
    stdout = capsys.readouterr().out
    assert "ran 3 trial(s): 0 1 2" in stdout
    study = load(out, "s3")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:
        run_dir = out / "s3" / f"trial-{t.number}"
        scores = json.loads((run_dir / "scores.json").read_text())
        assert t.value == pytest.approx(scores["cv"])  # the objective is the pooled OOF score
        assert t.user_attrs["epochs"] == 4 and not list(run_dir.glob("fold*/*.pt"))  # checkpoints removed
        # one value per epoch at steps 0..3; the last is the mean of the two folds' best epochs
        bests = [pd.read_csv(run_dir / f"fold{k}" / "history.csv")["auc"].max() for k in (0, 1)]
        assert sorted(t.intermediate_values) == [0, 1, 2, 3]
        assert t.intermediate_values[3] == pytest.approx(np.mean(bests))
        assert t.intermediate_values[1] == pytest.approx(bests[0])

    # --trials is the study's total: the same command again trains nothing; one more asks for one more
    assert main(tune_args(data, out, "s3", space_file, 3)) == 0
    assert "ran 0 trial(s)" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text("train.lr: {type: float, low: 1e-3, high: 1e-2}\n")
    assert main(tune_args(data, out, "s3", other, 4)) == 1
    assert "study 's3' was created with another space" in capsys.readouterr().err

    assert main(["tune", "--best", "s3", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    best = study.best_trial
    assert re.search(rf"^\s+{best.number}\s+{best.value:.4f}\s", stdout, re.M)  # first row of the table
    for png in ("history.png", "intermediate.png", "importances.png"):
        assert (out / "s3" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"optuna-dashboard sqlite:///{(out / 's3.db').resolve()}" in stdout

    cfg = load_config(HCD, str(out / "s3" / "best.yaml"))
    assert cfg.train.lr == best.params["train.lr"] and cfg.train.weight_decay == best.params["train.weight_decay"]
    assert cfg.model.name == "resnet10t" and cfg.model.img_size == 32 and cfg.n_folds == 2
    result = train_folds(cfg, data, tmp_path / "retrain", folds=[0])
    assert (tmp_path / "retrain" / "fold0" / "best.pt").is_file() and 0 <= result.cv_score <= 1


def test_storage_errors_are_one_line_without_the_password():
    with pytest.raises(ConfigError, match=r"cannot open storage nosuchdb://kit:\*\*\*@host/db") as e:
        tune.open_storage("nosuchdb://kit:secret@host/db")
    assert "secret" not in str(e.value)


def test_best_of_a_missing_study_names_what_exists(tmp_path, capsys):
    assert main(["tune", "--best", "nope", "--out", str(tmp_path)]) == 1
    assert f"no study database {tmp_path / 'nope.db'}" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


# ---------------------------------------------------------------------------------------------------------------
# Failures: recorded with their reason, the study goes on; other errors stop the worker


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_study_goes_on(demo_data, tmp_path):
    data, out = demo_data(HCD, n=80), tmp_path / "tune"
    space = tune.parse_space({"train.lr": {"type": "categorical", "choices": [0.001, 1000000.0]},
                              "model.name": {"type": "categorical", "choices": ["resnet10t", "classic_cnn_bn"]}})
    setup = tune.TuneSetup(load_config(HCD, overrides=TINY), space, data, out / "f", [0, 1])
    storage = tune.open_storage(tune.default_storage_url(out, "f"), heartbeat=60)
    study = tune.open_study("f", storage, setup, tune.make_sampler("random", 0), tune.make_pruner("none"))
    study.enqueue_trial({"train.lr": 1000000.0, "model.name": "resnet10t"})  # diverges: NaN outputs
    study.enqueue_trial({"train.lr": 0.001, "model.name": "classic_cnn_bn"})  # needs >= 46 px: a bad combination
    study.enqueue_trial({"train.lr": 0.001, "model.name": "resnet10t"})
    assert tune.run_study(study, setup, 3) == [0, 1, 2]
    nan, combo, ok = study.trials
    assert nan.state == TrialState.FAIL and nan.user_attrs["fail_reason"].startswith("TrainingError: ")
    assert "not finite" in nan.user_attrs["fail_reason"] or "loss became nan" in nan.user_attrs["fail_reason"]
    assert combo.state == TrialState.FAIL
    assert combo.user_attrs["fail_reason"] == "ConfigError: classic_cnn needs img_size >= 46, got 32"
    assert ok.state == TrialState.COMPLETE and 0 <= ok.value <= 1
    assert all(tune.counted(t) for t in study.trials)  # they count toward --trials: no endless retrying
    assert "trial 1 failed: ConfigError: classic_cnn needs img_size >= 46" in tune.trials_table(study)

    # an error that is not about the trial's values (here: no data) stops the worker; that trial does not count
    broken = tune.TuneSetup(setup.base, space, tmp_path / "no-data", out / "f", [0, 1])
    with pytest.raises(DataError):
        tune.run_study(study, broken, 4)
    assert study.trials[-1].state == TrialState.FAIL and not tune.counted(study.trials[-1])


# ---------------------------------------------------------------------------------------------------------------
# Processes: kill -9 and restart; two workers on PostgreSQL


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kit.cli", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"kit tune exited with {proc.returncode} before the condition held:\n"
                                 f"{proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for kit tune")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_worker_restarts_without_losing_trials(demo_data, tmp_path, space_file):
    data, out = demo_data(HCD, n=80), tmp_path / "tune"
    args = tune_args(data, out, "k", space_file, 3, "--heartbeat", "1", "--set", "train.epochs=3")[1:]
    proc = subprocess.Popen(cli("tune", *args), cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # trial 0 finished, trial 1 in the middle of its first fold: the worker dies without any clean-up
    wait_for(lambda: (out / "k" / "trial-1" / "fold0" / "last.pt").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = load(out, "k").trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    epochs_done = len(pd.read_csv(out / "k" / "trial-1" / "fold0" / "history.csv"))

    restart = subprocess.run(cli("tune", *args), cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                             timeout=300)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    trials = load(out, "k").trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert trials[0].value == before[0].value and trials[0].params == before[0].params  # nothing finished is lost
    stale = trials[1]
    assert stale.state == TrialState.FAIL and not tune.counted(stale)
    # the dead trial ran again with the same values, in its old folder, from its last checkpoint
    retry = next(t for t in trials if t.user_attrs.get("resumed_from") == str(out / "k" / "trial-1"))
    assert retry.params == before[1].params and retry.state == TrialState.COMPLETE
    assert f"fold 0: resuming after epoch {epochs_done}" in restart.stdout
    history = pd.read_csv(out / "k" / f"trial-{retry.number}" / "fold0" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert set(retry.intermediate_values) == set(range(6))  # inherited steps + the resumed ones


def _sigint_default() -> None:
    """A process started in the background by a non-interactive shell (as CI may) inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_waits_for_the_storage_call_to_finish():
    # whatever this pytest process inherited (see _sigint_default), Ctrl-C raises KeyboardInterrupt here
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with tune.deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the signal arrives here and is held
                done.append("storage call")
        assert done == ["storage call"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.slow
def test_ctrl_c_requeues_the_interrupted_trial(demo_data, tmp_path, space_file):
    data, out = demo_data(HCD, n=80), tmp_path / "tune"
    args = tune_args(data, out, "c", space_file, 2, "--set", "train.epochs=3")[1:]
    proc = subprocess.Popen(cli("tune", *args), cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_sigint_default)
    wait_for(lambda: (out / "c" / "trial-0" / "fold0" / "last.pt").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "kit tune: interrupted" in output, output[-3000:]
    interrupted, queued = load(out, "c").trials
    assert interrupted.state == TrialState.FAIL and not tune.counted(interrupted)
    # queued again with the same values and the folder to resume, as a dead worker's trial would be
    assert queued.state == TrialState.WAITING and queued.params == interrupted.params
    assert queued.user_attrs["run_dir"] == str(out / "c" / "trial-0")
    assert list((out / "c" / "trial-0" / "fold0").glob("last.pt"))  # its checkpoint is kept for the resume


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("KIT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KIT_TEST_POSTGRES_URL is not set in CI (.ci/run starts PostgreSQL with "
                        "scripts/start_postgres.sh and exports it)")
        pytest.skip("KIT_TEST_POSTGRES_URL is not set; start a server with "
                    "`export KIT_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh)`")
    return url


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(demo_data, tmp_path, space_file, postgres_url):
    data, out, name = demo_data(HCD, n=80), tmp_path / "tune", f"two-workers-{uuid.uuid4().hex[:8]}"
    # the same command and the same seed on both workers, as a job array would start them
    args = tune_args(data, out, name, space_file, 4, "--storage", postgres_url, "--heartbeat", "2")[1:]
    procs = [subprocess.Popen(cli("tune", *args), cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=400)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
        ran = [[int(n) for n in re.search(r"ran \d+ trial\(s\): ([\d ]*)", o).group(1).split()] for o in outputs]
        study = optuna.load_study(study_name=name, storage=postgres_url)
        trials = study.trials
        numbers = [t.number for t in trials]
        assert len(numbers) == len(set(numbers)) == len(ran[0]) + len(ran[1])  # every trial of both, no duplicate
        assert set(ran[0]).isdisjoint(ran[1]) and set(ran[0]) | set(ran[1]) == set(numbers)  # none lost
        assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) >= 4
        for proc, mine in zip(procs, ran, strict=True):
            assert all(trials[n].user_attrs["worker"].endswith(f":{proc.pid}") for n in mine)
        assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)  # no duplicate draws
        for t in trials:
            assert (out / name / f"trial-{t.number}" / "scores.json").is_file()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if name in optuna.get_all_study_names(postgres_url):
            optuna.delete_study(study_name=name, storage=postgres_url)
