"""Online probes, uncertainty/collapse/corruption monitors, TensorBoard pictures and HParams,
``predict``'s uncertainty, the corruption maths and the heteroscedastic objective: every logged
number is recomputed independently (scipy / scikit-learn / numpy) from the final model."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Independent, Normal

from varjepa import (
    CollapseMonitor,
    CorruptionMonitor,
    DigitsDataModule,
    HParamsSummary,
    OnlineKNN,
    OnlineLinearProbe,
    PredictionWriter,
    UncertaintyMetrics,
    VarJEPA,
)
from varjepa.callbacks.augment import NoiseAugmentation
from varjepa.callbacks.online import FeatureTap, pooled_features
from varjepa.data import MaskCollator, digits_splits
from varjepa.eval.corruption import corrupt, corrupt_standardised, corruption_levels, split_tensors
from varjepa.eval.uncertainty import (
    MaskProtocol,
    predictive_scores,
    predictive_uncertainty,
    protocol_masks,
    protocol_statistics,
)
from varjepa.objectives import JEPAOutputs, TargetNLL
from varjepa.registry import ConfigError

MASKING = {"num_targets": 2, "target_scale": (0.25, 0.4)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run as fast on one thread, and a busy machine cannot oversubscribe it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(tiny, **kw) -> VarJEPA:
    return VarJEPA(
        **tiny,
        masking=MASKING,
        **{"objective": {"name": "heteroscedastic", "beta_nll": 1.0}, "beta": 0.0, **kw},
    )


def _trainer(tmp_path, callbacks, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kw,
    )


# --------------------------------------------------------------------------- the full run
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit with every callback. The target encoder is frozen (``ema: null``) so the kNN
    bank is exactly the final model's embeddings of the whole training split (431 × 3 batches)."""
    torch.manual_seed(0)
    from conftest import TINY_ENCODER, TINY_PREDICTOR

    tmp = tmp_path_factory.mktemp("fit")
    model = _model({"encoder": dict(TINY_ENCODER), "predictor": dict(TINY_PREDICTOR)}, ema=None)
    dm = DigitsDataModule(batch_size=431)
    cbs = {
        "probe": OnlineLinearProbe(lr=0.05),
        "knn": OnlineKNN(),
        "unc": UncertaintyMetrics(),
        "collapse": CollapseMonitor(min_rank=1000.0),  # an impossible threshold: must warn
        "corruption": CorruptionMonitor(every_n_epochs=2, num_draws=2),
        "hparams": HParamsSummary(),
    }
    trainer = _trainer(tmp, list(cbs.values()), max_epochs=3, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, dm)
    return {"model": model.eval(), "dm": dm, "cbs": cbs, "trainer": trainer, "warnings": caught}


def _val_outputs(model, dm):
    """Forward every validation batch (seeded masks) of the final model."""
    outs = []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            outs.append(model(batch))
    return outs


def test_online_knn_equals_sklearn_on_the_final_embeddings(fitted):
    model, dm, m = fitted["model"], fitted["dm"], fitted["trainer"].callback_metrics
    xtr, ytr = split_tensors(dm, "train")
    xva, yva = split_tensors(dm, "val")
    with torch.no_grad():
        ftr, fva = model.embed(xtr).numpy(), model.embed(xva).numpy()
    clf = KNeighborsClassifier(
        n_neighbors=20, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.07)
    ).fit(ftr, ytr.numpy())
    assert float(m["online/knn_acc"]) == pytest.approx(clf.score(fva, yva.numpy()), abs=1e-6)


def test_probes_and_monitors_read_quadrant_pooled_features(tmp_path):
    """``pool: avg_2x2`` gives 4·D features: the online probe's head, kNN and RankMe use that size,
    and the logged accuracies are those of the final embeddings."""
    from conftest import TINY_ENCODER, TINY_PREDICTOR

    torch.manual_seed(0)
    enc = {**TINY_ENCODER, "pool": "avg_2x2"}
    model = _model({"encoder": enc, "predictor": dict(TINY_PREDICTOR)}, ema=None)
    assert (model.latent_dim, model.embedding_dim) == (32, 128)
    dm = DigitsDataModule(batch_size=431)
    probe, knn, collapse = OnlineLinearProbe(lr=0.05), OnlineKNN(), CollapseMonitor(min_rank=0.1)
    trainer = _trainer(tmp_path, [probe, knn, collapse], max_epochs=2, log_every_n_steps=1)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    assert probe.head.in_features == 128
    xva, yva = split_tensors(dm, "val")
    model.eval()
    with torch.no_grad():
        fva = model.embed(xva)
        assert fva.shape == (len(xva), 128)
        acc = (probe.head(fva).argmax(1) == yva).float().mean()
    assert float(m["online/linear_acc"]) == pytest.approx(float(acc), abs=1e-6)
    s = torch.linalg.svdvals(fva.double())
    p = s / s.sum() + 1e-7
    assert float(m["collapse/rankme"]) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-3)


def test_online_linear_probe_is_logged_and_detached(fitted):
    m = fitted["trainer"].callback_metrics
    probe = fitted["cbs"]["probe"]
    model, dm = fitted["model"], fitted["dm"]
    model_params = {id(p) for p in fitted["model"].parameters()}
    assert not any(id(p) in model_params for g in probe.optimizer.param_groups for p in g["params"])
    # the logged accuracy is the head's accuracy on the final validation embeddings
    xva, yva = split_tensors(dm, "val")
    with torch.no_grad():
        acc = (probe.head(model.embed(xva)).argmax(1) == yva).float().mean()
    assert float(m["online/linear_acc"]) == pytest.approx(float(acc), abs=1e-6)

    # the probe's loss sends no gradient into the model
    batch = next(iter(dm.train_dataloader()))
    model.zero_grad(set_to_none=True)
    tap = FeatureTap(model.target_encoder)
    model(batch)
    probe.on_train_batch_end(fitted["trainer"], _LogSink(model), None, batch, 0)
    tap.remove()
    assert all(p.grad is None for p in model.parameters())


class _FeatureModel(torch.nn.Module):
    """A stand-in LightningModule whose pooled features are its inputs (for probe unit tests)."""

    latent_dim = embedding_dim = 8

    def __init__(self):
        super().__init__()
        self.target_encoder = torch.nn.Identity()

    @property
    def device(self):
        return torch.device("cpu")

    def embed(self, x):
        return x

    def log(self, *a, **k):
        pass


def test_online_linear_probe_reaches_the_offline_accuracy_on_fixed_features():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = 2 * rng.normal(size=(4, 8))
    ytr, yte = rng.integers(0, 4, 2000), rng.integers(0, 4, 500)
    xtr = centers[ytr] + rng.normal(size=(2000, 8))
    xte = centers[yte] + rng.normal(size=(500, 8))
    pl = _FeatureModel()

    class T:
        sanity_checking = False
        datamodule = None

    probe = OnlineLinearProbe(num_classes=4, lr=0.05)
    probe.setup(T(), pl, "fit")
    probe.on_fit_start(T(), pl)
    for _ in range(3):
        for i in range(0, 2000, 100):
            batch = {
                "image": torch.tensor(xtr[i : i + 100], dtype=torch.float32),
                "label": torch.as_tensor(ytr[i : i + 100]),
            }
            probe.on_train_batch_end(T(), pl, None, batch, 0)
    probe.on_validation_epoch_start(T(), pl)
    for i in range(0, 500, 128):
        batch = {
            "image": torch.tensor(xte[i : i + 128], dtype=torch.float32),
            "label": torch.as_tensor(yte[i : i + 128]),
        }
        probe.on_validation_batch_end(T(), pl, None, batch, 0)
    probe.on_validation_epoch_end(T(), pl)
    offline = LogisticRegression(max_iter=1000).fit(xtr, ytr).score(xte, yte)
    assert offline > 0.8
    assert probe.last == pytest.approx(offline, abs=0.03)
    probe.teardown(T(), pl, "fit")
    # its state round-trips through a checkpoint
    fresh = OnlineLinearProbe(num_classes=4)
    fresh.load_state_dict(probe.state_dict())
    fresh.setup(T(), pl, "fit")
    fresh.on_fit_start(T(), pl)
    torch.testing.assert_close(fresh.head.weight, probe.head.weight)
    assert fresh.optimizer.state_dict()["state"]
    fresh.teardown(T(), pl, "fit")


class _LogSink:
    """Stands in for the LightningModule outside a loop: forwards attributes, swallows ``log``."""

    def __init__(self, module):
        self._m = module

    def __getattr__(self, k):
        return getattr(self._m, k)

    def log(self, *a, **k):
        pass


def test_uncertainty_metrics_equal_scipy_on_the_validation_latents(fitted):
    model, dm, m = fitted["model"], fitted["dm"], fitted["trainer"].callback_metrics
    outs = _val_outputs(model, dm)
    mean = torch.cat([o.family.mean(o.pred).flatten(0, 1) for o in outs]).numpy().astype(np.float64)
    std = torch.cat([o.family.marginal_std(o.pred).flatten(0, 1) for o in outs]).numpy().astype(np.float64)
    y = torch.cat([o.target.flatten(0, 1) for o in outs]).numpy().astype(np.float64)
    assert float(m["uncertainty/nll"]) == pytest.approx(-stats.norm.logpdf(y, mean, std).mean(), rel=1e-4)
    for p, key in ((0.5, "coverage50"), (0.9, "coverage90")):
        lo, hi = stats.norm.interval(p, mean, std)
        assert float(m[f"uncertainty/{key}"]) == pytest.approx(np.mean((y >= lo) & (y <= hi)), abs=1e-4)
    z = (y - mean) / std
    crps = std * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert float(m["uncertainty/crps"]) == pytest.approx(crps.mean(), rel=1e-4)
    tok_std, sq = std.mean(1), ((y - mean) ** 2).mean(1)
    assert float(m["uncertainty/spearman_std_err"]) == pytest.approx(
        stats.spearmanr(tok_std, np.sqrt(sq)).statistic, abs=1e-4
    )
    order = np.argsort(tok_std, kind="stable")
    aurc = np.mean(np.cumsum(sq[order]) / np.arange(1, len(sq) + 1))
    assert float(m["uncertainty/aurc"]) == pytest.approx(aurc, rel=1e-4)


def test_collapse_monitor_values_and_warning(fitted):
    model, dm, m = fitted["model"], fitted["dm"], fitted["trainer"].callback_metrics
    xva, _ = split_tensors(dm, "val")
    with torch.no_grad():
        f = model.embed(xva).numpy().astype(np.float64)
    s = np.linalg.svd(f, compute_uv=False)
    p = s / s.sum()
    assert float(m["collapse/rankme"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-3)
    assert float(m["collapse/std_mean"]) == pytest.approx(f.std(0, ddof=1).mean(), rel=1e-4)
    assert 0 <= float(m["collapse/active_units"]) <= model.latent_dim
    msgs = [str(w.message) for w in fitted["warnings"]]
    assert any("effective rank (RankMe)" in x and "< 1000.00" in x for x in msgs)
    assert fitted["cbs"]["collapse"].warnings == 3  # once per validation epoch


def test_corruption_monitor_matches_scipy_and_sklearn(fitted):
    cb, m = fitted["cbs"]["corruption"], fitted["trainer"].callback_metrics
    res = cb.result
    u, unc = res["u"], res["uncertainty"]
    assert cb.last["corruption/spearman"] == pytest.approx(stats.spearmanr(unc, u).statistic, abs=1e-5)
    assert cb.last["corruption/auroc"] == pytest.approx(
        roc_auc_score(u >= np.quantile(u, 0.75), unc), abs=1e-5
    )
    sur = res["surprise"]
    assert cb.last["corruption/surprise_spearman"] == pytest.approx(
        stats.spearmanr(sur, u).statistic, abs=1e-5
    )
    assert cb.last["corruption/surprise_auroc"] == pytest.approx(
        roc_auc_score(u >= np.quantile(u, 0.75), sur), abs=1e-5
    )
    assert "corruption/spearman" in m and "corruption/surprise_auroc" in m  # logged every 2 epochs too
    _, y_test = digits_splits()["test"]
    assert len(u) == len(y_test)
    for name in ("clean", "corrupted"):
        curve = res["curves"][name]
        assert set(curve) == {0.0, 0.1, 0.2, 0.5}
        assert all(0 <= a <= 1 for a in curve.values())


def test_tensorboard_pictures_histogram_and_hparams(fitted):
    log_dir = Path(fitted["trainer"].log_dir)
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0})
    ea.Reload()
    images = set(ea.Tags()["images"])
    assert {
        "uncertainty/reliability",
        "uncertainty/risk_coverage",
        "corruption/uncertainty_hist",
        "selective/curve",
    } <= images
    assert "collapse/dim_std" in ea.Tags()["histograms"]
    scalars = set(ea.Tags()["scalars"])
    assert {"online/knn_acc", "online/linear_acc", "uncertainty/coverage90", "collapse/rankme"} <= scalars
    hp = EventAccumulator(str(log_dir / "hparams"))
    hp.Reload()
    assert "_hparams_/session_start_info" in hp.Tags()["tensors"] or hp.PluginTagToContent("hparams")
    hp_scalars = set(hp.Tags()["scalars"])
    assert {"hp/online/knn_acc", "hp/uncertainty/coverage90", "hp/corruption/auroc"} <= hp_scalars
    final = fitted["cbs"]["hparams"].metrics
    assert final["corruption/auroc"] == fitted["cbs"]["corruption"].last["corruption/auroc"]
    got = hp.Scalars("hp/uncertainty/coverage90")[-1].value
    assert got == pytest.approx(final["uncertainty/coverage90"])


def test_collapse_monitor_is_quiet_above_threshold(tiny, tmp_path):
    model = _model(tiny)
    cb = CollapseMonitor(min_rank=1.0)
    trainer = _trainer(tmp_path, [cb], max_steps=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert cb.warnings == 0 and cb.last["collapse/rankme"] > 1.0


# --------------------------------------------------------------------------- features
def test_feature_tap_gives_the_pooled_embedding(tiny):
    model = _model(tiny).eval()
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    dm.set_masking(model.masking, model.encoder.grid_size)
    batch = next(iter(dm.val_dataloader()))
    tap = FeatureTap(model.target_encoder)
    with torch.no_grad():
        model(batch)
    torch.testing.assert_close(pooled_features(model, batch, tap), model.embed(batch["image"]))
    other = {"image": batch["image"].clone()}  # not the tensor the step encoded: falls back to embed
    torch.testing.assert_close(pooled_features(model, other, tap), model.embed(other["image"]))
    tap.remove()


# --------------------------------------------------------------------------- predict
def test_predict_uncertainty_is_batch_independent_and_matches_the_protocol(tiny, tmp_path):
    model = _model(tiny).eval()
    preds = {}
    for bs in (50, 360):
        writer = PredictionWriter(
            output_dir=str(tmp_path / f"bs{bs}"), uncertainty_draws=3, uncertainty_seed=5
        )
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
        trainer.predict(model, DigitsDataModule(batch_size=bs))
        preds[bs] = np.load(writer.path)
    a, b = preds[50], preds[360]
    assert set(a.files) == {"embedding", "uncertainty", "surprise", "label", "index"}
    np.testing.assert_allclose(a["uncertainty"], b["uncertainty"], rtol=1e-5)
    np.testing.assert_allclose(a["surprise"], b["surprise"], rtol=1e-5, atol=1e-6)
    dm = DigitsDataModule()
    dm.setup()
    x, y = split_tensors(dm, "test")
    want = predictive_uncertainty(model, x, MaskProtocol(3, 5)).numpy()
    np.testing.assert_allclose(a["uncertainty"], want, rtol=1e-5)
    np.testing.assert_array_equal(a["label"], y.numpy())
    # the protocol's seed matters
    other = predictive_uncertainty(model, x, MaskProtocol(3, 6)).numpy()
    assert not np.allclose(other, want)
    # surprise: the Gaussian negative log-density of the observed target latents (scipy), per
    # latent dimension, averaged over target tokens and the same 3 mask draws
    st = protocol_statistics(model, x, MaskProtocol(3, 5))
    nll = -stats.norm.logpdf(st["target"].double(), st["mean"].double(), st["var"].double().sqrt())
    sizes = [t.numel() for _, t in protocol_masks(model.masking, model.encoder.grid_size, MaskProtocol(3, 5))]
    per_draw = [part.mean((1, 2)) for part in np.split(nll, np.cumsum(sizes)[:-1], axis=1)]
    np.testing.assert_allclose(a["surprise"], np.mean(per_draw, 0), rtol=1e-5, atol=1e-6)


def test_dirac_has_no_surprise(tiny):
    """A point prediction has no density: surprise is NaN and the protocol reports no surprise scores."""
    model = VarJEPA(**tiny, masking=MASKING, posterior="dirac", objective="jepa", beta=0.0).eval()
    dm = DigitsDataModule()
    dm.setup()
    x, _ = split_tensors(dm, "test", 40)
    scores = predictive_scores(model, x, MaskProtocol(2, 0))
    assert scores["surprise"].shape == (40,) and torch.isnan(scores["surprise"]).all()
    from varjepa.eval.corruption import corruption_protocol

    res = corruption_protocol(model, x, protocol=MaskProtocol(2, 0))
    assert "surprise_spearman" not in res and "surprise_auroc" not in res


# --------------------------------------------------------------------------- corruption maths
def test_corrupting_pixels_then_standardising_equals_the_standardised_protocol():
    x, _ = digits_splits()["test"]
    x = torch.from_numpy(x[:50]).unsqueeze(1)
    m, s = 0.3, 0.4
    u = corruption_levels(50, seed=3)
    pix = corrupt(x, u, 0.75, noise_mean=m, noise_std=s, generator=torch.Generator().manual_seed(1))
    std = corrupt_standardised((x - m) / s, u, 0.75, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close((pix - m) / s, std)
    # u = 0 leaves the image alone; the mixing weight is λu
    zero = corrupt(x, torch.zeros(50), 0.75, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(zero, x)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    want = (1 - 0.75 * u.view(-1, 1, 1, 1)) * x + 0.75 * u.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(corrupt_standardised(x, u, 0.75, torch.Generator().manual_seed(1)), want)
    assert torch.equal(corruption_levels(50, 3), u) and (u >= 0).all() and (u < 1).all()


def test_noise_augmentation_corrupts_a_share_of_training_images():
    x = torch.zeros(2000, 1, 8, 8)
    batch = {"image": x}

    class T:
        global_step, global_rank = 7, 0

    NoiseAugmentation(p=0.5, lam=0.75, noise="uniform", view="both").on_train_batch_start(T(), None, batch, 0)
    changed = (batch["image"].flatten(1).abs().sum(1) > 0).float().mean()
    assert float(changed) == pytest.approx(0.5, abs=0.05)
    assert batch["image"].abs().max() <= 0.75 * math.sqrt(3) + 1e-6  # uniform noise, |ε| ≤ √3
    again = NoiseAugmentation(p=0.5, noise="uniform").corrupt(x, step=7)
    assert torch.equal(again, batch["image"])  # a function of the step
    with pytest.raises(ConfigError, match="allowed: gaussian, uniform"):
        NoiseAugmentation(noise="pink")


def _train_batch(model, size: int) -> dict:
    dm = DigitsDataModule(batch_size=size)
    dm.setup()
    dm.set_masking(model.masking, model.encoder.grid_size)
    return next(iter(dm.train_dataloader()))


@contextlib.contextmanager
def _encoder_inputs(model, aug: NoiseAugmentation, step: int):
    """Yield ``(seen, trainer)``: ``seen`` holds the last input of the context and the target
    encoder while ``aug`` is set up on ``model`` at ``step``."""

    class T:
        global_step, global_rank = step, 0

    seen = {}
    aug.setup(T(), model, "fit")
    hooks = [
        model.encoder.register_forward_hook(lambda m, a, o: seen.__setitem__("context", a[0])),
        model.target_encoder.register_forward_hook(lambda m, a, o: seen.__setitem__("target", a[0])),
    ]
    try:
        yield seen, T()
    finally:
        for h in hooks:
            h.remove()
        aug.teardown(T(), model, "fit")


def test_context_view_augmentation_degrades_only_the_context_encoders_input(tiny):
    model = _model(tiny)
    batch = _train_batch(model, 16)
    clean = batch["image"].clone()
    aug = NoiseAugmentation(p=1.0, noise="gaussian", view="context")
    noisy = aug.corrupt(clean, step=3)
    assert not torch.allclose(noisy, clean)
    with _encoder_inputs(model, aug, step=3) as (seen, trainer):
        aug.on_train_batch_start(trainer, model, batch, 0)
        model(batch)
        torch.testing.assert_close(seen["context"], noisy)  # the context encoder got the noisy copy
        torch.testing.assert_close(seen["target"], clean)  # the EMA target encodes the clean image
        torch.testing.assert_close(batch["image"], clean)  # the batch itself is untouched
        aug.on_train_batch_end(trainer, model, None, batch, 0)
        model(batch)  # after the batch: no swap any more
        torch.testing.assert_close(seen["context"], clean)


def test_mixed_view_gives_every_noisy_image_to_the_context_and_a_share_to_the_target(tiny):
    model = _model(tiny)
    batch = _train_batch(model, 64)
    clean = batch["image"].clone()
    aug = NoiseAugmentation(p=1.0, noise="uniform", view="mixed", target_share=0.25)
    noisy = aug.corrupt(clean, step=5)
    m = aug.target_mask(64, step=5)
    assert m.dtype == torch.bool and 0 < int(m.sum()) < 64
    # the share is target_share (a large draw: 0.25 ± 0.02)
    assert float(aug.target_mask(20000, step=5).float().mean()) == pytest.approx(0.25, abs=0.02)
    with _encoder_inputs(model, aug, step=5) as (seen, trainer):
        aug.on_train_batch_start(trainer, model, batch, 0)
        model(batch)
        torch.testing.assert_close(seen["context"], noisy)  # every noisy image reaches the context
        torch.testing.assert_close(seen["target"][m], noisy[m])  # the chosen share: a noisy target
        torch.testing.assert_close(seen["target"][~m], clean[~m])  # the rest: a clean target
        aug.on_train_batch_end(trainer, model, None, batch, 0)
    # the other views are the two ends of the same rule
    assert NoiseAugmentation(view="context", target_share=0.25).target_mask(64, step=5).sum() == 0
    assert NoiseAugmentation(view="both", target_share=0.25).target_mask(64, step=5).all()
    with pytest.raises(ConfigError, match="target_share = 1.5; must be in"):
        NoiseAugmentation(view="mixed", target_share=1.5)
    with pytest.raises(ConfigError, match="allowed: context, both, mixed"):
        NoiseAugmentation(view="target")


# --------------------------------------------------------------------------- heteroscedastic objective
def _outputs(loc, scale, target):
    from varjepa.distributions import POSTERIORS

    fam = POSTERIORS.build("diag_gaussian", "model.posterior", dim=loc.shape[-1])
    return JEPAOutputs(pred=Independent(Normal(loc, scale), 1), family=fam, target=target)


def test_target_nll_is_the_gaussian_log_density_and_beta_nll_gives_mse_gradients():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 4, 5, generator=g).requires_grad_()
    scale = (torch.rand(3, 4, 5, generator=g) + 0.2).requires_grad_()
    target = torch.randn(3, 4, 5, generator=g)
    out = _outputs(loc, scale, target)
    want = -stats.norm.logpdf(target.numpy(), loc.detach().numpy(), scale.detach().numpy()).sum(-1).mean()
    assert float(TargetNLL()(out)) == pytest.approx(want, rel=1e-5)
    # β-NLL with β = 1: the mean's gradient is the MSE's, (μ − z̄) per element / (B·T)
    (grad,) = torch.autograd.grad(TargetNLL(beta_nll=1.0)(out), loc)
    torch.testing.assert_close(grad, (loc - target).detach() / 12)
    # the optimal spread for a fixed mean is still the error: d/dσ vanishes at σ = |z̄ − μ|
    s = (target - loc).detach().abs().requires_grad_()
    (gs,) = torch.autograd.grad(TargetNLL(beta_nll=1.0)(_outputs(loc.detach(), s, target)), s)
    assert gs.abs().max() < 1e-5
    with pytest.raises(ConfigError):
        TargetNLL(beta_nll=2.0)


def test_heteroscedastic_preset_needs_a_stochastic_family(tiny):
    with pytest.raises(ConfigError, match="heteroscedastic objective needs a stochastic posterior"):
        VarJEPA(**tiny, posterior="dirac", objective="heteroscedastic", beta=0.0)
    model = VarJEPA(**tiny, objective={"name": "heteroscedastic", "beta_nll": 0.5}, beta=0.01)
    assert [t.name for t in model.elbo.terms] == ["nll", "kl"]
    batch_collate = MaskCollator(model.masking, model.encoder.grid_size, seed=0)
    x, y = digits_splits()["train"]
    samples = [(torch.from_numpy(x[i]).unsqueeze(0), int(y[i]), i) for i in range(8)]
    out = model(batch_collate(samples))
    res = model.elbo(out, 0, 10)
    assert torch.isfinite(res.loss) and set(res.values) == {"nll", "kl"}


def test_heteroscedastic_mean_weight_adds_the_squared_error_of_the_mixture_mean():
    from varjepa.distributions import POSTERIORS
    from varjepa.objectives.presets import heteroscedastic
    from varjepa.schedules import Constant

    terms = heteroscedastic(prior=None, likelihood=None, beta=Constant(0.0), beta_nll=0.0, mean_weight=7.0)
    assert [t.name for t in terms] == ["nll", "kl", "mse"]
    fam = POSTERIORS.build({"name": "mixture", "components": 3}, "model.posterior", dim=2)
    g = torch.Generator().manual_seed(0)
    params, target = torch.randn(4, 5, fam.num_params, generator=g), torch.randn(4, 5, 2, generator=g)
    out = JEPAOutputs(pred=fam(params), family=fam, target=target)
    # the mixture mean, computed by hand from the head's layout [locs (K·d), raw σ (K·d), logits (K)]
    locs, w = params[..., :6].unflatten(-1, (3, 2)), params[..., -3:].softmax(-1)
    mean = (w[..., None] * locs).sum(-2)
    mse = ((mean - target) ** 2).mean()
    assert float(terms[2](out)) == pytest.approx(float(mse), rel=1e-5)
    assert float(terms[2].weight(0, 1)) == 7.0
    assert [t.name for t in heteroscedastic(prior=None, likelihood=None, beta=Constant(0.0))] == ["nll", "kl"]
    with pytest.raises(ConfigError, match="mean_weight = -1"):
        heteroscedastic(prior=None, likelihood=None, beta=Constant(0.0), mean_weight=-1.0)
