"""Model-predictive planners in latent space: CEM and MPPI.

Both score candidate action sequences by imagining ``particles`` rollouts of each with the world
model (sampling the predictor, so the spread of outcomes is the model's predictive uncertainty),
summing the per-step costs, and reducing the rollouts' costs with a risk measure
(:mod:`~varjepa.worldmodel.risk`). They act in receding horizon: after each step the plan is shifted
by one and warm-starts the next optimisation. Actions are in ``[-1, 1]`` units inside the planner
and in environment units outside.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..registry import ConfigError, Registry
from .risk import RISKS, RiskMeasure, normalized_weights

PLANNERS: Registry = Registry("planner", "plan.planners")


class LatentPlanner:
    """Base class: belief tracking, rollout scoring and the receding-horizon loop.

    Args:
        model: a trained :class:`~varjepa.worldmodel.LatentWorldModel` (put in eval mode).
        cost: ``cost(model, z [..., H, d]) -> [..., H]`` (bound to the model beforehand).
        risk: risk measure over rollouts (a :data:`RISKS` spec or object).
        horizon: planning horizon H (steps).
        candidates: action sequences scored per iteration (N).
        particles: sampled rollouts per sequence (P).
        iterations: optimisation iterations per step.
        first_iterations: iterations at an episode's first step, which has no previous plan to
            start from (default: ``iterations``).
        noise: standard deviation of the sampling distribution at the start of each step.
        discount: per-step discount of the costs.
        common_noise: score all candidates of a step on the same particle draws (common random
            numbers; diagonal Gaussian and mixture families, others sample independently).
        tilt: importance sampling of the rollouts (``0 ≤ tilt ≤ 1``; 1, the default, is plain
            sampling, 0 draws every component equally often). Each imagined step draws mixture
            component ``k`` with probability ``∝ π_k^tilt`` instead of ``π_k``, so rare components
            (a gust) reach more of the ``particles``, and the risk measure reads the rollouts with
            their importance weights (``risk(costs, log_weights)``). A CVaR's tail is then
            resolved by more rollouts at the same cost. Families without components (a Gaussian, a
            flow, a deterministic model) have nothing to tilt: the option is then ignored.
        compile: score candidates with a ``torch.compile``-d scorer (inductor, static shapes,
            random numbers drawn as in eager mode): the rollout's many small operations are fused
            into a few C++ loops, which makes a planning step 1.3–2.7× faster on a CPU
            (``benchmarks/worldmodel_plan_speed.py``) and changes scores only by float rounding.
            The first call compiles (about a minute on 2 cores; seconds once inductor's on-disk
            cache holds the graph): call :meth:`warm_up` before timing. Needs a C++ compiler.
    """

    def __init__(
        self,
        model,
        cost,
        risk: Any = "expected",
        horizon: int = 12,
        candidates: int = 64,
        particles: int = 16,
        iterations: int = 3,
        first_iterations: int | None = None,
        noise: float = 0.5,
        discount: float = 1.0,
        common_noise: bool = True,
        tilt: float = 1.0,
        compile: bool = False,
    ):
        for name, v in (
            ("horizon", horizon),
            ("candidates", candidates),
            ("particles", particles),
            ("iterations", iterations),
        ):
            if v < 1:
                raise ConfigError(f"plan.{name} = {v}; must be >= 1")
        if first_iterations is not None and first_iterations < 1:
            raise ConfigError(
                f"plan.first_iterations = {first_iterations}; must be >= 1 (or null: iterations)"
            )
        if noise <= 0 or not 0 < discount <= 1:
            raise ConfigError(f"plan.noise = {noise} must be > 0 and plan.discount = {discount} in (0, 1]")
        if not 0 <= tilt <= 1:
            raise ConfigError(
                f"plan.tilt = {tilt}; must be in [0, 1] (1: no importance sampling, 0: components drawn uniformly)"
            )
        if not isinstance(compile, bool):
            raise ConfigError(f"plan.compile = {compile!r}; must be true or false")
        self.tilt = float(tilt)
        #: whether rollouts are importance-sampled: tilt < 1 and a family with mixture components
        self.tilted = self.tilt < 1 and getattr(getattr(model, "family", None), "components", 1) > 1
        self.model = model.eval()
        self.cost = cost
        self.risk: RiskMeasure = RISKS.build(risk, "plan.objectives") if not callable(risk) else risk
        self.horizon, self.candidates, self.particles = horizon, candidates, particles
        self.iterations, self.noise, self.discount = iterations, noise, discount
        self.first_iterations = max(iterations, first_iterations or iterations)
        self._fresh = True
        self.common_noise = common_noise
        A = model.action_dim
        dev = model.obs_mean.device
        self._weights = discount ** torch.arange(horizon, dtype=torch.float32, device=dev)
        self.plan = torch.zeros(horizon, A, device=dev)
        self.h = model.initial_belief(1)
        self.prev = torch.zeros(1, A, device=dev)
        self.step_times: list[float] = []
        #: tilted rollouts: the mean over candidates of each scoring's effective sample size
        #: ``1 / Σ w_p²`` (self-normalised weights; ``particles`` for equal weights), one per call
        self.ess: list[float] = []
        self.compiled = compile
        # fallback_random: the compiled scorer draws (common_noise false) from torch's generator,
        # as the eager one does, so that compiling changes plans by float rounding only
        self._scorer = (
            torch.compile(self._score, dynamic=False, options={"fallback_random": True})
            if compile
            else self._score
        )

    def reset(self) -> None:
        """Start a new episode: empty belief, zero plan."""
        self._fresh = True
        self.plan.zero_()
        self.h = self.model.initial_belief(1)
        self.prev.zero_()

    def draw_noise(self) -> None:
        """Fresh common random numbers for the next optimisation: ``eps`` ``[P, H, d]``, ``u`` ``[P, H]``."""
        P, H, d = self.particles, self.horizon, self.model.hparams.latent_dim
        dev = self.plan.device
        self.noise_draws = (torch.randn(P, H, d, device=dev), torch.rand(P, H, device=dev))

    @torch.no_grad()  # the compiled scorer is entered in one grad mode only (no recompile)
    def score(self, h: Tensor, seqs: Tensor) -> Tensor:
        """Risk of each candidate ``[N]`` for sequences ``[N, H, A]`` from belief ``h`` ``[1, belief]``.

        With ``common_noise`` every candidate's particle ``p`` uses the same draws (set by
        :meth:`draw_noise` once per planning step), so candidates differ only by their actions.
        Compiled with ``compile``. Tilted rollouts also append their mean effective sample size to
        :attr:`ess`."""
        risk, ess = self._scorer(h, seqs)
        if ess is not None:
            self.ess.append(float(ess))
        return risk

    def warm_up(self) -> float:
        """Score one batch of candidates at this planner's shapes, so that a ``compile``-d scorer is
        compiled before anything is timed; torch's random state (and :attr:`ess`) are left as they
        were. Returns the seconds it took (the compile time, for a compiled planner)."""
        t0 = time.perf_counter()
        dev = self.plan.device
        gpus = (
            [dev.index if dev.index is not None else torch.cuda.current_device()]
            if dev.type == "cuda"
            else []
        )
        with torch.random.fork_rng(devices=gpus):
            self.draw_noise()
            try:
                self.score(
                    self.model.initial_belief(1), self.plan.new_zeros(self.candidates, *self.plan.shape)
                )
            except ConfigError:
                raise
            except Exception as e:
                if not self.compiled:
                    raise
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise ConfigError(
                    f"plan.compile = true, but torch.compile could not compile the planner's scorer "
                    f"({type(e).__name__}: {first}). If no C++ compiler (gcc or clang) is on the PATH, "
                    "install one; or plan without compiling: plan.compile false"
                ) from e
        self.ess.clear()
        return time.perf_counter() - t0

    @torch.no_grad()
    def _score(self, h: Tensor, seqs: Tensor) -> tuple[Tensor, Tensor | None]:
        """:meth:`score`'s body (the part ``compile`` compiles): the risk ``[N]`` and, for tilted
        rollouts, the effective sample size averaged over the candidates (a scalar; else None)."""
        N, H, A = seqs.shape
        P = self.particles
        hs = h.expand(N * P, -1)
        acts = seqs.repeat_interleave(P, 0)
        noise = None
        if self.common_noise:
            eps, u = self.noise_draws
            noise = (eps[:, :H].repeat(N, 1, 1), u[:, :H].repeat(N, 1))
        elif self.tilted:  # importance sampling transforms given draws: fresh ones per rollout
            d = self.model.hparams.latent_dim
            noise = (torch.randn(N * P, H, d, device=seqs.device), torch.rand(N * P, H, device=seqs.device))
        log_w = None
        if self.tilted:
            z, log_w = self.model.imagine_tilted(hs, acts, noise, self.tilt)  # [N·P, H, d], [N·P]
        else:
            _, z = self.model.imagine(hs, acts, noise=noise, keep_params=False)  # [N·P, H, d]
        c = self.cost(self.model, z.view(N, P, H, -1))  # [N, P, H]
        costs = (c * self._weights).sum(-1)
        # plain rollouts call the measure as before (a user's callable may take costs only)
        if log_w is None:
            return self.risk(costs), None
        log_w = log_w.view(N, P)
        ess = normalized_weights(log_w).square().sum(-1).reciprocal().mean()
        return self.risk(costs, log_w), ess

    def optimize(self, h: Tensor, init: Tensor, iterations: int) -> Tensor:  # pragma: no cover - abstract
        """The action sequence ``[H, A]`` to follow from belief ``h``, warm-started at ``init``."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Observe ``obs`` (raw), update the belief, plan, and return the first action (env units)."""
        t0 = time.perf_counter()
        m = self.model
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.plan.device)[None]
        self.h = m.update_belief(self.h, m.encode(o), self.prev)
        self.draw_noise()
        seq = self.optimize(self.h, self.plan, self.first_iterations if self._fresh else self.iterations)
        self._fresh = False
        a = seq[0:1].clamp(-1, 1)
        self.prev = a
        self.plan = torch.cat([seq[1:], seq[-1:]], 0)  # receding horizon: shift, repeat the last
        out = m.denormalize_action(a)[0].cpu().numpy()
        self.step_times.append(time.perf_counter() - t0)
        return out


@PLANNERS.register("cem")
class CEMPlanner(LatentPlanner):
    """Cross-entropy method: sample sequences from a diagonal Gaussian (clipped to the action box),
    keep the ``elites`` best by risk (default: a fifth of the candidates), refit the Gaussian to
    them (``momentum`` keeps that share of the previous mean and std, which damps the refit's
    sampling noise); the last mean is the plan. The current mean is always among the candidates."""

    def __init__(
        self,
        model,
        cost,
        risk="expected",
        elites: int | None = None,
        min_std: float = 0.05,
        momentum: float = 0.0,
        **kw,
    ):
        super().__init__(model, cost, risk, **kw)
        elites = max(1, self.candidates // 5) if elites is None else elites
        if not 1 <= elites <= self.candidates:
            raise ConfigError(f"plan.elites = {elites}; must be in [1, candidates = {self.candidates}]")
        if not 0 <= momentum < 1:
            raise ConfigError(f"plan.momentum = {momentum}; must be in [0, 1)")
        self.elites, self.min_std, self.momentum = elites, min_std, momentum

    def optimize(self, h: Tensor, init: Tensor, iterations: int) -> Tensor:
        mean, std = init.clone(), torch.full_like(init, self.noise)
        m = self.momentum
        for _ in range(iterations):
            seqs = (mean + std * torch.randn(self.candidates, *mean.shape, device=mean.device)).clamp(-1, 1)
            seqs[0] = mean
            scores = self.score(h, seqs)
            elite = seqs[scores.topk(self.elites, largest=False).indices]
            mean = m * mean + (1 - m) * elite.mean(0)
            std = m * std + (1 - m) * elite.std(0, correction=0).clamp_min(self.min_std)
        return mean


@PLANNERS.register("mppi")
class MPPIPlanner(LatentPlanner):
    """Model-predictive path integral control: perturb the nominal sequence with Gaussian noise,
    weight each candidate by ``softmax(−(risk − min) / (temperature · std(risk)))`` (a temperature
    relative to the spread of the scores, so it needs no tuning to the cost's scale) and move the
    nominal to the weighted mean. The nominal itself is always among the candidates."""

    def __init__(self, model, cost, risk="expected", temperature: float = 0.5, **kw):
        super().__init__(model, cost, risk, **kw)
        if temperature <= 0:
            raise ConfigError(f"plan.temperature = {temperature}; must be > 0")
        self.temperature = temperature

    def optimize(self, h: Tensor, init: Tensor, iterations: int) -> Tensor:
        nominal = init.clone()
        for _ in range(iterations):
            seqs = (
                nominal + self.noise * torch.randn(self.candidates, *nominal.shape, device=nominal.device)
            ).clamp(-1, 1)
            seqs[0] = nominal
            s = self.score(h, seqs)
            w = torch.softmax(-(s - s.min()) / (self.temperature * s.std().clamp_min(1e-6)), 0)
            nominal = (w[:, None, None] * seqs).sum(0)
        return nominal
