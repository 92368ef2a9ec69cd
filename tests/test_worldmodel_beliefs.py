"""World-model beliefs: the window belief's stacking, its use in rollouts, the GRU belief's checkpoint
compatibility and the errors of bad belief specs."""

from __future__ import annotations

import pytest
import torch

from varjepa.registry import ConfigError
from varjepa.worldmodel import LatentWorldModel
from varjepa.worldmodel.beliefs import BELIEFS, GRUBelief, WindowBelief, build_belief
from worldmodel_helpers import WINDY_SPACES

SPACES = WINDY_SPACES
WINDOW = {"name": "window", "length": 3}


def _model(belief, **kw) -> LatentWorldModel:
    torch.manual_seed(0)
    args = {"latent_dim": 4, "hidden": 16, "belief_dim": 8, "horizon": 3, "burn_in": 2, "spaces": SPACES}
    return LatentWorldModel(belief=belief, **{**args, **kw})


def test_window_belief_holds_the_last_latents_actions_and_seen_flags():
    b = WindowBelief(latent_dim=2, action_dim=1, length=3)
    assert b.size == 3 * (2 + 1 + 1) and isinstance(build_belief(WINDOW, 2, 1, 99), WindowBelief)
    h = b.initial(2)
    assert h.shape == (2, 12) and torch.all(h == 0)
    zs = [torch.tensor([[1.0, 2.0], [5.0, 6.0]]) * (t + 1) for t in range(4)]
    acts = [torch.full((2, 1), 10.0 * t) for t in range(4)]
    h = b.update(h, zs[0], acts[0])
    # one observation: two empty slots (seen = 0), then [z_0, a_-1, 1]
    torch.testing.assert_close(h[0], torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1.0, 2.0, 0.0, 1.0]))
    for t in (1, 2, 3):
        h = b.update(h, zs[t], acts[t])
    # four observations: the oldest fell out; newest last
    expect = torch.tensor([2.0, 4.0, 10.0, 1.0, 3.0, 6.0, 20.0, 1.0, 4.0, 8.0, 30.0, 1.0])
    torch.testing.assert_close(h[0], expect)
    torch.testing.assert_close(h[1, :2], torch.tensor([10.0, 12.0]))


def test_model_filter_with_a_window_equals_stacking_by_hand():
    m = _model(WINDOW)
    z = torch.randn(2, 5, 4)
    act = torch.rand(2, 4, 2) * 2 - 1
    h = m.filter(z, act)
    assert h.shape == (2, 5, 3 * 7)
    # after observation t = 3: slots hold (z_1, a_0), (z_2, a_1), (z_3, a_2), all seen
    want = torch.cat([torch.cat([z[:, s], act[:, s - 1], torch.ones(2, 1)], -1) for s in (1, 2, 3)], -1)
    torch.testing.assert_close(h[:, 3], want)


@pytest.mark.parametrize("belief", ["gru", WINDOW])
def test_imagine_feeds_each_sample_back_into_the_belief(belief):
    m = _model(belief)
    with torch.no_grad():  # a non-trivial predictor (its last layer starts at zero)
        for p in m.head.parameters():
            p.normal_(0, 0.3)
    z0 = torch.randn(3, 4)
    h = m.update_belief(m.initial_belief(3), z0, torch.zeros(3, 2))
    acts = torch.rand(3, 4, 2) * 2 - 1
    torch.manual_seed(1)
    params, zs = m.imagine(h, acts)
    # replay by hand: step j's parameters come from the belief that saw the samples before it
    hh = h
    for j in range(4):
        p = m.head(torch.cat([hh, acts[:, j]], -1))
        torch.testing.assert_close(params[:, j], p)
        hh = m.update_belief(hh, zs[:, j], acts[:, j])
    # a window belief passes a sampled jump through unchanged: its newest slot is the sample
    if belief == WINDOW:
        h1 = m.update_belief(h, zs[:, 0], acts[:, 0])
        torch.testing.assert_close(h1[:, -7:-3], zs[:, 0])


def test_gru_belief_reads_checkpoints_written_before_beliefs_were_modules():
    m = _model("gru")
    old = {
        (k.replace("belief.cell.", "belief.") if k.startswith("belief.cell.") else k): v.clone()
        for k, v in m.state_dict().items()
    }
    assert "belief.weight_ih" in old and not any(k.startswith("belief.cell.") for k in old)
    fresh = _model("gru")
    torch.manual_seed(5)
    torch.nn.init.normal_(fresh.belief.cell.weight_ih)
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.belief.cell.weight_ih, m.belief.cell.weight_ih)
    assert isinstance(fresh.belief, GRUBelief) and fresh.belief.size == 8


@pytest.mark.parametrize(
    "belief, words",
    [
        ("lstm", r"model\.belief: unknown belief 'lstm'. Registered: gru, window"),
        ({"name": "window", "length": 0}, r"model\.belief.*length = 0; must be >= 1"),
        ({"name": "window", "size": 3}, r"model\.belief: bad options"),
        ({"name": "gru", "dim": 0}, r"model\.belief.*dim = 0"),
    ],
)
def test_bad_belief_specs_name_the_option(belief, words):
    with pytest.raises(ConfigError, match=words):
        _model(belief, spaces=None)  # fails at construction, before any data is seen
    assert BELIEFS.names() == ["gru", "window"]


@pytest.mark.parametrize(
    "spec",
    ["dirac", "diag_gaussian", {"name": "lowrank_gaussian", "rank": 2}, {"name": "mixture", "components": 3}],
)
def test_family_shift_moves_the_distribution_and_keeps_its_spread(spec):
    from varjepa.distributions import POSTERIORS

    fam = POSTERIORS.build(spec, dim=4)
    torch.manual_seed(0)
    params = torch.randn(5, fam.num_params)
    offset = torch.randn(5, 4)
    before, after = fam(params), fam(fam.shift(params, offset))
    torch.testing.assert_close(fam.mean(after), fam.mean(before) + offset)
    torch.testing.assert_close(fam.marginal_variance(after), fam.marginal_variance(before))
    z = torch.randn(5, 4)
    torch.testing.assert_close(after.log_prob(z + offset), before.log_prob(z))


def test_residual_predictor_starts_at_persistence_and_needs_a_window():
    m = _model(WINDOW, residual=True, posterior="diag_gaussian")
    z = torch.randn(2, 5, 4)
    act = torch.rand(2, 4, 2) * 2 - 1
    h = m.filter(z, act)
    # the head's last layer starts at zero: the prediction is z_t itself, whatever the action
    d = m.predict(h[:, 3], act[:, 3])
    torch.testing.assert_close(m.family.mean(d), z[:, 3])
    # the offset follows the belief's newest latent through an imagined rollout
    params, zs = m.imagine(h[:, 4], torch.zeros(2, 3, 2), sample=False)
    torch.testing.assert_close(zs, z[:, 4:5].expand(2, 3, 4))
    with pytest.raises(ConfigError, match=r"model\.residual = true needs a belief .*'gru'"):
        _model("gru", residual=True)
