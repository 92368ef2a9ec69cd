"""Tests of the DataModules: the digits split and normalisation, loader contents and mask
seeding, image folders written on the fly, and configuration errors."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from varjepa import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MultiBlockMasking
from varjepa.registry import ConfigError

MASK_KEYS = {"context_idx", "target_idx"}
BASE_KEYS = {"image", "label", "index"}


@pytest.fixture(scope="module")
def digits_xy():
    x, y = load_digits(return_X_y=True)
    return x.reshape(-1, 8, 8), y


@pytest.fixture(scope="module")
def reference_split(digits_xy):
    """Independent recomputation of the documented split: stratified 80/20 (seed 0), then
    10 % of the remaining part (stratified, seed 0) for validation."""
    _, y = digits_xy
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    tr, va = train_test_split(tr, test_size=0.1, stratify=y[tr], random_state=0)
    return {"train": tr, "val": va, "test": te}


@pytest.fixture(scope="module")
def dm():
    d = DigitsDataModule(batch_size=64)
    d.setup("fit")
    return d


def split_arrays(ds) -> tuple[torch.Tensor, np.ndarray]:
    xs, ys = zip(*[(ds[i][0], ds[i][1]) for i in range(len(ds))], strict=True)
    return torch.stack(xs), np.array(ys)


def raw_pixels(dm, x: torch.Tensor) -> np.ndarray:
    """Undo the standardisation and the /16 scaling: the original integer pixels 0..16."""
    raw = (x.double() * dm.std + dm.mean) * 16.0
    r = raw.round()
    assert (raw - r).abs().max() < 1e-3, "de-standardised pixels are not integers"
    return r.to(torch.int64).numpy().reshape(len(x), 64)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# ------------------------------------------------------------------ digits: split & normalisation


def test_digits_split_sizes(dm, reference_split):
    sizes = {k: len(getattr(dm, f"{k}_set")) for k in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes == {k: len(v) for k, v in reference_split.items()}
    assert sizes["test"] == 360  # ceil(0.2 * 1797)


def test_digits_test_split_is_the_stratified_seed0_split(dm, digits_xy, reference_split):
    x, y = digits_xy
    te = reference_split["test"]
    xt, yt = split_arrays(dm.test_set)
    got = np.concatenate([raw_pixels(dm, xt), yt[:, None]], 1)
    want = np.concatenate([x[te].reshape(len(te), 64).astype(np.int64), y[te][:, None]], 1)
    np.testing.assert_array_equal(sorted_rows(got), sorted_rows(want))


def test_digits_train_and_val_splits_match_reference(dm, digits_xy, reference_split):
    x, y = digits_xy
    for split in ("train", "val"):
        ix = reference_split[split]
        xs, ys = split_arrays(getattr(dm, f"{split}_set"))
        got = np.concatenate([raw_pixels(dm, xs), ys[:, None]], 1)
        want = np.concatenate([x[ix].reshape(len(ix), 64).astype(np.int64), y[ix][:, None]], 1)
        np.testing.assert_array_equal(sorted_rows(got), sorted_rows(want))


def test_digits_class_proportions_are_stratified(dm, digits_xy):
    _, y = digits_xy
    overall = np.bincount(y, minlength=10) / len(y)
    for split in ("train", "val", "test"):
        _, ys = split_arrays(getattr(dm, f"{split}_set"))
        counts = np.bincount(ys, minlength=10)
        expected = overall * len(ys)
        assert np.abs(counts - expected).max() <= 1.0, (split, counts, expected)


def test_digits_normalised_with_train_statistics_only(dm, digits_xy, reference_split):
    x, _ = digits_xy
    xtr = x[reference_split["train"]] / 16.0
    assert dm.mean == pytest.approx(xtr.mean(), abs=1e-6)
    assert dm.std == pytest.approx(xtr.std(), abs=1e-6)
    # all-data statistics differ, so this distinguishes train-only normalisation
    assert abs(dm.mean - (x / 16.0).mean()) > 1e-4

    xs, _ = split_arrays(dm.train_set)
    assert float(xs.double().mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(xs.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    xt, _ = split_arrays(dm.test_set)
    m, s = float(xt.double().mean()), float(xt.double().std(unbiased=False))
    assert abs(m) > 1e-4 or abs(s - 1) > 1e-4, "test split looks standardised with its own statistics"


def test_digits_items(dm):
    for split in ("train", "val", "test"):
        ds = getattr(dm, f"{split}_set")
        for i in (0, 1, len(ds) // 2, len(ds) - 1):
            img, label, index = ds[i]
            assert isinstance(img, torch.Tensor) and img.shape == (1, 8, 8) and img.dtype == torch.float32
            assert type(label) is int and 0 <= label <= 9
            assert type(index) is int and index == i


def test_digits_setup_is_idempotent(dm):
    before = dm.train_set
    dm.setup("fit")
    assert dm.train_set is before


def test_digits_val_fraction_zero_uses_test_as_val():
    d = DigitsDataModule(val_fraction=0.0)
    d.setup()
    assert len(d.val_set) == len(d.test_set) == 360 and len(d.train_set) == 1797 - 360
    torch.testing.assert_close(d.val_set[5][0], d.test_set[5][0], rtol=0, atol=0)


# ------------------------------------------------------------------ loaders


def test_loaders_require_masking():
    d = DigitsDataModule(batch_size=64)
    d.setup()
    for make in (d.train_dataloader, d.val_dataloader, d.test_dataloader):
        with pytest.raises(RuntimeError, match="set_masking"):
            make()


@pytest.fixture()
def masked_dm():
    d = DigitsDataModule(batch_size=64)
    d.setup()
    d.set_masking(MultiBlockMasking(), (8, 8))
    return d


def masks_of(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b["context_idx"], b["target_idx"]) for b in loader]


def same_masks(a, b) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x, y)
        for pa, pb in zip(a, b, strict=True)
        for x, y in zip(pa, pb, strict=True)
    )


def test_train_batches(masked_dm):
    torch.manual_seed(0)
    d = masked_dm
    batches = list(d.train_dataloader())
    assert len(batches) == len(d.train_set) // 64  # drop_last
    seen = []
    for b in batches:
        assert set(b) == BASE_KEYS | MASK_KEYS
        assert b["image"].shape == (64, 1, 8, 8) and b["image"].dtype == torch.float32
        assert b["label"].shape == (64,) and b["index"].shape == (64,)
        B, Nc = b["context_idx"].shape
        assert B == 64 and b["context_idx"].dtype == torch.long
        assert b["target_idx"].shape[:2] == (64, 4) and b["target_idx"].dtype == torch.long
        assert int(b["context_idx"].max()) < 64 and int(b["target_idx"].max()) < 64
        for k in (0, 17, 63):  # the index key points at the item in the batch
            img, label, _ = d.train_set[int(b["index"][k])]
            assert torch.equal(b["image"][k], img) and int(b["label"][k]) == label
        seen += b["index"].tolist()
    assert len(set(seen)) == len(seen) == len(batches) * 64
    assert seen != sorted(seen), "train loader is not shuffled"


def test_train_masks_differ_between_epochs(masked_dm):
    torch.manual_seed(0)
    dl = masked_dm.train_dataloader()
    e1, e2 = masks_of(dl), masks_of(dl)
    assert not same_masks(e1, e2)


def test_val_masks_identical_across_val_dataloader_calls(masked_dm):
    torch.manual_seed(0)
    a = masks_of(masked_dm.val_dataloader())
    torch.manual_seed(1)  # global RNG must not matter
    _ = masks_of(masked_dm.train_dataloader())
    b = masks_of(masked_dm.val_dataloader())
    assert same_masks(a, b)
    assert sum(m[0].shape[0] for m in a) == len(masked_dm.val_set)  # no drop_last
    # batches do not all share one mask: the generator advances within an epoch
    assert not same_masks(a[:1], a[1:2])
    t1, t2 = masks_of(masked_dm.test_dataloader()), masks_of(masked_dm.test_dataloader())
    assert same_masks(t1, t2)


def test_val_mask_seed_changes_val_masks():
    def val_masks(seed):
        d = DigitsDataModule(batch_size=64)
        d.val_mask_seed = seed
        d.setup()
        d.set_masking(MultiBlockMasking(), (8, 8))
        return masks_of(d.val_dataloader())

    assert same_masks(val_masks(3), val_masks(3))
    assert not same_masks(val_masks(3), val_masks(4))


class _RecordVal(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.val_masks: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        return (self.w * batch["image"].mean() - 1.0) ** 2

    def validation_step(self, batch, batch_idx):
        self.val_masks.setdefault(self.current_epoch, []).append(batch["target_idx"].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_val_masks_identical_across_epochs_in_a_fit(masked_dm):
    torch.manual_seed(0)
    model = _RecordVal()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, masked_dm)
    e0, e1 = model.val_masks[0], model.val_masks[1]
    assert len(e0) == len(e1) == 2
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(e0, e1, strict=True))


@pytest.mark.parametrize(("split", "n"), [("test", 360), ("val", 144), ("train", 1293)])
def test_predict_dataloader_has_no_masks(split, n):
    d = DigitsDataModule(batch_size=100, predict_split=split)
    d.setup()  # no set_masking needed
    batches = list(d.predict_dataloader())
    for b in batches:
        assert set(b) == BASE_KEYS
    index = torch.cat([b["index"] for b in batches])
    assert index.tolist() == list(range(n))  # every item once, in order


def test_plain_dataloader_in_order_without_masks(dm):
    b = next(iter(dm.plain_dataloader("train")))
    assert set(b) == BASE_KEYS
    assert b["index"].tolist() == list(range(64))
    assert torch.equal(b["image"][3], dm.train_set[3][0])


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"predict_split": "foo"}, "data.predict_split"),
        ({"test_fraction": 1.5}, "data.test_fraction"),
        ({"test_fraction": 0.0}, "data.test_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
    ],
)
def test_digits_bad_args(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        DigitsDataModule(**kwargs)


# ------------------------------------------------------------------ image folders

RED, BLUE = (255, 0, 0), (0, 0, 255)
IMNET_MEAN = np.array([0.485, 0.456, 0.406])
IMNET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture()
def folder(tmp_path):
    """2 classes x 6 solid-colour 10x12 RGB PNGs: 'ant' red, 'bee' blue."""
    root = tmp_path / "imgs"
    for cls, colour in (("ant", RED), ("bee", BLUE)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (12, 10), colour).save(root / cls / f"{i}.png")
    return root


def expected_pixel(colour) -> np.ndarray:
    return (np.array(colour) / 255.0 - IMNET_MEAN) / IMNET_STD


@pytest.mark.parametrize(("val_fraction", "n_val"), [(0.1, 1), (0.25, 3), (0.5, 6), (0.01, 1)])
def test_image_folder_rgb(folder, val_fraction, n_val):
    torch.manual_seed(0)
    d = ImageFolderDataModule(str(folder), image_size=8, val_fraction=val_fraction, batch_size=4)
    d.setup("fit")
    assert d.num_classes == 2
    assert len(d.val_set) == n_val and len(d.train_set) == 12 - n_val
    # train and val are disjoint and cover the folder
    tr_idx, va_idx = d.train_set.base.indices, d.val_set.base.indices
    assert set(tr_idx).isdisjoint(va_idx) and set(tr_idx) | set(va_idx) == set(range(12))
    want = {0: expected_pixel(RED), 1: expected_pixel(BLUE)}
    for ds in (d.train_set, d.val_set):
        for i in range(len(ds)):
            img, label, index = ds[i]
            assert img.shape == (3, 8, 8) and img.dtype == torch.float32
            assert index == i and label in (0, 1)
            # the label matches the folder the file lies in, and the pixels match its colour
            path, _ = ds.base.dataset.samples[ds.base.indices[i]]
            assert label == {"ant": 0, "bee": 1}[path.split("/")[-2]]
            np.testing.assert_allclose(
                img.double().numpy(), np.broadcast_to(want[label][:, None, None], (3, 8, 8)), atol=1e-4
            )
    assert d.test_set is d.val_set


def test_image_folder_grey(folder):
    d = ImageFolderDataModule(str(folder), image_size=8, in_chans=1, augment=False)
    d.setup()
    img, label, _ = d.val_set[0]
    assert img.shape == (1, 8, 8)
    colour = RED if label == 0 else BLUE
    grey = (0.2989 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]) / 255.0
    assert float(img.mean()) == pytest.approx((grey - 0.485) / 0.229, abs=1.5 / 255 / 0.229)


def test_image_folder_batches_with_masks(folder):
    d = ImageFolderDataModule(str(folder), image_size=8, val_fraction=0.25, batch_size=4)
    d.setup()
    d.set_masking(MultiBlockMasking(), (4, 4))
    b = next(iter(d.train_dataloader()))
    assert b["image"].shape == (4, 3, 8, 8) and set(b) == BASE_KEYS | MASK_KEYS
    v = list(d.val_dataloader())
    assert sum(x["image"].shape[0] for x in v) == 3


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="data.root"):
        ImageFolderDataModule(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="data.val_root"):
        ImageFolderDataModule(str(folder), val_root=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="data.in_chans"):
        ImageFolderDataModule(str(folder), in_chans=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    d = ImageFolderDataModule(str(empty))
    with pytest.raises(ConfigError, match="data.root"):
        d.setup()


def test_cifar_without_batches_folder(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        CIFAR10DataModule(str(tmp_path))
    with pytest.raises(ConfigError, match="data.root"):
        CIFAR10DataModule(str(tmp_path / "missing"))
