"""The registry of supported competitions: file layout, columns, classes, groups, metric and submission format.

Every other module asks the spec instead of hard-coding a competition: adding a competition is one
``register(Competition(...))`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kit.errors import ConfigError
from kit.registry import Registry


@dataclass(frozen=True)
class ImageLocation:
    """Where a split's images live, relative to the data folder: a folder of files or one HDF5 file of JPEG bytes."""

    kind: Literal["dir", "hdf5"]
    path: str
    ext: str = ".jpg"


@dataclass(frozen=True)
class IdList:
    """A CSV that lists ids (the test set, in submission order) in one column."""

    file: str
    id_col: str


# Canonical metadata name -> column names used by the competitions' files, first match wins.
META_ALIASES: dict[str, tuple[str, ...]] = {
    "sex": ("sex",),
    "age": ("age_approx", "age"),
    "site": ("anatom_site_general_challenge", "anatom_site_general", "localization"),
}


@dataclass(frozen=True)
class Competition:
    name: str
    title: str
    task: Literal["binary", "multiclass"]
    id_col: str
    labels_file: str
    classes: tuple[str, ...]
    """Binary: the one target column of ``labels_file``. Multiclass: its one-hot columns, in the official order."""
    train_images: tuple[ImageLocation, ...]
    test_images: tuple[ImageLocation, ...]
    metric: str
    submission_columns: tuple[str, ...]
    test_lists: tuple[IdList, ...] = ()
    """Files that list the test ids in submission order; the first one present wins. Empty: the test image folder."""
    sample_submission: str | None = None
    group_col: str | None = None
    metadata_file: str | None = None
    """Extra per-image metadata joined on ``metadata_key`` (for example HAM10000's lesion ids)."""
    metadata_key: str | None = None
    has_metadata: bool = False
    train_only_columns: tuple[str, ...] = ()
    """Metadata columns that are never features: they give the label away (the diagnosis) or the test lacks them by
    design. Identifiers and label columns are never features either (``kit.data.columns`` owns the rule)."""
    diagnoses: tuple[str, ...] = ()
    """Each class as a diagnosis of the skin-lesion list DIAGNOSES (binary: the positive class's): what lets rows of
    another competition train this one (kit.data.targets). Empty: its rows have no diagnosis."""
    diagnosis_col: str | None = None
    """A binary competition's column of free-text diagnoses (mapped to DIAGNOSES), for a finer training target."""
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())
    on_kaggle: bool = True
    """A Kaggle competition (attached to a kernel as one); False: its data is a Kaggle dataset (ISIC 2018, 2019)."""
    code_competition: bool = False
    """Kaggle scores a kernel re-run on the hidden test set, not an uploaded CSV (``kit submit --kernel``)."""

    @property
    def is_binary(self) -> bool:
        return self.task == "binary"

    @property
    def num_outputs(self) -> int:
        return 1 if self.is_binary else len(self.classes)

    @property
    def target_col(self) -> str:
        """The binary target column (binary competitions only)."""
        if not self.is_binary:
            raise ConfigError(f"{self.name} is multiclass; its target columns are {', '.join(self.classes)}")
        return self.classes[0]


COMPETITIONS: Registry[Competition] = Registry("competition")
"""Every supported competition by name (its ``aliases`` resolve too)."""


def register(spec: Competition) -> Competition:
    return COMPETITIONS.add(spec.name, spec, spec.aliases)


def list_competitions() -> list[Competition]:
    return [COMPETITIONS.get(name) for name in sorted(COMPETITIONS.names())]


def get_competition(name: str | Competition) -> Competition:
    """Return the spec for ``name`` (or one of its aliases); an unknown name raises with the list of known ones."""
    if isinstance(name, Competition):
        return name
    return COMPETITIONS.get(name)


register(Competition(
    name="histopathologic-cancer-detection",
    title="Histopathologic Cancer Detection (PCam 96x96 patches)",
    task="binary",
    id_col="id",
    labels_file="train_labels.csv",
    classes=("label",),
    train_images=(ImageLocation("dir", "train", ".tif"),),
    test_images=(ImageLocation("dir", "test", ".tif"),),
    test_lists=(IdList("sample_submission.csv", "id"),),
    sample_submission="sample_submission.csv",
    metric="auc",
    submission_columns=("id", "label"),
    notes="positive = tumour tissue in the centre 32x32; no slide ids (kit folds --groups MAPPING.csv for slide-grouped folds)",
    aliases=("hcd",),
))

register(Competition(
    name="siim-isic-melanoma-classification",
    title="SIIM-ISIC Melanoma Classification 2020",
    task="binary",
    id_col="image_name",
    labels_file="train.csv",
    classes=("target",),
    train_images=(ImageLocation("dir", "jpeg/train"), ImageLocation("dir", "train")),
    test_images=(ImageLocation("dir", "jpeg/test"), ImageLocation("dir", "test")),
    test_lists=(IdList("test.csv", "image_name"), IdList("sample_submission.csv", "image_name"),
                IdList("ISIC_2020_Test_Metadata.csv", "image")),
    sample_submission="sample_submission.csv",
    group_col="patient_id",
    has_metadata=True,
    # tfrecord: the shard number in the widely used resized copies of the data (train.csv with width, height)
    train_only_columns=("diagnosis", "benign_malignant", "tfrecord"),
    diagnoses=("MEL",),
    diagnosis_col="diagnosis",
    metric="auc",
    submission_columns=("image_name", "target"),
    aliases=("isic-2020",),
))

register(Competition(
    name="isic-2024-challenge",
    title="ISIC 2024 - Skin Cancer Detection with 3D-TBP",
    task="binary",
    id_col="isic_id",
    labels_file="train-metadata.csv",
    classes=("target",),
    train_images=(ImageLocation("hdf5", "train-image.hdf5"), ImageLocation("dir", "train-image/image")),
    test_images=(ImageLocation("hdf5", "test-image.hdf5"), ImageLocation("dir", "test-image/image")),
    test_lists=(IdList("test-metadata.csv", "isic_id"), IdList("sample_submission.csv", "isic_id")),
    sample_submission="sample_submission.csv",
    group_col="patient_id",
    has_metadata=True,
    train_only_columns=("lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                        "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"),
    metric="pauc80",
    submission_columns=("isic_id", "target"),
    aliases=("isic-2024",),
    code_competition=True,
))

ISIC_2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
DIAGNOSES = ISIC_2019_CLASSES
"""The skin-lesion diagnoses every ISIC competition's rows map into: the ISIC 2019 classes (UNK: none of the others)."""
register(Competition(
    name="isic-2019",
    title="ISIC 2019 skin lesion classification (9 classes incl. UNK)",
    task="multiclass",
    id_col="image",
    labels_file="ISIC_2019_Training_GroundTruth.csv",
    classes=ISIC_2019_CLASSES,
    train_images=(ImageLocation("dir", "ISIC_2019_Training_Input"),),
    test_images=(ImageLocation("dir", "ISIC_2019_Test_Input"),),
    test_lists=(IdList("ISIC_2019_Test_Metadata.csv", "image"),),
    metadata_file="ISIC_2019_Training_Metadata.csv",
    metadata_key="image",
    group_col="lesion_id",
    has_metadata=True,
    diagnoses=ISIC_2019_CLASSES,
    metric="balanced_accuracy",
    submission_columns=("image", *ISIC_2019_CLASSES),
    notes="lesion_id is missing for many images: each such image is its own group",
    on_kaggle=False,
))

ISIC_2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
register(Competition(
    name="isic-2018-task3",
    title="ISIC 2018 Task 3 / HAM10000 lesion diagnosis (7 classes)",
    task="multiclass",
    id_col="image",
    labels_file="ISIC2018_Task3_Training_GroundTruth.csv",
    classes=ISIC_2018_CLASSES,
    train_images=(ImageLocation("dir", "ISIC2018_Task3_Training_Input"),),
    test_images=(ImageLocation("dir", "ISIC2018_Task3_Test_Input"),),
    metadata_file="HAM10000_metadata.csv",
    metadata_key="image_id",
    group_col="lesion_id",
    has_metadata=True,
    train_only_columns=("dx", "dx_type"),  # the diagnosis and how it was confirmed: the label itself
    diagnoses=("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"),  # AKIEC: actinic keratosis / intraepithelial carcinoma
    metric="balanced_accuracy",
    submission_columns=("image", *ISIC_2018_CLASSES),
    aliases=("isic-2018", "ham10000"),
    on_kaggle=False,
))
