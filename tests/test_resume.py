"""Exact resume: a run stopped by SIGTERM at step k and resumed from ``sigterm.ckpt`` ends with
the parameters of the uninterrupted run (β, EMA momentum, LR, RNG and data order included), at
mid-epoch and epoch-boundary stops; the resumable sampler and loader underneath; validation does
not consume training randomness."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import varjepa
from varjepa import ConfigError
from varjepa.data import MaskCollator, ResumableLoader, ResumableSampler
from varjepa.data.base import IndexedDataset

TINY_ENCODER = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_PREDICTOR = {"embed_dim": 16, "depth": 1, "num_heads": 2}
STEPS = 8  # digits train split: 1293 images, batch 256 → 5 batches per epoch (drop_last)


class SigtermAt(Callback):
    """Sends SIGTERM to this process while training step ``step`` runs (as a scheduler would)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


class Trajectory(Callback):
    """Per optimizer step: the batch's dataset indices and masks, the loss, LR and β, and a
    checksum of the EMA target before the step (after the previous step's EMA update)."""

    def __init__(self):
        self.rows: dict[int, dict] = {}
        self._target = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._target = float(sum(p.double().sum() for p in pl_module.target_encoder.parameters()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows[trainer.global_step] = {
            "index": batch["index"].tolist(),
            "target_idx": batch["target_idx"].clone(),
            "loss": float(outputs["loss"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "beta": pl_module.beta(trainer.global_step - 1, pl_module.total_steps),
            "target": self._target,
        }


def fit(
    root: Path, *, stop_at: int | None = None, ckpt: Path | None = None, val: bool = True, workers=0, **kw
):
    L.seed_everything(0, verbose=False)
    opts = dict(
        encoder=TINY_ENCODER,
        predictor=TINY_PREDICTOR,
        posterior={"name": "mixture", "components": 2},  # Monte Carlo KL: draws from the global RNG
        beta={"name": "linear_warmup", "value": 0.5, "warmup": 0.5},
        ema={"name": "linear", "start": 0.8, "end": 1.0},
        lr=1e-2,
        warmup=0.25,
    )
    opts.update(kw)
    model = varjepa.VarJEPA(**opts)
    traj = Trajectory()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=True,  # a ModelCheckpoint: the model then brings its SigtermCheckpoint
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1 if val else 0,
        num_sanity_val_steps=1 if val else 0,
        default_root_dir=str(root),
        callbacks=[traj] + ([SigtermAt(stop_at)] if stop_at else []),
    )
    dm = varjepa.DigitsDataModule(batch_size=256, num_workers=workers)
    if stop_at:
        with pytest.raises(SystemExit) as exit_info:
            trainer.fit(model, dm, ckpt_path=ckpt)
        assert exit_info.value.code in (None, 0)
    else:
        trainer.fit(model, dm, ckpt_path=ckpt)
    return model, trainer, traj


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model, trainer, traj = fit(tmp_path_factory.mktemp("full"))
    assert trainer.global_step == STEPS
    return state(model), trainer.optimizers[0].state_dict(), traj.rows


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 5], ids=["mid_epoch", "epoch_boundary"])
def test_sigterm_and_resume_match_the_uninterrupted_run(k, tmp_path, uninterrupted, capsys):
    full_state, full_opt, full_rows = uninterrupted
    _, stopped, first = fit(tmp_path / "a", stop_at=k)
    ckpt = tmp_path / "a" / "checkpoints" / "sigterm.ckpt"
    assert stopped.global_step == k
    assert ckpt.is_file() and not list(ckpt.parent.glob("*.tmp"))
    err = capsys.readouterr().err
    assert f"saved a checkpoint after the training step (global step {k}) to {ckpt}" in err
    assert f"--ckpt_path {ckpt}" in err
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == k

    model, resumed, second = fit(tmp_path / "b", ckpt=ckpt)
    assert resumed.global_step == STEPS
    assert sorted(second.rows) == list(range(k + 1, STEPS + 1))
    # the same batches, masks, losses and schedules step by step
    for s in range(1, STEPS + 1):
        want, got = full_rows[s], (first.rows if s <= k else second.rows)[s]
        assert got["index"] == want["index"], f"data order differs at step {s}"
        assert torch.equal(got["target_idx"], want["target_idx"]), f"masks differ at step {s}"
        for key in ("lr", "beta", "target"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (key, s)
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5), s
    assert max_diff(state(model), full_state) <= 1e-6
    ema = next(c for c in resumed.callbacks if isinstance(c, varjepa.EMA))
    assert ema.last_momentum == pytest.approx(0.8 + 0.2 * (STEPS - 1) / STEPS, abs=1e-12)
    opt = resumed.optimizers[0].state_dict()
    for i, st in full_opt["state"].items():
        torch.testing.assert_close(opt["state"][i]["exp_avg_sq"], st["exp_avg_sq"], atol=1e-9, rtol=1e-6)


@pytest.mark.slow
def test_resume_with_dataloader_workers_is_exact(tmp_path, uninterrupted):
    """Masks and order are keyed by position, so 2 workers reproduce the 0-worker run too."""
    full_state, _, full_rows = uninterrupted
    fit(tmp_path / "a", stop_at=6, workers=2)
    model, _, second = fit(tmp_path / "b", ckpt=tmp_path / "a" / "checkpoints" / "sigterm.ckpt", workers=2)
    for s in range(7, STEPS + 1):
        assert second.rows[s]["index"] == full_rows[s]["index"]
        assert torch.equal(second.rows[s]["target_idx"], full_rows[s]["target_idx"])
    assert max_diff(state(model), full_state) <= 1e-6


@pytest.mark.slow
def test_validation_does_not_change_the_training_trajectory(tmp_path, uninterrupted):
    full_state, _, _ = uninterrupted
    model, _, _ = fit(tmp_path, val=False)
    assert max_diff(state(model), full_state) <= 1e-6


@pytest.mark.slow
def test_resume_from_an_incompatible_checkpoint_names_the_mismatch(tmp_path):
    fit(tmp_path / "a", stop_at=1)
    ckpt = tmp_path / "a" / "checkpoints" / "sigterm.ckpt"
    wide = dict(TINY_ENCODER, embed_dim=48)
    with pytest.raises(ConfigError, match=r"model.encoder.embed_dim = 48 \(checkpoint: 32\)"):
        fit(tmp_path / "b", ckpt=ckpt, encoder=wide)


def test_model_brings_a_sigterm_checkpoint_only_to_checkpointing_trainers():
    from lightning.pytorch.callbacks import ModelCheckpoint

    def kinds(**kw):
        model = varjepa.VarJEPA(encoder=TINY_ENCODER, predictor=TINY_PREDICTOR)
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **kw)
        model.trainer = trainer
        return [type(c) for c in model.configure_callbacks()]

    assert kinds(enable_checkpointing=False) == [varjepa.EMA]
    assert kinds(enable_checkpointing=True) == [varjepa.EMA, varjepa.SigtermCheckpoint]
    assert kinds(callbacks=[ModelCheckpoint(), varjepa.SigtermCheckpoint(filename="x.ckpt")]) == [varjepa.EMA]


# ------------------------------------------------------------------ sampler and loader


def _dataset(n: int = 50) -> IndexedDataset:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return IndexedDataset(torch.utils.data.TensorDataset(x, torch.zeros(n, dtype=torch.long)))


def _loader(ds, batch_size=8, workers=0, **kw) -> ResumableLoader:
    sampler = ResumableSampler(ds, seed=kw.pop("seed", 7), **kw)
    collate = MaskCollator(varjepa.MultiBlockMasking(), (4, 4))
    return ResumableLoader(
        ds, sampler, batch_size=batch_size, collate_fn=collate, num_workers=workers, drop_last=True
    )


def _batches(loader, n=None) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[k], y[k])
        for x, y in zip(a, b, strict=True)
        for k in ("index", "image", "context_idx", "target_idx")
    )


def test_sampler_order_is_a_function_of_seed_and_epoch():
    ds = _dataset()
    a, b, c = ResumableSampler(ds, seed=1), ResumableSampler(ds, seed=1), ResumableSampler(ds, seed=2)
    ia, ib, ic = list(a), list(b), list(c)
    assert ia == ib and [i for i, _ in ia] != [i for i, _ in ic]
    assert sorted(i for i, _ in ia) == list(range(50))
    a.set_epoch(1)
    assert [i for i, _ in a] != [i for i, _ in ia]
    a.set_epoch(0)
    assert list(a) == ia
    # keys are unique within an epoch and differ between epochs
    a.set_epoch(1)
    keys0, keys1 = {k for _, k in ia}, {k for _, k in a}
    assert len(keys0) == len(keys1) == 50 and not keys0 & keys1


def test_sampler_iterated_again_without_set_epoch_moves_on():
    s = ResumableSampler(_dataset(), seed=3)
    e0, e1 = [i for i, _ in s], [i for i, _ in s]
    assert s.epoch == 1 and e0 != e1 and sorted(e0) == sorted(e1)


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_shards_by_rank(world):
    ds = _dataset(50)
    shards = [[i for i, _ in ResumableSampler(ds, num_replicas=world, rank=r, seed=5)] for r in range(world)]
    assert all(len(s) == -(-50 // world) for s in shards)
    assert set().union(*map(set, shards)) == set(range(50))
    if 50 % world == 0:
        assert sum(map(len, shards)) == 50 and not set(shards[0]) & set(shards[1])
    # rank r takes every world-th position of the one global order
    order = ResumableSampler(ds, num_replicas=world, rank=0, seed=5).order(0)
    assert shards[1] == order[1::world]


def test_loader_state_round_trip_mid_epoch():
    ds = _dataset()
    full = _batches(_loader(ds))  # 6 batches of 8
    first = _loader(ds)
    it = iter(first)
    head = [next(it) for _ in range(2)]
    st = first.state_dict()
    assert st == {"epoch": 0, "batches": 2, "seed": 7, "num_replicas": 1}
    resumed = _loader(ds, seed=99)  # the seed comes from the state
    resumed.load_state_dict(st)
    tail = _batches(resumed)
    assert _same(head + tail, full)
    assert resumed.state_dict()["batches"] == 6
    # the next pass is a fresh epoch 1
    assert _same(_batches(resumed), _epoch(ds, 1))


def _epoch(ds, epoch):
    loader = _loader(ds)
    loader.sampler.set_epoch(epoch)
    return _batches(loader)


def test_loader_state_at_epoch_end_continues_with_the_next_epoch():
    ds = _dataset()
    loader = _loader(ds)
    _batches(loader)
    st = loader.state_dict()
    assert st["epoch"] == 0 and st["batches"] == 6
    resumed = _loader(ds)
    resumed.load_state_dict(st)
    assert _same(_batches(resumed), _epoch(ds, 1))


@pytest.mark.slow
def test_batches_do_not_depend_on_the_number_of_workers():
    ds = _dataset()
    assert _same(_batches(_loader(ds, workers=0)), _batches(_loader(ds, workers=2)))


# ------------------------------------------------------------------ the CLI on SIGTERM

ROOT = Path(__file__).resolve().parents[1]
CLI_TINY = [
    "--model.encoder.patch_size=2",
    "--model.encoder.embed_dim=32",
    "--model.encoder.depth=1",
    "--model.encoder.num_heads=2",
    "--model.predictor.embed_dim=16",
    "--model.predictor.depth=1",
    "--model.predictor.num_heads=2",
]


@pytest.mark.slow
def test_cli_on_sigterm_saves_a_checkpoint_says_where_and_exits_cleanly(tmp_path):
    cfg = tmp_path / "no_probe.yaml"
    cfg.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {save_last: true}\n"
    )
    args = [
        sys.executable, "-m", "varjepa.cli", "fit",
        f"--config={ROOT / 'configs' / 'quickstart.yaml'}", f"--config={cfg}", *CLI_TINY,
        "--trainer.max_epochs=1000", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("ELBO terms" in line for line in lines):  # logged at the first training step
        assert p.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0, "".join(lines)
    reader.join(timeout=10)
    out = "".join(lines)
    # the signal lands in a training step or, if validation is running, outside one; both save
    where = (
        r"(?:after the training step|outside a training step \(resume replays the interrupted validation\))"
    )
    m = re.search(rf"saved a checkpoint {where} \(global step (\d+)\) to (\S+)", out)
    assert m, out
    path = Path(m.group(2))
    assert path == tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints" / "sigterm.ckpt"
    assert f"resume with the same command plus --ckpt_path {path}" in out
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["global_step"] == int(m.group(1)) >= 1
    assert not list(path.parent.glob("*.tmp"))
