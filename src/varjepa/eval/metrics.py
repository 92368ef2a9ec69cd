"""Uncertainty, calibration, retrieval and collapse metrics as torchmetrics ``Metric``s.

Every metric keeps its state with ``add_state(..., dist_reduce_fx=...)``: sums for averages
(``"sum"``), concatenations for rank-based statistics (``"cat"``: Spearman, AURC, kNN, RankMe),
so ``compute()`` gives the global value under DDP without extra code.

Shapes: ``[..., D]`` means any leading batch dimensions (e.g. ``[B, T]`` target tokens) over a
latent of size D; every element counts once in the averages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .collapse import effective_rank

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


def _std_normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / _SQRT2))


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)


def normal_quantile(p: float | Tensor) -> Tensor:
    """Standard normal quantile Φ⁻¹(p) (scalar or tensor)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return _SQRT2 * torch.erfinv(2 * p - 1)


def gaussian_nll(mean: Tensor, var: Tensor, target: Tensor, min_var: float = 1e-12) -> Tensor:
    """Elementwise ``−log N(target; mean, var)``; all ``[..., D]``."""
    var = var.clamp_min(min_var)
    return 0.5 * (torch.log(2 * math.pi * var) + (target - mean).square() / var)


def gaussian_crps(mean: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """Closed-form CRPS of ``N(mean, std²)`` at ``target`` (Gneiting & Raftery 2007), elementwise:
    ``σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π]``, ``z = (y − μ)/σ``; ``|y − μ|`` when σ = 0."""
    std = std.clamp_min(1e-12)
    z = (target - mean) / std
    return std * (z * (2 * _std_normal_cdf(z) - 1) + 2 * _std_normal_pdf(z) - _INV_SQRT_PI)


def energy_score(samples: Tensor, target: Tensor) -> Tensor:
    """Energy score ``E‖X − y‖ − ½ E‖X − X'‖`` with the unbiased estimator of the second term.

    Args:
        samples: ``[S, ..., D]`` draws of the predictive distribution (S ≥ 2).
        target: ``[..., D]``.
    Returns:
        ``[...]`` one score per token (the CRPS when D = 1).
    """
    s = samples.shape[0]
    if s < 2:
        raise ValueError("energy_score needs at least 2 samples")
    term1 = (samples - target.unsqueeze(0)).norm(dim=-1).mean(0)
    x = samples.movedim(0, -2)  # [..., S, D]
    pair = torch.cdist(x.reshape(-1, s, x.shape[-1]), x.reshape(-1, s, x.shape[-1])).reshape(
        *x.shape[:-2], s, s
    )
    term2 = pair.sum((-1, -2)) / (s * (s - 1))
    return term1 - 0.5 * term2


def _empty(state: list | Tensor) -> bool:
    """Whether a cat state holds nothing (a list before sync, a tensor after)."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0


def risk_coverage_curve(uncertainty: Tensor, risk: Tensor) -> tuple[Tensor, Tensor]:
    """Selective risk at every coverage: keep the k most certain samples, k = 1..N.

    Args:
        uncertainty: ``[N]``; lower is kept first (ties in input order).
        risk: ``[N]`` per-sample loss (e.g. squared error, or 0/1 error).
    Returns:
        ``coverage`` ``[N]`` (k/N) and ``risk`` ``[N]`` (mean loss of the k kept).
    """
    order = torch.sort(uncertainty.double(), stable=True).indices
    r = risk.double()[order]
    k = torch.arange(1, len(r) + 1, dtype=torch.float64, device=r.device)
    return k / len(r), r.cumsum(0) / k


class _MeanScore(Metric):
    """Base: a running average of an elementwise score (sum and count states)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, values: Tensor) -> None:
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class GaussianNLL(_MeanScore):
    """Mean Gaussian negative log-likelihood of held-out targets, in nats per latent dimension.

    ``update(mean, var, target)``, all ``[..., D]`` (a non-Gaussian family enters through its
    exact mean and marginal variance: moment-matched).
    """

    def __init__(self, min_var: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.min_var = min_var

    def update(self, mean: Tensor, var: Tensor, target: Tensor) -> None:
        self._add(gaussian_nll(mean.float(), var.float(), target.float(), self.min_var))


class GaussianCRPS(_MeanScore):
    """Mean closed-form Gaussian CRPS per latent dimension. ``update(mean, std, target)``, ``[..., D]``."""

    def update(self, mean: Tensor, std: Tensor, target: Tensor) -> None:
        self._add(gaussian_crps(mean.float(), std.float(), target.float()))


class EnergyScore(_MeanScore):
    """Mean energy score per token (the multivariate CRPS) from samples, for families without a
    closed form (mixtures, flows). ``update(samples [S, ..., D], target [..., D])``."""

    def update(self, samples: Tensor, target: Tensor) -> None:
        self._add(energy_score(samples.float(), target.float()))


class IntervalCoverage(Metric):
    """Fraction of target coordinates inside the central predictive interval of each level.

    Gaussian intervals ``μ ± Φ⁻¹((1+p)/2)·σ`` with ``update(target, mean=..., std=...)``, or
    empirical sample quantiles with ``update(target, samples=[S, ..., D])``. ``compute()``
    returns ``[L]`` coverages in the order of ``levels``; a calibrated model gives ``levels``.

    Args:
        levels: nominal central-interval probabilities in (0, 1).
    """

    full_state_update = False

    def __init__(self, levels: Sequence[float] = (0.5, 0.9), **kwargs):
        super().__init__(**kwargs)
        if not all(0 < p < 1 for p in levels):
            raise ValueError(f"IntervalCoverage levels must lie in (0, 1), got {list(levels)}")
        self.levels = [float(p) for p in levels]
        self.add_state("hits", torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        target: Tensor,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        samples: Tensor | None = None,
    ) -> None:
        target = target.float()
        hits = []
        if samples is not None:
            samples = samples.float()
            for p in self.levels:
                lo = torch.quantile(samples, (1 - p) / 2, dim=0)
                hi = torch.quantile(samples, (1 + p) / 2, dim=0)
                hits.append(((target >= lo) & (target <= hi)).double().sum())
        elif mean is not None and std is not None:
            dev = (target - mean.float()).abs()
            for p in self.levels:
                half = float(normal_quantile((1 + p) / 2)) * std.float()
                hits.append((dev <= half).double().sum())
        else:
            raise ValueError("IntervalCoverage.update needs mean and std, or samples")
        self.hits += torch.stack(hits)
        self.count += target.numel()

    def compute(self) -> Tensor:
        return (self.hits / self.count.clamp_min(1)).float()


class AURC(Metric):
    """Area under the risk–coverage curve (Geifman et al. 2019): the mean over k = 1..N of the
    selective risk of the k least uncertain samples. Lower is better; a random ranking gives the
    mean risk. ``update(uncertainty [N], risk [N])`` (cat states)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("uncertainty", [], dist_reduce_fx="cat")
        self.add_state("risk", [], dist_reduce_fx="cat")

    def update(self, uncertainty: Tensor, risk: Tensor) -> None:
        self.uncertainty.append(uncertainty.detach().flatten().float())
        self.risk.append(risk.detach().flatten().float())

    def curve(self) -> tuple[Tensor, Tensor]:
        """``(coverage [N], selective risk [N])`` of everything seen (synced under DDP by compute)."""
        return risk_coverage_curve(dim_zero_cat(self.uncertainty), dim_zero_cat(self.risk))

    def compute(self) -> Tensor:
        return self.curve()[1].mean().float()


class KNNAccuracy(Metric):
    """Weighted kNN classifier accuracy (DINO / InstDisc protocol): cosine similarity, the ``k``
    nearest training features vote with weight ``exp(sim / temperature)``.

    ``update(features [N, D], labels [N], train=True)`` adds to the memory bank,
    ``train=False`` adds queries; ``compute()`` classifies every query against the bank.

    Args:
        k: neighbours (at most the bank size).
        temperature: T of the vote weights.
        chunk: queries per similarity block (memory).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 20, temperature: float = 0.07, chunk: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.k, self.temperature, self.chunk = k, temperature, chunk
        for name in ("train_features", "train_labels", "query_features", "query_labels"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor, train: bool = True) -> None:
        f = torch.nn.functional.normalize(features.detach().float(), dim=1)
        if train:
            self.train_features.append(f)
            self.train_labels.append(labels.detach().long())
        else:
            self.query_features.append(f)
            self.query_labels.append(labels.detach().long())

    def reset_queries(self) -> None:
        """Forget the queries, keep the memory bank."""
        self.query_features, self.query_labels = [], []
        self._computed = None

    def has_bank(self) -> bool:
        """Whether this process holds any training features (on any rank after a sync)."""
        return not _empty(self.train_features)

    def predict(self, bank: Tensor, bank_labels: Tensor, queries: Tensor) -> Tensor:
        """Predicted labels ``[Q]`` of normalised ``queries`` ``[Q, D]`` against ``bank`` ``[N, D]``."""
        num_classes = int(bank_labels.max()) + 1
        k = min(self.k, len(bank))
        preds = []
        for i in range(0, len(queries), self.chunk):
            sim = queries[i : i + self.chunk] @ bank.T
            top, idx = sim.topk(k, dim=1)
            w = torch.exp(top / self.temperature)
            votes = torch.zeros(len(top), num_classes, device=bank.device, dtype=w.dtype)
            votes.scatter_add_(1, bank_labels[idx], w)
            preds.append(votes.argmax(1))
        return torch.cat(preds)

    def compute(self) -> Tensor:
        if _empty(self.train_features) or _empty(self.query_features):
            return torch.tensor(float("nan"))
        bank, bank_y = dim_zero_cat(self.train_features), dim_zero_cat(self.train_labels)
        q, qy = dim_zero_cat(self.query_features), dim_zero_cat(self.query_labels)
        return (self.predict(bank, bank_y, q) == qy).float().mean()


class EmbeddingStats(Metric):
    """Collapse statistics of embeddings ``[N, D]`` seen so far: RankMe effective rank,
    per-dimension std, and the number of dimensions with std above ``dead_std``.

    ``compute()`` → ``{"rankme", "std_mean", "std_min", "live_dims", "n", "std" [D]}``.
    """

    full_state_update = False

    def __init__(self, dead_std: float = 1e-2, **kwargs):
        super().__init__(**kwargs)
        self.dead_std = dead_std
        self.add_state("embeddings", [], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor) -> None:
        self.embeddings.append(embeddings.detach().float())

    def compute(self) -> dict[str, Tensor]:
        x = dim_zero_cat(self.embeddings)
        std = x.std(0, unbiased=True) if len(x) > 1 else torch.zeros(x.shape[1], device=x.device)
        return {
            "rankme": effective_rank(x),
            "std_mean": std.mean(),
            "std_min": std.min(),
            "live_dims": (std > self.dead_std).sum().float(),
            "n": torch.tensor(float(len(x))),
            "std": std,
        }


def diagonal_gaussian_kl(mean: Tensor, var: Tensor, prior_mean: Tensor, prior_var: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean, var) ‖ N(prior_mean, prior_var))``, broadcasting; ``[..., D]``."""
    var = var.clamp_min(1e-12)
    return 0.5 * (torch.log(prior_var / var) + (var + (mean - prior_mean).square()) / prior_var - 1)


class ActiveUnits(Metric):
    """Active units (DESIGN §6): latent dimensions whose KL from the predictive distribution to the
    prior, averaged over data, exceeds ``threshold`` nats. Per-dimension KL uses the marginal
    moments of both (exact for diagonal Gaussians, moment-matched otherwise).

    ``update(mean, var, prior_mean [D], prior_var [D])`` with ``mean``/``var`` ``[..., D]``;
    ``compute()`` → ``{"active_units", "kl_per_dim" [D]}``.

    Args:
        dim: latent size D.
        threshold: KL (nats) above which a dimension is active.
    """

    full_state_update = False

    def __init__(self, dim: int, threshold: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("kl_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mean: Tensor, var: Tensor, prior_mean: Tensor, prior_var: Tensor) -> None:
        kl = diagonal_gaussian_kl(mean.float(), var.float(), prior_mean.float(), prior_var.float())
        kl = kl.reshape(-1, kl.shape[-1]).double()
        self.kl_sum += kl.sum(0)
        self.count += kl.shape[0]

    def compute(self) -> dict[str, Tensor]:
        per_dim = (self.kl_sum / self.count.clamp_min(1)).float()
        return {"active_units": (per_dim > self.threshold).sum().float(), "kl_per_dim": per_dim}
