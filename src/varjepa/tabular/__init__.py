"""Var-T-JEPA: the coupled ELBO on tables (Gögl & Yau 2026, DESIGN §2c).

Feature-subset masking, the tabular tokenizer and networks, CSV/Parquet/embedded tables, the
simulation study, the ``VarTJEPA`` LightningModule and downstream evaluation.
"""

from .architecture import (
    ARCHITECTURES,
    FeatureDecoder,
    FeatureTokenizer,
    GaussianMLPDecoder,
    MLPCoupledNet,
    TabularCoupledNet,
)
from .callbacks import TabularProbe
from .data import (
    TablePreprocessor,
    TableSchema,
    TabularDataError,
    TabularDataModule,
    TabularMaskCollator,
    embedded_table,
    one_hot_features,
    read_table,
)
from .masking import FeatureMasking
from .module import VarTJEPA, extract
from .simulation import SimulationDataModule, SimulationSpec, simulate

__all__ = [
    "ARCHITECTURES",
    "FeatureDecoder",
    "FeatureMasking",
    "FeatureTokenizer",
    "GaussianMLPDecoder",
    "MLPCoupledNet",
    "SimulationDataModule",
    "SimulationSpec",
    "TableSchema",
    "TablePreprocessor",
    "TabularCoupledNet",
    "TabularDataError",
    "TabularDataModule",
    "TabularMaskCollator",
    "TabularProbe",
    "VarTJEPA",
    "embedded_table",
    "extract",
    "one_hot_features",
    "read_table",
    "simulate",
]
