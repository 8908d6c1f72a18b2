"""Training kernels: the generated script trains offline, stops by its time budget, a continuation resumes from the
previous version's output to the same OOF as an uninterrupted run; push / status / pull / kit kernel train against
the fake Kaggle API with the real kaggle client; the time budget itself.

The script runs the way tests/test_kernel.py runs the inference kernel: a fresh Python with this venv's packages but
not kit or simplejpeg, inputs laid out as Kaggle mounts them, pip told to use no index.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_kaggle_server import Dataset, FakeKaggle, Kernel
from fake_wheels import fake_wheel
from test_kernel import DRIVER, kaggle_like_python

from kit.budget import TimeBudget, TimeBudgetReached
from kit.bundle import make_wheels_bundle
from kit.errors import ConfigError
from kit.kernel_train import build_train_kernel, resolved_config_yaml, train_kernel_metadata
from kit.records import FoldResult, Scores
from kit.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
HCD = "histopathologic-cancer-detection"
OWNER = "kit-test-user"  # FakeKaggle's user
KERNEL = f"{OWNER}/kit-train-{HCD}"
WHEELS = f"{OWNER}/kit-wheels"
TINY = ["model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.epochs=2", "train.batch_size=16",
        "train.warmup_epochs=0", "train.device=cpu", "train.num_workers=0"]


# --- the script, offline ------------------------------------------------------------------------------------------

def run_script(root: Path, kernel: Path, inputs: Path, working: Path) -> subprocess.CompletedProcess:
    """Run a kernel folder's script as Kaggle would, in a fresh Kaggle-like Python under ``root``."""
    python = kaggle_like_python(root)
    for name in ("home", "tmp"):
        (root / name).mkdir(exist_ok=True)
    working.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
           "PYTHONNOUSERSITE": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
           "OMP_NUM_THREADS": "1", "KIT_KAGGLE_INPUT": str(inputs), "KIT_KAGGLE_WORKING": str(working)}
    return subprocess.run([str(python), str(kernel / "kernel.py")], env=env, cwd=working, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def sessions(demo_data, tmp_path_factory):
    """Two sessions of one training kernel (the first stopped by its budget, the second continuing from the first's
    output) and an uninterrupted kit train of the same config, all on 40 synthetic HCD patches."""
    root = tmp_path_factory.mktemp("kernel-train")
    data = demo_data(HCD, n=40)
    cache = root / "wheel-cache"
    fake_wheel(cache, "simplejpeg", importlib.metadata.version("simplejpeg"))
    wheels = make_wheels_bundle(OWNER, out=root / "wheels", wheel_cache=cache, kit_source=REPO)
    inputs = root / "input"
    shutil.copytree(data, inputs / "competitions" / HCD)
    shutil.copytree(wheels, inputs / "datasets" / WHEELS)

    first = build_train_kernel(HCD, OWNER, overrides=TINY, time_budget=0.001, out=root / "kernel-v1")
    p1 = run_script(root / "s1", first, inputs, root / "working-v1")
    # version 2 attaches version 1's output, where Kaggle mounts a kernel's output (newer layout)
    shutil.copytree(root / "working-v1", inputs / "notebooks" / KERNEL)
    second = build_train_kernel(HCD, OWNER, overrides=TINY, resume=True, out=root / "kernel-v2")
    p2 = run_script(root / "s2", second, inputs, root / "working-v2")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    config = root / "config.yaml"
    config.write_text(resolved_config_yaml(HCD, None, TINY))  # what the kernel trains with
    baseline = subprocess.run([sys.executable, "-m", "kit.cli", "train", "--competition", HCD, "--data", str(data),
                               "--out", str(root / "uninterrupted"), "--config", str(config), "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=300)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    return {"root": root, "data": data, "inputs": inputs, "p1": p1, "p2": p2, "first": first, "second": second}


def test_the_first_session_installs_offline_and_stops_by_its_time_budget(sessions):
    p, root = sessions["p1"], sessions["root"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "--no-index --no-deps --find-links" in p.stdout and "modules it imports are there" in p.stdout
    assert "stopped by the time budget after fold 0 epoch 1" in p.stdout
    assert "continue with: kit train --resume" in p.stdout
    assert "is not finished (stopped by the time budget)" in p.stdout
    working = root / "working-v1"
    state = json.loads((working / "kit-kernel.json").read_text())
    assert state["finished"] is False and state["train_exit"] == 75 and state["run"] == "run"
    run = RunDir.open(working / "run")
    assert run.last_path(0).is_file() and run.finished_folds() == [] and not run.record_path(Scores).exists()
    assert len(run.history(0)) == 1  # one finished epoch, saved
    assert not (working / "kit-cache").exists()  # the packed cache is not part of the output


def test_the_continuation_finishes_with_the_oof_of_an_uninterrupted_run(sessions):
    p, root = sessions["p2"], sessions["root"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "continuing" in p.stdout and "fold 0: resuming after epoch 1" in p.stdout
    assert json.loads((root / "working-v2" / "kit-kernel.json").read_text())["finished"] is True
    ours = pd.read_csv(root / "working-v2" / "run" / "oof.csv", dtype={"id": str})
    theirs = pd.read_csv(root / "uninterrupted" / "oof.csv", dtype={"id": str})
    assert ours["id"].tolist() == theirs["id"].tolist() and ours["fold"].tolist() == theirs["fold"].tolist()
    assert ours["pred"].to_numpy() == pytest.approx(theirs["pred"].to_numpy(), abs=1e-6)
    assert json.loads((root / "working-v2" / "run" / "scores.json").read_text())["cv"] == pytest.approx(
        json.loads((root / "uninterrupted" / "scores.json").read_text())["cv"], abs=1e-9)


def test_a_continuation_without_the_previous_output_names_where_it_looked(sessions, tmp_path):
    inputs = tmp_path / "input"
    shutil.copytree(sessions["inputs"], inputs, ignore=shutil.ignore_patterns("notebooks"))
    p = subprocess.run([sys.executable, str(sessions["second"] / "kernel.py")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "KIT_KAGGLE_INPUT": str(inputs),
                            "KIT_KAGGLE_WORKING": str(tmp_path)}, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"kit kernel: the previous output of {KERNEL} not found" in p.stderr
    assert f"{inputs / 'notebooks' / KERNEL}/**/kit-kernel.json beside a run folder" in p.stderr


# --- metadata --------------------------------------------------------------------------------------------------------

def test_training_kernel_metadata(tmp_path):
    meta = train_kernel_metadata(HCD, OWNER, WHEELS)
    assert meta["id"] == KERNEL and meta["title"] == f"kit-train-{HCD}"
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == [WHEELS] and meta["competition_sources"] == [HCD] and meta["kernel_sources"] == []
    again = train_kernel_metadata(HCD, OWNER, WHEELS, internet=True, accelerator="p100", resume=True,
                                  datasets=[f"{OWNER}/weights"])
    assert again["enable_internet"] is True and again["machine_shape"] == "NvidiaTeslaP100"
    assert again["kernel_sources"] == [KERNEL]  # a continuation reads the kernel's own last output
    assert again["dataset_sources"] == [WHEELS, f"{OWNER}/weights"]


@pytest.mark.parametrize("argv, said", [
    (["--set", "train.lr=-1"], "train.lr"),
    (["--time-budget", "0"], "--time-budget must be a positive number of seconds"),
    (["--tta", "4"], "--weights-dataset and --tta belong to inference kernels"),
    (["--attach", "no-slash"], "--attach 'no-slash' must be OWNER/SLUG"),
])
def test_build_train_refuses_bad_options_and_writes_nothing(tmp_path, capsys, argv, said):
    from kit.cli import main

    assert main(["kernel", "build", "--train", "--competition", "hcd", "--owner", OWNER, *argv,
                 "--out", str(tmp_path / "k")]) == 1
    assert said in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_training_options_without_train_are_refused(tmp_path, capsys):
    from kit.cli import main

    assert main(["kernel", "build", "--competition", "hcd", "--owner", OWNER, "--continue", "--time-budget", "60",
                 "--out", str(tmp_path / "k")]) == 1
    assert "--time-budget, --continue belong to training kernels: add --train" in capsys.readouterr().err


def test_a_weights_file_of_an_attached_dataset_is_kept_unchecked(tmp_path):
    out = build_train_kernel(HCD, OWNER, overrides=[*TINY, "model.weights=/kaggle/input/imagenet-weights/r.pth"],
                             datasets=[f"{OWNER}/imagenet-weights"], out=tmp_path / "k")
    script = (out / "kernel.py").read_text()
    assert "weights: /kaggle/input/imagenet-weights/r.pth" in script.encode().decode("unicode_escape")
    compile(script, "kernel.py", "exec")


# --- push, status and pull against the fake API ---------------------------------------------------------------------

def kit(tmp_path: Path, fake: FakeKaggle, *args: str) -> subprocess.CompletedProcess:
    for name in ("home", "kaggle-config", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home"),
           "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config"), "TMPDIR": str(tmp_path / "tmp"),
           "KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": fake.key, "OMP_NUM_THREADS": "1", **fake.env()}
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)


def output_of(working: Path) -> dict[str, bytes]:
    return {str(p.relative_to(working)): p.read_bytes() for p in sorted(working.rglob("*")) if p.is_file()}


def test_pull_makes_a_local_run_that_predict_and_bundle_accept(sessions, tmp_path):
    from kit.pipeline import predict_and_submit
    from kit.submission import validate_file

    working = sessions["root"] / "working-v2"
    with FakeKaggle(statuses=["RUNNING"], kernel_output=output_of(working), kernel_log="[]") as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        p = kit(tmp_path, fake, "kernel", "pull", KERNEL, "--out", str(tmp_path / "runs" / "hcd"), "--data",
                str(sessions["data"]), "--wait", "30", "--poll-every", "0.05")
    assert p.returncode == 0, p.stderr
    assert f"pulled kernel {KERNEL} into {tmp_path / 'runs' / 'hcd'}: finished, CV auc" in p.stdout
    assert f"{KERNEL}: running" in p.stderr  # the wait is visible
    run = RunDir.open(tmp_path / "runs" / "hcd")
    assert run.finished_folds() == [0, 1] and run.data_dir() == sessions["data"].resolve()
    assert (run.path / "oof.csv").read_bytes() == (working / "run" / "oof.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["hcd", "hcd.kernel.log"]  # no staging left
    _, submission = predict_and_submit(run.path, tta="1", report=False)  # the data folder now comes from run.json
    assert validate_file(HCD, submission, sessions["data"]) == 10


def test_pull_of_an_unfinished_run_says_how_to_continue_and_exits_75(sessions, tmp_path):
    with FakeKaggle(kernel_output=output_of(sessions["root"] / "working-v1")) as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        p = kit(tmp_path, fake, "kernel", "pull", KERNEL, "--out", str(tmp_path / "run"))
    assert p.returncode == 75, p.stderr
    assert "not finished (0 of 2 folds done); continue it with: kit kernel train --continue" in p.stdout
    assert RunDir.open(tmp_path / "run").last_path(0).is_file()


def test_pull_of_a_failed_kernel_shows_its_log_tail(tmp_path):
    lines = [f"line {i}\n" for i in range(50)] + ["kit train: error: config key train.lr must be > 0\n"]
    log = json.dumps([{"stream_name": "stderr", "time": float(i), "data": line} for i, line in enumerate(lines)])
    with FakeKaggle(kernel_status="ERROR", kernel_failure="Your notebook hit an error", kernel_log=log) as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        p = kit(tmp_path, fake, "kernel", "pull", KERNEL, "--out", str(tmp_path / "run"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    err = p.stderr
    assert err.startswith(f"kit kernel: error: kernel {KERNEL} failed: Your notebook hit an error. The end of its "
                          "log:\n  | line 21\n")
    assert err.rstrip().endswith("  | kit train: error: config key train.lr must be > 0\nthe whole log: "
                                 f"https://www.kaggle.com/code/{KERNEL}/log")
    assert "line 20\n" not in err and not (tmp_path / "run").exists()


def test_pull_of_an_output_without_a_run_folder_is_one_line(tmp_path):
    with FakeKaggle(kernel_output={"submission.csv": b"id,label\n1,0.5\n"}) as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        p = kit(tmp_path, fake, "kernel", "pull", KERNEL, "--out", str(tmp_path / "run"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (f"kit kernel: error: the output of kernel {KERNEL} holds no kit run folder "
                                "(kit-kernel.json naming one with its config.yaml; found submission.csv): is it a "
                                "training kernel of kit kernel build --train?")
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path / n for n in ("home", "kaggle-config", "tmp"))


def test_kit_kernel_train_builds_pushes_waits_and_pulls(sessions, tmp_path):
    working = output_of(sessions["root"] / "working-v2")

    def finish(fake: FakeKaggle, body: dict) -> None:
        """Kaggle runs the pushed script: its output carries the build token of that script."""
        build = re.search(r'^BUILD = "(\w+)"', body["text"], re.M).group(1)
        state = {**json.loads(working["kit-kernel.json"]), "build": build}
        fake.kernel_output = {**working, "kit-kernel.json": json.dumps(state).encode()}
        fake.statuses = ["QUEUED", "RUNNING"]

    with FakeKaggle(on_save=finish) as fake:
        fake.datasets[WHEELS] = Dataset(WHEELS, "kit-wheels", "apache-2.0", True)
        p = kit(tmp_path, fake, "kernel", "train", "--competition", "hcd", "--owner", OWNER, "--out",
                str(tmp_path / "kernel"), "--run", str(tmp_path / "run"), "--poll-every", "0.05",
                *[x for o in TINY for x in ("--set", o)])
    assert p.returncode == 0, p.stderr
    assert f"pushed {KERNEL} version 1 (session 1 of at most 1)" in p.stdout
    assert "finished, CV auc" in p.stdout and RunDir.open(tmp_path / "run").finished_folds() == [0, 1]
    [body] = fake.kernels[KERNEL].versions
    assert body["machineShape"] == "NvidiaTeslaT4" and body["enableInternet"] is False
    assert body["datasetDataSources"] == [WHEELS] and body.get("kernelDataSources", []) == []  # empty: left out


def test_pull_refuses_the_output_of_an_older_version(sessions, tmp_path):
    with FakeKaggle(kernel_output=output_of(sessions["root"] / "working-v2")) as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        fake.datasets[WHEELS] = Dataset(WHEELS, "kit-wheels", "apache-2.0", True)
        p = kit(tmp_path, fake, "kernel", "train", "--competition", "hcd", "--owner", OWNER, "--continue", "--out",
                str(tmp_path / "kernel"), "--run", str(tmp_path / "run"), "--wait", "0.5", "--poll-every", "0.05",
                *[x for o in TINY for x in ("--set", o)])
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"the output of kernel {KERNEL} is of another version than the one just pushed" in p.stderr
    assert f"{KERNEL}: complete, with the output of an older version; waiting for the new one" in p.stderr
    downloads = [r.path for r in fake.requests if r.method == "GET"]
    state = list(fake.kernel_output).index("kit-kernel.json")
    assert downloads and set(downloads) == {f"/output/{state}"}  # only kit-kernel.json, until it is the new one
    assert fake.kernels[KERNEL].versions[-1]["kernelDataSources"] == [KERNEL]
    assert not (tmp_path / "run").exists()


# --- the time budget -------------------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_stops_when_the_next_epoch_would_not_fit():
    clock = Clock()
    budget = TimeBudget(100, epochs=3, folds=[0, 1], start=0.0, clock=clock)
    clock.now = 30  # epoch 1 of fold 0, with the data preparation: 30 s
    budget(0, 0, 0.5)
    clock.now = 50  # epoch 2: 20 s; the estimate is now 20 s (the first gap held the preparation)
    budget(0, 1, 0.5)
    clock.now = 70  # 70 + 20 <= 100: one more fits
    budget(0, 2, 0.5)
    clock.now = 85  # 85 + 20 > 100
    with pytest.raises(TimeBudgetReached, match="after fold 1 epoch 1: 85 s of 100 s used and the next epoch "
                                                "takes about 20 s"):
        budget(1, 0, 0.5)


def test_the_budget_never_stops_the_last_epoch_of_the_run_and_refuses_nonsense():
    clock = Clock()
    budget = TimeBudget(1, epochs=2, folds=[3], start=0.0, clock=clock)
    clock.now = 10
    with pytest.raises(TimeBudgetReached):
        budget(3, 0, 0.5)
    budget(3, 1, 0.5)  # nothing follows but the scores: no stop
    with pytest.raises(ConfigError, match="--time-budget must be a positive number of seconds, got -5"):
        TimeBudget(-5, epochs=2, folds=[0])


def test_a_fold_stopped_early_and_then_by_the_budget_does_not_train_on(demo_data, tmp_path, monkeypatch):
    """Early stopping and the budget on the same epoch: the resumed fold ends there, as the uninterrupted one did."""
    from kit.config import load_config
    from kit.train import FoldProgress, train_folds

    improve = FoldProgress.update

    def only_the_first_epoch_improves(self, epoch, metric, loss):
        if epoch == 1:
            return improve(self, epoch, metric, loss)
        self.stale += 1
        return False

    monkeypatch.setattr(FoldProgress, "update", only_the_first_epoch_improves)
    cfg = load_config(HCD, overrides=[*TINY, "train.epochs=4", "train.early_stopping=1"])
    data, run = demo_data(HCD, n=40), RunDir(tmp_path / "run")

    def budget(fold, epoch, metric):
        if epoch == 1:  # the epoch that also stops the fold early
            raise TimeBudgetReached("stopped by the time budget")

    with pytest.raises(TimeBudgetReached):
        train_folds(cfg, data, run.path, folds=[0], on_epoch=budget)
    assert len(run.history(0)) == 2 and 0 not in run.finished_folds()
    train_folds(cfg, data, run.path, folds=[0])
    assert len(run.history(0)) == 2 and run.load(FoldResult, fold=0).epochs_run == 2


def test_kit_train_refuses_a_time_budget_that_is_not_positive(demo_data, tmp_path, capsys):
    from kit.cli import main

    rc = main(["train", "--competition", "hcd", "--data", str(demo_data(HCD, n=40)), "--out", str(tmp_path / "r"),
               *[x for o in TINY for x in ("--set", o)], "--time-budget", "-1"])
    assert rc == 1
    assert capsys.readouterr().err == "kit train: error: --time-budget must be a positive number of seconds, got -1.0\n"
    assert not (tmp_path / "r").exists()


def test_the_script_passes_sigterm_on_to_kit_train(tmp_path):
    """Kaggle's SIGTERM at the time limit reaches the script; kit train, its child, must get it to stop cleanly."""
    out = build_train_kernel(HCD, OWNER, overrides=TINY, out=tmp_path / "k")
    child = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
             "print('ready', flush=True); time.sleep(60)")
    driver = ("import importlib.util, sys; "
              f"spec = importlib.util.spec_from_file_location('k', {str(out / 'kernel.py')!r}); "
              "k = importlib.util.module_from_spec(spec); spec.loader.exec_module(k); "
              f"sys.exit(k.run_child([sys.executable, '-c', {child!r}]))")
    p = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True,
                         env={"PATH": "/usr/bin:/bin", "KIT_KAGGLE_WORKING": str(tmp_path)})
    lines = [p.stdout.readline(), p.stdout.readline()]  # the command, then the child's "ready"
    assert lines[1] == "ready\n", lines
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143  # the child's exit: it got the signal and stopped its own way


def test_status_of_a_finished_training_kernel_points_at_pull(tmp_path):
    with FakeKaggle() as fake:
        fake.kernels[KERNEL] = Kernel(KERNEL)
        p = kit(tmp_path, fake, "kernel", "status", KERNEL)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{KERNEL}: complete\nits run folder: kit kernel pull {KERNEL} --out RUN\n"


def test_the_training_kernel_carries_data_extra_into_the_session(tmp_path, monkeypatch):
    """data.extra's local folders become the folders the kernel finds under /kaggle/input: a Kaggle competition is
    attached as one, a dataset (ISIC 2018 here) comes with --attach and is found by its labels file."""
    extra = "data.extra=[{competition: isic-2018, data: /local/isic2018}, {competition: siim-isic-melanoma-" \
            "classification, data: /local/siim}]"
    out = build_train_kernel("isic-2019", OWNER, overrides=[*TINY, extra], datasets=[f"{OWNER}/ham10000-data"],
                             out=tmp_path / "k")
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["competition_sources"] == ["isic-2019", "siim-isic-melanoma-classification"]
    assert meta["dataset_sources"][-1] == f"{OWNER}/ham10000-data"
    assert "/local/" not in (out / "kernel.py").read_text()  # this machine's paths mean nothing on Kaggle

    inputs = tmp_path / "input"
    (inputs / "ham10000-data" / "HAM10000").mkdir(parents=True)
    (inputs / "ham10000-data" / "HAM10000" / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("image\n")
    (inputs / "competitions" / "siim-isic-melanoma-classification").mkdir(parents=True)
    (inputs / "competitions" / "siim-isic-melanoma-classification" / "train.csv").write_text("image_name\n")
    monkeypatch.setenv("KIT_KAGGLE_INPUT", str(inputs))
    spec = importlib.util.spec_from_file_location("train_kernel", out / "kernel.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    looked: list[str] = []
    found = script.find_extra(looked)
    assert found == {"isic-2018-task3": inputs / "ham10000-data" / "HAM10000",
                     "siim-isic-melanoma-classification": inputs / "competitions" / "siim-isic-melanoma-classification"}
    assert looked == []
    config = yaml.safe_load(script.config_yaml(found))
    assert config["data"]["extra"] == [{"competition": "isic-2018", "data": str(found["isic-2018-task3"])},
                                       {"competition": "siim-isic-melanoma-classification",
                                        "data": str(found["siim-isic-melanoma-classification"])}]
    (inputs / "ham10000-data" / "HAM10000" / "ISIC2018_Task3_Training_GroundTruth.csv").unlink()
    assert "isic-2018-task3" not in script.find_extra(looked)
    assert looked == [f"{inputs}/**/ISIC2018_Task3_Training_GroundTruth.csv (data.extra isic-2018-task3)"]
