"""The metadata branch's inputs: which columns of each competition are features (kit.data.columns), the encoder
fitted on the training rows (kit.data.meta), the old checkpoint format, and training with it end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kit.competitions import get_competition
from kit.data.columns import feature_columns, header
from kit.data.labels import load_test_table, load_train_table
from kit.data.meta import MetaEncoder, load_encoder
from kit.data.meta_sites import SiteMetaEncoder
from kit.data.synthetic import ISIC_2024_TRAIN_COLUMNS
from kit.errors import KitError

SIIM = "siim-isic-melanoma-classification"
LEAKY = {"target", "diagnosis", "benign_malignant", "dx", "dx_type", "lesion_id", "mel_thick_mm", "iddx_full",
         "iddx_1", "mel_mitotic_index", "tbp_lv_dnn_lesion_confidence"}
IDS = {"isic_id", "image_name", "image", "image_id", "patient_id", "patient"}


# ---------------------------------------------------------------------------------------------------------------
# Which columns, on the real layouts


def test_isic_2024_features_are_the_test_metadata_without_ids_or_leaky_columns(shared_data):
    test = header(shared_data / "isic-2024-challenge" / "test-metadata.csv")
    used = feature_columns(get_competition("isic-2024-challenge"), ISIC_2024_TRAIN_COLUMNS, test)
    assert used == [c for c in test if c not in ("isic_id", "patient_id")]
    assert len(used) == 42 and "tbp_lv_areaMM2" in used and "attribution" in used
    assert not set(used) & (LEAKY | IDS)


@pytest.mark.parametrize("competition, train, test, expected", [
    (SIIM, "train.csv", "ISIC_2020_Test_Metadata.csv", ["sex", "age_approx", "anatom_site_general_challenge"]),
    ("isic-2019", "ISIC_2019_Training_Metadata.csv", "ISIC_2019_Test_Metadata.csv",
     ["age_approx", "anatom_site_general", "sex"]),
    ("isic-2018-task3", "HAM10000_metadata.csv", None, ["age", "sex", "localization"]),
])
def test_features_of_the_real_files(shared_data, competition, train, test, expected):
    folder = shared_data / competition
    used = feature_columns(get_competition(competition), header(folder / train),
                           header(folder / test) if test else None)
    assert used == expected  # the site is 'anatom_site_general' in the ISIC archive's test file: the same column
    assert not set(used) & (LEAKY | IDS)


def test_siim_image_size_columns_are_features_and_the_shard_is_not(shared_data):
    siim = header(shared_data / SIIM / "train.csv")
    used = feature_columns(get_competition(SIIM), [*siim, "tfrecord", "width", "height"],
                           ["image_name", "patient_id", "sex", "tfrecord", "width", "height"])
    assert used == ["sex", "width", "height"]


def test_a_training_column_the_test_lacks_is_not_a_feature():
    spec = get_competition("isic-2019")
    assert feature_columns(spec, ["image", "age_approx", "sex", "skin_type"], ["image", "age", "sex"]) == [
        "age_approx", "sex"]


# ---------------------------------------------------------------------------------------------------------------
# The encoder, on the real SIIM-ISIC 2020 files


@pytest.fixture(scope="module")
def siim(shared_data):
    folder = shared_data / SIIM
    train = load_train_table(SIIM, folder, features=True)
    return train, load_test_table(SIIM, folder, features=True), MetaEncoder.fit(train)


def test_siim_encoder_standardises_with_the_training_rows(siim, shared_data):
    train, test, encoder = siim
    raw = pd.read_csv(shared_data / SIIM / "train.csv")["age_approx"]
    age = encoder.numeric[0]
    assert age.name == "age" and age.mean == pytest.approx(raw.mean()) and age.std == pytest.approx(raw.std(ddof=0))
    test_age = pd.read_csv(shared_data / SIIM / "ISIC_2020_Test_Metadata.csv")["age_approx"]
    assert abs(test_age.mean() - raw.mean()) > 0.1  # fitting on the test rows would give other numbers
    encoded = encoder.transform(test)
    assert encoded.dtype == np.float32 and encoded.shape == (len(test), encoder.size)
    column = encoder.feature_names.index("age")
    np.testing.assert_allclose(encoded[:, column], ((test_age - raw.mean()) / raw.std(ddof=0)).fillna(0), rtol=1e-5)
    assert abs(encoder.transform(train)[:, column].mean()) < 1e-4  # standardised: mean 0 on the training rows


def test_siim_missing_values_are_flagged(siim, shared_data):
    train, _, encoder = siim
    raw = pd.read_csv(shared_data / SIIM / "train.csv")
    encoded = encoder.transform(train)
    names = encoder.feature_names
    assert {"age_missing", "sex_missing", "site_missing", "site_other"} <= set(names)
    np.testing.assert_array_equal(encoded[:, names.index("age_missing")], raw["age_approx"].isna())
    np.testing.assert_array_equal(encoded[:, names.index("site_missing")], raw["anatom_site_general_challenge"].isna())
    assert (encoded[raw["age_approx"].isna().to_numpy(), names.index("age")] == 0).all()
    torso = names.index("site_torso")
    np.testing.assert_array_equal(encoded[:, torso], raw["anatom_site_general_challenge"] == "torso")
    assert not encoded[:, names.index("site_other")].any()  # every training value was seen in training


def test_siim_test_images_per_patient_come_from_the_archive_patient_column(siim, shared_data):
    _, test, encoder = siim
    patients = pd.read_csv(shared_data / SIIM / "ISIC_2020_Test_Metadata.csv")["patient"]
    counts = patients.groupby(patients).transform("size").to_numpy()
    np.testing.assert_allclose(encoder.transform(test)[:, -1], np.log1p(counts) / np.log(100.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The encoder, on small tables


def _tables():
    train = pd.DataFrame({"id": ["a", "b", "c", "d"], "target": [0, 1, 0, 1], "group": ["p", "p", "q", "r"],
                          "size": [1.0, 3.0, np.nan, 4.0], "colour": ["Red", "blue", "red", "blue"],
                          "empty": [np.nan] * 4})
    test = pd.DataFrame({"id": ["e", "f", "g"], "group": ["s", "s", "t"], "size": [2.0, np.nan, 100.0],
                         "colour": ["green", "RED", np.nan]})
    return train, test


def test_unseen_category_is_other_never_an_error(capsys):
    train, test = _tables()
    encoder = MetaEncoder.fit(train)
    assert encoder.feature_names == ["size", "size_missing", "colour_blue", "colour_red", "colour_other",
                                     "images_per_patient"]  # a column with no value at all is left out
    encoded = encoder.transform(test)
    np.testing.assert_array_equal(encoded[:, 2:5], [[0, 0, 1], [0, 1, 0], [0, 0, 1]])  # missing: unseen too
    err = capsys.readouterr().err
    assert "2 rows have a 'colour' unseen in training (green, (missing))" in err and "colour_other" in err
    mean, std = np.mean([1.0, 3.0, 4.0]), np.std([1.0, 3.0, 4.0])
    np.testing.assert_allclose(encoded[:, 0], [(2 - mean) / std, 0, (100 - mean) / std], rtol=1e-6)
    np.testing.assert_array_equal(encoded[:, 1], [0, 1, 0])
    np.testing.assert_allclose(encoded[:, 5], np.log1p([2, 2, 1]) / np.log(100.0), rtol=1e-6)


def test_a_column_missing_at_prediction_is_named_once(capsys):
    train, test = _tables()
    encoder = MetaEncoder.fit(train)
    encoded = encoder.transform(test.drop(columns="size"))
    assert capsys.readouterr().err.count("lacks 1 column(s) the model was trained with (size)") == 1
    np.testing.assert_array_equal(encoded[:, :2], [[0, 1]] * 3)


def test_encoder_round_trips_as_plain_data():
    train, test = _tables()
    encoder = MetaEncoder.fit(train)
    stored = encoder.to_dict()
    assert pd.io.json.ujson_dumps(stored)  # plain data: lists, numbers, strings
    again = load_encoder(stored)
    assert again == encoder
    np.testing.assert_array_equal(again.transform(test), encoder.transform(test))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints of older kit: {"sites": [...]}


def test_old_encoder_format_encodes_as_before(shared_data):
    old = load_encoder({"sites": ["lower extremity", "torso"]})
    assert isinstance(old, SiteMetaEncoder) and old.size == 8
    table = pd.DataFrame({"group": ["p", "p", "q"], "sex": ["male", "FEMALE", np.nan], "age": [60.0, np.nan, 30.0],
                          "site": ["torso", "head/neck", np.nan]})
    two, one = np.log1p(2) / np.log(100), np.log1p(1) / np.log(100)
    np.testing.assert_allclose(old.transform(table), [[1, 0, 0.6, 0, 0, 1, 0, two], [0, 1, 0.5, 1, 0, 0, 1, two],
                                                      [0, 0, 0.3, 0, 0, 0, 1, one]], rtol=1e-6)
    # the tables that carry every feature column give the old encoder what the old tables gave it
    folder = shared_data / SIIM
    np.testing.assert_array_equal(old.transform(load_train_table(SIIM, folder, features=True)),
                                  old.transform(load_train_table(SIIM, folder)))


def test_an_unknown_encoder_format_is_one_line():
    with pytest.raises(KitError, match="no format this kit knows") as e:
        load_encoder({"format": 9, "columns": []})
    assert "\n" not in str(e.value)
    with pytest.raises(KitError, match="damaged"):
        load_encoder({"format": 2, "numeric": [{"name": "age"}], "categorical": []})


# ---------------------------------------------------------------------------------------------------------------
# Training and predicting with the metadata branch, on demo data in the real layouts


@pytest.mark.parametrize("competition, n_columns", [("isic-2024-challenge", 42), (SIIM, 3)])
def test_training_and_prediction_with_every_metadata_column(demo_data, tmp_path, competition, n_columns):
    from kit.checkpoint import load_checkpoint
    from kit.config import load_config
    from kit.predict import predict_run
    from kit.train import train_folds

    data = demo_data(competition, n=48, size=32)
    cfg = load_config(competition, overrides=[
        "model.name=test_resnet", "model.pretrained=false", "model.img_size=32", "train.epochs=1", "n_folds=2",
        "train.device=cpu", "train.batch_size=16", "train.warmup_epochs=0", "model.use_metadata=true"])
    train_folds(cfg, data, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "fold0" / "best.pt")
    encoder = load_encoder(ckpt.meta_encoder)
    assert ckpt.model.n_meta == encoder.size and len(encoder.columns) == n_columns
    assert not {c.name for c in encoder.columns} & (LEAKY | IDS)
    result = predict_run(tmp_path / "run", tta="1", device="cpu", workers=0)
    test = pd.read_csv(result.test_files[0])
    assert len(test) == len(load_test_table(competition, data)) and test.iloc[:, -1].between(0, 1).all()
