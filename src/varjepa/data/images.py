"""Users' own images through torchvision: an image folder (one sub-folder per class) or CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision import datasets
from torchvision.transforms import v2

from ..registry import ConfigError
from .base import IndexedDataset, JEPADataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transforms(image_size: int, in_chans: int, mean, std, augment: bool) -> v2.Compose:
    """Resize/crop to ``image_size``, convert to float tensors ``[C, S, S]`` and normalise."""
    steps = [v2.ToImage()]
    if in_chans == 1:
        steps.append(v2.Grayscale(1))
    elif in_chans == 3:
        steps.append(v2.RGB())
    if augment:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.3, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean)[:in_chans], list(std)[:in_chans]),
    ]
    return v2.Compose(steps)


def _require_dir(option: str, path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{option} = '{path}': no such directory")
    return p


#: folders with at most this many files are checked at set-up when ``verify_images`` is None
VERIFY_LIMIT = 20_000


def verify_image_files(paths: list[str], option: str) -> None:
    """Open every image (PIL ``verify``: header and chunk checksums) and raise a ConfigError that
    names the unreadable files, before training writes anything."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            bad.append(f"'{p}' ({type(e).__name__}: {e})")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ConfigError(
            f"{option}: {len(bad)} unreadable image file(s): {'; '.join(bad[:5])}{more}. "
            "Remove or replace them (or set data.verify_images: false to skip this check)."
        )


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    return perm[k:], perm[:k]


class ImageFolderDataModule(JEPADataModule):
    """Images in ``root/<class>/<file>`` (torchvision ``ImageFolder``).

    Args:
        root: training folder. ``val_root`` / ``test_root`` default to a seeded split of it.
        image_size: side of the square images fed to the encoder (must match ``model.encoder.img_size``).
        in_chans: 1 (grey) or 3 (RGB).
        val_fraction: share of ``root`` used for validation when ``val_root`` is not given.
        augment: random resized crops and flips on the training split.
        verify_images: open every file at set-up and stop with an error naming unreadable ones
            (None: only for folders of at most 20,000 files). A file that still fails to decode
            during training stops the run with an error naming it.
    """

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        test_root: str | None = None,
        image_size: int = 32,
        in_chans: int = 3,
        val_fraction: float = 0.1,
        augment: bool = True,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        predict_split: str = "test",
        val_mask_seed: int = 0,
        verify_images: bool | None = None,
    ):
        super().__init__(batch_size, num_workers, predict_split, val_mask_seed)
        self.verify_images = verify_images
        if in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans = {in_chans}; allowed: 1, 3")
        self.root = _require_dir("data.root", root)
        self.val_root = _require_dir("data.val_root", val_root) if val_root else None
        self.test_root = _require_dir("data.test_root", test_root) if test_root else None
        self.image_size, self.in_chans = image_size, in_chans
        self.val_fraction, self.augment, self.seed = val_fraction, augment, seed
        self.mean, self.std = mean, std
        self._verified: set[str] = set()

    def _folder(self, root: Path, augment: bool) -> datasets.ImageFolder:
        try:
            folder = datasets.ImageFolder(
                str(root),
                transform=image_transforms(self.image_size, self.in_chans, self.mean, self.std, augment),
            )
        except (FileNotFoundError, RuntimeError) as e:
            raise ConfigError(f"data.root = '{root}': {e}") from e
        verify = self.verify_images
        if verify is None:
            verify = len(folder.samples) <= VERIFY_LIMIT
        if verify and str(root) not in self._verified:
            verify_image_files([p for p, _ in folder.samples], f"data.root = '{root}'")
            self._verified.add(str(root))
        return folder

    def verify(self) -> None:
        """Check the image files now (see ``verify_images``); the CLI calls this before it writes
        anything. Raises a ConfigError naming unreadable files."""
        for root in (self.root, self.val_root, self.test_root):
            if root is not None:
                self._folder(root, False)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        train_aug = self._folder(self.root, self.augment)
        train_plain = self._folder(self.root, False)
        self.num_classes = len(train_aug.classes)
        if self.val_root:
            self.train_set = IndexedDataset(train_aug)
            self.train_plain_set = IndexedDataset(train_plain)
            self.val_set = IndexedDataset(self._folder(self.val_root, False))
        else:
            tr, va = _split(len(train_aug), self.val_fraction, self.seed)
            self.train_set = IndexedDataset(Subset(train_aug, tr))
            self.train_plain_set = IndexedDataset(Subset(train_plain, tr))
            self.val_set = IndexedDataset(Subset(train_plain, va or tr[:1]))
        self.test_set = (
            IndexedDataset(self._folder(self.test_root, False)) if self.test_root else self.val_set
        )


class CIFAR10DataModule(JEPADataModule):
    """CIFAR-10 from a local copy (``root`` holding ``cifar-10-batches-py``); never downloads.

    Args:
        root: folder that holds ``cifar-10-batches-py``.
        val_fraction: share of the 50k training images used for validation.
    """

    image_size = 32
    in_chans = 3
    num_classes = 10

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        augment: bool = True,
        seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 2,
        predict_split: str = "test",
        val_mask_seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, predict_split, val_mask_seed)
        self.root = _require_dir("data.root", root)
        if not (self.root / "cifar-10-batches-py").is_dir():
            raise ConfigError(
                f"data.root = '{root}' holds no 'cifar-10-batches-py' folder; varjepa never downloads. "
                "Unpack cifar-10-python.tar.gz there, or use ImageFolderDataModule."
            )
        self.val_fraction, self.augment, self.seed = val_fraction, augment, seed
        self.mean, self.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return

        def load(train: bool, augment: bool):
            tf = image_transforms(32, 3, self.mean, self.std, augment)
            return datasets.CIFAR10(str(self.root), train=train, transform=tf, download=False)

        tr, va = _split(50000, self.val_fraction, self.seed)
        plain = load(True, False)
        self.train_set = IndexedDataset(Subset(load(True, self.augment), tr))
        self.train_plain_set = IndexedDataset(Subset(plain, tr))
        self.val_set = IndexedDataset(Subset(plain, va))
        self.test_set = IndexedDataset(load(False, False))
