"""Submission writers, the validator and `kit submit --dry-run`, on the competitions' real sample files and test ids."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from kit.cli import main
from kit.competitions import list_competitions
from kit.data.labels import load_test_table
from kit.errors import ConfigError, SubmissionError
from kit.submission import (
    build_submission,
    get_format,
    read_submission,
    validate_file,
    validate_submission,
    write_submission,
)

HCD = "histopathologic-cancer-detection"
I24 = "isic-2024-challenge"
I18 = "isic-2018-task3"
I24_IDS = ["ISIC_0015657", "ISIC_0015729", "ISIC_0015740"]  # the real ISIC 2024 test ids, in file order
I18_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"


def _csv(tmp_path, text: str, name: str = "sub.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------- real sample files
def test_real_hcd_sample_submission_validates_against_its_data_folder(shared_data):
    folder = shared_data / HCD
    assert validate_submission(HCD, folder / "sample_submission.csv", data_dir=folder) == []
    assert validate_file(HCD, folder / "sample_submission.csv", folder) == 57458


def test_hcd_ids_stay_strings_when_read(shared_data):
    df = read_submission(shared_data / HCD / "sample_submission.csv")
    ids = df["id"].tolist()
    assert all(isinstance(i, str) and len(i) == 40 for i in ids)
    assert sum(i.startswith("0") for i in ids) == 3567  # leading zeros survive: not parsed as numbers


def test_real_isic2024_sample_submission_validates(shared_data):
    folder = shared_data / I24
    assert validate_submission(I24, folder / "sample_submission.csv", data_dir=folder) == []


def test_isic2018_writer_round_trip_with_real_test_ids(shared_data, tmp_path):
    folder = shared_data / I18
    ids = load_test_table(I18, folder)["id"].tolist()
    assert len(ids) == 1512
    preds = np.random.default_rng(0).random((1512, 7))
    path = write_submission(I18, ids, preds, "rt", out_dir=tmp_path, expected_ids=ids)

    assert re.fullmatch(rf"{I18}-rt-\d{{8}}-\d{{6}}\.csv", path.name)
    assert path.read_text().splitlines()[0] == I18_HEADER
    assert validate_file(I18, path, folder) == 1512
    back = read_submission(path)
    assert back["image"].tolist() == ids
    probs = back.iloc[:, 1:].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, preds / preds.sum(axis=1, keepdims=True), rtol=1e-7)
    assert _listing(tmp_path) == [path.name]  # no temp file left beside it


def test_binary_writer_keeps_numeric_looking_ids_as_strings(tmp_path):
    ids = ["00123", "1e5", "4567"]  # valid hex names that pandas' default parsing would turn into numbers
    path = write_submission("hcd", ids, np.array([[0.1], [0.5], [0.9]]), "hex", out_dir=tmp_path,
                            expected_ids=ids)
    assert path.read_text().splitlines() == ["id,label", "00123,0.1", "1e5,0.5", "4567,0.9"]
    assert read_submission(path)["id"].tolist() == ids
    assert validate_submission("hcd", path, expected_ids=ids) == []


@pytest.mark.parametrize("spec", list_competitions(), ids=lambda s: s.name)
def test_every_competition_writes_its_exact_columns(spec):
    ids = [f"img_{i}" for i in range(6)]
    preds = np.random.default_rng(1).random((6, spec.num_outputs))
    df = build_submission(spec, ids, preds)
    assert tuple(df.columns) == spec.submission_columns
    assert validate_submission(spec, df, expected_ids=ids) == []


# ------------------------------------------------------------------------------------------- validator failures
I24_OK = "isic_id,target\nISIC_0015657,0.1\nISIC_0015729,0.2\nISIC_0015740,0.3\n"


@pytest.mark.parametrize("text, expected", [
    pytest.param("isic_id,prob\nISIC_0015657,0.1\nISIC_0015729,0.2\nISIC_0015740,0.3\n",
                 ["missing columns 'target'", "unexpected columns 'prob'"], id="wrong-header"),
    pytest.param("isic_id,target,extra\nISIC_0015657,0.1,1\nISIC_0015729,0.2,1\nISIC_0015740,0.3,1\n",
                 ["unexpected columns 'extra'"], id="extra-column"),
    pytest.param("target,isic_id\n0.1,ISIC_0015657\n0.2,ISIC_0015729\n0.3,ISIC_0015740\n",
                 ["columns are in the wrong order: found target,isic_id, expected isic_id,target"],
                 id="wrong-order"),
    pytest.param("isic_id,target\nISIC_0015657,0.1\nISIC_0015729,0.2\n",
                 ["1 test id missing: 'ISIC_0015740'", "2 rows, expected 3"], id="missing-ids"),
    pytest.param(I24_OK + "ISIC_9999999,0.4\n",
                 ["1 id not in the test set: 'ISIC_9999999'", "4 rows, expected 3"], id="extra-ids"),
    pytest.param(I24_OK + "ISIC_0015729,0.4\n",
                 ["1 duplicate row over 1 id: 'ISIC_0015729' (x2)", "4 rows, expected 3"], id="duplicate-ids"),
    pytest.param("isic_id,target\nISIC_0015657,\nISIC_0015729,nan\nISIC_0015740,0.3\n",
                 ["column 'target': NaN or empty for 2 ids: 'ISIC_0015657', 'ISIC_0015729'"], id="nan"),
    pytest.param("isic_id,target\nISIC_0015657,0.1\nISIC_0015729,inf\nISIC_0015740,-inf\n",
                 ["column 'target': infinite for 2 ids: 'ISIC_0015729' (inf), 'ISIC_0015740' (-inf)"], id="inf"),
    pytest.param("isic_id,target\nISIC_0015657,1.5\nISIC_0015729,0.2\nISIC_0015740,-0.1\n",
                 ["column 'target': outside [0, 1] for 2 ids: 'ISIC_0015657' (1.5), 'ISIC_0015740' (-0.1)"],
                 id="out-of-range"),
    pytest.param("isic_id,target\nISIC_0015657,high\nISIC_0015729,0.2\nISIC_0015740,0.3\n",
                 ["column 'target': not a number for 1 id: 'ISIC_0015657' ('high')"], id="not-a-number"),
])
def test_binary_validator_names_the_culprits(tmp_path, text, expected):
    problems = validate_submission(I24, _csv(tmp_path, text), expected_ids=I24_IDS)
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert validate_submission(I24, _csv(tmp_path, I24_OK, "ok.csv"), expected_ids=I24_IDS) == []


def test_multiclass_columns_in_wrong_order(tmp_path):
    text = "image,NV,MEL,BCC,AKIEC,BKL,DF,VASC\nISIC_0034524,0.4,0.6,0,0,0,0,0\n"
    problems = validate_submission(I18, _csv(tmp_path, text), expected_ids=["ISIC_0034524"])
    assert problems == [f"columns are in the wrong order: found image,NV,MEL,BCC,AKIEC,BKL,DF,VASC, "
                        f"expected {I18_HEADER}"]


def test_multiclass_rows_must_sum_to_one(tmp_path):
    text = (f"{I18_HEADER}\n"
            "ISIC_0034524,0.1,0.1,0.1,0.1,0.1,0.1,0.1\n"  # sums to 0.7
            "ISIC_0034525,0.5,0.5,0,0,0,0,0.0005\n"     # 1.0005: within the 1e-3 tolerance
            "ISIC_0034526,1,0,0,0,0,0,0\n"
            "ISIC_0034527,0.6,0.6,0,0,0,0,0\n")        # 1.2
    ids = ["ISIC_0034524", "ISIC_0034525", "ISIC_0034526", "ISIC_0034527"]
    problems = validate_submission(I18, _csv(tmp_path, text), expected_ids=ids)
    assert len(problems) == 1
    assert "2 rows not summing to 1" in problems[0]
    assert "'ISIC_0034524' (sum 0.7)" in problems[0] and "'ISIC_0034527' (sum 1.2)" in problems[0]


def test_binary_rows_need_not_sum_to_one():
    df = pd.DataFrame({"isic_id": I24_IDS, "target": [0.3, 0.3, 0.3]})
    assert validate_submission(I24, df, expected_ids=I24_IDS) == []


def test_long_id_lists_are_cut_and_counted():
    expected = [f"{i:040x}" for i in range(60)]
    df = pd.DataFrame({"id": expected[:10], "label": 0.5})
    problems = validate_submission(HCD, df, expected_ids=expected)
    assert problems[0].startswith(f"50 test ids missing: '{expected[10]}', '{expected[11]}'")
    assert problems[0].endswith("and 45 more")


def test_validate_file_lists_every_reason(tmp_path):
    path = _csv(tmp_path, "isic_id,target\nISIC_0015657,nan\nISIC_0015657,2\n")
    with pytest.raises(SubmissionError) as e:
        validate_file(I24, path, None, expected_ids=I24_IDS)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a valid {I24} submission (5 problems): ")
    for fragment in ["duplicate row", "2 test ids missing: 'ISIC_0015729', 'ISIC_0015740'", "NaN or empty",
                     "outside [0, 1]", "2 rows, expected 3"]:
        assert fragment in msg


def test_validate_reads_expected_ids_from_the_data_folder(shared_data, tmp_path):
    path = _csv(tmp_path, "isic_id,target\nISIC_0015657,0.1\n")
    problems = validate_submission(I24, path, data_dir=shared_data / I24)
    assert "2 test ids missing: 'ISIC_0015729', 'ISIC_0015740'" in problems


def test_a_file_that_is_not_csv_is_named(shared_data, tmp_path):
    with pytest.raises(SubmissionError, match=r"test-image\.hdf5 is not a CSV text file"):
        validate_submission(I24, shared_data / I24 / "test-image.hdf5")
    with pytest.raises(SubmissionError, match=r"empty\.csv is empty"):
        validate_submission(I24, _csv(tmp_path, "", "empty.csv"))
    with pytest.raises(SubmissionError, match=r"not found: .*nope\.csv"):
        validate_submission(I24, tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------- writers refuse
@pytest.mark.parametrize("competition, preds, fragment", [
    pytest.param(I24, np.array([0.1, np.nan, 0.3]), "NaN or empty for 1 id: 'ISIC_0015729'", id="nan"),
    pytest.param(I24, np.array([0.1, np.inf, 0.3]), "infinite for 1 id: 'ISIC_0015729'", id="inf"),
    pytest.param(I24, np.array([0.1, 1.2, 0.3]), "outside [0, 1] for 1 id: 'ISIC_0015729'", id="range"),
    pytest.param(I24, np.array([[0.1, 0.9]] * 3), "must have shape (n,) or (n, 1), got (3, 2)", id="shape"),
    pytest.param(I24, np.array([0.1, 0.2]), "3 ids but 2 rows", id="length"),
    pytest.param("isic-2019", np.zeros((3, 9)), "3 rows not summing to 1", id="zero-rows"),
    pytest.param("isic-2019", np.ones((3, 7)), "must have shape (n, 9)", id="classes"),
])
def test_writer_refuses_invalid_predictions_and_writes_nothing(tmp_path, competition, preds, fragment):
    out = tmp_path / "subs"
    with pytest.raises(SubmissionError) as e:
        write_submission(competition, I24_IDS, preds, "bad", out_dir=out, expected_ids=I24_IDS)
    assert fragment in str(e.value)
    assert _listing(out) == []


def test_writer_refuses_ids_that_are_not_the_test_set(tmp_path):
    with pytest.raises(SubmissionError, match="1 test id missing: 'ISIC_0015740'"):
        write_submission(I24, I24_IDS[:2], [0.5, 0.5], "bad", out_dir=tmp_path, expected_ids=I24_IDS)
    assert _listing(tmp_path) == []


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def half_write(self, path, **kwargs):
        with open(path, "w") as f:
            f.write("isic_id,target\nISIC_00")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_submission(I24, I24_IDS, [0.1, 0.2, 0.3], "crash", out_dir=tmp_path)
    assert _listing(tmp_path) == []


def test_multiclass_writer_renormalises_rows(tmp_path):
    preds = np.array([[2.0] * 7, [1, 0, 0, 0, 0, 0, 3.0]])
    ids = ["ISIC_a", "ISIC_b"]
    path = write_submission(I18, ids, preds, "norm", out_dir=tmp_path, expected_ids=ids)
    assert path.read_text().splitlines()[1:] == [
        "ISIC_a," + ",".join(["0.14285714"] * 7),
        "ISIC_b,0.25,0,0,0,0,0,0.75",
    ]


def test_two_writes_of_one_run_do_not_overwrite_each_other(tmp_path):
    first = write_submission(I24, I24_IDS, [0.1, 0.2, 0.3], "same", out_dir=tmp_path)
    second = write_submission(I24, I24_IDS, [0.4, 0.5, 0.6], "same", out_dir=tmp_path)
    assert first != second
    assert _listing(tmp_path) == sorted([first.name, second.name])
    assert first.read_text().splitlines()[1] == "ISIC_0015657,0.1"


def test_run_name_must_be_a_plain_file_name_part(tmp_path):
    with pytest.raises(ConfigError, match="run name '../x'"):
        write_submission(I24, I24_IDS, [0.1, 0.2, 0.3], "../x", out_dir=tmp_path)
    assert _listing(tmp_path) == []


def test_unknown_task_format_lists_the_known_ones():
    with pytest.raises(ConfigError, match="Known: binary, multiclass"):
        get_format("segmentation")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_dry_run_accepts_the_real_hcd_sample(shared_data, capsys):
    folder = shared_data / HCD
    assert main(["submit", "--dry-run", "--competition", "hcd", "--data", str(folder),
                 str(folder / "sample_submission.csv")]) == 0
    assert capsys.readouterr().out.startswith("valid: 57458 rows")


def test_cli_dry_run_rejects_a_hand_made_csv_with_all_reasons(shared_data, tmp_path, capsys):
    path = _csv(tmp_path, f"{I18_HEADER}\nISIC_0034524,0.5,0.5,0,0,0,0,nan\nISIC_0034524,0.2,0,0,0,0,0,0\n")
    assert main(["submit", "--dry-run", "--competition", I18, "--data", str(shared_data / I18), str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kit submit: error: {path} is not a valid {I18} submission")
    for fragment in ["1 duplicate row over 1 id: 'ISIC_0034524' (x2)", "1511 test ids missing: 'ISIC_0034525'",
                     "2 rows, expected 1512", "column 'VASC': NaN or empty for 1 id: 'ISIC_0034524'",
                     "1 row not summing to 1", "(sum 0.2)"]:
        assert fragment in err


def test_cli_ids_from_a_sample_instead_of_a_data_folder(shared_data, tmp_path, capsys):
    sample = shared_data / I24 / "sample_submission.csv"
    assert main(["submit", "--dry-run", "--competition", "isic-2024", "--ids-from", str(sample), str(sample)]) == 0
    assert "valid: 3 rows" in capsys.readouterr().out
    short = _csv(tmp_path, "isic_id,target\nISIC_0015657,0.1\n")
    assert main(["submit", "--dry-run", "--competition", "isic-2024", "--ids-from", str(sample), str(short)]) == 1
    assert "2 test ids missing" in capsys.readouterr().err


def test_cli_needs_a_source_of_test_ids(shared_data, capsys):
    sample = shared_data / I24 / "sample_submission.csv"
    assert main(["submit", "--dry-run", "--competition", I24, str(sample)]) == 1
    assert "--data DIR is required" in capsys.readouterr().err


def test_cli_upload_validates_first(shared_data, tmp_path, capsys):
    # uploads themselves are tested against a loopback fake of the Kaggle API in test_kaggle_submit.py
    folder = shared_data / I24
    bad = _csv(tmp_path, "isic_id,target\nISIC_0015657,0.1\n")
    assert main(["submit", "--competition", I24, "--data", str(folder), "-m", "x", str(bad)]) == 1
    assert "2 test ids missing" in capsys.readouterr().err  # an invalid file never reaches the upload step
