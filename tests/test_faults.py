"""Numerical faults: bad batches stop the run naming the step and the ELBO term (or are skipped
and counted with ``nonfinite: skip``), variance floors hold under extreme head outputs, and
bf16-mixed keeps the distribution maths in fp32."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import varjepa
from varjepa import POSTERIORS, ConfigError
from varjepa.distributions import LIKELIHOODS, kl_divergence
from varjepa.objectives.elbo import NonFiniteLossError
from varjepa.objectives.terms import Term

TINY_ENCODER = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}


class PoisonBatch(Callback):
    """Writes NaN (or Inf) into one pixel of image ``row`` of the batches of the given steps, and
    snapshots the online encoder and the optimizer's moments around every step."""

    def __init__(self, steps: set[int], value: float = float("nan"), row: int = 3):
        self.steps, self.value, self.row = steps, value, row
        self.poisoned_index: dict[int, int] = {}
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    @staticmethod
    def _snap(trainer, pl_module) -> dict:
        st = trainer.optimizers[0].state if trainer.optimizers else {}
        return {
            "enc": {k: v.clone() for k, v in pl_module.encoder.state_dict().items()},
            "m": [s["exp_avg"].clone() for s in st.values()] if st else [],
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step in self.steps:
            batch["image"][self.row, 0, 1, 1] = self.value
            self.poisoned_index[step] = int(batch["index"][self.row])
        self.before[step] = self._snap(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self._snap(trainer, pl_module)


def run(steps=4, callbacks=(), precision="32-true", **kw):
    torch.manual_seed(0)
    opts = dict(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, lr=1e-2, warmup=0.0)
    opts.update(kw)
    model = varjepa.VarJEPA(**opts)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        callbacks=list(callbacks),
    )
    trainer.fit(model, varjepa.DigitsDataModule(batch_size=64))
    return model, trainer


# ------------------------------------------------------------------ raise (default)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_bad_input_batch_stops_the_run_naming_step_terms_and_image(value):
    poison = PoisonBatch({2}, value)
    with pytest.raises(NonFiniteLossError) as err:
        run(callbacks=[poison])
    msg = str(err.value)
    # the target encoder sees the whole image, so z̄ and the likelihood term break (the context
    # encoder may not see the bad pixel, so the KL can stay finite)
    assert msg.startswith("train: non-finite loss at step 2: 'nll' = nan")
    assert f"NaN/Inf pixels in 1 image(s) (dataset indices [{poison.poisoned_index[2]}])" in msg
    assert 2 not in poison.after  # the bad step never reached the optimizer


class BrokenTerm(Term):
    """A regulariser that overflows at step ``at`` (inputs stay finite)."""

    def __init__(self, at: int):
        super().__init__("overflow")
        self.at = at

    def forward(self, out):
        x = out.extras["context_tokens"].float().mean()
        return x * 0 + (math.inf if out.extras["step"] == self.at else 0.0)


def test_nonfinite_term_is_named_and_finite_terms_are_not():
    with pytest.raises(NonFiniteLossError) as err:
        run(regularizers=[BrokenTerm(at=1)])
    msg = str(err.value)
    named = msg.split("(weights")[0]
    assert named == "train: non-finite loss at step 1: 'overflow' = inf "
    assert "'overflow': 1.0" in msg
    assert "NaN/Inf pixels" not in msg  # the input was fine


# ------------------------------------------------------------------ skip policy


def test_skip_policy_drops_bad_batches_and_counts_them():
    poison = PoisonBatch({1, 3})
    model, trainer = run(steps=5, callbacks=[poison], nonfinite="skip")
    assert trainer.global_step == 5 and model.skipped_batches == 2
    assert float(trainer.callback_metrics["train/skipped_batches"]) == 2.0
    for s in (1, 3):  # a skipped step changes neither the weights nor the optimizer's moments
        b, a = poison.before[s], poison.after[s]
        assert all(torch.equal(b["enc"][k], a["enc"][k]) for k in b["enc"])
        assert all(torch.equal(x, y) for x, y in zip(b["m"], a["m"], strict=True))
    for s in (0, 2, 4):  # the others do
        b, a = poison.before[s], poison.after[s]
        assert any(not torch.equal(b["enc"][k], a["enc"][k]) for k in b["enc"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_counter_survives_checkpoints():
    model = varjepa.VarJEPA(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, nonfinite="skip")
    model.skipped_batches = 3
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    other = varjepa.VarJEPA(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, nonfinite="skip")
    other.on_load_checkpoint(ckpt)
    assert other.skipped_batches == 3


def test_nonfinite_option_is_validated():
    with pytest.raises(ConfigError, match="model.nonfinite = 'ignore'; allowed: raise, skip"):
        varjepa.VarJEPA(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, nonfinite="ignore")


# ------------------------------------------------------------------ variance floors

FAMILIES = {
    "diag_gaussian": {},
    "lowrank_gaussian": {"rank": 2},
    "mixture": {"components": 3},
    "flow": {"depth": 2},
}


def _spread_slots(family: str, fam) -> list[slice]:
    """Where a family's head outputs hold spread parameters (raw stds, low-rank factors, logits)."""
    d = fam.dim
    if family == "lowrank_gaussian":
        return [slice(d + d * fam.rank, None)]  # raw σ (the factor W is unbounded)
    if family == "mixture":
        return [slice(fam.components * d, None)]
    return [slice(d, 2 * d)]  # diag_gaussian, flow: [μ, raw σ, (context)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("extreme", [-1e30, -1e4, 1e4, 1e30])
def test_variance_floor_holds_under_extreme_head_outputs(family, extreme):
    fam = POSTERIORS.build({"name": family, **FAMILIES[family]}, dim=8)
    params = torch.zeros(5, 3, fam.num_params)
    for sl in _spread_slots(family, fam):
        params[..., sl] = extreme
    dist = fam(params)
    if family in ("diag_gaussian", "flow"):
        scale = dist.base_dist.scale if family == "diag_gaussian" else dist.base_dist.base_dist.scale
        assert float(scale.min()) >= fam.min_std * (1 - 1e-6)
        assert float(scale.max()) <= fam.max_std * (1 + 1e-6)
    if family == "lowrank_gaussian":
        assert float(dist.cov_diag.min()) >= fam.min_std**2 * (1 - 1e-5)
        assert float(dist.cov_diag.max()) <= fam.max_std**2 * (1 + 1e-5)
    if family == "mixture":
        assert float(dist.coord_scale.min()) >= fam.min_std * (1 - 1e-6)
    with torch.no_grad():
        std = fam.marginal_std(dist)
        assert torch.isfinite(std).all()
        # flows shrink by at most exp(-5) per affine layer (Pyro's log-scale clip)
        floor = fam.min_std * (math.exp(-5 * fam.depth) if family == "flow" else 1.0)
        assert float(std.min()) >= 0.5 * floor
        prior = varjepa.PRIORS.build("standard_normal", dim=8)()
        kl, _ = kl_divergence(dist, prior, num_samples=4)
        assert torch.isfinite(kl).all()
        lik = LIKELIHOODS.build("gaussian", dim=8)
        assert torch.isfinite(lik(dist.rsample()).log_prob(torch.zeros(5, 3, 8))).all()


def test_learned_likelihood_sigma_is_floored():
    lik = LIKELIHOODS.build({"name": "gaussian_learned", "min_std": 0.05}, dim=4)
    with torch.no_grad():
        lik.raw_sigma.fill_(-1e6)
    assert float(lik.sigma.min()) == pytest.approx(0.05, rel=1e-5)
    nll = lik.expected_nll(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4))
    assert torch.isfinite(nll).all()


# ------------------------------------------------------------------ bf16-mixed


@pytest.mark.parametrize("family", ["lowrank_gaussian", "flow"])
def test_bf16_mixed_keeps_distribution_maths_in_fp32(family):
    seen: list[dict] = []

    head_dtypes: list[torch.dtype] = []

    class Spy(Callback):
        def on_fit_start(self, trainer, pl_module):
            pl_module.predictor.head.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
            elbo = pl_module.elbo
            orig = elbo.forward

            def spy(out, step, total):
                res = orig(out, step, total)
                seen.append(
                    {
                        "pred": {k: v.dtype for k, v in _dist_tensors(out.pred).items()},
                        "target": out.target.dtype,
                        "loss": res.loss.dtype,
                        "values": {k: v.dtype for k, v in res.values.items()},
                        "finite": bool(torch.isfinite(res.loss)),
                    }
                )
                return res

            elbo.forward = spy

    spec = {"name": family, **FAMILIES[family]}
    model, trainer = run(steps=3, callbacks=[Spy()], precision="bf16-mixed", posterior=spec)
    assert trainer.global_step == 3 and len(seen) == 3
    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}  # autocast is on for the networks
    for s in seen:
        assert s["pred"] and set(s["pred"].values()) == {torch.float32}, s["pred"]
        assert s["target"] == s["loss"] == torch.float32
        assert set(s["values"].values()) == {torch.float32}
        assert s["finite"]
    m = trainer.callback_metrics
    assert all(torch.isfinite(m[k]) for k in ("train/loss", "train/pred_std", "train/rankme"))


def _dist_tensors(d) -> dict[str, torch.Tensor]:
    """The parameter tensors of a (possibly wrapped) distribution."""
    out = {}
    for name in ("loc", "scale", "cov_factor", "cov_diag", "locs", "coord_scale", "component_logits"):
        for obj in (
            d,
            getattr(d, "base_dist", None),
            getattr(getattr(d, "base_dist", None), "base_dist", None),
        ):
            if obj is not None and isinstance(getattr(obj, name, None), torch.Tensor):
                out[name] = getattr(obj, name)
    return out
