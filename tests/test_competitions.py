"""Contract suite over every registered competition: spec consistency, demo data, and the real files in ../shared/data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit.cli import main
from kit.competitions import Competition, get_competition, list_competitions, register
from kit.data.labels import load_test_table, load_train_table
from kit.data.readers import FolderStore, Hdf5Store, open_store
from kit.errors import ConfigError, DataError
from kit.metrics import get_metric

SPECS = list_competitions()
NAMES = [s.name for s in SPECS]
HCD = "histopathologic-cancer-detection"
SIIM = "siim-isic-melanoma-classification"


def assert_rgb(img: np.ndarray, source: str) -> None:
    assert img.ndim == 3 and img.shape[2] == 3, f"{source}: shape {img.shape}"
    assert img.dtype == np.uint8, f"{source}: dtype {img.dtype}"
    assert img.shape[0] > 0 and img.shape[1] > 0


# ---------------------------------------------------------------------------------------------------------------
# The registry


def test_registry_holds_the_five_competitions():
    assert set(NAMES) == {HCD, SIIM, "isic-2024-challenge", "isic-2019", "isic-2018-task3"}


@pytest.mark.parametrize("spec", SPECS, ids=NAMES)
def test_spec_fields_are_consistent(spec: Competition):
    assert len(set(spec.classes)) == len(spec.classes) > 0
    if spec.is_binary:
        assert len(spec.classes) == 1 and spec.num_outputs == 1
        assert spec.submission_columns == (spec.id_col, spec.target_col)
    else:
        assert len(spec.classes) >= 3 and spec.num_outputs == len(spec.classes)
        assert spec.submission_columns == (spec.id_col, *spec.classes)
        with pytest.raises(ConfigError, match="multiclass"):
            _ = spec.target_col
    assert spec.labels_file.endswith(".csv")
    assert spec.train_images and spec.test_images
    assert all(loc.kind in ("dir", "hdf5") for loc in (*spec.train_images, *spec.test_images))
    # a metadata file is joined on its key, and is where the group column comes from
    assert (spec.metadata_file is None) == (spec.metadata_key is None)
    if spec.metadata_file:
        assert spec.has_metadata and spec.group_col
    assert all(t.file.endswith(".csv") and t.id_col for t in spec.test_lists)
    assert get_competition(spec.name) is spec
    assert get_competition(spec) is spec


@pytest.mark.parametrize("spec", SPECS, ids=NAMES)
def test_spec_metric_is_known_and_scores_the_task(spec: Competition):
    metric = get_metric(spec.metric)
    y = np.arange(2 * max(2, spec.num_outputs)) % max(2, spec.num_outputs)  # every class twice
    if spec.is_binary:
        perfect, score = metric(y, y * 0.9 + 0.05), metric(y, 1 - y)
    else:
        probs = np.full((len(y), spec.num_outputs), 0.01)
        probs[np.arange(len(y)), y] = 0.9
        perfect, score = metric(y, probs), metric(y, np.roll(probs, 1, axis=1))
    assert perfect > score
    assert perfect in (1.0, pytest.approx(0.2))  # pAUC above 80% TPR tops out at 0.2


def test_unknown_competition_lists_known_names():
    with pytest.raises(ConfigError) as e:
        get_competition("unknown")
    msg = str(e.value)
    assert "'unknown'" in msg
    for name in NAMES:
        assert name in msg


def test_close_competition_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'isic-2019'"):
        get_competition("isic-2019x")


@pytest.mark.parametrize("alias, name", [("hcd", HCD), ("isic-2020", SIIM), ("isic-2024", "isic-2024-challenge"),
                                         ("isic-2018", "isic-2018-task3"), ("ham10000", "isic-2018-task3")])
def test_aliases_resolve(alias, name):
    assert get_competition(alias).name == name


def test_aliases_are_unambiguous():
    aliases = [a for s in SPECS for a in s.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(NAMES)


def test_registering_a_name_twice_raises():
    with pytest.raises(ConfigError, match=f"'{HCD}' is registered twice"):
        register(get_competition(HCD))
    assert [s.name for s in list_competitions()] == NAMES


def test_competitions_cli_lists_every_competition(capsys):
    assert main(["competitions"]) == 0
    out = capsys.readouterr().out
    for spec in SPECS:
        assert spec.name in out and spec.metric in out


def test_unknown_competition_in_cli_is_one_line(capsys, tmp_path):
    rc = main(["folds", "--competition", "unknown", "--data", str(tmp_path), "--out", str(tmp_path / "f.csv")])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown competition 'unknown'" in err and HCD in err


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data through `kit demo-data`, read back through the same functions as a real download


@pytest.mark.parametrize("spec", SPECS, ids=NAMES)
def test_demo_data_cli_output_loads(spec: Competition, tmp_path, capsys):
    out = tmp_path / spec.name
    size = 96 if spec.name == HCD else 64
    argv = ["demo-data", "--competition", spec.name, "--out", str(out), "--n", "16", "--n-test", "6", "--seed", "3"]
    assert main(argv + ([] if spec.name == HCD else ["--size", str(size)])) == 0
    capsys.readouterr()

    train = load_train_table(spec, out)
    assert len(train) == 16 and train["id"].is_unique
    assert set(train["target"]) <= set(range(max(2, spec.num_outputs)))
    assert train["group"].notna().all()
    if spec.has_metadata:
        assert train[["sex", "age", "site"]].notna().all().all()
    test = load_test_table(spec, out)
    assert len(test) == 6 and test["id"].is_unique
    assert not set(test["id"]) & set(train["id"])

    for split, ids in (("train", list(train["id"])), ("test", list(test["id"]))):
        store = open_store(spec, out, split)
        assert store.missing(ids) == []
        for key in ids:
            img = store.read(key)
            assert_rgb(img, store.ref(key))
            assert img.shape == (size, size, 3)
    if spec.sample_submission:
        sub = pd.read_csv(out / spec.sample_submission, dtype={spec.id_col: str})
        assert tuple(sub.columns) == spec.submission_columns
        assert list(sub[spec.id_col]) == list(test["id"])


# ---------------------------------------------------------------------------------------------------------------
# The real files in ../shared/data, through the same functions


@pytest.mark.parametrize("spec", SPECS, ids=NAMES)
def test_real_files_load_where_present(spec: Competition, shared_data):
    data = shared_data / spec.name
    assert data.is_dir(), f"{data} missing"
    checked = 0
    if (data / spec.labels_file).is_file():
        train = load_train_table(spec, data)
        assert len(train) > 0 and train["id"].is_unique
        assert set(train["target"]) <= set(range(max(2, spec.num_outputs)))
        checked += 1
    if spec.sample_submission and (data / spec.sample_submission).is_file():
        header = pd.read_csv(data / spec.sample_submission, nrows=0).columns
        assert tuple(header) == spec.submission_columns
        checked += 1
    if spec.test_lists or any((data / loc.path).exists() for loc in spec.test_images):
        test = load_test_table(spec, data)
        assert len(test) > 0 and test["id"].is_unique
        checked += 1
    for split in ("train", "test"):
        locations = spec.train_images if split == "train" else spec.test_images
        if any((data / loc.path).exists() for loc in locations):
            store = open_store(spec, data, split)
            key = store.keys()[0]
            assert_rgb(store.read(key), store.ref(key))
            checked += 1
    assert checked >= 2  # every competition folder holds at least a labels file or test list, and images or a sample


def test_real_hcd_train_patches_decode_as_96x96(shared_data):
    data = shared_data / HCD
    train = load_train_table(HCD, data)
    assert len(train) == 15 and int(train["target"].sum()) == 5
    assert (train["group"] == train["id"]).all()  # no slide ids in this competition
    store = open_store(get_competition(HCD), data, "train")
    assert isinstance(store, FolderStore) and store.missing(list(train["id"])) == []
    for key in train["id"]:
        img = store.read(key)
        assert_rgb(img, store.ref(key))
        assert img.shape == (96, 96, 3)


def test_real_hcd_test_list_is_the_sample_submission(shared_data):
    data = shared_data / HCD
    test = load_test_table(HCD, data)
    assert len(test) == 57_458
    assert test["id"].str.fullmatch(r"[0-9a-f]{40}").all()
    store = open_store(get_competition(HCD), data, "test")
    keys = store.keys()
    assert len(keys) == 29 and set(keys) <= set(test["id"])
    assert all(store.read(k).shape == (96, 96, 3) for k in keys)


def test_real_isic_2018_ground_truth_with_lesion_groups(shared_data):
    data = shared_data / "isic-2018-task3"
    train = load_train_table("isic-2018", data)
    assert len(train) == 5_984
    assert train["group"].str.startswith("HAM_").all()  # every image found its HAM10000 lesion
    spec = get_competition("isic-2018")
    counts = train["target"].value_counts()
    assert counts.index.tolist()[0] == spec.classes.index("NV") and set(counts.index) == set(range(7))
    # the one-hot class agrees with HAM10000's own dx for every image
    meta = pd.read_csv(data / "HAM10000_metadata.csv").set_index("image_id")
    dx = meta.loc[train["id"], "dx"].str.upper().to_numpy()
    assert (np.array(spec.classes)[train["target"]] == dx).all()
    assert train["sex"].notna().mean() > 0.95 and train["age"].between(0, 90).mean() > 0.95
    store = open_store(spec, data, "train")
    assert store.missing(list(train["id"])) == []
    for key in train["id"][::500]:
        assert_rgb(store.read(key), store.ref(key))


def test_real_isic_2018_test_folder_lists_1512_ids(shared_data):
    data = shared_data / "isic-2018-task3"
    test = load_test_table("isic-2018", data)  # no test list in this competition: the folder, sorted
    assert len(test) == 1_512
    assert list(test["id"]) == sorted(test["id"])
    store = open_store(get_competition("isic-2018"), data, "test")
    for key in test["id"][::300]:
        assert_rgb(store.read(key), store.ref(key))


def test_real_isic_2019_ground_truth_nine_classes(shared_data):
    data = shared_data / "isic-2019"
    spec = get_competition("isic-2019")
    train = load_train_table(spec, data)
    assert len(train) == 25_331 and len(spec.classes) == 9
    assert train["target"].max() < 9
    assert spec.classes.index("UNK") not in set(train["target"])  # the real training set has no UNK image
    # lesion_id where the metadata has one, else the image is its own group
    meta = pd.read_csv(data / "ISIC_2019_Training_Metadata.csv")
    expected = meta["lesion_id"].nunique() + int(meta["lesion_id"].isna().sum())
    assert train["group"].nunique() == expected
    assert load_test_table(spec, data)["id"].str.startswith("ISIC_").sum() == 8_238


def test_real_siim_isic_train_csv(shared_data):
    data = shared_data / SIIM
    train = load_train_table("isic-2020", data)
    assert len(train) == 33_126 and int(train["target"].sum()) == 584
    assert train["group"].str.startswith("IP_").all() and train["group"].nunique() == 2_056
    assert set(train["site"].dropna()) >= {"torso", "head/neck", "lower extremity"}
    store = open_store(get_competition(SIIM), data, "train")
    keys = store.keys()
    assert len(keys) == 4 and set(keys) <= set(train["id"])
    assert all(store.read(k).shape == (512, 512, 3) for k in keys)
    test = load_test_table("isic-2020", data)  # Kaggle's test.csv is absent: the ISIC archive's metadata
    assert len(test) == 10_982 and test["age"].notna().all()


def test_real_isic_2024_test_images_decode_from_hdf5(shared_data):
    data = shared_data / "isic-2024-challenge"
    spec = get_competition("isic-2024")
    test = load_test_table(spec, data)
    sub = pd.read_csv(data / "sample_submission.csv")
    assert list(test["id"]) == list(sub["isic_id"]) and len(test) == 3
    store = open_store(spec, data, "test")
    assert isinstance(store, Hdf5Store)
    assert store.keys() == sorted(test["id"])
    for key in test["id"]:
        assert_rgb(store.read(key), store.ref(key))
    with pytest.raises(DataError, match="no train images for isic-2024-challenge"):
        open_store(spec, data, "train")
