"""Tests of the EMA teacher update: the foreach update rule against a hand computation, and the
callback inside real (tiny) Lightning runs: attached by the model, replayed step by step, safe
under gradient accumulation, validated at construction, logging its momentum."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from torch import nn

import varjepa
import varjepa.callbacks.ema as ema_mod
from varjepa.callbacks.ema import EMA, ema_update
from varjepa.registry import ConfigError

# ------------------------------------------------------------------ ema_update


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 5) * (seed + 1))  # distinct running statistics per seed
    return net


def snapshot(mod: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("m", [0.0, 0.5, 0.996, 1.0])
def test_ema_update_matches_hand_computation(m):
    online, target = make_net(0), make_net(1)
    for p in target.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in target.parameters()]
    o_params = [p.detach().clone() for p in online.parameters()]
    t_params = [p.detach().clone() for p in target.parameters()]
    o_state = snapshot(online)
    assert not all(torch.equal(a, b) for a, b in zip(o_params, t_params, strict=True))

    ema_update([(online, target)], m)

    for pt, o, t in zip(target.parameters(), o_params, t_params, strict=True):
        want = m * t.double() + (1 - m) * o.double()
        torch.testing.assert_close(pt.detach().double(), want, atol=1e-7, rtol=0)
        if m == 1.0:
            assert torch.equal(pt, t), "m = 1 must leave the target unchanged"
        if m == 0.0:
            assert torch.equal(pt, o), "m = 0 must copy the online weights"
    # buffers (running mean / var / num_batches_tracked) are copied, not averaged
    for (name, bo), bt in zip(online.named_buffers(), target.buffers(), strict=True):
        assert torch.equal(bt, bo), name
    # target gradients and the online network are untouched
    for p, g in zip(target.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    for k, v in online.state_dict().items():
        assert torch.equal(v, o_state[k])


@settings(max_examples=30, deadline=None)
@given(m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1), n_pairs=st.integers(1, 3))
def test_ema_update_several_pairs(m, seed, n_pairs):
    g = torch.Generator().manual_seed(seed)
    pairs, expect = [], []
    for _ in range(n_pairs):
        o, t = nn.Linear(3, 2), nn.Linear(3, 2)
        with torch.no_grad():
            for p in (*o.parameters(), *t.parameters()):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
        expect.append(
            [
                m * pt.detach().double() + (1 - m) * po.detach().double()
                for po, pt in zip(o.parameters(), t.parameters(), strict=True)
            ]
        )
        pairs.append((o, t))
    ema_update(pairs, m)
    for (_, t), want in zip(pairs, expect, strict=True):
        for p, w in zip(t.parameters(), want, strict=True):
            torch.testing.assert_close(p.detach().double(), w, atol=1e-7, rtol=0)


def test_ema_update_structure_mismatch_raises():
    with pytest.raises(ValueError):
        ema_update([(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))], 0.5)


# ------------------------------------------------------------------ callback construction


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "linear", "start": 0.9, "end": 1.5},
        {"name": "linear", "start": -0.1, "end": 1.0},
        {"name": "cosine", "start": 1.2, "end": 1.0},
        1.01,
    ],
)
def test_momentum_outside_unit_interval_rejected_at_model_construction(spec):
    with pytest.raises(ConfigError, match="model.ema"):
        varjepa.VarJEPA(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, ema=spec)
    with pytest.raises(ConfigError, match="model.ema"):
        EMA(spec)


def test_out_of_range_cyclical_momentum_rejected():
    sched = varjepa.schedules.build_schedule({"name": "cyclical", "value": 2.0}, "x")
    assert max(sched(s, 100) for s in range(100)) == 2.0  # the schedule really leaves [0, 1]
    with pytest.raises(ConfigError):
        EMA({"name": "cyclical", "value": 2.0})


def test_default_momentum_is_ijepa_linear():
    cb = EMA()
    assert cb.momentum(0, 100) == pytest.approx(0.996)
    assert cb.momentum(100, 100) == pytest.approx(1.0)
    assert cb.momentum(50, 100) == pytest.approx(0.998)


# ------------------------------------------------------------------ callback in real runs

TINY_ENCODER = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}
# an aggressive schedule and learning rate so that every update is far above the tolerance
SPEC = {"name": "linear", "start": 0.5, "end": 0.9}


def lin(step: int, total: int, start: float = SPEC["start"], end: float = SPEC["end"]) -> float:
    return start + (end - start) * step / total


def trainer(**kw) -> L.Trainer:
    opts = dict(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    opts.update(kw)
    return L.Trainer(**opts)


class Recorder(Callback):
    """Records the callbacks at fit start and the online encoder after every training batch
    (the optimizer step is done by then; the EMA callback never touches the online encoder,
    so the recording does not depend on callback order)."""

    def __init__(self):
        self.callbacks_at_start: list[Callback] = []
        self.steps: list[int] = []
        self.online: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module):
        self.callbacks_at_start = list(trainer.callbacks)

    def on_train_start(self, trainer, pl_module):
        self.callbacks_at_start = list(trainer.callbacks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        self.online.append(snapshot(pl_module.encoder))


def tiny_model(**kw) -> varjepa.VarJEPA:
    torch.manual_seed(0)
    opts = dict(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR, ema=SPEC, lr=0.05, warmup=0.0)
    opts.update(kw)
    return varjepa.VarJEPA(**opts)


@pytest.fixture(scope="module")
def run3():
    """One 3-step fit with the recorder attached."""
    model = tiny_model()
    init_target = snapshot(model.target_encoder)
    init_online = snapshot(model.encoder)
    rec = Recorder()
    tr = trainer(callbacks=[rec])
    torch.manual_seed(1)
    tr.fit(model, varjepa.DigitsDataModule(batch_size=64))
    return model, tr, rec, init_target, init_online


def test_model_brings_its_ema_callback(run3):
    _, tr, rec, _, _ = run3
    emas = [c for c in rec.callbacks_at_start if isinstance(c, varjepa.EMA)]
    assert len(emas) == 1
    assert emas[0].momentum(0, 3) == pytest.approx(SPEC["start"])
    assert any(isinstance(c, varjepa.EMA) for c in tr.callbacks)


def replay(init_target, onlines, total, momentum=lin):
    tgt = {k: v.double() for k, v in init_target.items()}
    for k, online in enumerate(onlines):
        m = momentum(k, total)
        tgt = {n: m * tgt[n] + (1 - m) * online[n].double() for n in tgt}
    return tgt


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_target_equals_independent_replay(run3):
    model, tr, rec, init_target, init_online = run3
    assert tr.global_step == 3 and rec.steps == [1, 2, 3]
    assert max_diff(init_target, init_online) == 0.0  # the target starts as a copy
    final = snapshot(model.target_encoder)
    want = replay(init_target, rec.online, 3)
    assert max_diff(final, want) < 1e-6
    # the comparison has power: the target moved far, is not the online net, and an
    # off-by-one momentum index would be detected
    assert max_diff(final, init_target) > 1e-3
    assert max_diff(final, snapshot(model.encoder)) > 1e-3
    off_by_one = replay(init_target, rec.online, 3, momentum=lambda k, n: lin(k + 1, n))
    assert max_diff(off_by_one, want) > 1e-4
    # the target stays frozen for the optimizer
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_logged_momentum_is_schedule_at_last_step(run3):
    _, tr, _, _, _ = run3
    logged = float(tr.callback_metrics["train/ema_momentum"])
    assert logged == pytest.approx(SPEC["start"] + (SPEC["end"] - SPEC["start"]) * 2 / 3, rel=1e-6)
    ema = next(c for c in tr.callbacks if isinstance(c, varjepa.EMA))
    assert ema.last_momentum == pytest.approx(lin(2, 3), abs=1e-12)


def test_ema_updates_once_per_optimizer_step_under_accumulation(monkeypatch):
    calls: list[tuple[int, float]] = []
    real = ema_mod.ema_update
    step = {"now": -1}

    def counting(pairs, momentum):
        calls.append((step["now"], momentum))
        real(pairs, momentum)

    monkeypatch.setattr(ema_mod, "ema_update", counting)

    class StepProbe(Callback):
        def __init__(self):
            self.batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches += 1
            step["now"] = trainer.global_step

    probe = StepProbe()
    model = tiny_model()
    init_target = snapshot(model.target_encoder)
    rec = Recorder()
    tr = trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[probe, rec])
    torch.manual_seed(2)
    tr.fit(model, varjepa.DigitsDataModule(batch_size=64))
    assert probe.batches == 4 and tr.global_step == 2
    assert len(calls) == 2, f"EMA ran {len(calls)} times for 2 optimizer steps"
    assert [s for s, _ in calls] == [1, 2]
    assert [m for _, m in calls] == pytest.approx([lin(0, 2), lin(1, 2)], abs=1e-12)
    # and the final target is the replay over the two optimizer steps (batches 2 and 4)
    assert rec.steps == [0, 1, 1, 2]
    onlines = [rec.online[1], rec.online[3]]
    assert max_diff(snapshot(model.target_encoder), replay(init_target, onlines, 2)) < 1e-6


def test_trainer_ema_callback_is_replaced_not_doubled(monkeypatch):
    calls = []
    real = ema_mod.ema_update
    monkeypatch.setattr(ema_mod, "ema_update", lambda p, m: (calls.append(m), real(p, m)))
    model = tiny_model(ema={"name": "constant", "value": 0.7})
    rec = Recorder()
    tr = trainer(max_steps=2, callbacks=[EMA({"name": "constant", "value": 0.1}), rec])
    torch.manual_seed(3)
    tr.fit(model, varjepa.DigitsDataModule(batch_size=64))
    emas = [c for c in rec.callbacks_at_start if isinstance(c, EMA)]
    assert len(emas) == 1
    assert calls == pytest.approx([0.7, 0.7])


def test_ema_none_freezes_target():
    model = tiny_model(ema=None)
    init_target = snapshot(model.target_encoder)
    rec = Recorder()
    tr = trainer(max_steps=2, callbacks=[rec])
    torch.manual_seed(4)
    with pytest.warns(UserWarning, match="model.ema is null"):
        tr.fit(model, varjepa.DigitsDataModule(batch_size=64))
    assert not any(isinstance(c, EMA) for c in rec.callbacks_at_start)
    assert max_diff(snapshot(model.target_encoder), init_target) == 0.0
    assert max_diff(snapshot(model.encoder), init_target) > 1e-3


def test_ema_callback_needs_momentum_pairs():
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = torch.utils.data.TensorDataset(torch.randn(8, 2))
    tr = trainer(max_steps=1, callbacks=[EMA()])
    with pytest.raises(TypeError, match="momentum_pairs"):
        tr.fit(Plain(), torch.utils.data.DataLoader(ds, batch_size=4))
