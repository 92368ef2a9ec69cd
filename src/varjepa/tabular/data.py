"""Tables for Var-T-JEPA: CSV / Parquet files or the embedded scikit-learn sets.

:class:`TablePreprocessor` turns a ``pandas.DataFrame`` into one float32 matrix ``[N, F]`` in
which numeric features are scaled with statistics of the *training split only* (standardised, or
mapped through the training distribution to a standard normal) and categorical features hold
their integer level codes (exact small integers). Column types are declared or inferred;
missing values either stop the run naming the row and column (``missing="error"``) or are
imputed with training statistics (``missing="impute"``: median for numeric, most frequent level
for categorical). Every bad input raises :class:`TabularDataError` naming the row, the column
and the fix.

:class:`TabularDataModule` serves ``{"values": [B, F], "label": [B], "index": [B]}`` batches;
training and validation batches also carry feature-subset masks ``context_idx`` ``[B, Nc]`` and
``target_idx`` ``[B, K, Nt]`` sampled in the collate function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtri
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data.base import IndexedDataset, JEPADataModule
from ..data.sampler import mix_seed
from ..registry import ConfigError
from .masking import FeatureMasking

NUMERIC, CATEGORICAL = "numeric", "categorical"
_MASK_STREAM = 0x7461626D  # separates tabular mask seeds from other streams of the same key
EMBEDDED = ("breast_cancer", "wine", "digits")
SCALES = ("standard", "quantile", "none")


class TabularDataError(ConfigError):
    """Bad tabular input; the message names the row, the column and the fix."""


@dataclass
class TableSchema:
    """Feature layout shared by the data and the model (plain types: stored in checkpoints).

    Attributes:
        names: feature names in model order (F).
        kinds: ``"numeric"`` or ``"categorical"`` per feature.
        levels: training levels of every categorical feature (by name), in code order.
        num_classes: number of label classes (0 when the table has no label).
        classes: label values in code order.
    """

    names: list[str]
    kinds: list[str]
    levels: dict[str, list[str]] = field(default_factory=dict)
    num_classes: int = 0
    classes: list[str] = field(default_factory=list)

    @property
    def num_features(self) -> int:
        """F, the number of feature columns."""
        return len(self.names)

    def cardinalities(self) -> list[int]:
        """Number of codes per feature (0 for numeric; levels + 1 reserved 'other' code)."""
        return [
            len(self.levels[n]) + 1 if k == CATEGORICAL else 0
            for n, k in zip(self.names, self.kinds, strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (for hparams / checkpoints)."""
        return {"kind": "table", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSchema:
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k != "kind"}
        return cls(**d)


def _level(v: Any) -> str:
    """Canonical string of a categorical value (``3.0`` and ``3`` are the same level)."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v)


class NormalScores:
    """Each column through its training distribution to a standard normal: a value seen in
    training becomes ``Φ⁻¹((#smaller + #equal / 2) / N)`` (the mid-rank, so tied values share
    one score and a column that is 0 in 30 % of the rows maps its zeros to ``Φ⁻¹(0.15)``, not to
    an extreme), values between training values are interpolated linearly in that probability,
    and values outside the training range take the end scores (at most ``Φ⁻¹(1 − 1/2N)``). A
    constant column maps to 0. ``fit(x [N, F])``, ``transform(x [M, F]) -> [M, F]`` float64.

    Unlike scikit-learn's ``QuantileTransformer``, ties and the training minimum / maximum do not
    land on ±5.2 (its probability bounds), which on zero-inflated columns (most digits pixels)
    would turn half the values into outliers.
    """

    def fit(self, x: np.ndarray) -> NormalScores:
        """Learn each column's distinct training values and their mid-rank probabilities."""
        x = np.asarray(x, dtype=np.float64)
        if not np.isfinite(x).all():
            raise ValueError(
                "NormalScores.fit: the training columns hold NaN or infinite values; impute them first"
            )
        self.points: list[tuple[np.ndarray, np.ndarray]] = []
        for col in x.T:
            values, counts = np.unique(col, return_counts=True)
            below = np.cumsum(counts) - counts
            self.points.append((values, (below + counts / 2) / len(col)))
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Normal scores of ``x`` ``[M, F]`` (columns in the fitted order)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1] != len(self.points):
            raise ValueError(f"NormalScores: fitted on {len(self.points)} columns, got {x.shape[1]}")
        out = np.empty_like(x)
        for j, (values, prob) in enumerate(self.points):
            out[:, j] = ndtri(np.interp(x[:, j], values, prob))
        return out


class TablePreprocessor:
    """Column typing, categorical encoding, imputation and scaling, fitted on the training split.

    Args:
        target: label column (``None``: the table has no label).
        numeric / categorical: declared feature types; other columns are inferred (numbers →
            numeric; text, booleans → categorical; a text column whose values are nearly all
            numbers is an error naming the row that is not).
        drop: columns to ignore.
        missing: ``"error"`` or ``"impute"``.
        unseen_levels: a categorical level absent from the training split: ``"error"`` or
            ``"other"`` (a reserved code).
        scale: ``"standard"`` (training mean / std), ``"quantile"`` (each numeric column through
            its training distribution to a standard normal, :class:`NormalScores`: heavy tails
            and skew no longer dominate the per-feature linear embedding) or ``"none"``.
        source: file name used in error messages (rows are also given as file lines for CSV).
    """

    def __init__(
        self,
        target: str | None = None,
        numeric: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
        drop: Sequence[str] | None = None,
        missing: str = "error",
        unseen_levels: str = "error",
        scale: str = "standard",
        source: str | None = None,
    ):
        if missing not in ("error", "impute"):
            raise ConfigError(f"data.missing = {missing!r}; allowed: error, impute")
        if unseen_levels not in ("error", "other"):
            raise ConfigError(f"data.unseen_levels = {unseen_levels!r}; allowed: error, other")
        if scale not in SCALES:
            raise ConfigError(f"data.scale = {scale!r}; allowed: {', '.join(SCALES)}")
        both = set(numeric or ()) & set(categorical or ())
        if both:
            raise ConfigError(f"data: column(s) {sorted(both)} are declared both numeric and categorical")
        self.target, self.missing, self.unseen_levels, self.scale = target, missing, unseen_levels, scale
        self.numeric, self.categorical = list(numeric or ()), list(categorical or ())
        self.drop = list(drop or ())
        self.source = source
        self.schema: TableSchema | None = None

    # ------------------------------------------------------------------ messages
    def where(self, row: int) -> str:
        """'row r' plus the CSV line when the source is a CSV file."""
        if self.source and self.source.lower().endswith((".csv", ".tsv")):
            return f"row {row} (line {row + 2} of {self.source})"
        return f"row {row}" + (f" of {self.source}" if self.source else "")

    def _check_columns(self, df: pd.DataFrame) -> None:
        cols = [str(c) for c in df.columns]
        for opt, names in (
            ("data.numeric", self.numeric),
            ("data.categorical", self.categorical),
            ("data.drop", self.drop),
            ("data.target", [self.target] if self.target else []),
        ):
            for n in names:
                if n not in cols:
                    raise TabularDataError(
                        f"{opt}: unknown column '{n}'"
                        + (f" in {self.source}" if self.source else "")
                        + f"; the table has columns {cols}. Fix: correct the name in {opt}."
                    )

    # --------------------------------------------------------------------- fit
    def infer_kinds(self, df: pd.DataFrame) -> list[tuple[str, str]]:
        """``[(name, kind)]`` of the feature columns, in table order."""
        out = []
        for c in df.columns:
            name = str(c)
            if name == self.target or name in self.drop:
                continue
            col = df[c]
            if name in self.numeric:
                kind = NUMERIC
            elif name in self.categorical or pd.api.types.is_bool_dtype(col):
                kind = CATEGORICAL
            elif pd.api.types.is_numeric_dtype(col):
                kind = NUMERIC
            else:
                present = col[~col.isna()]
                parsed = pd.to_numeric(present, errors="coerce")
                if len(present) and parsed.notna().mean() >= 0.9 and parsed.isna().any():
                    row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
                    pos = int(np.flatnonzero(~col.isna().to_numpy())[row])
                    raise TabularDataError(
                        f"{self.where(int(df.index[pos]))}, column '{name}': text {present.iloc[row]!r} in a "
                        f"column of numbers. Fix: correct the value, or declare the column categorical "
                        f"(data.categorical: ['{name}'])."
                    )
                kind = NUMERIC if len(present) and parsed.notna().all() else CATEGORICAL
            out.append((name, kind))
        if not out:
            raise TabularDataError("data: the table has no feature columns (only the target / dropped ones)")
        return out

    def _numeric(self, df: pd.DataFrame, name: str) -> np.ndarray:
        col = df[name]
        parsed = pd.to_numeric(col, errors="coerce")
        bad = parsed.isna() & ~col.isna()
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise TabularDataError(
                f"{self.where(int(df.index[pos]))}, column '{name}': text {col.iloc[pos]!r} in a numeric column. "
                f"Fix: correct the value, or declare the column categorical (data.categorical: ['{name}'])."
            )
        return parsed.to_numpy(dtype=np.float64)

    def _missing_error(self, df: pd.DataFrame, name: str, mask: np.ndarray) -> None:
        pos = int(np.flatnonzero(mask)[0])
        n = int(mask.sum())
        more = f" ({n} missing values in this column)" if n > 1 else ""
        if name == self.target:
            raise TabularDataError(
                f"{self.where(int(df.index[pos]))}, column '{name}': the label is missing{more}. "
                "Fix: fill in the label or drop the row."
            )
        raise TabularDataError(
            f"{self.where(int(df.index[pos]))}, column '{name}': missing value{more}. "
            "Fix: fill in the value or drop the row, or set data.missing: impute."
        )

    def fit(self, train: pd.DataFrame) -> TablePreprocessor:
        """Learn types, levels, imputation values and scaling from the training rows."""
        self._check_columns(train)
        kinds = self.infer_kinds(train)
        self.names = [n for n, _ in kinds]
        self.kinds = [k for _, k in kinds]
        levels: dict[str, list[str]] = {}
        self.fill: dict[str, Any] = {}
        mean, std, numeric = [], [], []
        for name, kind in kinds:
            col = train[name]
            miss = col.isna().to_numpy()
            if miss.any() and self.missing == "error":
                self._missing_error(train, name, miss)
            if kind == NUMERIC:
                v = self._numeric(train, name)
                ok = v[~np.isnan(v)]
                if ok.size == 0:
                    raise TabularDataError(
                        f"column '{name}': no values in the training split. Fix: drop it (data.drop)."
                    )
                self.fill[name] = float(np.median(ok))
                v = np.where(np.isnan(v), self.fill[name], v)
                numeric.append(v)
                m, s = float(v.mean()), float(v.std())
                mean.append(m)
                std.append(s if s > 0 else 1.0)
            else:
                present = [_level(x) for x in col[~miss]]
                if not present:
                    raise TabularDataError(
                        f"column '{name}': no values in the training split. Fix: drop it (data.drop)."
                    )
                levels[name] = sorted(set(present))
                vals, counts = np.unique(present, return_counts=True)
                self.fill[name] = str(vals[np.argmax(counts)])
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.normal_scores = (
            NormalScores().fit(np.stack(numeric, 1)) if self.scale == "quantile" and numeric else None
        )
        classes: list[str] = []
        if self.target:
            lab = train[self.target]
            miss = lab.isna().to_numpy()
            if miss.any():
                self._missing_error(train, self.target, miss)
            classes = sorted({_level(x) for x in lab})
        self.schema = TableSchema(self.names, self.kinds, levels, len(classes), classes)
        return self

    # --------------------------------------------------------------- transform
    def transform(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(values [N, F] float32, labels [N] int64)`` (labels −1 without a target column)."""
        if self.schema is None:
            raise RuntimeError("TablePreprocessor.transform before fit")
        self._check_columns(df)
        missing = [n for n in self.names if n not in df.columns]
        if missing:
            raise TabularDataError(f"column(s) {missing} of the training table are absent. Fix: add them.")
        out = np.zeros((len(df), len(self.names)), dtype=np.float32)
        numeric_cols = [j for j, kind in enumerate(self.kinds) if kind == NUMERIC]
        numeric = np.zeros((len(df), len(numeric_cols)), dtype=np.float64)
        j_num = 0
        for j, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            col = df[name]
            miss = col.isna().to_numpy()
            if miss.any() and self.missing == "error":
                self._missing_error(df, name, miss)
            if kind == NUMERIC:
                v = self._numeric(df, name)
                numeric[:, j_num] = np.where(np.isnan(v), self.fill[name], v)
                j_num += 1
            else:
                levels = self.schema.levels[name]
                code = {lv: i for i, lv in enumerate(levels)}
                vals = [self.fill[name] if m else _level(x) for x, m in zip(col.tolist(), miss, strict=True)]
                codes = np.empty(len(vals), dtype=np.float32)
                for i, lv in enumerate(vals):
                    c = code.get(lv)
                    if c is None:
                        if self.unseen_levels == "error":
                            shown = ", ".join(levels[:10]) + (", ..." if len(levels) > 10 else "")
                            raise TabularDataError(
                                f"{self.where(int(df.index[i]))}, column '{name}': level {lv!r} does not occur "
                                f"in the training split (training levels: {shown}). Fix: correct the value, "
                                "or set data.unseen_levels: other to map unseen levels to a reserved code."
                            )
                        c = len(levels)
                    codes[i] = c
                out[:, j] = codes
        if numeric_cols:
            out[:, numeric_cols] = self._scale(numeric)
        labels = np.full(len(df), -1, dtype=np.int64)
        if self.target:
            lab = df[self.target]
            miss = lab.isna().to_numpy()
            if miss.any():
                self._missing_error(df, self.target, miss)
            cls = {c: i for i, c in enumerate(self.schema.classes)}
            for i, x in enumerate(lab.tolist()):
                c = cls.get(_level(x))
                if c is None:
                    raise TabularDataError(
                        f"{self.where(int(df.index[i]))}, column '{self.target}': label {_level(x)!r} does not occur "
                        f"in the training split (classes: {self.schema.classes}). Fix: correct the label or drop the row."
                    )
                labels[i] = c
        return out, labels

    def _scale(self, numeric: np.ndarray) -> np.ndarray:
        """Numeric columns ``[N, F_num]`` (imputed) scaled as fitted."""
        if self.scale == "standard":
            return (numeric - self.mean) / self.std
        if self.scale == "quantile":
            return self.normal_scores.transform(numeric)
        return numeric


def one_hot_features(values: np.ndarray, schema: TableSchema) -> np.ndarray:
    """Raw-feature matrix for baselines: numeric columns as they are, categorical codes one-hot
    (one column per training level plus the reserved one). ``[N, F]`` → ``[N, F']`` float32."""
    cols = []
    for j, (kind, card) in enumerate(zip(schema.kinds, schema.cardinalities(), strict=True)):
        if kind == NUMERIC:
            cols.append(values[:, j : j + 1])
        else:
            cols.append(np.eye(card, dtype=np.float32)[values[:, j].astype(np.int64)])
    return np.concatenate(cols, 1).astype(np.float32)


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.tsv``) or Parquet (``.parquet``, ``.pq``) file as a DataFrame."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.path = '{path}': no such file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(p)
        if suffix == ".tsv":
            return pd.read_csv(p, sep="\t")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise TabularDataError(f"data.path = '{path}': cannot read the table ({e})") from None
    raise ConfigError(
        f"data.path = '{path}': unknown file type '{suffix}'; allowed: .csv, .tsv, .parquet, .pq"
    )


def embedded_table(name: str) -> pd.DataFrame:
    """One of the embedded scikit-learn tables with its label in column ``target``:
    ``breast_cancer`` (569 × 30), ``wine`` (178 × 13) or ``digits`` (1,797 × 64 pixel columns)."""
    from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        raise ConfigError(
            f"data.dataset = '{name}'; embedded tables: {', '.join(EMBEDDED)} (or give data.path)"
        )
    return loaders[name](as_frame=True).frame


class TabularMaskCollator:
    """Collate ``(values [F], label, index[, key])`` samples into ``{"values", "label", "index"}`` and,
    with a masking, add ``context_idx`` ``[B, Nc]`` and ``target_idx`` ``[B, K, Nt]``.

    Masks come from a generator seeded by ``(seed, first index)`` when ``seed`` is set (a fixed
    validation protocol), by the first sample's key for keyed training samples (exact resume),
    else from the global torch RNG.
    """

    def __init__(self, masking: FeatureMasking | None, num_features: int, seed: int | None = None):
        self.masking, self.num_features, self.seed = masking, num_features, seed

    def __call__(self, samples: Sequence[tuple]) -> dict[str, torch.Tensor]:
        values, label, index = default_collate([s[:3] for s in samples])
        batch = {"values": values, "label": label, "index": index}
        if self.masking is None:
            return batch
        g = None
        if self.seed is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index[0]))
        elif len(samples[0]) > 3:
            g = torch.Generator().manual_seed(mix_seed(samples[0][3], _MASK_STREAM))
        batch["context_idx"], batch["target_idx"] = self.masking(len(samples), self.num_features, g)
        return batch


class _ArrayDataset(Dataset):
    """``(values [F] float32, label)`` items of two arrays."""

    def __init__(self, values: np.ndarray, labels: np.ndarray):
        self.values, self.labels = torch.from_numpy(values), torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.values[i], self.labels[i]


class FeatureDataModule(JEPADataModule):
    """Base of the tabular datamodules: splits are :class:`IndexedDataset`s of ``(values, label)``
    rows; masks come from the model's :class:`FeatureMasking` (``set_feature_masking``).

    Subclasses fill ``self.schema``, ``self.arrays`` (``{split: (values, labels)}``) in
    :meth:`prepare_splits`.
    """

    schema: Any = None

    def __init__(
        self, batch_size: int = 512, num_workers: int = 0, predict_split: str = "test", val_mask_seed: int = 0
    ):
        super().__init__(batch_size, num_workers, predict_split, val_mask_seed)
        self.feature_masking: FeatureMasking | None = None
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._ready = False

    def prepare_splits(self) -> None:  # pragma: no cover - abstract
        """Fill ``self.schema`` and ``self.arrays``."""
        raise NotImplementedError

    def verify(self) -> None:
        """Read and preprocess the data now (the CLI calls this before anything is written)."""
        self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self.prepare_splits()
        self.train_set, self.val_set, self.test_set = (
            IndexedDataset(_ArrayDataset(*self.arrays[s])) for s in ("train", "val", "test")
        )
        self._ready = True

    def set_feature_masking(self, masking: FeatureMasking | None) -> None:
        """Called by the model in ``setup``: the feature-subset mask sampler (None: no masks)."""
        self.feature_masking = masking
        self.masking = masking  # JEPADataModule._collate checks it is set

    def set_masking(self, masking, grid) -> None:
        """The image model's hook: tables need :class:`VarTJEPA` (ConfigError)."""
        raise ConfigError(
            f"{type(self).__name__} holds tables: use model.class_path: varjepa.VarTJEPA (not the image VarJEPA)"
        )

    def _num_features(self) -> int:
        return int(self.arrays["train"][0].shape[1])

    def _collate(self, train: bool) -> Callable:
        if self.feature_masking is None:
            return TabularMaskCollator(None, self._num_features())
        seed = None if train else self.val_mask_seed
        return TabularMaskCollator(self.feature_masking, self._num_features(), seed)

    def predict_dataloader(self) -> DataLoader:
        return self.plain_dataloader(self.predict_split)

    def plain_dataloader(self, split: str) -> DataLoader:
        """Unmasked, unshuffled batches of ``split`` (for embeddings and probes)."""
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return self._loader(ds, False, TabularMaskCollator(None, self._num_features()))


class TabularDataModule(FeatureDataModule):
    """A table from a CSV/Parquet file or an embedded scikit-learn set, for Var-T-JEPA.

    Args:
        path: CSV (``.csv``/``.tsv``) or Parquet (``.parquet``/``.pq``) file; or
        dataset: an embedded table, ``breast_cancer``, ``wine`` or ``digits`` (digits as 64
            pixel columns); used when ``path`` is not given.
        target: label column (default ``"target"`` for embedded tables; ``None``: unlabelled).
        numeric / categorical: declared column types (others inferred).
        drop: columns to ignore (e.g. ids).
        missing: ``"error"`` (stop naming row and column) or ``"impute"``.
        unseen_levels: categorical level absent from training: ``"error"`` or ``"other"``.
        scale: ``"standard"`` or ``"quantile"`` (fitted on the training split only), or ``"none"``.
        test_path: optional separate test file (else a stratified ``test_fraction`` split).
        test_fraction / val_fraction / seed: seeded (stratified when labelled) splits.
        batch_size, num_workers, predict_split, val_mask_seed: as in :class:`JEPADataModule`.
    """

    def __init__(
        self,
        path: str | None = None,
        dataset: str | None = None,
        target: str | None = None,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
        drop: list[str] | None = None,
        missing: str = "error",
        unseen_levels: str = "error",
        scale: str = "standard",
        test_path: str | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 512,
        num_workers: int = 0,
        predict_split: str = "test",
        val_mask_seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, predict_split, val_mask_seed)
        if (path is None) == (dataset is None):
            raise ConfigError(
                "data: give exactly one of data.path (CSV/Parquet file) or data.dataset "
                f"({', '.join(EMBEDDED)})"
            )
        if dataset is not None and dataset not in EMBEDDED:
            raise ConfigError(f"data.dataset = '{dataset}'; embedded tables: {', '.join(EMBEDDED)}")
        if not 0 < test_fraction < 1:
            raise ConfigError(f"data.test_fraction = {test_fraction}; must be in (0, 1)")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction = {val_fraction}; must be in [0, 1)")
        self.path, self.dataset, self.test_path = path, dataset, test_path
        self.target = target if target is not None or dataset is None else "target"
        self.test_fraction, self.val_fraction, self.seed = test_fraction, val_fraction, seed
        self.preprocessor = TablePreprocessor(
            self.target,
            numeric,
            categorical,
            drop,
            missing,
            unseen_levels,
            scale,
            source=str(path) if path else dataset,
        )

    @property
    def num_classes(self) -> int:
        """Label classes (after setup)."""
        return self.schema.num_classes if self.schema is not None else 0

    def _split(self, df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        y = None
        if self.target is not None and self.target in df.columns and not df[self.target].isna().any():
            lab = df[self.target].map(_level)
            if lab.value_counts().min() >= 2:
                y = lab
        a, b = train_test_split(np.arange(len(df)), test_size=fraction, stratify=y, random_state=seed)
        return df.iloc[np.sort(a)], df.iloc[np.sort(b)]

    def prepare_splits(self) -> None:
        df = read_table(self.path) if self.path else embedded_table(self.dataset)
        df = df.reset_index(drop=True)
        if self.test_path:
            rest, test = df, read_table(self.test_path).reset_index(drop=True)
        else:
            rest, test = self._split(df, self.test_fraction, self.seed)
        if self.val_fraction > 0:
            train, val = self._split(rest, self.val_fraction, self.seed)
        else:
            train, val = rest, test
        pre = self.preprocessor.fit(train)
        self.schema = pre.schema
        src = pre.source
        self.arrays = {"train": pre.transform(train), "val": pre.transform(val)}
        if self.test_path:
            pre.source = str(self.test_path)
        self.arrays["test"] = pre.transform(test)
        pre.source = src
        self.frames = {"train": train, "val": val, "test": test}
