"""Bad input through the ``varjepa`` CLI (run in-process through ``varjepa.cli.main``): malformed
YAML, unknown keys, wrong types, missing paths, unreadable image files and incompatible or
unsafe checkpoints all stop with exit status 2 and one clear message before anything is written.
Checkpoints written by a fit load with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import varjepa
from varjepa.cli import main, run
from varjepa.data.base import IndexedDataset, UnreadableSampleError

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TINY = [
    "--model.encoder.patch_size=2",
    "--model.encoder.embed_dim=32",
    "--model.encoder.depth=1",
    "--model.encoder.num_heads=2",
    "--model.predictor.embed_dim=16",
    "--model.predictor.depth=1",
    "--model.predictor.num_heads=2",
]


def varjepa_main(capsys, *args: str) -> tuple[int, str]:
    """Run ``varjepa *args`` in this process; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


ONLY_LAST_CKPT = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true}
"""


def fit_args(save_dir: Path, *extra: str) -> list[str]:
    """Tiny quickstart for 1 step; callbacks: only ModelCheckpoint (no probe)."""
    cfg = save_dir.parent / "only_last_ckpt.yaml"
    cfg.write_text(ONLY_LAST_CKPT)
    return [
        "fit",
        f"--config={QUICK}",
        f"--config={cfg}",
        *TINY,
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the tiny quickstart model after one step (ModelCheckpoint's last.ckpt)."""
    runs = tmp_path_factory.mktemp("runs")
    cli = run(fit_args(runs))
    path = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert path.is_file()
    return path


def _yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "extra.yaml"
    p.write_text(text)
    return str(p)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("model:\n  lr: [0.1\n  beta: 1\n", "extra.yaml': line 3, column 7: malformed YAML"),
        ("model:\n  foo: 1\n", "does not accept option 'model.foo'"),
        ("model:\n  lr: abc\n", "Parser key \"model.lr\":\n  Expected a <class 'float'>. Got value: abc"),
        ("model:\n  nonfinite: ignore\n", "model.nonfinite = 'ignore'; allowed: raise, skip"),
        (
            "data:\n  class_path: varjepa.ImageFolderDataModule\n  init_args:\n    root: /no/such/dir\n",
            "data.root = '/no/such/dir': no such directory",
        ),
    ],
    ids=["malformed_yaml", "unknown_key", "wrong_type", "bad_choice", "missing_data_root"],
)
def test_bad_config_exits_2_with_a_clear_message_and_writes_nothing(tmp_path, capsys, extra, message):
    runs = tmp_path / "runs"
    code, err = varjepa_main(capsys, *fit_args(runs, f"--config={_yaml(tmp_path, extra)}"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not runs.exists()


def test_missing_config_file(tmp_path, capsys):
    code, err = varjepa_main(capsys, "fit", f"--config={tmp_path / 'nope.yaml'}")
    assert code == 2 and f"--config '{tmp_path / 'nope.yaml'}': no such file" in err


# ------------------------------------------------------------------ image files


@pytest.fixture()
def folder_with_bad_files(tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 40 * i).save(root / cls / f"{i}.png")
    good = (root / "a" / "0.png").read_bytes()
    junk, cut = root / "b" / "junk.png", root / "a" / "cut.png"
    junk.write_bytes(b"not an image")
    cut.write_bytes(good[: len(good) // 2])
    return root, [cut, junk]


def test_unreadable_images_stop_before_anything_is_written(tmp_path, capsys, folder_with_bad_files):
    root, bad = folder_with_bad_files
    data = (
        "data:\n  class_path: varjepa.ImageFolderDataModule\n  init_args:\n"
        f"    root: {root}\n    image_size: 8\n    in_chans: 1\n    batch_size: 4\n"
    )
    runs = tmp_path / "runs"
    code, err = varjepa_main(capsys, *fit_args(runs, f"--config={_yaml(tmp_path, data)}"))
    assert code == 2
    assert "2 unreadable image file(s)" in err
    assert all(f"'{p}'" in err for p in bad)
    assert not runs.exists()


def test_unreadable_image_during_training_names_the_file(folder_with_bad_files):
    root, bad = folder_with_bad_files
    dm = varjepa.ImageFolderDataModule(str(root), image_size=8, in_chans=1, verify_images=False)
    dm.setup()
    ds = IndexedDataset(dm._folder(root, False))
    i = next(k for k, (p, _) in enumerate(ds.base.samples) if p == str(bad[1]))
    with pytest.raises(UnreadableSampleError, match=f"cannot read '{bad[1]}': UnidentifiedImageError"):
        ds[i]
    with pytest.raises(UnreadableSampleError, match=f"'{bad[1]}'"):
        ds[(i, 123)]  # keyed access from the resumable sampler too
    x, y, idx = ds[0]
    assert x.shape == (1, 8, 8)


# ------------------------------------------------------------------ checkpoints


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    assert ckpt["global_step"] == 1
    assert ckpt["hyper_parameters"]["encoder"]["embed_dim"] == 32
    assert len(ckpt["varjepa"]["rng"]) == 1
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 1
    model = varjepa.VarJEPA.load_from_checkpoint(tiny_ckpt, weights_only=True)
    assert model.latent_dim == 32
    torch.testing.assert_close(
        model.state_dict()["encoder.vit.pos_embed"], ckpt["state_dict"]["encoder.vit.pos_embed"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["fit", "predict"])
def test_incompatible_checkpoint_names_the_mismatch(tmp_path, capsys, tiny_ckpt, subcommand):
    runs = tmp_path / "runs"
    args = fit_args(runs, "--model.encoder.embed_dim=48", f"--ckpt_path={tiny_ckpt}")
    args[0] = subcommand
    if subcommand == "predict":
        args = [a for a in args if not a.startswith("--trainer.max_steps")]
    code, err = varjepa_main(capsys, *args)
    assert code == 2
    assert f"ckpt_path = '{tiny_ckpt}' does not fit this model" in err
    assert "model.encoder.embed_dim = 48 (checkpoint: 32)" in err
    assert (
        "tensor(s) differ in shape (e.g. encoder.vit.blocks.0.attn.proj.bias: checkpoint [32], model [48])"
        in err
    )
    assert not runs.exists()


class NotATensor:
    pass


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickled_object", "truncated", "missing"])
def test_unsafe_or_broken_checkpoints_are_refused(tmp_path, capsys, tiny_ckpt, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "pickled_object":
        ckpt = torch.load(tiny_ckpt, weights_only=True)
        ckpt["extra"] = NotATensor()
        torch.save(ckpt, bad)
    elif kind == "truncated":
        data = tiny_ckpt.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    runs = tmp_path / "runs"
    code, err = varjepa_main(capsys, *fit_args(runs, f"--ckpt_path={bad}"))
    assert code == 2
    want = {
        "pickled_object": "does not load with weights_only=True",
        "truncated": "is not a readable checkpoint",
        "missing": "no such file",
    }[kind]
    assert f"ckpt_path = '{bad}'" in err and want in err
    assert not runs.exists()
    if kind == "pickled_object":
        with pytest.raises(pickle.UnpicklingError):
            torch.load(bad, weights_only=True)


@pytest.mark.slow
def test_cluster_overlay_config_parses(capsys):
    """configs/cluster/ddp.yaml composes with a base config (the README's multi-GPU recipe)."""
    overlay = str(ROOT / "configs" / "cluster" / "ddp.yaml")
    with pytest.raises(SystemExit) as e:
        run(["fit", f"--config={QUICK}", f"--config={overlay}", "--print_config"])
    assert e.value.code in (None, 0)
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    t = cfg["trainer"]
    assert (t["strategy"], t["devices"], t["num_nodes"], t["precision"]) == ("ddp", 4, 1, "bf16-mixed")
    assert [c["class_path"] for c in t["callbacks"]] == [
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "varjepa.SigtermCheckpoint",
    ]
    assert t["logger"]["init_args"]["version"] == "run0"
