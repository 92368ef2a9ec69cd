"""OfflineProbe: the end-of-fit probe reuses the result of a validation epoch at the same step."""

import lightning as L

import varjepa.callbacks.probe as probe_mod
from varjepa import DigitsDataModule, VarJEPA
from varjepa.callbacks.probe import OfflineProbe

TINY = {
    "encoder": {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 16, "depth": 1, "num_heads": 2},
    "predictor": {"embed_dim": 16, "depth": 1, "num_heads": 2},
}


def _fit(tmp_path, monkeypatch, every_n_epochs: int, epochs: int = 2) -> tuple[OfflineProbe, list[int]]:
    calls: list[int] = []

    def fake_probe(xtr, ytr, xte, yte, per_class=None, **kw):
        calls.append(per_class or 0)
        return 0.5 + 0.01 * len(calls)

    monkeypatch.setattr(probe_mod, "linear_probe", fake_probe)
    cb = OfflineProbe(every_n_epochs=every_n_epochs, eval_split="test")
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(VarJEPA(**TINY), DigitsDataModule(batch_size=16))
    return cb, calls


def test_end_of_fit_probe_reuses_the_last_validation_probe(tmp_path, monkeypatch):
    cb, calls = _fit(tmp_path, monkeypatch, every_n_epochs=1)
    # two validation epochs x (all labels + 10 per class); nothing refitted at the end of fit
    assert calls == [0, 10, 0, 10]
    assert cb.last == {"probe/acc": 0.53, "probe/acc_10pc": 0.54}


def test_end_of_fit_probe_runs_when_the_last_epoch_did_not_probe(tmp_path, monkeypatch):
    cb, calls = _fit(tmp_path, monkeypatch, every_n_epochs=2, epochs=3)
    # probed at epoch 2 (step 4); the end of fit (step 6) is new weights, so it probes again
    assert calls == [0, 10, 0, 10]
    assert cb.last == {"probe/acc": 0.53, "probe/acc_10pc": 0.54}
