"""The tidy label table (kit.data.labels) and the image readers and stores (kit.data.readers)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from kit.competitions import get_competition
from kit.data.labels import load_test_table, load_train_table, read_csv
from kit.data.readers import FolderStore, Hdf5Store, find_bad_images, open_store, read_image_file
from kit.errors import DataError

HCD = "histopathologic-cancer-detection"
SIIM = "siim-isic-melanoma-classification"


def copy_of(demo_data, tmp_path: Path, competition: str) -> Path:
    out = tmp_path / competition
    shutil.copytree(demo_data(competition), out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Label table


def test_label_table_columns_per_competition(demo_data):
    hcd = load_train_table("hcd", demo_data(HCD))
    assert list(hcd.columns) == ["id", "target", "group"]
    assert (hcd["group"] == hcd["id"]).all()
    siim = load_train_table(SIIM, demo_data(SIIM))
    assert list(siim.columns) == ["id", "target", "group", "sex", "age", "site", "diagnosis"]
    raw = pd.read_csv(demo_data(SIIM) / "train.csv", dtype=str)
    assert list(siim["group"]) == list(raw["patient_id"])
    assert list(siim["site"]) == list(raw["anatom_site_general_challenge"])  # the 2020 spelling of 'site'
    assert siim["age"].dtype.kind == "f"


def test_multiclass_target_is_the_class_index_in_official_order(demo_data):
    spec = get_competition("isic-2019")
    data = demo_data("isic-2019")
    table = load_train_table(spec, data)
    gt = pd.read_csv(data / spec.labels_file)
    expected = [spec.classes.index(gt.columns[1:][row.argmax()]) for row in gt[list(spec.classes)].to_numpy()]
    assert list(table["target"]) == expected
    meta = pd.read_csv(data / spec.metadata_file, dtype=str).set_index("image")
    assert list(table["group"]) == list(meta.loc[table["id"], "lesion_id"])


def test_ids_stay_strings_exactly_as_written(tmp_path):
    ids = ["007", "1e5", "NA", "0x1f", "12.50"]
    (tmp_path / "train_labels.csv").write_text("id,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    table = load_train_table(HCD, tmp_path)
    assert list(table["id"]) == ids
    assert list(table["target"]) == [0, 1, 0, 1, 0]


def test_empty_id_names_the_line(tmp_path):
    (tmp_path / "train_labels.csv").write_text("id,label\naaa,0\n,1\nbbb,0\n")
    with pytest.raises(DataError, match=r"train_labels.csv line 3: empty id in column 'id'"):
        load_train_table(HCD, tmp_path)


def test_csv_that_is_not_text_names_the_file(tmp_path):
    path = tmp_path / "train_labels.csv"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=f"{path}: cannot parse CSV"):
        read_csv(path, ["id"], what="labels file")


def test_image_without_lesion_id_is_its_own_group(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, "isic-2019")
    meta_path = data / "ISIC_2019_Training_Metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str)
    meta.loc[:9, "lesion_id"] = np.nan  # as for many real ISIC 2019 images
    meta.to_csv(meta_path, index=False)
    table = load_train_table("isic-2019", data).set_index("id")
    lost = meta["image"][:10]
    assert list(table.loc[lost, "group"]) == list(lost)
    kept = meta["image"][10:]
    assert list(table.loc[kept, "group"]) == list(meta["lesion_id"][10:])


def test_metadata_that_matches_no_id_names_the_key(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, "isic-2018-task3")
    meta_path = data / "HAM10000_metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str)
    meta["image_id"] = "X" + meta["image_id"]
    meta.to_csv(meta_path, index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv: none of the \d+ ids of .* in column 'image_id'"):
        load_train_table("isic-2018", data)


def test_test_list_keeps_submission_order_and_first_present_wins(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, SIIM)
    test_csv = pd.read_csv(data / "test.csv", dtype=str)
    reversed_csv = test_csv.iloc[::-1]
    reversed_csv.to_csv(data / "test.csv", index=False)
    table = load_test_table(SIIM, data)
    assert list(table["id"]) == list(reversed_csv["image_name"])  # the list's order, not sorted
    assert list(table["sex"]) == list(reversed_csv["sex"])
    (data / "test.csv").unlink()  # next in line: sample_submission.csv, in its own order
    assert list(load_test_table(SIIM, data)["id"]) == list(test_csv["image_name"])


def test_no_test_list_and_no_test_images_names_what_was_looked_for(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, HCD)
    (data / "sample_submission.csv").unlink()
    assert list(load_test_table(HCD, data)["id"]) == sorted(p.stem for p in (data / "test").glob("*.tif"))
    shutil.rmtree(data / "test")
    with pytest.raises(DataError, match=r"no test list for histopathologic-cancer-detection: looked for .*"
                                        r"sample_submission.csv"):
        load_test_table(HCD, data)


# ---------------------------------------------------------------------------------------------------------------
# Readers


def test_tif_variants(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert np.array_equal(read_image_file(tmp_path / "rgb.tif"), rgb)
    tifffile.imwrite(tmp_path / "grey.tif", rgb[..., 0])
    grey = read_image_file(tmp_path / "grey.tif")
    assert grey.shape == (96, 96, 3) and np.array_equal(grey[..., 2], rgb[..., 0])
    tifffile.imwrite(tmp_path / "deep.tif", rgb.astype(np.uint16) * 256, photometric="rgb")
    with pytest.raises(DataError, match=r"deep.tif: expected 8-bit pixels, got uint16"):
        read_image_file(tmp_path / "deep.tif")
    with pytest.raises(DataError, match=r"gone.tif: image file not found"):
        read_image_file(tmp_path / "gone.tif")


def test_jpeg_and_png_read_as_rgb(tmp_path):
    img = np.zeros((40, 50, 3), dtype=np.uint8)
    img[:, :25] = (200, 40, 40)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    jpg = read_image_file(tmp_path / "a.jpg")
    assert jpg.shape == (40, 50, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg[20, 5].astype(int) - (200, 40, 40)).max() < 12 and jpg[20, 45].max() < 12
    rgba = np.dstack([img, np.full((40, 50), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image_file(tmp_path / "a.png"), img)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="b.png: cannot decode image"):
        read_image_file(tmp_path / "b.png")


def test_folder_store_lists_only_its_extension(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, HCD)
    (data / "train" / "readme.txt").write_text("x")
    (data / "train" / "extra.jpg").write_bytes(b"")
    store = open_store(get_competition(HCD), data, "train")
    assert isinstance(store, FolderStore)
    ids = list(pd.read_csv(data / "train_labels.csv", dtype=str)["id"])
    assert store.keys() == sorted(ids)
    assert store.missing(ids + ["nothere"]) == ["nothere"]
    assert find_bad_images(store, ids[:5]) == []


def test_hdf5_store_reads_after_pickling_and_names_a_bad_file(demo_data, tmp_path):
    data = demo_data("isic-2024-challenge")
    store = Hdf5Store(data / "train-image.hdf5")
    key = store.keys()[0]
    first = store.read(key)  # opens the file in this process
    clone = pickle.loads(pickle.dumps(store))  # as a DataLoader worker gets it: without the open handle
    assert np.array_equal(clone.read(key), first)
    with h5py.File(data / "train-image.hdf5", "r") as h5:
        assert len(h5.keys()) == len(store.keys())

    (tmp_path / "fake.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="fake.hdf5: cannot open HDF5 file"):
        Hdf5Store(tmp_path / "fake.hdf5").keys()


def test_hdf5_store_names_an_undecodable_entry(demo_data, tmp_path):
    data = copy_of(demo_data, tmp_path, "isic-2024-challenge")
    path = data / "train-image.hdf5"
    key = Hdf5Store(path).keys()[3]
    with h5py.File(path, "a") as h5:
        raw = bytes(h5[key][()])
        del h5[key]
        h5.create_dataset(key, data=np.bytes_(raw[: len(raw) // 2]))
    store = Hdf5Store(path)
    bad = find_bad_images(store, store.keys())
    assert [k for k, _ in bad] == [key]
    assert f"{path}#{key}: cannot decode JPEG" in bad[0][1]


def test_min_side_decodes_a_jpeg_at_the_smallest_dct_scale_that_covers_it(tmp_path):
    from kit.data.readers import decode_jpeg, fit_square

    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, (50, 75, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 400x600
    Image.fromarray(img).save(tmp_path / "wide.jpg", quality=95)
    data = (tmp_path / "wide.jpg").read_bytes()
    assert decode_jpeg(data, "wide.jpg").shape == (400, 600, 3)  # no hint: full size, as before
    assert read_image_file(tmp_path / "wide.jpg", min_side=100).shape == (100, 150, 3)  # 2/8: both sides >= 100
    assert decode_jpeg(data, "wide.jpg", min_side=101).shape == (150, 225, 3)  # 3/8: 2/8 would give 100 < 101
    assert decode_jpeg(data, "wide.jpg", min_side=1000).shape == (400, 600, 3)  # never upscaled
    reduced = fit_square(decode_jpeg(data, "wide.jpg", min_side=64), 64)
    full = fit_square(decode_jpeg(data, "wide.jpg"), 64)
    assert reduced.shape == (64, 64, 3) and np.abs(reduced.astype(int) - full).mean() < 3
    Image.fromarray(img).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)  # simplejpeg refuses: Pillow
    cmyk = read_image_file(tmp_path / "cmyk.jpg", min_side=100)
    assert cmyk.shape == (100, 150, 3) and read_image_file(tmp_path / "cmyk.jpg").shape == (400, 600, 3)
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    assert read_image_file(tmp_path / "a.tif", min_side=100).shape == (400, 600, 3)  # no reduced TIFF decode


def test_hdf5_store_takes_the_min_side_hint(demo_data):
    spec = get_competition("isic-2024-challenge")
    store = open_store(spec, demo_data("isic-2024-challenge", n=20, size=128))
    key = store.keys()[0]
    assert store.read(key).shape == (128, 128, 3)
    assert store.read(key, min_side=64).shape == (64, 64, 3)
    assert store.read(key, min_side=17).shape == (32, 32, 3)  # 2/8: 1/8 would give 16 < 17


@pytest.mark.parametrize("competition, meta_file, key", [("isic-2019", "ISIC_2019_Training_Metadata.csv", "image"),
                                                         ("isic-2018-task3", "HAM10000_metadata.csv", "image_id")])
def test_metadata_missing_rows_are_counted_in_a_warning(demo_data, tmp_path, capsys, competition, meta_file, key):
    data = copy_of(demo_data, tmp_path, competition)
    meta = pd.read_csv(data / meta_file, dtype=str)
    meta.iloc[4:].to_csv(data / meta_file, index=False)  # the first 4 images lose their row
    table = load_train_table(competition, data).set_index("id")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {data / meta_file}: 4 of {len(table)} ids of ")
    assert f"(first: {', '.join(meta[key][:3])})" in err and "each is its own group" in err
    assert list(table.loc[meta[key][:4], "group"]) == list(meta[key][:4])
    meta.to_csv(data / meta_file, index=False)
    load_train_table(competition, data)
    assert capsys.readouterr().err == ""  # every row present (lesion ids missing in a row are not missing rows)
