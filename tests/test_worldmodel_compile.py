"""``plan.compile``: a planner whose scorer is ``torch.compile``-d scores, plans and acts as the eager
one does (up to float rounding), compiles before anything is timed, and refuses a non-boolean."""

from __future__ import annotations

import pytest
import torch

from varjepa.registry import ConfigError
from varjepa.worldmodel import CEMPlanner, MPPIPlanner
from varjepa.worldmodel.plan import PlanSettings
from worldmodel_helpers import tiny_world_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _cost(model, z):
    """Distance of the first latent coordinate from 0.5, plus the model's hazard probability."""
    return (z[..., 0] - 0.5).abs() + torch.sigmoid(model.hazard_logits(z))


def _perturbed(m):
    """``m`` in eval mode with noise added to its weights, so that actions move the latents and
    every mixture component has weight."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _innovation_mixture_model():
    """The gusts recipe in miniature: an innovation belief over a window, an anchored mixture."""
    torch.manual_seed(0)
    return _perturbed(
        tiny_world_model(
            belief={"name": "window", "length": 2, "innovation": True},
            posterior={"name": "anchored_mixture", "components": 3},
            objective={"name": "heteroscedastic", "mean_weight": 100.0},
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("tilt, common_noise", [(0.0, True), (1.0, True), (0.0, False), (1.0, False)])
def test_compiled_planner_scores_and_acts_as_the_eager_one(tilt, common_noise):
    m = _innovation_mixture_model()
    kw = dict(risk={"name": "cvar", "alpha": 0.25}, horizon=3, candidates=6, particles=4, iterations=2)
    kw |= dict(elites=2, tilt=tilt, common_noise=common_noise)
    eager = CEMPlanner(m, _cost, **kw)
    compiled = CEMPlanner(m, _cost, compile=True, **kw)
    assert compiled.compiled and not eager.compiled
    rng = torch.get_rng_state()
    compiled.warm_up()
    assert torch.equal(torch.get_rng_state(), rng)  # warming up draws nothing from torch's stream
    assert compiled.ess == []  # nor logs anything
    h = m.update_belief(m.initial_belief(1), torch.randn(1, 4), torch.zeros(1, 2))
    h = m.update_belief(h, torch.randn(1, 4), torch.full((1, 2), 0.3))  # an innovation is in the belief
    seqs = torch.rand(6, 3, 2) * 2 - 1
    eager.draw_noise()
    compiled.noise_draws = eager.noise_draws
    scores = {}
    with torch._dynamo.config.patch(error_on_recompile=True):  # the warm-up compiled what planning runs
        for name, p in (("eager", eager), ("compiled", compiled)):
            torch.manual_seed(3)  # the draws inside the scorer (common_noise false) start alike
            scores[name] = p.score(h, seqs)
            scores[name + " rng"] = torch.get_rng_state()
        assert scores["eager"].std() > 1e-3  # candidates differ, so agreement below is not trivial
        torch.testing.assert_close(scores["compiled"], scores["eager"], rtol=1e-4, atol=1e-5)
        assert torch.equal(scores["compiled rng"], scores["eager rng"])  # later draws stay in step
        if tilt < 1:
            assert compiled.ess == [pytest.approx(eager.ess[0], rel=1e-4)] and 1 <= eager.ess[0] < 4
        # whole planning steps: the same actions from the same seeds
        obs = [torch.tensor([-1.4, 0.0]), torch.tensor([-1.2, 0.1]), torch.tensor([-1.0, 0.3])]
        acts = {}
        for name, p in (("eager", eager), ("compiled", compiled)):
            torch.manual_seed(7)
            p.reset()
            acts[name] = [p.act(o.numpy()) for o in obs]
    for a, b in zip(acts["eager"], acts["compiled"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.slow
def test_compiled_mppi_scores_a_gaussian_model_as_the_eager_one():
    torch.manual_seed(1)
    m = _perturbed(tiny_world_model())
    kw = dict(risk={"name": "mean_std", "lam": 1.0}, horizon=3, candidates=5, particles=3, iterations=1)
    eager, compiled = MPPIPlanner(m, _cost, **kw), MPPIPlanner(m, _cost, compile=True, **kw)
    h = m.update_belief(m.initial_belief(1), torch.randn(1, 4), torch.zeros(1, 2))
    seqs = torch.rand(5, 3, 2) * 2 - 1
    eager.draw_noise()
    compiled.noise_draws = eager.noise_draws
    want = eager.score(h, seqs)
    assert want.std() > 1e-3
    torch.testing.assert_close(compiled.score(h, seqs), want, rtol=1e-4, atol=1e-5)


def test_compile_must_be_a_boolean():
    m = tiny_world_model()
    with pytest.raises(ConfigError, match=r"plan.compile = 'yes'; must be true or false"):
        CEMPlanner(m, _cost, compile="yes")
    assert PlanSettings(compile=True).planner_kwargs("mppi")["compile"] is True
    assert PlanSettings().planner_kwargs("cem")["compile"] is False


def test_a_failed_compile_says_what_to_do():
    m = tiny_world_model()
    p = CEMPlanner(m, _cost, horizon=2, candidates=3, particles=2, compile=True)

    def broken(h, seqs):  # what inductor raises on a machine without a C++ compiler
        raise RuntimeError("Compiler: cc is not found.\nmore detail")

    p._scorer = broken
    with pytest.raises(
        ConfigError, match=r"plan.compile = true, but .*RuntimeError: Compiler: cc is not found\.\)"
    ):
        p.warm_up()

    def bad_config(h, seqs):  # a ConfigError from inside the scorer is the user's to read as is
        raise ConfigError("plan.cost: something the user must fix")

    p._scorer = bad_config
    with pytest.raises(ConfigError, match="^plan.cost: something the user must fix$"):
        p.warm_up()
    p.compiled, p._scorer = False, broken
    with pytest.raises(RuntimeError, match="cc is not found"):  # an eager scorer's error is not reworded
        p.warm_up()
