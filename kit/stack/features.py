"""The stack's feature table: a competition's tabular metadata, engineered ratios, per-patient normalised features,
and the image runs' scores, for the labelled rows and the test rows alike.

- Every feature column of the metadata (:mod:`kit.data.columns` says which: not the ids, the labels or the
  competition's ``train_only_columns`` such as ISIC 2024's diagnosis columns): numeric columns as numbers, the others
  as categories. A feature column absent from the test metadata stops with one line naming it.
- Engineered features of the ISIC 2024 winners' recipe (size, shape and colour ratios), where their columns exist.
- Per-patient normalisation of every numeric feature: ``(x - patient mean) / (patient std + eps)``, i.e. the lesion
  against the same patient's other lesions (the "ugly duckling"), and the patient's count of lesions. It uses no
  label, and a patient's lesions all sit in one fold, so it leaks nothing across folds.
- Categories are coded from the training rows; a test value never seen in training becomes ``unknown`` (coded as
  missing), reported once in one line per column, and recorded in stack.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition
from kit.data.columns import feature_columns, numeric_columns, test_metadata_path
from kit.data.labels import load_test_table, load_train_table, read_csv
from kit.errors import ConfigError, DataError

__all__ = ["ENGINEERED", "FeatureTable", "add_image_score", "metadata_features", "patient_normalise"]

EPS = 1e-6


# name -> (formula over the frame, columns it needs); from the public ISIC 2024 feature sets the winners built on
ENGINEERED: dict[str, tuple] = {
    "lesion_size_ratio": (lambda d: d.tbp_lv_minorAxisMM / d.clin_size_long_diam_mm,
                          ("tbp_lv_minorAxisMM", "clin_size_long_diam_mm")),
    "lesion_shape_index": (lambda d: d.tbp_lv_areaMM2 / d.tbp_lv_perimeterMM ** 2,
                           ("tbp_lv_areaMM2", "tbp_lv_perimeterMM")),
    "hue_contrast": (lambda d: (d.tbp_lv_H - d.tbp_lv_Hext).abs(), ("tbp_lv_H", "tbp_lv_Hext")),
    "luminance_contrast": (lambda d: (d.tbp_lv_L - d.tbp_lv_Lext).abs(), ("tbp_lv_L", "tbp_lv_Lext")),
    "lesion_color_difference": (lambda d: np.sqrt(d.tbp_lv_deltaA ** 2 + d.tbp_lv_deltaB ** 2 + d.tbp_lv_deltaL ** 2),
                                ("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL")),
    "border_complexity": (lambda d: d.tbp_lv_norm_border + d.tbp_lv_symm_2axis,
                          ("tbp_lv_norm_border", "tbp_lv_symm_2axis")),
    "color_uniformity": (lambda d: d.tbp_lv_color_std_mean / (d.tbp_lv_radial_color_std_max + EPS),
                         ("tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max")),
    "perimeter_to_area_ratio": (lambda d: d.tbp_lv_perimeterMM / d.tbp_lv_areaMM2,
                                ("tbp_lv_perimeterMM", "tbp_lv_areaMM2")),
    "border_length_ratio": (lambda d: d.tbp_lv_perimeterMM / (2 * np.sqrt(np.pi * d.tbp_lv_areaMM2)),
                            ("tbp_lv_perimeterMM", "tbp_lv_areaMM2")),
    "log_lesion_area": (lambda d: np.log1p(d.tbp_lv_areaMM2), ("tbp_lv_areaMM2",)),
    "normalized_lesion_size": (lambda d: d.clin_size_long_diam_mm / d.age_approx,
                               ("clin_size_long_diam_mm", "age_approx")),
    "position_distance_3d": (lambda d: np.sqrt(d.tbp_lv_x ** 2 + d.tbp_lv_y ** 2 + d.tbp_lv_z ** 2),
                             ("tbp_lv_x", "tbp_lv_y", "tbp_lv_z")),
    "lesion_visibility_score": (lambda d: d.tbp_lv_deltaLBnorm + d.tbp_lv_norm_color,
                                ("tbp_lv_deltaLBnorm", "tbp_lv_norm_color")),
    "symmetry_border_consistency": (lambda d: d.tbp_lv_symm_2axis * d.tbp_lv_norm_border,
                                    ("tbp_lv_symm_2axis", "tbp_lv_norm_border")),
    "border_color_interaction": (lambda d: d.tbp_lv_norm_border * d.tbp_lv_norm_color,
                                 ("tbp_lv_norm_border", "tbp_lv_norm_color")),
    "color_consistency": (lambda d: d.tbp_lv_stdL / (d.tbp_lv_Lext + EPS), ("tbp_lv_stdL", "tbp_lv_Lext")),
    "size_age_interaction": (lambda d: d.clin_size_long_diam_mm * d.age_approx,
                             ("clin_size_long_diam_mm", "age_approx")),
    "lesion_severity_index": (lambda d: (d.tbp_lv_norm_border + d.tbp_lv_norm_color + d.tbp_lv_eccentricity) / 3,
                              ("tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_eccentricity")),
    "comprehensive_lesion_index": (lambda d: (d.tbp_lv_area_perim_ratio + d.tbp_lv_eccentricity
                                              + d.tbp_lv_norm_color + d.tbp_lv_symm_2axis) / 4,
                                   ("tbp_lv_area_perim_ratio", "tbp_lv_eccentricity", "tbp_lv_norm_color",
                                    "tbp_lv_symm_2axis")),
    "age_normalized_nevi_confidence": (lambda d: d.tbp_lv_nevi_confidence / d.age_approx,
                                       ("tbp_lv_nevi_confidence", "age_approx")),
}


@dataclass
class FeatureTable:
    """Features of the labelled rows (``train``, with ``id``, ``target``, ``group``) and the test rows (``test``,
    with ``id``, ``group``); ``features`` are the model's columns, in order."""

    train: pd.DataFrame
    test: pd.DataFrame
    features: list[str]
    categorical: list[str]
    unknown: dict[str, int] = field(default_factory=dict)
    """Test values unseen in training, per categorical column (coded as missing)."""
    test_source: str = ""

    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train X, test X) as float arrays in ``features`` order (NaN for missing)."""
        return (self.train[self.features].to_numpy(dtype=np.float64),
                self.test[self.features].to_numpy(dtype=np.float64))


def check_supported(spec: Competition) -> None:
    if not spec.is_binary or not spec.has_metadata:
        raise ConfigError(f"kit stack needs a binary competition with tabular metadata (isic-2024-challenge, "
                          f"siim-isic-melanoma-classification); {spec.name} is "
                          f"{'multiclass' if not spec.is_binary else 'without metadata'}")


def _test_metadata(spec: Competition, data_dir: Path) -> tuple[pd.DataFrame, Path]:
    """The first test list present that carries metadata (more than the id column)."""
    path = test_metadata_path(spec, data_dir)
    if path is None:
        files = ", ".join(str(data_dir / t.file) for t in spec.test_lists)
        raise DataError(f"no test metadata for {spec.name} in {data_dir}: looked for {files}")
    id_col = next(t.id_col for t in spec.test_lists if data_dir / t.file == path)
    return read_csv(path, [id_col], what="test list").rename(columns={id_col: spec.id_col}), path


def _raw_columns(spec: Competition, train: pd.DataFrame, test: pd.DataFrame, test_path: Path) -> list[str]:
    """The training metadata's feature columns; each must be in the test."""
    columns = feature_columns(spec, train.columns)
    missing = [c for c in columns if c not in test.columns]
    if missing:
        raise DataError(f"{test_path}: feature column {', '.join(repr(c) for c in missing)} of the training "
                        f"metadata missing from the test metadata; found {list(test.columns)}")
    return columns


def _encode_categories(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    """Code each category by its training vocabulary, in place; unseen test values become missing ('unknown')."""
    unknown = {}
    for c in columns:
        vocab = sorted(train[c].dropna().astype(str).unique())
        test_values = test[c].astype("string")
        unseen = test_values.notna() & ~test_values.isin(vocab)
        if unseen.any():
            unknown[c] = int(unseen.sum())
            seen = ", ".join(repr(v) for v in test_values[unseen].unique()[:3])
            print(f"warning: {unknown[c]} test rows have a '{c}' unseen in training ({seen}); coded as unknown")
        for df in (train, test):
            values = df[c].astype("string")
            codes = pd.Categorical(values.where(values.isin(vocab)), categories=vocab).codes.astype(np.float64)
            df[c] = np.where(codes < 0, np.nan, codes)
    return unknown


def engineer(df: pd.DataFrame) -> dict[str, pd.Series]:
    """The engineered features whose columns exist in ``df``, by name."""
    added = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (formula, needs) in ENGINEERED.items():
            if all(c in df.columns for c in needs):
                added[name] = pd.Series(formula(df), index=df.index).replace([np.inf, -np.inf], np.nan)
    return added


def _with(df: pd.DataFrame, columns: dict[str, pd.Series]) -> pd.DataFrame:
    """``df`` with ``columns`` added (or replaced) at once."""
    return pd.concat([df.drop(columns=[c for c in columns if c in df.columns]),
                      pd.DataFrame(columns, index=df.index)], axis=1)


def patient_normalise(df: pd.DataFrame, columns: list[str], group: str = "group") -> dict[str, pd.Series]:
    """``<col>_pnorm`` = (x - patient mean) / (patient std + eps) for each column, by name."""
    values = df[columns].astype(np.float64)
    key = df[group].to_numpy()
    mean = values.groupby(key, sort=False).transform("mean")
    square = (values ** 2).groupby(key, sort=False).transform("mean")
    std = np.sqrt((square - mean ** 2).clip(lower=0)).fillna(0)
    return {f"{c}_pnorm": (values[c] - mean[c]) / (std[c] + EPS) for c in columns}


def _table(base: pd.DataFrame, raw: pd.DataFrame, spec: Competition, columns: list[str]) -> pd.DataFrame:
    """``base`` (id, target?, group) joined with the raw metadata's ``columns`` on the id."""
    raw = raw.drop_duplicates(spec.id_col).set_index(spec.id_col)
    return pd.concat([base.reset_index(drop=True),
                      raw.reindex(base["id"].to_numpy())[columns].reset_index(drop=True)], axis=1)


def metadata_features(spec: Competition, data_dir: str | Path) -> FeatureTable:
    """The metadata part of the feature table of ``spec``'s data under ``data_dir``."""
    check_supported(spec)
    data_dir = Path(data_dir)
    labels = load_train_table(spec, data_dir)[["id", "target", "group"]]
    raw_train = read_csv(data_dir / spec.labels_file, [spec.id_col], what="labels file")
    raw_test, test_path = _test_metadata(spec, data_dir)
    columns = _raw_columns(spec, raw_train, raw_test, test_path)
    test_ids = load_test_table(spec, data_dir)
    test_base = pd.DataFrame({"id": test_ids["id"].to_numpy(),
                              "group": test_ids["group"].to_numpy() if "group" in test_ids else test_ids["id"]})
    train, test = _table(labels, raw_train, spec, columns), _table(test_base, raw_test, spec, columns)
    numeric = numeric_columns(train, columns)
    categorical = [c for c in columns if c not in numeric]
    for df in (train, test):
        df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    unknown = _encode_categories(train, test, categorical)
    train, test = (_with(df, engineer(df)) for df in (train, test))
    numeric = numeric + list(engineer(train.head(1)))
    train, test = (_with(df, {**patient_normalise(df, numeric), "patient_lesion_count": df.groupby(
        "group", sort=False)["id"].transform("size").astype(np.float64)}) for df in (train, test))
    normed = [f"{c}_pnorm" for c in numeric]
    features = numeric + categorical + normed + ["patient_lesion_count"]
    return FeatureTable(train, test, features, categorical, unknown, str(test_path))


def add_image_score(table: FeatureTable, name: str, oof: pd.Series, test: pd.Series, fold: np.ndarray) -> list[str]:
    """Add an image run's scores (``oof``, ``test``: indexed by id) as ``<name>``, its per-patient normalised
    ``<name>_pnorm`` and ``<name>_rank``, its percentile rank among the rows one model predicted (each fold's rows for
    the OOF, the test rows for the fold-blended test scores: each fold's model has its own calibration, which the
    rank removes); every labelled and test row must have a score."""
    frames = []
    for df, scores, what, part in ((table.train, oof, "out-of-fold", fold),
                                   (table.test, test, "test", np.zeros(len(table.test)))):
        values = scores.reindex(df["id"].to_numpy())
        if values.isna().any():
            missing = df["id"][values.isna().to_numpy()]
            raise DataError(f"run {name}: no {what} prediction for {len(missing)} of {len(df)} rows (first: "
                            f"{', '.join(map(str, missing[:3]))}); predict every fold of the run")
        df = _with(df, {name: pd.Series(values.to_numpy(dtype=np.float64), index=df.index)})
        rank = df[name].groupby(np.asarray(part), sort=False).rank(pct=True)
        frames.append(_with(df, {**patient_normalise(df, [name]), f"{name}_rank": rank}))
    table.train, table.test = frames
    added = [name, f"{name}_pnorm", f"{name}_rank"]
    table.features.extend(added)
    return added
