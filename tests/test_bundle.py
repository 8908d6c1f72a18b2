"""kit bundle: the dataset folder (kit's wheel built from this checkout, the wheels Kaggle lacks, checkpoints) and
kit bundle push against the loopback fake of the Kaggle API with the real client (tests/fake_kaggle_server.py).

The run folders here are written by hand: bundling copies files and never reads a checkpoint, so any bytes do (the
kernel test, tests/test_kernel.py, bundles a really trained run and predicts with it). Wheels of the dependencies
come from a local wheel cache of fake wheels (tests/fake_wheels.py): no test downloads anything.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fake_kaggle_server import FakeKaggle
from fake_wheels import fake_wheel

from kit.bundle import KAGGLE_IMAGE_HAS, KAGGLE_IMAGE_LACKS, make_bundle, missing_on_kaggle, wheel_requirements
from kit.cli import main
from kit.errors import KitError

REPO = Path(__file__).resolve().parents[1]
HCD = "histopathologic-cancer-detection"
OWNER = "kit-test-user"
SLUG = f"kit-{HCD}-weights"
SIMPLEJPEG = importlib.metadata.version("simplejpeg")  # the bundle pins the version installed here
DRIVER = "import sys\nfrom kit.cli import main\nsys.exit(main(sys.argv[1:]))"


def write_run(run: Path, finished: tuple[int, ...] = (0, 1), unfinished: tuple[int, ...] = (2,)) -> Path:
    """A run folder as kit train leaves it: run files, finished folds (best.pt + result.json), unfinished ones."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"competition: {HCD}\nn_folds: 3\n")
    (run / "run.json").write_text(json.dumps({"data": "/somewhere/data", "folds": [0, 1, 2]}))
    (run / "folds.csv").write_text("id,label,fold\na,0,0\nb,1,1\nc,0,2\n")
    (run / "scores.json").write_text(json.dumps({"metric": "auc", "cv": 0.91234, "mean_of_folds": 0.91,
                                                        "folds": {"0": 0.9, "1": 0.92}}))
    (run / "oof.csv").write_text("id,fold,target,label\n")
    for k in finished + unfinished:
        (run / f"fold{k}").mkdir()
        (run / f"fold{k}" / "best.pt").write_bytes(bytes([k]) * 1000 + b"weights of fold %d" % k)
        (run / f"fold{k}" / "last.pt").write_bytes(b"last")
        if k in finished:
            (run / f"fold{k}" / "result.json").write_text(json.dumps({"fold": k, "best_metric": 0.9}))
    return run


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A wheel cache with a simplejpeg wheel of the installed version, fit for any Python on any platform."""
    folder = tmp_path_factory.mktemp("wheel-cache")
    fake_wheel(folder, "simplejpeg", SIMPLEJPEG)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, cache) -> Path:
    """kit bundle RUN --owner OWNER --out DIR --wheel-cache CACHE, once for the tests that only read it."""
    root = tmp_path_factory.mktemp("bundle")
    run = write_run(root / "run-a")
    assert main(["bundle", "build", str(run), "--owner", OWNER, "--out", str(root / "out"), "--wheel-cache", str(cache)]) == 0
    return root / "out"


def test_bundle_holds_metadata_wheels_and_the_finished_folds(bundle):
    run = bundle.parent / "run-a"
    meta = json.loads((bundle / "dataset-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/{SLUG}" and meta["title"] == SLUG and meta["licenses"] == [{"name": "other"}]
    assert "CV auc 0.9123" in meta["description"]
    top = sorted(p.name for p in bundle.iterdir())
    assert top == ["bundle.json", "checkpoints", "dataset-metadata.json", "kit-0.1.0-py3-none-any.whl",
                   f"simplejpeg-{SIMPLEJPEG}-py3-none-any.whl"]
    ckpt = bundle / "checkpoints"
    assert sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()) == [
        "config.yaml", "fold0/best.pt", "fold0/result.json", "fold1/best.pt", "fold1/result.json", "folds.csv",
        "run.json", "scores.json"]  # fold2 has not finished; no last.pt, no OOF files
    for k in (0, 1):
        assert (ckpt / f"fold{k}" / "best.pt").read_bytes() == (run / f"fold{k}" / "best.pt").read_bytes()
    assert (ckpt / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert json.loads((ckpt / "run.json").read_text())["folds"] == [0, 1]  # the kernel predicts exactly these
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert (manifest["competition"], manifest["run"], manifest["folds"]) == (HCD, "run-a", [0, 1])


def test_the_kit_wheel_is_built_from_this_checkout_with_its_templates(bundle):
    with zipfile.ZipFile(bundle / "kit-0.1.0-py3-none-any.whl") as z:
        names = set(z.namelist())
        metadata = z.read("kit-0.1.0.dist-info/METADATA").decode()
        packaged = z.read("kit/templates/kaggle_kernel.py")
    assert {"kit/kernel.py", "kit/bundle.py", "kit/predict.py", "kit/configs/histopathologic-cancer-detection.yaml"} <= names
    assert packaged == (REPO / "kit" / "templates" / "kaggle_kernel.py").read_bytes()
    assert "Requires-Dist: simplejpeg" in metadata
    assert not any("__pycache__" in n for n in names)


def test_only_the_chosen_folds_are_bundled_and_an_unfinished_one_is_refused(tmp_path, cache):
    run = write_run(tmp_path / "run")
    out = tmp_path / "one"
    assert main(["bundle", "build", str(run), "--owner", OWNER, "--slug", "hcd-fold-one", "--folds", "1", "--out", str(out),
                 "--wheel-cache", str(cache)]) == 0
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == f"{OWNER}/hcd-fold-one"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["fold1"]
    with pytest.raises(KitError, match=r"missing .*fold2/result.json \(a fold without result.json has not finished"):
        make_bundle(run, OWNER, folds=[0, 2], out=tmp_path / "two", wheel_cache=cache)
    assert not (tmp_path / "two").exists()


def test_a_wheel_missing_from_the_cache_is_a_clear_error_and_leaves_nothing(tmp_path):
    cache = tmp_path / "cache"
    fake_wheel(cache, "simplejpeg", SIMPLEJPEG, tag="cp311-cp311-win_amd64")  # not for Kaggle's Linux
    run = write_run(tmp_path / "run")
    with pytest.raises(KitError) as e:
        make_bundle(run, OWNER, out=tmp_path / "out", wheel_cache=cache)
    said = str(e.value)
    assert f"getting a wheel of simplejpeg=={SIMPLEJPEG} for CPython 3.11 on manylinux x86_64 from the wheel cache " \
           f"{cache} failed" in said
    assert "pip said: ERROR: " in said and "--platform manylinux2014_x86_64" in said  # how to fill the cache
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["cache", "run"]


@pytest.mark.parametrize("args, said", [
    (["--owner", "kit test"], "--owner 'kit test' is not a Kaggle user name"),
    (["--owner", OWNER, "--slug", "Has_Capitals"], "must be OWNER/SLUG"),
    (["--owner", OWNER, "--slug", "short"], "SLUG 6-50 lowercase letters"),
    ([], "--owner USER is required"),
])
def test_bad_names_are_refused_before_any_work(tmp_path, capsys, args, said):
    run = write_run(tmp_path / "run")
    assert main(["bundle", "build", str(run), *args, "--out", str(tmp_path / "out")]) == 1
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_bundle_is_not_overwritten(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["bundle", "build", str(run), "--owner", OWNER, "--out", str(tmp_path / "mine")]) == 1
    assert "exists and is not a kit bundle" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_every_dependency_of_kit_is_known_to_be_in_kaggles_image_or_bundled(bundle):
    deps = wheel_requirements(bundle / "kit-0.1.0-py3-none-any.whl")  # what pip must satisfy on Kaggle
    assert "torch<3,>=2.2" in deps and "albumentations==2.0.8" in deps
    assert missing_on_kaggle(deps) == ["simplejpeg"]
    assert not set(KAGGLE_IMAGE_HAS) & set(KAGGLE_IMAGE_LACKS)
    with pytest.raises(KitError, match="kit requires new-dep, which kit.bundle does not know"):
        missing_on_kaggle([*deps, "New_Dep>=1"])


# --- kit bundle push, with the real kaggle client against the fake API -----------------------------------------------

def push(tmp_path: Path, fake: FakeKaggle, *args: str) -> subprocess.CompletedProcess:
    for name in ("home", "kaggle-config", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home"),
           "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config"), "TMPDIR": str(tmp_path / "tmp"),
           "KAGGLE_USERNAME": fake.username, "KAGGLE_KEY": fake.key, **fake.env()}
    return subprocess.run([sys.executable, "-c", DRIVER, "bundle", "push", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_push_creates_the_dataset_then_versions_it_and_the_subfolder_arrives(tmp_path, bundle):
    ref = f"{OWNER}/{SLUG}"
    with FakeKaggle(username=OWNER) as fake:
        first = push(tmp_path, fake, str(bundle))
        second = push(tmp_path, fake, str(bundle), "-m", "folds 0 and 1, 8 TTA")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert f"created dataset {ref}" in first.stdout and f"versioned dataset {ref}" in second.stdout
    dataset = fake.datasets[ref]
    assert (dataset.title, dataset.license_name, dataset.is_private) == (SLUG, "other", True)
    assert dataset.notes == ["", "folds 0 and 1, 8 TTA"]
    for files in dataset.versions:
        assert sorted(files) == ["bundle.json", "checkpoints.zip", "kit-0.1.0-py3-none-any.whl",
                                 f"simplejpeg-{SIMPLEJPEG}-py3-none-any.whl"]
        assert files["kit-0.1.0-py3-none-any.whl"] == (bundle / "kit-0.1.0-py3-none-any.whl").read_bytes()
        with zipfile.ZipFile(io.BytesIO(files["checkpoints.zip"])) as z:  # the subfolder, zipped by the client
            assert {"fold0/best.pt", "fold1/best.pt", "run.json", "config.yaml"} <= set(z.namelist())
            assert z.read("fold1/best.pt") == (bundle / "checkpoints" / "fold1" / "best.pt").read_bytes()
    methods = [e.rsplit("/", 1)[-1] for e in fake.endpoints() if not e.startswith("PUT")]
    assert methods.count("CreateDataset") == 1 and methods.count("CreateDatasetVersion") == 1
    assert fake.key not in first.stdout + first.stderr + second.stdout + second.stderr


def test_a_file_kaggle_did_not_receive_is_an_error(tmp_path, bundle):
    with FakeKaggle(username=OWNER, fail={"PUT": 403}) as fake:
        run = push(tmp_path, fake, str(bundle))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "Kaggle did not receive" in run.stderr and "checkpoints.zip" in run.stderr
    assert "push again" in run.stderr


def test_someone_elses_dataset_is_refused_with_what_to_do(tmp_path, bundle):
    with FakeKaggle(username=OWNER, fail={"GetDatasetStatus": 403}) as fake:
        run = push(tmp_path, fake, str(bundle))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"Kaggle refused to write dataset {OWNER}/{SLUG} (HTTP 403" in run.stderr
    assert "its owner must be the account of the credentials from KAGGLE_USERNAME and KAGGLE_KEY" in run.stderr
    assert fake.datasets == {}


def test_push_of_a_folder_without_metadata_stops_before_the_client(tmp_path):
    with FakeKaggle() as fake:
        run = push(tmp_path, fake, str(tmp_path))
    assert run.returncode == 1
    assert f"{tmp_path} is not a bundle folder (no dataset-metadata.json)" in run.stderr
    assert fake.requests == []
