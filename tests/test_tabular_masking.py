"""Feature-subset masking: structural invariants (property-based), size distribution, coverage of
every feature, determinism, the collate function and option validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from varjepa.registry import ConfigError
from varjepa.tabular import FeatureMasking, TabularMaskCollator

PROPS = settings(max_examples=60, deadline=None)

shares = st.tuples(st.floats(0.05, 0.9), st.floats(0.05, 0.9)).map(lambda t: (min(t), max(t)))


def check(ctx: torch.Tensor, tgt: torch.Tensor, B: int, F: int, m: FeatureMasking) -> None:
    """Every invariant of one sampled batch."""
    K = m.num_targets
    assert ctx.dtype == torch.long and tgt.dtype == torch.long
    assert ctx.shape[0] == B and tgt.shape[:2] == (B, K)
    nc, nt = ctx.shape[1], tgt.shape[2]
    (lo_c, hi_c), (lo_t, hi_t) = m.size_ranges(F)
    assert lo_c <= nc <= hi_c and lo_t <= nt <= hi_t
    assert int(ctx.min()) >= 0 and int(ctx.max()) < F
    assert int(tgt.min()) >= 0 and int(tgt.max()) < F
    for b in range(B):
        c = ctx[b].tolist()
        assert c == sorted(set(c)), "context not sorted / repeats a feature"
        union: set[int] = set()
        for k in range(K):
            blk = tgt[b, k].tolist()
            assert blk == sorted(set(blk))
            assert not set(blk) & set(c), "a target block overlaps the context"
            if m.disjoint_targets:
                assert not set(blk) & union, "target blocks overlap"
            union |= set(blk)


@PROPS
@given(
    F=st.integers(2, 80),
    K=st.integers(1, 6),
    ctx_share=shares,
    tgt_share=shares,
    B=st.integers(1, 9),
    seed=st.integers(0, 2**31),
    disjoint=st.booleans(),
)
def test_invariants(F, K, ctx_share, tgt_share, B, seed, disjoint):
    m = FeatureMasking(K, ctx_share, tgt_share, disjoint)
    need = 1 + (K if disjoint else 1)
    if need > F:
        with pytest.raises(ConfigError, match="cannot hold"):
            m(B, F)
        return
    ctx, tgt = m(B, F, torch.Generator().manual_seed(seed))
    check(ctx, tgt, B, F, m)


@PROPS
@given(F=st.integers(5, 60), seed=st.integers(0, 2**31))
def test_same_seed_same_masks(F, seed):
    m = FeatureMasking()
    a = m(4, F, torch.Generator().manual_seed(seed))
    b = m(4, F, torch.Generator().manual_seed(seed))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_paper_ranges_on_30_features():
    (lo_c, hi_c), (lo_t, hi_t) = FeatureMasking().size_ranges(30)
    assert (lo_c, hi_c) == (3, 9)  # 0.1-0.3 of 30
    assert (lo_t, hi_t) == (3, 6)  # 0.1 of 30 up to what 4 disjoint blocks leave next to 3 context features


def test_sizes_uniform_per_batch():
    """Nt is uniform over its range and, given Nt, Nc uniform over the feasible range (χ² bound)."""
    m = FeatureMasking(num_targets=2, context_share=(0.1, 0.4), target_share=(0.1, 0.3))
    F = 20
    g = torch.Generator().manual_seed(0)
    draws = np.array([m.sizes(F, g) for _ in range(6000)])
    (lo_c, hi_c), (lo_t, hi_t) = m.size_ranges(F)
    counts = np.bincount(draws[:, 1] - lo_t, minlength=hi_t - lo_t + 1)
    expected = len(draws) / (hi_t - lo_t + 1)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20, counts  # 4 dof: p < 1e-3
    assert draws[:, 0].min() == lo_c and draws[:, 0].max() == hi_c


def test_every_feature_reaches_every_role():
    m = FeatureMasking()
    F = 12
    ctx, tgt = m(4000, F, torch.Generator().manual_seed(1))
    in_ctx = torch.bincount(ctx.flatten(), minlength=F).float()
    in_tgt = torch.bincount(tgt.flatten(), minlength=F).float()
    # exchangeable features: every one is drawn about equally often in each role
    assert (in_ctx / in_ctx.mean() - 1).abs().max() < 0.1
    assert (in_tgt / in_tgt.mean() - 1).abs().max() < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_targets": 0}, "num_targets"),
        ({"context_share": (0.5, 0.2)}, "context_share"),
        ({"target_share": (0.0, 0.2)}, "target_share"),
        ({"target_share": (0.2, 1.0)}, "target_share"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FeatureMasking(**kwargs)


def test_collate_seeded_protocol_and_keys():
    m = FeatureMasking()
    samples = [(torch.randn(10), 1, i) for i in range(5)]
    col = TabularMaskCollator(m, 10, seed=3)
    a, b = col(samples), col(samples)
    assert (
        a["values"].shape == (5, 10)
        and a["label"].tolist() == [1] * 5
        and a["index"].tolist() == list(range(5))
    )
    assert torch.equal(a["context_idx"], b["context_idx"]) and torch.equal(a["target_idx"], b["target_idx"])
    check(a["context_idx"], a["target_idx"], 5, 10, m)
    keyed = TabularMaskCollator(m, 10)
    k1 = keyed([(*s, 99) for s in samples])
    k2 = keyed([(*s, 99) for s in samples])
    assert torch.equal(k1["target_idx"], k2["target_idx"])  # masks are a function of the batch key
    plain = TabularMaskCollator(None, 10)(samples)
    assert "context_idx" not in plain
