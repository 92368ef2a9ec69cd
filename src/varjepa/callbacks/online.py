"""Online evaluation during training: a linear probe and a weighted kNN classifier on detached
pooled target-encoder features, logged every validation epoch.

Both read the features the training/validation step already computed: hooks on the model's
``target_encoder`` (:class:`FeatureTap`) pool its last full-image forward exactly as
``VarJEPA.embed(images)`` does. When the step did not run the target encoder
on this batch's images, the callbacks call ``embed`` themselves.

Under DDP the probe's gradients are all-reduced before its optimizer step (its weights stay
identical on every rank), and accuracies are torchmetrics states synced in ``compute()``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..eval.metrics import KNNAccuracy


class FeatureTap:
    """Keeps ``images`` and pooled ``output`` ``[B, D]`` of the last full-image forward of a
    :class:`~varjepa.encoders.ViTEncoder` (calls with a patch subset are ignored): a pre-hook on
    the encoder marks a full-image call, a hook on its final norm pools the norm's input with the
    encoder's own :meth:`~varjepa.encoders.ViTEncoder.pool_features`."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self.images: Tensor | None = None
        self.output: Tensor | None = None
        self._pending: Tensor | None = None
        self.handles = []
        norm = getattr(getattr(encoder, "vit", None), "norm", None)
        if norm is None or not hasattr(encoder, "pool_features"):
            return  # another encoder type: the tap stays empty and callers use ``embed``
        self.handles = [
            encoder.register_forward_pre_hook(self._pre, with_kwargs=True),
            norm.register_forward_hook(self._norm),
        ]

    def _pre(self, module, args, kwargs) -> None:
        idx = args[1] if len(args) > 1 else kwargs.get("idx")
        images = args[0] if args else kwargs.get("images")
        self._pending = images if idx is None else None

    def _norm(self, module, args, output) -> None:
        images, self._pending = self._pending, None  # pool_features calls the norm again
        if images is not None and args[0].dim() == 3:
            with torch.no_grad():
                self.images, self.output = images, self.encoder.pool_features(args[0].detach())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.images = self.output = None


_TAPS: dict[int, tuple[FeatureTap, int]] = {}


def _acquire_tap(pl_module) -> FeatureTap:
    key = id(pl_module.target_encoder)
    tap, n = _TAPS.get(key, (None, 0))
    if tap is None:
        tap = FeatureTap(pl_module.target_encoder)
    _TAPS[key] = (tap, n + 1)
    return tap


def _release_tap(pl_module) -> None:
    key = id(pl_module.target_encoder)
    tap, n = _TAPS.get(key, (None, 0))
    if tap is None:
        return
    if n <= 1:
        tap.remove()
        del _TAPS[key]
    else:
        _TAPS[key] = (tap, n - 1)


def pooled_features(pl_module, batch: dict[str, Tensor], tap: FeatureTap | None = None) -> Tensor:
    """Detached fp32 pooled target-encoder features ``[B, D]`` of ``batch["image"]``: from the
    tap when the step already encoded these images, else ``pl_module.embed``."""
    images = batch["image"]
    if tap is not None and tap.images is images and tap.output is not None:
        return tap.output.float()
    return pl_module.embed(images).detach().float()


def _num_classes(trainer: L.Trainer, given: int | None) -> int | None:
    if given is not None:
        return given
    return getattr(trainer.datamodule, "num_classes", None) if trainer.datamodule is not None else None


class OnlineLinearProbe(Callback):
    """Linear classifier trained online on detached pooled features of every training batch, with
    its own optimizer (own parameter group: ``lr``, ``weight_decay``; the encoders get no gradient).
    Logs ``online/linear_loss`` per step and ``online/linear_acc`` on the validation split each
    validation epoch. Its weights and optimizer state are saved in checkpoints.

    Args:
        num_classes: default ``datamodule.num_classes``.
        lr / weight_decay: AdamW settings of the probe.
        seed: initialisation seed (identical weights on every rank).
    """

    def __init__(
        self, num_classes: int | None = None, lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0
    ):
        super().__init__()
        self.num_classes, self.lr, self.weight_decay, self.seed = num_classes, lr, weight_decay, seed
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.accuracy: MulticlassAccuracy | None = None
        self.tap: FeatureTap | None = None
        self.last: float | None = None
        self._pending: dict[str, Any] | None = None
        self._warned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        c = _num_classes(trainer, self.num_classes)
        if c is None:
            raise ValueError("OnlineLinearProbe: give num_classes (the datamodule has no num_classes)")
        if self.head is None:
            g = torch.Generator().manual_seed(self.seed)
            self.head = nn.Linear(pl_module.embedding_dim, c)
            with torch.no_grad():
                bound = 1 / pl_module.embedding_dim**0.5
                self.head.weight.uniform_(-bound, bound, generator=g)
                self.head.bias.zero_()
            self.optimizer = torch.optim.AdamW(
                self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            self.accuracy = MulticlassAccuracy(num_classes=c, average="micro")
        self.tap = _acquire_tap(pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        _release_tap(pl_module)
        self.tap = None

    def _to(self, device: torch.device) -> None:
        if next(self.head.parameters()).device != device:
            self.head.to(device)
            for state in self.optimizer.state.values():
                for k, v in state.items():
                    if isinstance(v, Tensor):
                        state[k] = v.to(device)
        self.accuracy.to(device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            self.head.load_state_dict(self._pending["head"])
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None
        self._to(pl_module.device)

    def _labels(self, batch) -> Tensor | None:
        if "label" not in batch:
            if not self._warned:
                rank_zero_warn("OnlineLinearProbe: batches carry no 'label'; the probe is skipped")
                self._warned = True
            return None
        return batch["label"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        y = self._labels(batch)
        if y is None:
            return
        self._to(pl_module.device)
        x = pooled_features(pl_module, batch, self.tap)
        with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            loss = F.cross_entropy(self.head(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in self.head.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        self.optimizer.step()
        pl_module.log("online/linear_loss", loss.detach(), on_step=True, on_epoch=False, batch_size=len(y))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._to(pl_module.device)
        self.accuracy.reset()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        y = self._labels(batch)
        if y is None:
            return
        x = pooled_features(pl_module, batch, self.tap)
        self.accuracy.update(self.head(x).argmax(1), y)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.accuracy.update_count == 0:
            return
        self.last = float(self.accuracy.compute())
        pl_module.log("online/linear_acc", self.last, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._pending = state_dict


class OnlineKNN(Callback):
    """Weighted kNN accuracy (k = 20, cosine, T = 0.07 by default) on the validation split, with a
    memory bank of the detached pooled features of the current training epoch's batches (reset at
    every epoch start, so features never come from stale encoders of earlier epochs). Logged as
    ``online/knn_acc`` each validation epoch; under DDP the bank and queries are gathered from
    every rank.

    Args:
        k / temperature: neighbours and vote temperature.
    """

    def __init__(self, k: int = 20, temperature: float = 0.07):
        super().__init__()
        self.metric = KNNAccuracy(k=k, temperature=temperature)
        self.tap: FeatureTap | None = None
        self.last: float | None = None

    def setup(self, trainer, pl_module, stage) -> None:
        self.tap = _acquire_tap(pl_module)

    def teardown(self, trainer, pl_module, stage) -> None:
        _release_tap(pl_module)
        self.tap = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.metric.to(pl_module.device)
        self.metric.reset()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "label" in batch:
            self.metric.update(pooled_features(pl_module, batch, self.tap), batch["label"], train=True)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.metric.to(pl_module.device)
        self.metric.reset_queries()

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if "label" in batch:
            self.metric.update(pooled_features(pl_module, batch, self.tap), batch["label"], train=False)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.metric.has_bank():
            return
        self.last = float(self.metric.compute())
        pl_module.log("online/knn_acc", self.last, sync_dist=True)
