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
    _trainer(tmp_path, cb, epochs, batches=2).fit(VarJEPA(**TINY), DigitsDataModule(batch_size=16))
    return cb, calls


def _trainer(tmp_path, cb: OfflineProbe, epochs: int, batches: int) -> L.Trainer:
    """A quiet CPU trainer with ``batches`` training batches per epoch and ``cb`` as its callback."""
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=batches,
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


def test_at_start_probes_the_untrained_encoder(tmp_path):
    """``at_start``: ``probe/acc_init`` is the probe of the weights the fit started from."""
    import copy

    import torch

    from varjepa.eval.probes import extract_features, linear_probe

    torch.manual_seed(0)
    model = VarJEPA(**TINY)
    untrained = copy.deepcopy(model)
    dm = DigitsDataModule(batch_size=64)
    cb = OfflineProbe(every_n_epochs=0, eval_split="test", at_start=True)
    _trainer(tmp_path, cb, epochs=1, batches=3).fit(model, dm)
    xtr, ytr = extract_features(untrained, dm.plain_dataloader("train"))
    xte, yte = extract_features(untrained, dm.plain_dataloader("test"))
    assert cb.initial["probe/acc_init"] == linear_probe(xtr, ytr, xte, yte)
    assert cb.initial["probe/acc_10pc_init"] == linear_probe(xtr, ytr, xte, yte, per_class=10)
    assert set(cb.last) == {"probe/acc", "probe/acc_10pc"}  # the end-of-fit probe still ran


def test_at_start_is_off_by_default(tmp_path, monkeypatch):
    cb, calls = _fit(tmp_path, monkeypatch, every_n_epochs=0, epochs=1)
    assert cb.initial == {} and calls == [0, 10]
