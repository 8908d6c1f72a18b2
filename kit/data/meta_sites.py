"""The metadata encoder of checkpoints written before kit encoded every feature column: sex, age, site one-hot and
images per patient, its site vocabulary stored as ``{"sites": [...]}``.

Kept unchanged so that those checkpoints predict exactly as they did; new runs use :class:`kit.data.meta.MetaEncoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SiteMetaEncoder:
    sites: tuple[str, ...]

    @classmethod
    def fit(cls, table: pd.DataFrame) -> SiteMetaEncoder:
        sites = table["site"].dropna().astype(str).str.lower().unique() if "site" in table else []
        return cls(tuple(sorted(sites)))

    @property
    def feature_names(self) -> list[str]:
        return (["sex_male", "sex_female", "age", "age_missing"] + [f"site_{s}" for s in self.sites]
                + ["site_missing", "images_per_patient"])

    @property
    def size(self) -> int:
        return len(self.feature_names)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        n = len(table)
        sex = table["sex"].astype("string").str.lower() if "sex" in table else pd.Series([pd.NA] * n, dtype="string")
        age = pd.to_numeric(table["age"], errors="coerce") if "age" in table else pd.Series(np.nan, index=table.index)
        site = table["site"].astype("string").str.lower() if "site" in table else pd.Series([pd.NA] * n,
                                                                                              dtype="string")
        cols = [
            (sex == "male").fillna(False).to_numpy(float),
            (sex == "female").fillna(False).to_numpy(float),
            (age.fillna(50.0) / 100.0).to_numpy(float),
            age.isna().to_numpy(float),
        ]
        cols += [(site == s).fillna(False).to_numpy(float) for s in self.sites]
        cols.append((~site.isin(self.sites)).fillna(True).to_numpy(float))
        # how many images the patient has: a strong signal in ISIC 2020 (the winners used it)
        if "group" in table:
            counts = table.groupby("group")["group"].transform("size").to_numpy(float)
        else:
            counts = np.ones(n)
        cols.append(np.log1p(counts) / np.log(100.0))
        return np.stack(cols, axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"sites": list(self.sites)}

    @classmethod
    def from_dict(cls, d: dict) -> SiteMetaEncoder:
        return cls(tuple(d["sites"]))
