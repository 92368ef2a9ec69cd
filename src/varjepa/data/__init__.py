"""DataModules: digits (embedded default), image folders and CIFAR-10 (users' data)."""

from .base import IndexedDataset, JEPADataModule, UnreadableSampleError
from .collate import MaskCollator, stack_samples
from .digits import DigitsDataModule, digits_splits
from .images import CIFAR10DataModule, ImageFolderDataModule, image_transforms
from .sampler import ResumableLoader, ResumableSampler

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "IndexedDataset",
    "JEPADataModule",
    "MaskCollator",
    "ResumableLoader",
    "ResumableSampler",
    "UnreadableSampleError",
    "digits_splits",
    "image_transforms",
    "stack_samples",
]
