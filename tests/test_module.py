"""VarJEPA module wiring: optimizer groups, LR schedule, target encoder, shapes."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from varjepa import DigitsDataModule, VarJEPA
from varjepa.schedules import warmup_cosine


def _fit(model: VarJEPA, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return trainer


def test_no_weight_decay_on_biases_norms_and_embeddings(tiny):
    model = VarJEPA(**tiny, weight_decay=0.07)
    trainer = _fit(model, 1)
    decay, no_decay = trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == 0.07 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    for p in no_decay["params"]:
        n = names[id(p)]
        assert p.ndim <= 1 or n.endswith(("pos_embed", "mask_token")), n
    for p in decay["params"]:
        assert p.ndim >= 2 and not names[id(p)].endswith(("bias", "pos_embed", "mask_token"))
    # every trainable parameter is optimised exactly once; the EMA target is not optimised
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert not any(id(p) in ids for p in model.target_encoder.parameters())


def test_lr_follows_warmup_cosine(tiny):
    model = VarJEPA(**tiny, lr=2e-3, warmup=4, final_lr_ratio=0.1)
    seen = []

    class Rec(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Rec()],
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    expected = [2e-3 * warmup_cosine(s, 12, 4, 0.1) for s in range(12)]
    assert seen == pytest.approx(expected, rel=1e-6)
    # independent spot checks of the formula: warm-up (s+1)/(n+1), cosine to 10 % at the end
    assert expected[0] == pytest.approx(2e-3 / 5)
    assert expected[4] == pytest.approx(2e-3)
    mid = 0.1 + 0.9 * (1 + math.cos(math.pi * 4 / 8)) / 2
    assert expected[8] == pytest.approx(2e-3 * mid)


def test_target_encoder_is_checkpointed_and_frozen(tiny):
    model = VarJEPA(**tiny)
    state = model.state_dict()
    assert any(k.startswith("target_encoder.") for k in state)
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    for (n1, p1), (_, p2) in zip(
        model.encoder.named_parameters(), model.target_encoder.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p1, p2, msg=n1)  # starts as an exact copy


def test_shapes_of_forward_embed_and_predict(tiny):
    model = VarJEPA(**tiny, posterior={"name": "lowrank_gaussian", "rank": 3})
    dm = DigitsDataModule(batch_size=8)
    dm.setup()
    dm.set_masking(model.masking, model.encoder.grid_size)
    batch = next(iter(dm.train_dataloader()))
    out = model(batch)
    B, M, Nt = batch["target_idx"].shape
    assert out.pred.batch_shape == (B, M * Nt) and out.pred.event_shape == (32,)
    assert out.target.shape == (B, M * Nt, 32)
    # z_bar is the layer-normed target token at the target positions
    h = model.target_encoder(batch["image"])
    ln = torch.nn.functional.layer_norm(h, (32,))
    idx = batch["target_idx"].flatten(1)
    torch.testing.assert_close(out.target, ln[torch.arange(B)[:, None], idx])
    assert model.embed(batch["image"]).shape == (B, 32)
    pred = model.predict_step(dm.plain_dataloader("test").collate_fn([dm.test_set[i] for i in range(5)]), 0)
    assert pred["embedding"].shape == (5, 32) and pred["index"].tolist() == [0, 1, 2, 3, 4]
