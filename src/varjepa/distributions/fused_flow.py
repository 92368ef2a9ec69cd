"""Fused sampling of the ``flow`` family's affine-autoregressive flow (Pyro's
``ConditionalAffineAutoregressive`` layers with a coordinate reversal between them).

A training step of the ``flow`` family draws ``S`` samples per target token and scores them
(``log q(z)`` for the Monte Carlo KL). Through Pyro, every layer concatenates the context to every
draw, runs the dense masked MADE network, applies the affine map through half a dozen autograd ops
and keeps their results for backward; ``log q`` then re-evaluates the base density. The same
distribution, with the same parameters and the same maths, is sampled here by
:meth:`AffineAutoregressiveFlow.rsample_with_log_prob`:

* **one autograd node per layer** (:class:`_IAFLayer`): the MADE network and the affine map
  ``y = exp(clamp(r))·x + m``, ``log|det J| = Σ clamp(r)`` with a hand-written backward that saves
  only the layer input, the hidden activations and the scale, and applies the ReLU masks and
  accumulates the input gradient in place;
* **context once per token**: the first layer's context columns act on the per-token context
  ``[*batch, c]`` once, broadcast over the draws, instead of on ``S`` concatenated copies;
* **masked weights once per distribution** (once per step), not once per network call;
* **staircase matmuls** (on CPU): with the inputs in the network's autoregressive order and its
  hidden units in degree order (Pyro's own), every MADE mask is a staircase: a block of rows uses
  only a prefix of the columns (:func:`staircase_blocks`). Each block multiplies only its prefix,
  forward and in both backward products: about ``(K + 1) / 2K`` of the dense work for ``K``
  blocks, and the same sums (the skipped products are masked zeros);
* **permutations by bookkeeping**: the sample is kept in each network's input order; the
  coordinate reversals between layers only relabel coordinates, and the data is reordered by a
  gather once per layer and once at the end (:func:`permute`);
* **log q from the forward pass**: the base log-density is evaluated analytically from the
  standard-normal noise, ``Σ_d [−ε²/2 − log σ − log(2π)/2]`` (the same function of the parameters
  as ``Normal(μ, σ).log_prob(μ + σε)``), minus the log-determinants the layers computed anyway.

``log_prob`` of the latest draw returns that value (as Pyro's transform cache does); any other
value is scored by Pyro's exact inversion. Values, log-densities and gradients are tested against
Pyro's transforms applied one by one (``tests/test_fused_flow.py``).
"""

from __future__ import annotations

import math

import pyro.distributions as pdist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution

#: row blocks per masked layer in the staircase matmuls (measured on the ViT-Tiny benchmark)
NUM_BLOCKS = 6

Block = tuple[int, int, int]


def staircase_blocks(mask: Tensor, num_blocks: int = NUM_BLOCKS) -> list[Block] | None:
    """Row blocks ``(r0, r1, c)`` of a 0/1 ``mask [R, C]`` in which row ``r`` allows exactly the
    columns ``[0, n_r)`` with ``n_r`` nondecreasing: rows ``r0:r1`` use only the columns ``:c``.
    ``None`` if the mask is not such a staircase."""
    rows, cols = mask.shape
    n = (mask != 0).sum(1)
    prefix = torch.arange(cols, device=mask.device) < n.unsqueeze(1)
    if not torch.equal(mask != 0, prefix) or bool((n.diff() < 0).any()):
        return None
    n = n.tolist()
    bounds = [round(i * rows / num_blocks) for i in range(num_blocks + 1)]
    return [(r0, r1, n[r1 - 1]) for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True) if r1 > r0]


def _linear(x: Tensor, w: Tensor, b: Tensor | None, blocks: list[Block] | None) -> Tensor:
    """``x [N, C] @ W [R, C]ᵀ (+ b)`` → new ``[N, R]``; with ``blocks``, each row block of ``W`` multiplies
    only its column prefix (``W`` must be zero outside them)."""
    if blocks is None:
        return F.linear(x, w, b)
    y = x.new_empty((x.shape[0], w.shape[0]))
    for r0, r1, c in blocks:
        out = y[:, r0:r1]
        if c == 0:
            out.copy_(b[r0:r1].expand_as(out)) if b is not None else out.zero_()
        elif b is not None:
            torch.addmm(b[r0:r1], x[:, :c], w[r0:r1, :c].t(), out=out)
        else:
            torch.mm(x[:, :c], w[r0:r1, :c].t(), out=out)
    return y


def _grad_input(g: Tensor, w: Tensor, blocks: list[Block] | None, acc: Tensor | None = None) -> Tensor:
    """``g [N, R] @ W [R, C]`` (added to ``acc [N, C]`` in place if given), by the same blocks."""
    if blocks is None:
        return g @ w if acc is None else acc.addmm_(g, w)
    blocks = [blk for blk in blocks if blk[2] > 0]
    if acc is None:
        acc = g.new_empty((g.shape[0], w.shape[1]))
        first = max(blocks, key=lambda blk: blk[2], default=(0, 0, 0))
        r0, r1, c = first
        if c > 0:
            torch.mm(g[:, r0:r1], w[r0:r1, :c], out=acc[:, :c])
        acc[:, c:].zero_()
        blocks = [blk for blk in blocks if blk != first]
    for r0, r1, c in blocks:
        acc[:, :c].addmm_(g[:, r0:r1], w[r0:r1, :c])
    return acc


def _grad_weight(g: Tensor, x: Tensor, blocks: list[Block] | None, like: Tensor) -> Tensor:
    """``g [N, R]ᵀ @ x [N, C]`` → ``[R, C]``, zero outside the blocks."""
    if blocks is None:
        return g.t() @ x
    gw = torch.zeros_like(like)
    for r0, r1, c in blocks:
        if c > 0:
            torch.mm(g[:, r0:r1].t(), x[:, :c], out=gw[r0:r1, :c])
    return gw


def _relu_grad_(g: Tensor, h: Tensor) -> Tensor:
    """``g · [h > 0]`` in place (``h`` = the ReLU's output)."""
    return torch.ops.aten.threshold_backward.grad_input(g, h, 0, grad_input=g)


class _IAFLayer(torch.autograd.Function):
    """One affine-autoregressive (IAF) layer as one autograd node, forward and backward by hand.

    Network (MADE, ReLU): ``h₁ = relu(x W₁ᵀ + t)`` with the per-token context term ``t`` broadcast
    over the draws, ``hᵢ = relu(hᵢ₋₁ Wᵢᵀ + bᵢ)``, ``out = h Wₒᵀ + bₒ`` holding ``(m_k, r_k)`` pairs;
    affine map ``y = exp(clamp(r))·x + m`` and ``log|det J| = Σ_k clamp(r_k)``, the clamp being
    Pyro's ``clamp_preserve_gradients`` (clamped value, identity gradient). Weights are the masked
    weights, every matmul runs by staircase ``blocks`` (None: dense). Saves ``x``, the hidden
    activations and ``exp(clamp(r))``; the ReLU masks and the gradient of ``x`` are applied and
    accumulated in place.
    """

    @staticmethod
    def forward(ctx, x, ctx_term, lo, hi, blocks, *params):
        ws, bs = [params[0], *params[1::2]], [None, *params[2::2]]  # W₁ has no bias
        lead, d = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, d)
        h = _linear(x2, ws[0], None, blocks[0])
        h.view(-1, *ctx_term.shape).add_(ctx_term)
        hs = [h.relu_()]
        for w, b, blk in zip(ws[1:-1], bs[1:-1], blocks[1:-1], strict=True):
            hs.append(_linear(hs[-1], w, b, blk).relu_())
        pairs = _linear(hs[-1], ws[-1], bs[-1], blocks[-1]).view(-1, d, 2)
        log_scale = pairs[..., 1].clamp(lo, hi)
        logdet = log_scale.sum(-1)
        scale = log_scale.exp_()
        y = torch.addcmul(pairs[..., 0], scale, x2)
        ctx.blocks, ctx.ctx_shape = blocks, ctx_term.shape
        ctx.save_for_backward(x2, scale, *hs, *ws)
        return y.view(*lead, d), logdet.view(lead)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glogdet):
        x2, scale, *rest = ctx.saved_tensors
        n_hidden = len(ctx.blocks) - 1
        hs, ws = rest[:n_hidden], rest[n_hidden:]
        lead, d = gy.shape[:-1], gy.shape[-1]
        gy2 = gy.reshape(-1, d)
        gout = x2.new_empty((x2.shape[0], d, 2))
        gout[..., 0] = gy2
        gr = gout[..., 1]
        torch.mul(gy2, x2, out=gr)
        gr.mul_(scale).add_(glogdet.reshape(-1, 1))
        gx = gy2 * scale
        g = gout.view(x2.shape[0], 2 * d)
        grads_w, grads_b = [], []
        for i in range(n_hidden, 0, -1):  # output layer, then the hidden layers after the first
            grads_w.append(_grad_weight(g, hs[i - 1], ctx.blocks[i], ws[i]))
            grads_b.append(g.sum(0))
            g = _relu_grad_(_grad_input(g, ws[i], ctx.blocks[i]), hs[i - 1])
        grads_w.append(_grad_weight(g, x2, ctx.blocks[0], ws[0]))
        g_ctx = g.view(-1, *ctx.ctx_shape).sum(0)
        _grad_input(g, ws[0], ctx.blocks[0], acc=gx)
        grads_w, grads_b = grads_w[::-1], grads_b[::-1]
        params = [grads_w[0]]
        for gw, gb in zip(grads_w[1:], grads_b, strict=True):
            params += [gw, gb]
        return (gx.view(*lead, d), g_ctx, None, None, None, *params)


class _Permute(torch.autograd.Function):
    """``x.index_select(dim, idx)`` for a permutation ``idx``, as a gather forward and a gather by the
    inverse permutation backward (cheaper than ``index_select``/indexing and their scatter-add
    backward)."""

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor, inv: Tensor, dim: int) -> Tensor:
        ctx.save_for_backward(inv)
        ctx.dim = dim
        return torch.gather(x, dim, _along(idx, x, dim))

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        (inv,) = ctx.saved_tensors
        return torch.gather(g, ctx.dim, _along(inv, g, ctx.dim)), None, None, None


def _along(idx: Tensor, x: Tensor, dim: int) -> Tensor:
    """``idx [n]`` placed along ``dim`` of ``x`` and expanded to its shape (a view)."""
    dim = dim % x.dim()
    return idx.view(-1, *([1] * (x.dim() - dim - 1))).expand_as(x)


def permute(x: Tensor, idx: Tensor, dim: int = -1) -> Tensor:
    """``x.index_select(dim, idx)`` for a permutation ``idx`` of dimension ``dim``."""
    return _Permute.apply(x, idx, torch.argsort(idx), dim)


def fusable(conditional: nn.Module) -> bool:
    """Whether a Pyro conditional transform is an affine-autoregressive layer that
    :class:`AffineAutoregressiveFlow` computes exactly (ReLU MADE with one context input, two
    parameters per coordinate, no skip layer, Pyro's default (unstable) affine map)."""
    net = getattr(conditional, "nn", None)
    return (
        isinstance(conditional, T.ConditionalAffineAutoregressive)
        and isinstance(net, ConditionalAutoRegressiveNN)
        and isinstance(net.f, nn.ReLU)
        and net.skip_layer is None
        and list(net.param_dims) == [1, 1]
        and not conditional.kwargs.get("stable", False)
    )


class AffineAutoregressiveFlow(pdist.TransformedDistribution):
    """``TransformedDistribution(Independent(Normal(loc, scale), 1), [IAF₁, Permute, IAF₂, ...])``
    (Pyro's objects, unchanged) whose draws are computed by the fused pass described in
    :mod:`varjepa.distributions.fused_flow` and carry their exact ``log q``.

    Args:
        base: the diagonal-Gaussian base distribution.
        transforms: Pyro's chain: conditioned ``AffineAutoregressive`` layers and ``Permute``\\ s.
        context: the per-token context ``[*batch, c]`` the layers were conditioned on.
        conditionals: the ``ConditionalAffineAutoregressive`` modules of the IAF layers, in order.
        num_blocks: row blocks per masked layer (staircase matmuls); 0 = dense matmuls. Default:
            :data:`NUM_BLOCKS` on CPU, 0 on accelerators.
    """

    def __init__(
        self,
        base: Distribution,
        transforms: list,
        context: Tensor,
        conditionals: list[nn.Module],
        num_blocks: int | None = None,
    ):
        super().__init__(base, transforms, validate_args=False)
        self._context = context
        self._conditionals = list(conditionals)
        if num_blocks is None:  # on accelerators one dense product beats several small ones
            num_blocks = NUM_BLOCKS if context.device.type == "cpu" else 0
        self._num_blocks = num_blocks
        self._plans: dict[bool, tuple] = {}
        self._last: tuple[Tensor, Tensor] | None = None

    def _plan(self) -> tuple[Tensor, list, Tensor | None]:
        """Computed once per distribution (and grad mode). Returns ``(order, layers, final)``:
        the base draw is made with its coordinates in ``order`` (the first network's input order);
        per IAF layer ``(gather, context term [*batch, H], params, blocks, lo, hi)``, where
        ``gather`` (or None) reorders the sample into the layer's input order first, ``params`` are
        the masked weights ``(W₁, W₂, b₂, ..., Wₒ, bₒ)`` in that order (outputs as ``(m_k, r_k)``
        pairs) and ``blocks`` their staircase blocks (None: dense); ``final`` (or None) restores
        the chain's coordinate order at the end."""
        key = torch.is_grad_enabled()  # a plan built without grad must not serve a draw with grad
        if key not in self._plans:
            self._plans[key] = self._build_plan()
        return self._plans[key]

    def _build_plan(self) -> tuple[Tensor, list, Tensor | None]:
        iafs = [t for t in self.transforms if not isinstance(t, T.Permute)]
        c, k = self._context.shape[-1], self._num_blocks
        steps = iter(zip(self._conditionals, iafs, strict=True))
        # the sample's coordinate i holds the chain's coordinate order[i]; before the first layer
        # the base draw's coordinates are free (i.i.d. noise) and to_base maps chain → base ones
        layers, order, to_base, first_order = [], None, None, None
        for t in self.transforms:
            if isinstance(t, T.Permute):  # chain coordinate j becomes the previous permutation[j]
                if order is not None:
                    order = torch.argsort(t.permutation)[order]
                else:
                    to_base = t.permutation if to_base is None else to_base[t.permutation]
                continue
            cond, t = next(steps)
            net = cond.nn
            perm = net.permutation
            gather = None
            if order is None:
                first_order = perm if to_base is None else to_base[perm]
            elif not torch.equal(order, perm):
                gather = torch.argsort(order)[perm]
            order = perm
            first, *rest = net.layers
            w = first.weight * first.mask
            ctx_term = F.linear(self._context, w[:, :c], first.bias)
            params, masks = [permute(w[:, c:], perm)], [first.mask[:, c + perm]]
            for i, lay in enumerate(rest):
                wl, bl, mask = lay.weight * lay.mask, lay.bias, lay.mask
                if i == len(rest) - 1:  # outputs [m (d), r (d)] → (m_k, r_k) pairs in input order
                    rows = torch.stack([perm, perm + perm.numel()], -1).flatten()
                    wl, bl, mask = permute(wl, rows, 0), permute(bl, rows, 0), mask[rows]
                params += [wl, bl]
                masks.append(mask)
            blocks = [staircase_blocks(m, k) if k > 0 else None for m in masks]
            layers.append((gather, ctx_term, params, blocks, t.log_scale_min_clip, t.log_scale_max_clip))
        identity = torch.arange(order.numel(), device=order.device)
        final = None if torch.equal(order, identity) else torch.argsort(order)
        return first_order, layers, final

    def rsample_with_log_prob(
        self, sample_shape: torch.Size = torch.Size(), eps: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draws ``z`` ``[*sample_shape, *batch, d]`` and their ``log q(z)`` ``[*sample_shape, *batch]``.
        ``eps``: the standard-normal noise of the base draw (``loc + scale·eps``), drawn if None."""
        with torch.autocast(device_type=self._context.device.type, enabled=False):
            return self._rsample_with_log_prob(torch.Size(sample_shape), eps)

    def _rsample_with_log_prob(self, sample_shape: torch.Size, eps: Tensor | None) -> tuple[Tensor, Tensor]:
        normal = self.base_dist.base_dist
        loc, scale = normal.loc, normal.scale
        d = loc.shape[-1]
        order, layers, final = self._plan()
        if eps is None:  # i.i.d. noise: draw it directly in the first network's input order
            eps = torch.randn(sample_shape + loc.shape, dtype=loc.dtype, device=loc.device)
        else:
            eps = permute(eps, order)
        log_q = -0.5 * eps.square().sum(-1) - (scale.log().sum(-1) + 0.5 * d * math.log(2 * math.pi))
        x = torch.addcmul(permute(loc, order), permute(scale, order), eps)
        for gather, ctx_term, params, blocks, lo, hi in layers:
            if gather is not None:
                x = permute(x, gather)
            x, logdet = _IAFLayer.apply(x, ctx_term, lo, hi, blocks, *params)
            log_q = log_q - logdet
        if final is not None:
            x = permute(x, final)
        return x, log_q

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        z, log_q = self.rsample_with_log_prob(sample_shape)
        self._last = (z, log_q)
        return z

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is not None and value is self._last[0]:
            log_q = self._last[1]
            return log_q if torch.is_grad_enabled() else log_q.detach()
        return super().log_prob(value)
