"""kit kernel: the offline Kaggle kernel really runs, its metadata, and push / status against the fake Kaggle API.

The kernel test runs the generated script the way Kaggle would: a fresh Python whose packages are this venv's
(torch, timm, ... as in Kaggle's image) minus kit and simplejpeg, inputs laid out as Kaggle mounts them, pip told
to use no index, and a wheels dataset that is the only place kit and simplejpeg can come from.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_kaggle_server import Dataset, FakeKaggle, Kernel
from fake_wheels import fake_wheel, installed_wheel

from kit.bundle import make_bundle
from kit.cli import main
from kit.errors import KitError
from kit.kernel import build_kernel, render_script
from kit.submission import validate_file

REPO = Path(__file__).resolve().parents[1]
HCD = "histopathologic-cancer-detection"
ISIC = "isic-2024-challenge"
OWNER = "kit-test-user"  # FakeKaggle's user: push and status act for it
WEIGHTS = f"{OWNER}/kit-{HCD}-weights"
WHEELS = f"{OWNER}/kit-wheels"
COMMITTED = {"histopathologic-cancer-detection", "siim-isic-melanoma-classification", "isic-2024-challenge"}
PLACEHOLDER = "your-kaggle-username"
TINY = ["model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.epochs=1", "train.batch_size=16",
        "train.warmup_epochs=0", "train.device=cpu"]
DRIVER = "import sys\nfrom kit.cli import main\nsys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): a two-fold test_resnet run, one epoch at 32 px, on 40 synthetic HCD patches (10 test)."""
    from kit.config import load_config
    from kit.train import train_folds

    data = demo_data(HCD, n=40)
    run = tmp_path_factory.mktemp("kernel-run") / "hcd-tiny"
    train_folds(load_config(HCD, overrides=TINY), data, run)
    return data, run


def kaggle_like_python(root: Path) -> Path:
    """A new venv that sees this venv's packages except kit and simplejpeg (absent from Kaggle's image).

    ``--system-site-packages`` would give the base interpreter's packages, not this venv's, and pointing a .pth at
    this venv's site-packages would show pip kit's dist-info (kit "already installed"). So a folder of symlinks to
    every entry of site-packages but kit's and simplejpeg's files is put on the path with a .pth file; .pth files
    in that folder are not processed, so kit's editable finder stays off. Its pip is this venv's, through the
    folder, and installs into the new venv.
    """
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "venv")
    site = root / "venv" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert site.is_dir()
    left_out = {f.parts[0] for name in ("kit", "simplejpeg") for f in importlib.metadata.distribution(name).files}
    image = root / "image-packages"
    image.mkdir()
    for folder in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")):
        for entry in Path(folder).iterdir():
            if entry.name not in left_out and entry.suffix != ".pth" and not (image / entry.name).exists():
                (image / entry.name).symlink_to(entry)
    (site / "kaggle-image.pth").write_text(f"{image}\n")
    return root / "venv" / "bin" / "python"


def python_says(python: Path, code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def wheel_cache(tmp_path: Path, real: bool = False) -> Path:
    """Wheels of what Kaggle's image lacks, of the installed versions (kit bundle pins them): stand-ins, or with
    ``real`` the installed packages themselves (ISIC 2024's images are JPEGs that simplejpeg decodes)."""
    cache = tmp_path / "wheel-cache"
    if real:
        installed_wheel(cache, "simplejpeg")
    else:
        fake_wheel(cache, "simplejpeg", importlib.metadata.version("simplejpeg"))
    return cache


def kaggle_inputs(tmp_path: Path, competition: str, data: Path, bundle: Path) -> tuple[Path, dict[str, str]]:
    """/kaggle/input as Kaggle mounts it (newer layout): the competition, a wheels dataset, the weights dataset; the
    Python of a Kaggle-like image and its environment (no index, inputs and working folder moved here)."""
    inputs, working = tmp_path / "input", tmp_path / "working"
    shutil.copytree(data, inputs / "competitions" / competition)
    wheels = inputs / "datasets" / OWNER / "kit-wheels"
    wheels.mkdir(parents=True)
    for wheel in bundle.glob("*.whl"):
        shutil.move(wheel, wheels / wheel.name)
    shutil.copytree(bundle, inputs / "datasets" / OWNER / f"kit-{competition}-weights")
    for name in ("home", "tmp", "working"):
        (tmp_path / name).mkdir(exist_ok=True)
    python = kaggle_like_python(tmp_path)
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONNOUSERSITE": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
           "OMP_NUM_THREADS": "1", "KIT_KAGGLE_INPUT": str(inputs), "KIT_KAGGLE_WORKING": str(working)}
    return python, env


def test_the_kernel_installs_kit_offline_and_writes_a_valid_submission(tmp_path, trained):
    data, run = trained
    bundle = make_bundle(run, OWNER, folds=None, out=tmp_path / "bundle", wheel_cache=wheel_cache(tmp_path),
                         kit_source=REPO)
    kernel = build_kernel(HCD, OWNER, wheels_dataset=WHEELS, tta="8", out=tmp_path / "kernel")
    python, env = kaggle_inputs(tmp_path, HCD, data, bundle)
    inputs, working = tmp_path / "input", tmp_path / "working"

    assert "No module named 'kit'" in python_says(python, "import kit", env, working).stderr
    assert "No module named 'simplejpeg'" in python_says(python, "import simplejpeg", env, working).stderr
    inputs_before = tree(inputs)

    p = subprocess.run([str(python), str(kernel / "kernel.py")], env=env, cwd=working, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "--no-index --no-deps --find-links" in p.stdout and "Successfully installed" in p.stdout
    assert "kit kernel: kit installed; the 15 modules it imports are there" in p.stdout
    # kit and simplejpeg now come from the wheels dataset, installed into the kernel's Python
    after = python_says(python, "import kit, simplejpeg; print(kit.__file__, simplejpeg.FAKE)", env, working)
    assert after.stdout.split() == [str(python.parent.parent / "lib" / f"python{sys.version_info[0]}."
                                        f"{sys.version_info[1]}" / "site-packages" / "kit" / "__init__.py"), "True"]

    submission = working / "submission.csv"
    assert validate_file(HCD, submission, data) == 10
    # beside it, what it was made from: kit submit --kernel logs that run with the score
    assert json.loads((working / "kit-submission.json").read_text())["run"] == Path(run).name
    assert "packing 10 images" in p.stdout + p.stderr and not (working / "kit-cache").exists()  # not kernel output
    # the kernel's numbers are kit predict's: each fold's best.pt with 8 TTA views, folds averaged
    from kit.pipeline import predict_and_submit

    _, local = predict_and_submit(run, data, tta="8", out_dir=tmp_path / "local", report=False)
    ours, theirs = pd.read_csv(submission, dtype={"id": str}), pd.read_csv(local, dtype={"id": str})
    assert ours["id"].tolist() == theirs["id"].tolist()
    assert ours["label"].to_numpy() == pytest.approx(theirs["label"].to_numpy(), abs=1e-6)
    assert ours["label"].nunique() > 1
    assert tree(inputs) == inputs_before  # nothing was written into the (read-only on Kaggle) inputs


@pytest.fixture(scope="module")
def stacked(demo_data, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, run, stack): a two-fold test_resnet run on synthetic ISIC 2024 data (hdf5 images, metadata),
    predicted with 2 TTA views, and kit stack's LightGBM on its scores and the metadata (1 seed, few trees)."""
    pytest.importorskip("lightgbm")
    from kit.config import load_config
    from kit.predict import predict_run
    from kit.stack import StackSettings, run_stack
    from kit.train import train_folds

    data = demo_data(ISIC, n=120)
    root = tmp_path_factory.mktemp("kernel-stack")
    train_folds(load_config(ISIC, overrides=TINY + ["model.pretrained=false"]), data, root / "img")
    predict_run(root / "img", data, tta="2", device="cpu")
    stack = run_stack(ISIC, None, [root / "img"], root / "stack", StackSettings(models=["lgbm"], seeds=1, trees=20))
    return data, root / "img", stack.path


def test_the_isic_2024_kernel_runs_the_image_models_then_the_stack(tmp_path, stacked):
    from kit.stack.saved import image_test_scores, predict_folds

    data, run, stack = stacked
    bundle = make_bundle(stack, OWNER, out=tmp_path / "bundle", wheel_cache=wheel_cache(tmp_path, real=True),
                         kit_source=REPO)
    inside = json.loads((bundle / "bundle.json").read_text())
    assert inside["stack"] == "stack" and inside["runs"] == {
        "img_img": {"run": "img", "folds": [0, 1], "checkpoints": "stack/runs/img_img"}}
    assert sorted(str(p.relative_to(bundle / "stack")) for p in (bundle / "stack").rglob("*") if p.is_file()) == [
        "fold0/lgbm_seed0.txt", "fold1/lgbm_seed0.txt", "runs/img_img/config.yaml", "runs/img_img/fold0/best.pt",
        "runs/img_img/fold0/result.json", "runs/img_img/fold1/best.pt", "runs/img_img/fold1/result.json",
        "runs/img_img/folds.csv", "runs/img_img/run.json", "runs/img_img/scores.json", "scores.json", "stack.json"]
    kernel = build_kernel(ISIC, OWNER, wheels_dataset=WHEELS, tta="2", out=tmp_path / "kernel")
    python, env = kaggle_inputs(tmp_path, ISIC, data, bundle)
    working = tmp_path / "working"

    p = subprocess.run([str(python), str(kernel / "kernel.py")], env=env, cwd=working, capture_output=True,
                       text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "the 17 modules it imports are there" in p.stdout  # kit.stack.saved and lightgbm too
    assert "the stack's GBDTs over 2 folds on img_img, TTA 2" in p.stdout

    submission = pd.read_csv(working / "submission.csv", dtype={"isic_id": str})
    assert list(submission.columns) == ["isic_id", "target"]
    assert json.loads((working / "kit-submission.json").read_text())["run"] == stack.name
    assert validate_file(ISIC, working / "submission.csv", data) == len(submission) > 1
    # what the local stack predicts for the same test rows, from the run's own test predictions (the same TTA)
    ids, per_fold = predict_folds(stack, data, {"img_img": image_test_scores(run)})
    local = np.mean(list(per_fold.values()), axis=0)
    assert submission["isic_id"].tolist() == [str(i) for i in ids]
    assert submission["target"].to_numpy() == pytest.approx(local, abs=1e-6)
    assert submission["target"].nunique() > 1
    written = np.mean([pd.read_csv(stack / f"test_fold{k}.csv")["pred"] for k in (0, 1)], axis=0)
    assert local == pytest.approx(written, abs=1e-12)  # = the stack's own test predictions


def test_kernel_run_on_a_stack_bundle_names_a_changed_model_file(tmp_path, stacked, capsys):
    data, _, stack = stacked
    bundle = make_bundle(stack, OWNER, out=tmp_path / "bundle", wheel_cache=wheel_cache(tmp_path), kit_source=REPO)
    model = bundle / "stack" / "fold1" / "lgbm_seed0.txt"
    model.write_text(model.read_text() + "\n")
    argv = ["kernel", "run", "--competition", ISIC, "--data", str(data), "--weights", str(bundle / "stack"),
            "--working", str(tmp_path / "working"), "--device", "cpu"]
    rc = main([*argv, "--tta", "2"])  # the TTA kit predict gave the stack's image run
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"model file {model} differs from the one kit stack saved" in err
    assert not (tmp_path / "working" / "submission.csv").exists()


def test_a_stack_kernel_refuses_another_tta_than_its_image_runs_had(tmp_path, stacked, capsys):
    data, _, stack = stacked
    bundle = make_bundle(stack, OWNER, out=tmp_path / "bundle", wheel_cache=wheel_cache(tmp_path), kit_source=REPO)
    assert json.loads((bundle / "stack" / "stack.json").read_text())["runs"][0]["tta"] == {
        "views": ["identity", "hflip"], "merge": "mean"}
    rc = main(["kernel", "run", "--competition", ISIC, "--data", str(data), "--weights", str(bundle / "stack"),
               "--working", str(tmp_path / "working"), "--device", "cpu", "--tta", "8"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("the stack's image run img_img was predicted with kit predict --tta 2, but this kernel runs --tta 8 "
            "(merge mean)") in err and "kit kernel build --tta 2" in err
    assert not (tmp_path / "working").exists() or not list((tmp_path / "working").rglob("test_fold*.csv"))


def test_a_stack_with_a_missing_model_file_is_not_bundled(tmp_path, stacked):
    _, _, stack = stacked
    copy = tmp_path / "stack"
    shutil.copytree(stack, copy)
    (copy / "fold0" / "lgbm_seed0.txt").unlink()
    with pytest.raises(KitError) as e:
        make_bundle(copy, OWNER, out=tmp_path / "bundle", wheel_cache=wheel_cache(tmp_path), kit_source=REPO)
    assert str(e.value) == (f"model file {copy / 'fold0' / 'lgbm_seed0.txt'} is missing: the stack folder (or its "
                            "bundle) is incomplete")
    assert not (tmp_path / "bundle").exists()


def load_script(tmp_path: Path, monkeypatch, **datasets: str):
    """The rendered kernel script as a module, its input root in ``tmp_path / 'input'``."""
    path = tmp_path / "kernel.py"
    path.write_text(render_script(HCD, datasets.get("wheels", WEIGHTS), datasets.get("weights", WEIGHTS)))
    monkeypatch.setenv("KIT_KAGGLE_INPUT", str(tmp_path / "input"))
    spec = importlib.util.spec_from_file_location("kit_kernel_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layout", ["classic", "newer"])
def test_the_script_finds_its_inputs_in_both_layouts(tmp_path, monkeypatch, layout):
    root = tmp_path / "input"
    slug = WEIGHTS.split("/")[1]
    weights = root / slug if layout == "classic" else root / "datasets" / OWNER / slug
    data = root / HCD if layout == "classic" else root / "competitions" / HCD
    (weights / "checkpoints" / "fold0").mkdir(parents=True)
    (weights / "checkpoints" / "run.json").write_text("{}")
    (weights / "checkpoints" / "fold0" / "best.pt").write_bytes(b"w")
    (weights / "kit-0.1.0-py3-none-any.whl").write_bytes(b"w")
    data.mkdir(parents=True)
    script = load_script(tmp_path, monkeypatch)
    looked: list[str] = []
    assert next(p for p in script.mounts(HCD) if p.is_dir()) == data
    assert script.find(WEIGHTS, "kit-*.whl", looked) == weights / "kit-0.1.0-py3-none-any.whl"
    assert script.find_weights(looked) == weights / "checkpoints"
    assert looked == ([] if layout == "classic" else [f"{root / slug}/**/kit-*.whl", f"{root / slug}/**/stack.json, "
                                                       "or run.json with fold*/best.pt beside it"])
    (weights / "stack" / "runs" / "img_a" / "fold0").mkdir(parents=True)  # a stack bundle: the stack, not its runs
    (weights / "stack" / "runs" / "img_a" / "run.json").write_text("{}")
    (weights / "stack" / "runs" / "img_a" / "fold0" / "best.pt").write_bytes(b"w")
    (weights / "stack" / "stack.json").write_text('{"models": ["lgbm", "cat"]}')
    assert script.find_weights([]) == weights / "stack"
    assert script.needed_modules(weights / "stack")[-3:] == ("kit.stack.saved", "lightgbm", "catboost")


def test_the_script_installs_the_highest_version_of_kit_not_the_last_name(tmp_path, monkeypatch):
    wheels = tmp_path / "input" / "kit-wheels"
    wheels.mkdir(parents=True)
    for version in ("0.9.0", "0.10.0", "0.10.0rc1", "not-a-version"):
        (wheels / f"kit-{version}-py3-none-any.whl").write_bytes(b"w")
    script = load_script(tmp_path, monkeypatch, wheels=WHEELS)
    assert [p.name for p in sorted(wheels.iterdir())][-2:] == ["kit-0.9.0-py3-none-any.whl",  # name order
                                                              "kit-not-a-version-py3-none-any.whl"]
    assert script.find(WHEELS, "kit-*.whl", []).name == "kit-0.10.0-py3-none-any.whl"


def test_the_import_check_names_every_missing_module_in_one_line(tmp_path, monkeypatch, capsys):
    script = load_script(tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        script.check_imports(("json", "kit_no_such_module", "kit.no_such_stage"), WHEELS)
    assert str(stop.value) == ("kit kernel: this image lacks modules kit imports: kit_no_such_module "
                               f"kit.no_such_stage; put the wheels of the missing packages in {WHEELS} "
                               "(KAGGLE_IMAGE_LACKS in kit/bundle.py) and push it again")
    script.check_imports(("json", "kit.cli"), WHEELS)
    assert "the 2 modules it imports are there" in capsys.readouterr().out


def test_missing_inputs_are_all_named_with_where_the_script_looked(tmp_path):
    (tmp_path / "input").mkdir()
    script = tmp_path / "kernel.py"
    script.write_text(render_script(HCD, WHEELS, WEIGHTS))
    env = {"PATH": "/usr/bin:/bin", "KIT_KAGGLE_INPUT": str(tmp_path / "input"), "KIT_KAGGLE_WORKING": str(tmp_path)}
    p = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert (f"kit kernel: the competition data, kit's wheel ({WHEELS}), the checkpoints ({WEIGHTS}) not found; "
            f"attach {HCD}, {WHEELS} and {WEIGHTS} to this kernel") in p.stderr
    root = tmp_path / "input"
    for looked in (root / HCD, root / "competitions" / HCD, f"{root / 'datasets' / OWNER / 'kit-wheels'}/**/kit-*.whl",
                   f"{root / 'datasets' / WEIGHTS}/**/stack.json, or run.json with fold*/best.pt beside it"):
        assert str(looked) in p.stderr


def test_kernel_run_refuses_checkpoints_of_another_competition(tmp_path, demo_data, capsys):
    weights = tmp_path / "checkpoints"
    weights.mkdir()
    (weights / "config.yaml").write_text("competition: isic-2024-challenge\n")
    (weights / "run.json").write_text("{}")
    rc = main(["kernel", "run", "--competition", "hcd", "--data", str(demo_data(HCD, n=40)), "--weights",
               str(weights), "--working", str(tmp_path / "working")])
    assert rc == 1
    assert f"were trained for isic-2024-challenge, not {HCD}" in capsys.readouterr().err
    assert not (tmp_path / "working").exists()


# --- the kernel folder ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("competition", sorted(COMMITTED))
def test_kernel_metadata_and_the_committed_kernel_folders(tmp_path, competition):
    out = build_kernel(competition, PLACEHOLDER, out=tmp_path / competition)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    slug = f"kit-{competition}"
    assert meta["id"] == f"{PLACEHOLDER}/{slug}" and meta["title"] == slug  # Kaggle derives the URL from the title
    assert (meta["code_file"], meta["language"], meta["kernel_type"]) == ("kernel.py", "python", "script")
    assert meta["enable_internet"] is False  # written out: the client's default is True
    assert meta["is_private"] is True and meta["enable_gpu"] is True
    assert meta["competition_sources"] == [competition]
    assert meta["dataset_sources"] == [f"{PLACEHOLDER}/kit-{competition}-weights"]  # kit bundle's default slug
    script = (out / "kernel.py").read_text()
    assert f'COMPETITION = "{competition}"' in script and 'TTA = "8"' in script and "__" + "TTA__" not in script
    compile(script, "kernel.py", "exec")
    committed = REPO / "kernels" / competition
    assert sorted(p.name for p in committed.iterdir()) == ["kernel-metadata.json", "kernel.py"]
    for name in ("kernel-metadata.json", "kernel.py"):  # regenerate: kit kernel build --competition C --owner ...
        assert (committed / name).read_text() == (out / name).read_text(), f"kernels/{competition}/{name} is stale"


def test_separate_wheels_dataset_and_tta_are_written(tmp_path):
    out = build_kernel("isic-2024", OWNER, wheels_dataset=WHEELS, weights_dataset=f"{OWNER}/isic24-effnet-b0",
                       tta="4", out=tmp_path / "k")
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == [WHEELS, f"{OWNER}/isic24-effnet-b0"]
    assert meta["competition_sources"] == ["isic-2024-challenge"] and meta["id"] == f"{OWNER}/kit-isic-2024-challenge"
    assert 'TTA = "4"' in (out / "kernel.py").read_text()


@pytest.mark.parametrize("options, said", [
    ({"--owner": "not a user"}, "--owner 'not a user' is not a Kaggle user name"),
    ({"--weights-dataset": "no-slash"}, "--weights-dataset 'no-slash' must be OWNER/SLUG"),
    ({"--competition": "hcdd"}, "unknown competition 'hcdd'"),
])
def test_build_refuses_bad_options_and_writes_nothing(tmp_path, capsys, options, said):
    options = {"--competition": "hcd", "--owner": OWNER, **options, "--out": str(tmp_path / "k")}
    argv = ["kernel", "build", *[x for option in options.items() for x in option]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("kit kernel: error:") and said in err
    assert not (tmp_path / "k").exists()


def test_build_refuses_an_unknown_tta_set_before_anything(tmp_path, capsys):
    argv = ["kernel", "build", "--competition", "hcd", "--owner", OWNER, "--tta", "7", "--out", str(tmp_path / "k")]
    with pytest.raises(SystemExit) as e:  # --tta is a closed set, checked by argparse's choices
        main(argv)
    assert e.value.code == 2 and "invalid choice: '7'" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# --- push and status, with the real kaggle client against the fake API ------------------------------------------------

def kit(tmp_path: Path, fake: FakeKaggle, *args: str) -> subprocess.CompletedProcess:
    for name in ("home", "kaggle-config", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home"),
           "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config"), "TMPDIR": str(tmp_path / "tmp"),
           "KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": fake.key, **fake.env()}
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_push_sends_the_script_with_internet_off_and_the_inputs_attached(tmp_path):
    out = build_kernel(HCD, OWNER, wheels_dataset=WHEELS, out=tmp_path / "kernel")
    with FakeKaggle() as fake:
        for ref in (WHEELS, WEIGHTS):
            fake.datasets[ref] = Dataset(ref, ref.split("/")[1], "other", True)
        p = kit(tmp_path, fake, "kernel", "push", str(out))
    assert p.returncode == 0, p.stderr
    assert f"pushed {OWNER}/kit-{HCD} version 1" in p.stdout and f"kit kernel status {OWNER}/kit-{HCD}" in p.stdout
    assert "does not resolve" not in p.stdout + p.stderr  # the title matches the id
    [body] = fake.kernels[f"{OWNER}/kit-{HCD}"].versions
    assert body["text"] == (out / "kernel.py").read_text()
    assert (body["newTitle"], body["language"], body["kernelType"]) == (f"kit-{HCD}", "python", "script")
    assert body["enableInternet"] is False and body["enableGpu"] is True and body["isPrivate"] is True
    assert body["datasetDataSources"] == [WHEELS, WEIGHTS] and body["competitionDataSources"] == [HCD]


def test_push_fails_when_kaggle_leaves_inputs_out(tmp_path):
    out = build_kernel(HCD, OWNER, out=tmp_path / "kernel")
    with FakeKaggle(unknown_competitions=(HCD,)) as fake:  # no dataset pushed yet, rules not accepted
        p = kit(tmp_path, fake, "kernel", "push", str(out))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert (f"Kaggle saved kernel {OWNER}/kit-{HCD} (version 1) without its inputs dataset sources {WEIGHTS}; "
            f"competition sources {HCD}: push the datasets first (kit bundle push)") in p.stderr


@pytest.mark.parametrize("status, failure, rc, said", [
    ("COMPLETE", "", 0, f"{OWNER}/kit-{HCD}: complete\nits submission.csv: kaggle kernels output {OWNER}/kit-{HCD}"),
    ("ERROR", "kit kernel: pip could not install", 1,
     f"kit kernel: error: kernel {OWNER}/kit-{HCD} failed: kit kernel: pip could not install. The end of its log:\n"
     "  | + pip install\n  | ERROR: No matching distribution found for simplejpeg\n"
     f"the whole log: https://www.kaggle.com/code/{OWNER}/kit-{HCD}/log"),
])
def test_status_of_a_pushed_kernel(tmp_path, status, failure, rc, said):
    out = build_kernel(HCD, OWNER, out=tmp_path / "kernel")
    log = json.dumps([{"stream_name": "stdout", "time": 1.0, "data": "+ pip install\n"},
                      {"stream_name": "stderr", "time": 2.0, "data": "ERROR: No matching distribution found for "
                                                                     "simplejpeg\n"}])
    with FakeKaggle(kernel_status=status, kernel_failure=failure, kernel_log=log) as fake:
        fake.datasets[WEIGHTS] = Dataset(WEIGHTS, "w", "other", True)
        assert kit(tmp_path, fake, "kernel", "push", str(out)).returncode == 0
        p = kit(tmp_path, fake, "kernel", "status", f"{OWNER}/kit-{HCD}")
    assert p.returncode == rc, p.stderr
    assert said in p.stdout + p.stderr
    status_calls = [r for r in fake.requests if r.endpoint.endswith("GetKernelSessionStatus")]
    assert status_calls[-1].body == {"userName": OWNER, "kernelSlug": f"kit-{HCD}"}


def test_status_waits_while_the_kernel_runs(tmp_path):
    with FakeKaggle(kernel_status="RUNNING") as fake:
        fake.kernels[f"{OWNER}/kit-{HCD}"] = Kernel(f"{OWNER}/kit-{HCD}")  # pushed earlier
        p = kit(tmp_path, fake, "kernel", "status", f"{OWNER}/kit-{HCD}", "--wait", "0.3", "--poll-every", "0.05")
    assert p.returncode == 0 and f"{OWNER}/kit-{HCD}: running" in p.stdout
    assert fake.endpoints().count("kernels.KernelsApiService/GetKernelSessionStatus") >= 3


def test_status_of_an_unknown_kernel_says_to_push_it(tmp_path):
    with FakeKaggle() as fake:
        p = kit(tmp_path, fake, "kernel", "status", f"{OWNER}/kit-nothing-here")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"Kaggle has no kernel {OWNER}/kit-nothing-here visible to this account (HTTP 404" in p.stderr
    assert "push it with kit kernel push" in p.stderr


KIT_REQUIRES = ["torch<3,>=2.2", "timm<2,>=1.0.21", "albumentations==2.0.8", "lightgbm>=4.0; extra == \"stack\""]


@pytest.mark.parametrize("image, owners, said", [
    ({"torch": "2.10.0+cu128", "timm": "1.0.26", "albumentations": "2.0.8"}, ["albumentations"], []),
    ({"torch": "2.10.0", "timm": "1.0.26", "albumentationsx": "2.1.3", "albumentations": "2.1.3"}, ["albumentationsx"],
     ["albumentationsx 2.1.3 installs as 'albumentations' (AlbumentationsX, AGPL-licensed; kit needs the MIT "
      "albumentations 2.0.x)"]),
    ({"torch": "3.0.0", "timm": "1.0.3", "albumentations": "1.4.21"}, ["albumentations"],
     ["albumentations 1.4.21 (kit needs the MIT 2.0.x line)", "torch 3.0.0 (kit needs torch<3,>=2.2)",
      "timm 1.0.3 (kit needs timm<2,>=1.0.21)"]),
    ({"albumentations": "2.0.5"}, ["albumentations"], ["torch absent (kit needs torch<3,>=2.2)",
                                                       "timm absent (kit needs timm<2,>=1.0.21)"]),
])
def test_the_script_checks_the_installed_distributions_not_only_the_modules(tmp_path, monkeypatch, image, owners,
                                                                            said):
    script = load_script(tmp_path, monkeypatch)
    assert script.version_problems(KIT_REQUIRES, owners, image.get) == said


def test_the_kernel_log_starts_with_the_versions_and_stops_on_a_wrong_one(tmp_path, monkeypatch, capsys):
    script = load_script(tmp_path, monkeypatch)
    script.report_versions()
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"kit kernel: Python {sys.version.split()[0]}, torch {importlib.metadata.version('torch')}")
    assert f"albumentations {importlib.metadata.version('albumentations')}" in first
    script.check_versions(WHEELS)  # this environment's torch, timm and albumentations fit kit's own metadata
    assert "within kit's bounds" in capsys.readouterr().out
    monkeypatch.setattr(script, "installed", lambda name: "0.9.16" if name == "timm" else
                        importlib.metadata.version(name))
    with pytest.raises(SystemExit) as stop:
        script.check_versions(WHEELS)
    assert str(stop.value).startswith("kit kernel: this image has timm 0.9.16 (kit needs timm") and "\n" not in str(
        stop.value)
