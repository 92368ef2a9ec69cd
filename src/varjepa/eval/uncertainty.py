"""Predictive uncertainty of a trained VarJEPA under a fixed, seeded masking protocol.

Every image is scored with the *same* ``num_draws`` multi-block masks (drawn once from a
generator seeded by ``seed``), so an image's uncertainty depends on the image alone: not on its
batch, its position in the split, the batch size or the number of ranks. Clean and corrupted
copies of an image are therefore compared under identical masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..masking import MultiBlockMasking


@dataclass
class MaskProtocol:
    """The fixed masking protocol of uncertainty evaluation.

    Args:
        num_draws: mask configurations every image is scored under (uncertainty is averaged).
        seed: seed of the generator that draws them.
    """

    num_draws: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.num_draws < 1:
            raise ValueError(f"MaskProtocol.num_draws = {self.num_draws}; must be >= 1")


def protocol_masks(
    masking: MultiBlockMasking, grid: tuple[int, int], protocol: MaskProtocol | None = None
) -> list[tuple[Tensor, Tensor]]:
    """``num_draws`` mask pairs ``(context_idx [1, Nc], target_idx [1, M, Nt])`` from ``protocol.seed``."""
    protocol = protocol or MaskProtocol()
    g = torch.Generator().manual_seed(protocol.seed)
    return [masking(1, tuple(grid), g) for _ in range(protocol.num_draws)]


@torch.no_grad()
def protocol_outputs(model, images: Tensor, protocol: MaskProtocol | None = None):
    """Forward ``images`` ``[B, C, H, W]`` under every mask of the protocol.

    Yields one :class:`~varjepa.objectives.JEPAOutputs` per draw (``pred`` batch ``[B, T]``,
    ``target`` ``[B, T, D]``).
    """
    b = images.shape[0]
    for ctx, tgt in protocol_masks(model.masking, model.encoder.grid_size, protocol):
        batch = {
            "image": images,
            "context_idx": ctx.expand(b, -1).to(images.device),
            "target_idx": tgt.expand(b, -1, -1).to(images.device),
        }
        yield model(batch)


@torch.no_grad()
def predictive_scores(model, images: Tensor, protocol: MaskProtocol | None = None) -> dict[str, Tensor]:
    """Two per-image scores ``[B]`` under the protocol, from one forward per mask draw:

    * ``uncertainty``: the family's per-token spread (mean marginal std over latent dimensions),
      averaged over target tokens and draws: what the model *expects* its error to be;
    * ``surprise``: the predictive distribution's negative log-density of the target latents the
      target encoder actually produced, in nats per latent dimension, averaged over target tokens
      and draws: how badly the prediction explains what is there. It needs no clean reference
      (context and targets both come from ``images``); NaN for families without a density (dirac).
    """
    unc, nll = [], []
    for out in protocol_outputs(model, images, protocol):
        unc.append(out.family.uncertainty(out.pred).float().mean(-1))  # [B]
        if out.family.stochastic:
            target = out.target.float()
            nll.append(-out.pred.log_prob(target).float().mean(-1) / target.shape[-1])  # [B]
    uncertainty = torch.stack(unc).mean(0)
    surprise = torch.stack(nll).mean(0) if nll else torch.full_like(uncertainty, float("nan"))
    return {"uncertainty": uncertainty, "surprise": surprise}


@torch.no_grad()
def predictive_uncertainty(model, images: Tensor, protocol: MaskProtocol | None = None) -> Tensor:
    """Aggregated predictive std per image ``[B]``: the family's per-token spread (mean marginal
    std over latent dimensions), averaged over target tokens and over the protocol's mask draws
    (``predictive_scores(...)["uncertainty"]``)."""
    return predictive_scores(model, images, protocol)["uncertainty"]


@torch.no_grad()
def protocol_statistics(model, images: Tensor, protocol: MaskProtocol | None = None) -> dict[str, Tensor]:
    """Per-token predictive moments and targets under the protocol, draws stacked along tokens.

    Returns ``mean``, ``var`` and ``target`` ``[B, K·T, D]`` (K draws), and ``uncertainty`` ``[B]``.
    """
    means, vars_, targets, unc = [], [], [], []
    for out in protocol_outputs(model, images, protocol):
        means.append(out.family.mean(out.pred).float())
        vars_.append(out.family.marginal_variance(out.pred).float())
        targets.append(out.target.float())
        unc.append(out.family.uncertainty(out.pred).float().mean(-1))
    return {
        "mean": torch.cat(means, 1),
        "var": torch.cat(vars_, 1),
        "target": torch.cat(targets, 1),
        "uncertainty": torch.stack(unc).mean(0),
    }


def selective_accuracy(
    correct: np.ndarray | Tensor, uncertainty: np.ndarray | Tensor, withheld=(0.0, 0.1, 0.2, 0.5)
) -> dict[float, float]:
    """Accuracy on the samples kept when the most uncertain fraction is withheld.

    Args:
        correct: ``[N]`` booleans (prediction right or wrong).
        uncertainty: ``[N]`` scores; the highest are withheld first (ties broken by position).
        withheld: fractions in ``[0, 1)`` to withhold.

    Returns:
        ``{fraction: accuracy on the ceil((1 − fraction)·N) most certain samples}``.
    """
    c = np.asarray(correct, dtype=np.float64)
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")
    out = {}
    for f in withheld:
        if not 0 <= f < 1:
            raise ValueError(f"withheld fraction {f}; must be in [0, 1)")
        keep = max(1, int(np.ceil((1 - f) * len(c) - 1e-9)))
        out[float(f)] = float(c[order[:keep]].mean())
    return out


def is_gaussian(dist) -> bool:
    """Whether every marginal of ``dist`` is Gaussian (diagonal or low-rank Gaussian families)."""
    from torch.distributions import Independent, LowRankMultivariateNormal, Normal

    return isinstance(dist, LowRankMultivariateNormal) or (
        isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)
    )


@torch.no_grad()
def latent_calibration(
    model,
    images: Tensor,
    protocol: MaskProtocol | None = None,
    num_samples: int = 64,
    levels=(0.5, 0.9),
    batch_size: int = 256,
) -> dict[str, float]:
    """Calibration of the predictive distribution on the target latents of ``images``
    ``[N, C, H, W]`` under the mask protocol (the metrics of the ``UncertaintyMetrics`` callback).

    Returns ``nll`` (Gaussian, nats per dimension), ``crps`` (Gaussian families) or
    ``energy_score`` (others), ``coverage<p>`` for each level, ``spearman_std_err`` and ``aurc``.
    """
    from torchmetrics import SpearmanCorrCoef

    from .metrics import AURC, EnergyScore, GaussianCRPS, GaussianNLL, IntervalCoverage

    nll, crps, energy = GaussianNLL(), GaussianCRPS(), EnergyScore()
    cov, spear, aurc = IntervalCoverage(levels), SpearmanCorrCoef(), AURC()
    was_training = model.training
    model.eval()
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(model.device)
        for out in protocol_outputs(model, x, protocol):
            mean = out.family.mean(out.pred).float()
            var = out.family.marginal_variance(out.pred).float()
            target = out.target.float()
            nll.update(mean, var, target)
            if is_gaussian(out.pred):
                crps.update(mean, var.sqrt(), target)
                cov.update(target, mean=mean, std=var.sqrt())
            else:
                samples = out.pred.sample((num_samples,)).float()
                energy.update(samples, target)
                cov.update(target, samples=samples)
            tok_std = var.sqrt().mean(-1).flatten()
            sq = (target - mean).square().mean(-1).flatten()
            spear.update(tok_std.cpu(), sq.sqrt().cpu())
            aurc.update(tok_std, sq)
    model.train(was_training)
    res = {"nll": float(nll.compute())}
    if crps.update_count:
        res["crps"] = float(crps.compute())
    if energy.update_count:
        res["energy_score"] = float(energy.compute())
    for p, c in zip(levels, cov.compute().tolist(), strict=True):
        res[f"coverage{round(100 * p)}"] = c
    res["spearman_std_err"] = float(spear.compute())
    res["aurc"] = float(aurc.compute())
    return res
