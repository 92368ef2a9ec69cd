"""End-to-end runs of ``varjepa`` (LightningCLI): every family's config fits, predict writes
its file, TensorBoard holds the promised scalars, bad configs fail before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from varjepa.cli import run
from varjepa.data import digits_splits

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["dirac", "diag_gaussian", "lowrank_gaussian", "mixture", "flow"]
# shrink the configs' model so a smoke run takes seconds on CPU
TINY = [
    "--model.encoder.patch_size=2",
    "--model.encoder.embed_dim=32",
    "--model.encoder.depth=1",
    "--model.encoder.num_heads=2",
    "--model.predictor.embed_dim=16",
    "--model.predictor.depth=1",
    "--model.predictor.num_heads=2",
]
# the family smoke runs pool globally: a cross-validated probe on 4·D quadrant features of a barely
# trained encoder takes a minute, and pooling has its own tests (the predict test keeps avg_2x2)
GLOBAL_POOL = ["--model.encoder.pool=avg"]


def _fit_args(config: str, save_dir: Path, steps: int = 4) -> list[str]:
    return [
        "fit",
        f"--config={ROOT / config}",
        *TINY,
        f"--trainer.max_steps={steps}",
        f"--trainer.limit_train_batches={steps}",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
    ]


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return {tag: [e.value for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_every_family_config(family, tmp_path):
    cli = run([*_fit_args(f"configs/families/{family}.yaml", tmp_path), *GLOBAL_POOL])
    m = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert torch.isfinite(m["train/loss"]) and torch.isfinite(m["val/loss"])
    assert torch.isfinite(m["train/nll"])
    assert ("train/kl" in m) == (family != "dirac")  # a point mass has no KL
    assert cli.model.family.registry_name == family
    scal = _scalars(Path(cli.trainer.log_dir))
    expected = {
        "train/loss",
        "train/nll",
        "train/beta",
        "train/ema_momentum",
        "train/pred_std",
        "train/rankme",
        "train/lr",
    }
    assert expected <= set(scal), sorted(expected - set(scal))
    # logged schedule values are the pure functions of the step
    assert scal["train/ema_momentum"] == pytest.approx([0.99 + 0.009 * k / 4 for k in range(4)], abs=1e-6)
    if family == "dirac":
        assert scal["train/pred_std"] == pytest.approx([0.0] * len(scal["train/pred_std"]))
        assert scal["train/beta"] == pytest.approx([0.0] * 4)
    else:
        assert all(v > 0 for v in scal["train/pred_std"])
        assert "train/kl" in scal
    assert (Path(cli.trainer.log_dir) / "config.yaml").is_file()


@pytest.mark.slow
def test_predict_writes_embeddings_of_the_test_split(tmp_path):
    fit = run(_fit_args("configs/quickstart.yaml", tmp_path, steps=2))
    ckpt = Path(fit.trainer.checkpoint_callback.last_model_path)
    assert ckpt.is_file()
    common = [*TINY, f"--ckpt_path={ckpt}", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    val = run(
        [
            "validate",
            f"--config={ROOT / 'configs/quickstart.yaml'}",
            *common,
            "--trainer.enable_progress_bar=false",
        ]
    )
    test = run(
        [
            "test",
            f"--config={ROOT / 'configs/quickstart.yaml'}",
            *common,
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert torch.isfinite(val.trainer.callback_metrics["val/loss"])
    assert torch.isfinite(test.trainer.callback_metrics["test/loss"])
    # validation masks are a fixed protocol: the same checkpoint gives the same loss twice
    again = run(
        [
            "validate",
            f"--config={ROOT / 'configs/quickstart.yaml'}",
            *common,
            "--trainer.enable_progress_bar=false",
        ]
    )
    torch.testing.assert_close(
        again.trainer.callback_metrics["val/loss"], val.trainer.callback_metrics["val/loss"]
    )
    out = tmp_path / "pred"
    cli = run(
        [
            "predict",
            f"--config={ROOT / 'configs/quickstart.yaml'}",
            *TINY,
            f"--ckpt_path={ckpt}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=varjepa.PredictionWriter",
            f"--trainer.callbacks.output_dir={out}",
        ]
    )
    data = np.load(out / "predictions.npz")
    _, y_test = digits_splits()["test"]
    assert {"embedding", "label", "index"} <= set(data.files)
    if "uncertainty" in data.files:  # written when the model provides predictive uncertainty
        assert data["uncertainty"].shape == (len(y_test),) and (data["uncertainty"] > 0).all()
    # the quickstart pools 2 x 2 quadrants: 4 x the tiny encoder's 32 dimensions
    assert cli.model.embedding_dim == 4 * 32
    assert data["embedding"].shape == (len(y_test), 4 * 32)
    np.testing.assert_array_equal(data["label"], y_test)
    np.testing.assert_array_equal(data["index"], np.arange(len(y_test)))
    # the embeddings are the checkpoint's target encoder's pooled features
    model = cli.model.eval()
    dm = cli.datamodule
    batch = next(iter(dm.predict_dataloader()))
    np.testing.assert_allclose(
        data["embedding"][: len(batch["label"])], model.embed(batch["image"]).numpy(), atol=1e-5
    )


def _varjepa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "varjepa.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.mark.slow
def test_print_config_round_trips():
    p = _varjepa("fit", "--config", "configs/families/lowrank_gaussian.yaml", "--print_config")
    assert p.returncode == 0, p.stderr
    cfg = yaml.safe_load(p.stdout)
    assert cfg["model"]["posterior"] == {"name": "lowrank_gaussian", "rank": 4}
    assert cfg["data"]["class_path"] == "varjepa.DigitsDataModule"
    assert cfg["model"]["encoder"]["embed_dim"] == 96


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "--model.posterior=nope",
            "model.posterior: unknown posterior family 'nope'. Registered: anchored_mixture, diag_gaussian, dirac",
        ),
        ("--model.beta=-1", "model.beta: value = -1.0 is negative"),
        ("--model.encoder.img_size=16", "data.image_size = 8 but model.encoder.img_size = 16"),
        ("--model.foo=1", "unrecognized arguments: --model.foo"),
    ],
)
def test_bad_config_fails_clearly_and_writes_nothing(tmp_path, override, message):
    p = _varjepa(
        "fit",
        "--config",
        "configs/quickstart.yaml",
        override,
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    )
    assert p.returncode == 2
    assert message in p.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_uncertainty_recipe_config_fits_with_every_monitor(tmp_path):
    """configs/uncertainty_digits.yaml (the issue-3 recipe) parses, builds every callback it names
    and runs them: the mixed-view noise reaches the training step, the corruption protocol logs."""
    from varjepa import NoiseAugmentation

    args = [*_fit_args("configs/uncertainty_digits.yaml", tmp_path), *GLOBAL_POOL]
    cli = run(args)
    aug = [c for c in cli.trainer.callbacks if isinstance(c, NoiseAugmentation)]
    assert len(aug) == 1 and aug[0].view == "mixed" and aug[0].noisy_target_share == 0.5
    assert cli.trainer.global_step == 4 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    scal = {k: v[-1] for k, v in _scalars(Path(cli.trainer.log_dir)).items()}
    for key in ("corruption/spearman_final", "corruption/surprise_spearman_final"):
        assert -1.0 <= scal[key] <= 1.0, key
    for key in ("corruption/auroc_final", "uncertainty/coverage90", "probe/acc_10pc_final", "online/knn_acc"):
        assert 0.0 <= scal[key] <= 1.0, key
    # the selective-prediction curve is logged at every withheld share
    assert all(f"selective/corrupted_acc_w{p}_final" in scal for p in (0, 10, 20, 50))
