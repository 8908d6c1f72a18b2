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

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kit.competitions import Competition
from kit.data.columns import feature_columns, numeric_columns, test_metadata_path
from kit.data.labels import load_test_table, load_train_table, read_csv
from kit.errors import ConfigError, DataError
from kit.words import plural

__all__ = ["ENGINEERED", "FeatureRecipe", "FeatureTable", "add_image_score", "fit_recipe",
           "image_feature_names", "image_score_features", "metadata_features", "patient_normalise",
           "rebuild_test_features"]

log = logging.getLogger(__name__)

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
    recipe: FeatureRecipe | None = None

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


def _encode_categories(df: pd.DataFrame, categories: dict[str, list[str]], report: bool) -> dict[str, int]:
    """Code each category by its training vocabulary, in place; values outside it become missing ('unknown')."""
    unknown = {}
    for c, vocab in categories.items():
        values = df[c].astype("string")
        unseen = values.notna() & ~values.isin(vocab)
        if unseen.any():
            unknown[c] = int(unseen.sum())
            if report:
                seen = ", ".join(repr(v) for v in values[unseen].unique()[:3])
                verb = "has" if unknown[c] == 1 else "have"
                log.warning(f"warning: {plural(unknown[c], 'test row')} {verb} a '{c}' unseen in training ({seen}); "
                            "coded as unknown")
        codes = pd.Categorical(values.where(values.isin(vocab)), categories=vocab).codes.astype(np.float64)
        df[c] = np.where(codes < 0, np.nan, codes)
    return unknown


def engineer(df: pd.DataFrame, names: list[str] | None = None) -> dict[str, pd.Series]:
    """The engineered features ``names`` (default: all whose columns exist in ``df``), by name."""
    added = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (formula, needs) in ENGINEERED.items():
            if (name in names) if names is not None else all(c in df.columns for c in needs):
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


@dataclass
class FeatureRecipe:
    """How the metadata features are made from raw metadata rows: fitted on the training rows, then applied alike
    to them and to any test rows (the stack's own, or a hidden test set in the offline kernel). Saved in stack.json,
    so the features of new rows never depend on the training metadata being at hand."""

    numeric: list[str]
    """Raw columns read as numbers."""
    categories: dict[str, list[str]]
    """Raw categorical columns and their training vocabulary (a value's code is its position)."""
    engineered: list[str]

    @property
    def columns(self) -> list[str]:
        """The raw metadata columns the recipe reads."""
        return self.numeric + list(self.categories)

    @property
    def features(self) -> list[str]:
        normed = [f"{c}_pnorm" for c in self.numeric + self.engineered]
        return self.numeric + self.engineered + list(self.categories) + normed + ["patient_lesion_count"]

    def apply(self, df: pd.DataFrame, report: bool = False) -> tuple[pd.DataFrame, dict[str, int]]:
        """``df`` (id, group and the raw columns) with every feature; the count of unknown categories per column."""
        df = df.copy()
        df[self.numeric] = df[self.numeric].apply(pd.to_numeric, errors="coerce")
        unknown = _encode_categories(df, self.categories, report)
        df = _with(df, engineer(df, self.engineered))
        numeric = self.numeric + self.engineered
        lesions = df.groupby("group", sort=False)["id"].transform("size").astype(np.float64)
        return _with(df, {**patient_normalise(df, numeric), "patient_lesion_count": lesions}), unknown

    def to_json(self) -> dict:
        return {"numeric": self.numeric, "categories": self.categories, "engineered": self.engineered}

    @classmethod
    def from_json(cls, data: dict, source: str | Path) -> FeatureRecipe:
        try:
            recipe = cls([str(c) for c in data["numeric"]], {str(c): [str(v) for v in vocab]
                                                             for c, vocab in data["categories"].items()},
                         [str(c) for c in data["engineered"]])
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{source}: the feature recipe is incomplete or malformed ({e!r})") from None
        unknown = sorted(set(recipe.engineered) - set(ENGINEERED))
        if unknown:
            raise DataError(f"{source}: engineered features {', '.join(unknown)} are unknown to this kit")
        return recipe


def fit_recipe(train: pd.DataFrame, columns: list[str]) -> FeatureRecipe:
    """The recipe of the training rows' raw ``columns``: which are numbers, the categories' vocabularies."""
    numeric = numeric_columns(train, columns)
    categories = {c: sorted(train[c].dropna().astype(str).unique()) for c in columns if c not in numeric}
    engineered = [name for name, (_, needs) in ENGINEERED.items() if all(c in columns for c in needs)]
    return FeatureRecipe(numeric, categories, engineered)


def _test_base(spec: Competition, data_dir: Path) -> pd.DataFrame:
    test_ids = load_test_table(spec, data_dir)
    return pd.DataFrame({"id": test_ids["id"].to_numpy(),
                         "group": test_ids["group"].to_numpy() if "group" in test_ids else test_ids["id"]})


def metadata_features(spec: Competition, data_dir: str | Path) -> FeatureTable:
    """The metadata part of the feature table of ``spec``'s data under ``data_dir``."""
    check_supported(spec)
    data_dir = Path(data_dir)
    labels = load_train_table(spec, data_dir)[["id", "target", "group"]]
    raw_train = read_csv(data_dir / spec.labels_file, [spec.id_col], what="labels file")
    raw_test, test_path = _test_metadata(spec, data_dir)
    columns = _raw_columns(spec, raw_train, raw_test, test_path)
    train, test = _table(labels, raw_train, spec, columns), _table(_test_base(spec, data_dir), raw_test, spec, columns)
    recipe = fit_recipe(train, columns)
    train, _ = recipe.apply(train)
    test, unknown = recipe.apply(test, report=True)
    return FeatureTable(train, test, recipe.features, list(recipe.categories), unknown, str(test_path), recipe)


def rebuild_test_features(spec: Competition, data_dir: str | Path, recipe: FeatureRecipe) -> pd.DataFrame:
    """The metadata features of the test rows under ``data_dir`` made by a saved ``recipe`` (no training data)."""
    data_dir = Path(data_dir)
    raw_test, test_path = _test_metadata(spec, data_dir)
    missing = [c for c in recipe.columns if c not in raw_test.columns]
    if missing:
        raise DataError(f"{test_path}: column {', '.join(repr(c) for c in missing)} of the stack's features "
                        f"missing from the test metadata; found {list(raw_test.columns)}")
    test, _ = recipe.apply(_table(_test_base(spec, data_dir), raw_test, spec, recipe.columns), report=True)
    return test


def add_image_score(table: FeatureTable, name: str, oof: pd.Series, test: pd.Series, fold: np.ndarray) -> list[str]:
    """Add an image run's scores (``oof``, ``test``: indexed by id) as the features :func:`image_score_features`
    makes, to the labelled rows (ranked within each fold) and the test rows (ranked all together)."""
    table.train = image_score_features(table.train, name, oof, "out-of-fold", fold)
    table.test = image_score_features(table.test, name, test, "test", np.zeros(len(table.test)))
    added = image_feature_names(name)
    table.features.extend(added)
    return added


def image_feature_names(name: str) -> list[str]:
    """The feature columns an image run named ``name`` feeds, in the table's order."""
    return [name, f"{name}_pnorm", f"{name}_rank"]


def image_score_features(df: pd.DataFrame, name: str, scores: pd.Series, what: str, part: np.ndarray) -> pd.DataFrame:
    """``df`` with an image run's ``scores`` (indexed by id) as ``<name>``, its per-patient normalised
    ``<name>_pnorm`` and ``<name>_rank``, its percentile rank among the rows one model predicted (``part``: each
    fold's rows for the OOF, all test rows for the fold-blended test scores: each fold's model has its own
    calibration, which the rank removes); every row must have a score."""
    values = scores.reindex(df["id"].to_numpy())
    if values.isna().any():
        missing = df["id"][values.isna().to_numpy()]
        raise DataError(f"run {name}: no {what} prediction for {len(missing)} of {len(df)} rows (first: "
                        f"{', '.join(map(str, missing[:3]))}); predict every fold of the run")
    df = _with(df, {name: pd.Series(values.to_numpy(dtype=np.float64), index=df.index)})
    rank = df[name].groupby(np.asarray(part), sort=False).rank(pct=True)
    return _with(df, {**patient_normalise(df, [name]), f"{name}_rank": rank})
