"""Corruption protocol (DESIGN §6, after the Var-JEPA paper's MNIST experiment).

Each test image gets a level ``u ~ U(0, 1)`` and becomes ``(1 − λu)·x + λu·ε`` with ε Gaussian
noise at the data's scale (mean and std of the training pixels) and λ = 0.75, in pixel space,
before standardisation. The model's predictive uncertainty should rank the images by ``u``:
reported are Spearman(uncertainty, u) and the AUROC of the uncertainty for detecting
``u ≥`` its 75th percentile. The same two numbers are also reported for the predictive
*surprise* (negative log-density of the observed target latents; see
:func:`~varjepa.eval.uncertainty.predictive_scores`): the spread saturates once the context is
mostly noise, while the surprise keeps growing with the mismatch.

Standardisation ``(x − m)/s`` is affine, so corrupting pixels with ``ε ~ N(m, s²)`` and then
standardising equals corrupting the standardised image with ``N(0, 1)`` noise;
:func:`corrupt_standardised` uses that, so it works on any loader that standardises.

Command line (prints JSON)::

    python -m varjepa.eval.corruption --ckpt runs/.../last.ckpt
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc

from .uncertainty import MaskProtocol, predictive_scores

LAMBDA = 0.75


def split_tensors(dm, split: str, max_images: int | None = None) -> tuple[Tensor, Tensor]:
    """All (standardised) images ``[N, C, H, W]`` and labels ``[N]`` of a set-up datamodule's split."""
    xs, ys, n = [], [], 0
    for batch in dm.plain_dataloader(split):
        xs.append(batch["image"])
        ys.append(batch["label"])
        n += len(batch["image"])
        if max_images is not None and n >= max_images:
            break
    return torch.cat(xs)[:max_images], torch.cat(ys)[:max_images]


def corruption_levels(n: int, seed: int = 0) -> Tensor:
    """``n`` levels ``u ~ U(0, 1)`` from a seeded generator, ``[n]``."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def corrupt(
    x: Tensor,
    u: Tensor,
    lam: float = LAMBDA,
    noise_mean: float = 0.0,
    noise_std: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(1 − λu)·x + λu·ε``, ``ε ~ N(noise_mean, noise_std²)`` i.i.d. per pixel.

    Args:
        x: images ``[N, ...]``.
        u: levels ``[N]`` in [0, 1].
    Returns:
        corrupted images, same shape as ``x``.
    """
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * noise_std + noise_mean
    a = (lam * u.to(x)).view(-1, *([1] * (x.ndim - 1)))
    return (1 - a) * x + a * eps


def corrupt_standardised(
    x: Tensor, u: Tensor, lam: float = LAMBDA, generator: torch.Generator | None = None
) -> Tensor:
    """The protocol on standardised images (noise ``N(0, 1)``); same shapes as :func:`corrupt`."""
    return corrupt(x, u, lam, 0.0, 1.0, generator)


def detection_scores(uncertainty, u, quantile: float = 0.75) -> dict[str, float]:
    """Spearman(uncertainty, u) and AUROC of ``uncertainty`` for ``u ≥ quantile(u)``; inputs ``[N]``."""
    unc, u = (
        torch.as_tensor(np.asarray(uncertainty), dtype=torch.float64),
        torch.as_tensor(np.asarray(u), dtype=torch.float64),
    )
    positive = (u >= torch.quantile(u, quantile)).long()
    return {
        "spearman": float(spearman_corrcoef(unc, u)),
        "auroc": float(binary_auroc(unc, positive)),
    }


@torch.no_grad()
def corruption_protocol(
    model,
    images: Tensor,
    seed: int = 0,
    lam: float = LAMBDA,
    protocol: MaskProtocol | None = None,
    batch_size: int = 256,
) -> dict:
    """Run the protocol on standardised ``images`` ``[N, C, H, W]``.

    Returns ``{"spearman", "auroc", "u" [N], "uncertainty" [N] (corrupted), "clean_uncertainty" [N],
    "surprise" [N], "clean_surprise" [N], "corrupted" [N, C, H, W]}`` (arrays as numpy) and, for
    families with a density, ``surprise_spearman`` / ``surprise_auroc``: the same detection scores
    with the predictive surprise (see :func:`~varjepa.eval.uncertainty.predictive_scores`).
    """
    was_training = model.training
    model.eval()
    u = corruption_levels(len(images), seed)
    g = torch.Generator().manual_seed(seed + 1)
    xc = corrupt_standardised(images.cpu(), u, lam, g)
    dev = model.device

    def score(x: Tensor) -> dict[str, np.ndarray]:
        parts = [
            predictive_scores(model, x[i : i + batch_size].to(dev), protocol)
            for i in range(0, len(x), batch_size)
        ]
        return {k: torch.cat([p[k].cpu() for p in parts]).numpy() for k in parts[0]}

    noisy, clean = score(xc), score(images.cpu())
    model.train(was_training)
    out = detection_scores(noisy["uncertainty"], u.numpy())
    if np.isfinite(noisy["surprise"]).all():
        by_surprise = detection_scores(noisy["surprise"], u.numpy())
        out.update(surprise_spearman=by_surprise["spearman"], surprise_auroc=by_surprise["auroc"])
    out.update(
        u=u.numpy(),
        uncertainty=noisy["uncertainty"],
        clean_uncertainty=clean["uncertainty"],
        surprise=noisy["surprise"],
        clean_surprise=clean["surprise"],
        corrupted=xc.numpy(),
    )
    return out


def main(args: list[str] | None = None) -> None:
    """``python -m varjepa.eval.corruption --ckpt FILE``: the protocol on the digits test split."""
    from ..data import DigitsDataModule
    from ..module import VarJEPA

    ap = argparse.ArgumentParser(description="Corruption protocol on the digits test split (DESIGN §6)")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam", type=float, default=LAMBDA)
    ap.add_argument("--num-draws", type=int, default=8)
    a = ap.parse_args(args)
    model = VarJEPA.load_from_checkpoint(a.ckpt, map_location="cpu")
    dm = DigitsDataModule()
    dm.setup()
    images, _ = split_tensors(dm, a.split)
    res = corruption_protocol(model, images, a.seed, a.lam, MaskProtocol(a.num_draws, a.seed))
    keys = ("spearman", "auroc", "surprise_spearman", "surprise_auroc")
    print(json.dumps({**{k: res[k] for k in keys if k in res}, "n": len(images)}))


if __name__ == "__main__":
    main()
