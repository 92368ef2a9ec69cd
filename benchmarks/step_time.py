"""Training-step cost of varjepa against a bare PyTorch JEPA loop, in one process.

    python benchmarks/step_time.py                 # make bench
    python benchmarks/step_time.py --steps 40 --threads 2 --out benchmarks/results/step_time

Every variant trains the same ViT encoder and predictor (``ViTEncoder``/``TransformerPredictor``)
on the same fixed batch (images + masks). Steps of all variants are interleaved (A B C ... A B C
...), so load on the machine hits them alike; the median over ``--steps`` steps after warm-up is
reported. Variants:

* ``bare``: deterministic I-JEPA written plainly in PyTorch (target encoder → layer norm →
  gather; context encoder → predictor → MSE; AdamW; LambdaLR; ``torch._foreach_lerp_`` EMA).
* ``jepa``: varjepa's ``jepa`` preset (Dirac posterior, β = 0, regression term).
* ``diag_gaussian``, ``lowrank_gaussian``, ``mixture``, ``flow``: the predictive ELBO with each
  posterior family.

varjepa steps call the LightningModule's own pieces in the same harness: ``model(batch)`` →
``model.elbo(...)`` → finiteness check → backward → the module's AdamW + LR schedule →
``ema_update(model.momentum_pairs(), m)``, so the ratios measure varjepa's per-step overhead. A
full Lightning ``Trainer`` step (logging, callbacks) is reported separately for information.

Also: the EMA update's cost relative to a step, peak memory per variant (torch allocator, from
one profiled step: parameters, gradients, optimizer state, activations, temporaries), and a
scaling table (step time and peak memory against batch size and token count).
Results: ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from varjepa import MultiBlockMasking, VarJEPA
from varjepa.callbacks.ema import ema_update
from varjepa.encoders import EncoderConfig, PredictorConfig, TransformerPredictor, ViTEncoder, gather_tokens
from varjepa.objectives import check_finite
from varjepa.schedules import warmup_cosine

# ViT-Tiny (width 192, depth 12, 3 heads) on 32×32 images in 4×4 patches (64 tokens); a narrower,
# shallower predictor as in I-JEPA
ENCODER = {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 192, "depth": 12, "num_heads": 3}
PREDICTOR = {"embed_dim": 96, "depth": 6, "num_heads": 3}
ONE_DRAW = {"name": "predictive", "kl_samples": 1}
FAMILIES = {
    "jepa": {"posterior": "dirac", "objective": "jepa", "beta": 0.0},
    "diag_gaussian": {"posterior": "diag_gaussian"},
    "lowrank_gaussian": {"posterior": {"name": "lowrank_gaussian", "rank": 4}},
    "mixture": {"posterior": {"name": "mixture", "components": 4}},
    "flow": {"posterior": {"name": "flow", "transform": "affine_autoregressive", "depth": 2}},
    # the Monte Carlo families with one KL draw per token instead of the preset's 4
    "mixture, kl_samples=1": {"posterior": {"name": "mixture", "components": 4}, "objective": ONE_DRAW},
    "flow, kl_samples=1": {
        "posterior": {"name": "flow", "transform": "affine_autoregressive", "depth": 2},
        "objective": ONE_DRAW,
    },
}
TARGETS = {  # variant: (reference, max ratio)
    "jepa": ("bare", 1.05),
    "diag_gaussian": ("jepa", 1.05),
    "lowrank_gaussian": ("jepa", 1.10),
    "mixture": ("jepa", 1.20),
    "flow": ("jepa", 1.35),
    "mixture, kl_samples=1": ("jepa", 1.20),
    "flow, kl_samples=1": ("jepa", 1.35),
}
EMA_TARGET = 0.02
TOTAL = 10_000  # schedule horizon (steps) for LR / β / momentum


def make_batch(batch_size: int, encoder: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed batch: images ``[B, C, S, S]`` and I-JEPA multi-block masks for the patch grid."""
    g = torch.Generator().manual_seed(seed)
    s, c = encoder["img_size"], encoder["in_chans"]
    grid = (s // encoder["patch_size"],) * 2
    ctx, tgt = MultiBlockMasking()(batch_size, grid, g)
    return {"image": torch.randn(batch_size, c, s, s, generator=g), "context_idx": ctx, "target_idx": tgt}


# ---------------------------------------------------------------------- the steps


class BareJEPA:
    """Deterministic I-JEPA in plain PyTorch, with varjepa's encoder and predictor modules."""

    def __init__(self, encoder: dict, predictor: dict, lr: float = 1e-3):
        self.enc = ViTEncoder(EncoderConfig(**encoder))
        self.tgt = copy.deepcopy(self.enc).requires_grad_(False)
        d = self.enc.embed_dim
        self.pred = TransformerPredictor(PredictorConfig(**predictor), self.enc.grid_size, d, d)
        params = [*self.enc.parameters(), *self.pred.parameters()]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.04)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, TOTAL, 0.1, 0.01))
        self.t_params = list(self.tgt.parameters())
        self.o_params = list(self.enc.parameters())
        self.step_no = 0

    def ema(self) -> None:
        m = 0.996 + 0.004 * self.step_no / TOTAL
        with torch.no_grad():
            torch._foreach_lerp_(self.t_params, self.o_params, 1.0 - m)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        x, ctx, tgt = batch["image"], batch["context_idx"], batch["target_idx"]
        with torch.no_grad():
            h = self.tgt(x)
            h = F.layer_norm(h, (h.shape[-1],))
            target = gather_tokens(h, tgt.flatten(1))
        z = self.enc(x, ctx)
        pred = self.pred(z, ctx, tgt).flatten(1, 2)
        loss = F.mse_loss(pred, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.ema()
        self.step_no += 1
        return float(loss.detach())

    def modules(self):
        return [self.enc, self.tgt, self.pred]


class VarJEPAStep:
    """One training step of a VarJEPA module, driven by hand (no Trainer)."""

    def __init__(self, encoder: dict, predictor: dict, **model_kw):
        self.model = VarJEPA(encoder=encoder, predictor=predictor, **model_kw)
        self.model._total_steps = TOTAL
        cfg = self.model.configure_optimizers()
        self.opt, self.sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        self.momentum = self.model.configure_callbacks()[0].momentum
        self.pairs = self.model.momentum_pairs()
        self.step_no = 0

    def ema(self) -> None:
        ema_update(self.pairs, self.momentum(self.step_no, TOTAL))

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        m = self.model
        out = m(batch)
        res = m.elbo(out, self.step_no, TOTAL)
        check_finite(res, self.step_no)
        self.opt.zero_grad(set_to_none=True)
        res.loss.backward()
        self.opt.step()
        self.sched.step()
        self.ema()
        self.step_no += 1
        return float(res.loss.detach())

    def modules(self):
        return [self.model]


def build(name: str, encoder: dict, predictor: dict):
    torch.manual_seed(0)
    if name == "bare":
        return BareJEPA(encoder, predictor)
    return VarJEPAStep(encoder, predictor, **FAMILIES[name])


# ---------------------------------------------------------------------- measurements


def interleaved_times(runners: dict, batch: dict, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step for every runner, interleaving their steps (A B C A B C ...)."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for i in range(warmup + steps):
        order = names if i % 2 == 0 else names[::-1]  # no variant always follows the same one
        for k in order:
            t0 = time.perf_counter()
            runners[k].step(batch)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[k].append(dt)
    return times


def ema_times(runner, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.ema()
        out.append(time.perf_counter() - t0)
    return out


def peak_memory_mb(runner, batch: dict) -> float | None:
    """Peak bytes held by the torch CPU allocator during one training step (profiled), in MiB."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as p:
            runner.step(batch)
        _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline(torch.device("cpu"))
        return max(sum(s) for s in sizes) / 2**20 if sizes else None
    except Exception as e:  # private profiler API: report, do not fail the benchmark
        print(f"  (peak memory unavailable: {type(e).__name__}: {e})")
        return None


class _Timer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)


def lightning_step_times(name: str, batch: dict, steps: int, warmup: int) -> list[float]:
    """Full ``Trainer`` steps (callbacks, logging every 50 steps) on the fixed batch."""
    torch.manual_seed(0)
    model = VarJEPA(encoder=ENCODER, predictor=PREDICTOR, **FAMILIES[name])
    loader = torch.utils.data.DataLoader([batch] * (steps + warmup), batch_size=None)
    timer = _Timer()
    trainer = L.Trainer(
        max_steps=steps + warmup,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[warmup:]


def med_ms(x: list[float]) -> float:
    return 1000 * statistics.median(x)


def spread_ms(x: list[float]) -> float:
    """Half the inter-quartile range, in ms."""
    q = statistics.quantiles(x, n=4)
    return 1000 * (q[2] - q[0]) / 2


# ---------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [
        "# Training-step time: varjepa vs a bare PyTorch JEPA loop",
        "",
        f"ViT encoder {cfg['encoder']}, predictor {cfg['predictor']}, batch {cfg['batch_size']} "
        f"({cfg['tokens']} tokens per image), {cfg['threads']} thread(s), torch {cfg['torch']}, "
        f"{cfg['machine']}. Median of {cfg['steps']} interleaved steps after {cfg['warmup']} warm-up "
        "steps (± half the inter-quartile range).",
        "",
        "| variant | step (ms) | ratio | target | met | peak memory (MiB) |",
        "|---|---:|---:|---|:---:|---:|",
    ]
    for k, row in res["variants"].items():
        tgt = TARGETS.get(k)
        ratio = f"{row['ratio']:.3f} × {tgt[0]}" if tgt else "—"
        target = f"≤ {tgt[1]:.2f} × {tgt[0]}" if tgt else "—"
        met = ("yes" if row["met"] else "**no**") if tgt else "—"
        mem = f"{row['peak_mb']:.0f}" if row.get("peak_mb") is not None else "n/a"
        lines.append(f"| {k} | {row['ms']:.1f} ± {row['iqr_ms']:.1f} | {ratio} | {target} | {met} | {mem} |")
    e = res["ema"]
    lines += [
        "",
        f"EMA update (foreach lerp over the encoder's {e['params']} tensors, {e['numel'] / 1e6:.2f} M "
        f"weights): {e['ms']:.2f} ms = {100 * e['fraction']:.2f} % of the jepa step "
        f"(target ≤ {100 * EMA_TARGET:.0f} %): {'met' if e['met'] else '**not met**'}.",
    ]
    if res.get("lightning"):
        lines += [
            "",
            "Full Lightning `Trainer` step (callbacks, EMA callback, logging), for information:",
            "",
        ]
        lines += ["| variant | step (ms) | vs harness step |", "|---|---:|---:|"]
        for k, row in res["lightning"].items():
            lines.append(f"| {k} | {row['ms']:.1f} ± {row['iqr_ms']:.1f} | {row['vs_harness']:.3f} |")
    if res.get("scaling"):
        lines += [
            "",
            "## Scaling (diag_gaussian)",
            "",
            "Step time and peak memory against batch size and tokens per image (patch size on "
            f"{cfg['encoder']['img_size']}×{cfg['encoder']['img_size']} images); the last columns "
            "compare with the first row of each block.",
            "",
            "| batch | tokens | step (ms) | ms per image | peak memory (MiB) | time × | memory × |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for block in ("batch", "tokens"):
            rows = [r for r in res["scaling"] if r["sweep"] == block]
            base = rows[0]
            for r in rows:
                mem = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "n/a"
                mx = f"{r['peak_mb'] / base['peak_mb']:.2f}" if r["peak_mb"] and base["peak_mb"] else "n/a"
                lines.append(
                    f"| {r['batch']} | {r['tokens']} | {r['ms']:.1f} | {r['ms'] / r['batch']:.2f} | {mem} | "
                    f"{r['ms'] / base['ms']:.2f} | {mx} |"
                )
            lines.append("|  |  |  |  |  |  |  |")
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, multi-threaded ops wait for busy cores)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory step")
    ap.add_argument("--no-lightning", action="store_true", help="skip the full-Trainer timings")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    ap.add_argument("--scaling-steps", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/step_time")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size, ENCODER)
    names = ["bare", *FAMILIES]
    runners = {k: build(k, ENCODER, PREDICTOR) for k in names}
    print(f"timing {', '.join(names)}: {args.warmup} + {args.steps} interleaved steps each")
    times = interleaved_times(runners, batch, args.steps, args.warmup)

    variants: dict[str, dict] = {}
    for k in names:
        variants[k] = {"ms": med_ms(times[k]), "iqr_ms": spread_ms(times[k])}
    for k, (ref, limit) in TARGETS.items():
        r = variants[k]["ms"] / variants[ref]["ms"]
        variants[k].update(ratio=r, reference=ref, limit=limit, met=r <= limit)

    jepa = runners["jepa"]
    et = ema_times(jepa, 200)
    enc_params = list(jepa.model.encoder.parameters())
    ema = {
        "ms": med_ms(et),
        "fraction": med_ms(et) / variants["jepa"]["ms"],
        "params": len(enc_params),
        "numel": sum(p.numel() for p in enc_params),
    }
    ema["met"] = ema["fraction"] <= EMA_TARGET

    for k in names:
        variants[k]["peak_mb"] = None if args.no_memory else peak_memory_mb(runners[k], batch)
    del runners

    lightning = {}
    if not args.no_lightning:
        for k in ("jepa", "diag_gaussian"):
            t = lightning_step_times(k, batch, args.steps // 2, args.warmup)
            lightning[k] = {"ms": med_ms(t), "iqr_ms": spread_ms(t)}
            lightning[k]["vs_harness"] = lightning[k]["ms"] / variants[k]["ms"]

    scaling = []
    if not args.no_scaling:
        # every (batch, tokens) configuration once, their steps interleaved like the main table
        sweeps = [("batch", b, ENCODER["patch_size"]) for b in (16, 32, 64, 128)]
        sweeps += [("tokens", 32, p) for p in (8, 4, 2)]
        configs = sorted({(b, p) for _, b, p in sweeps})
        runs, batches = {}, {}
        for b, p in configs:
            enc = dict(ENCODER, patch_size=p)
            runs[(b, p)] = build("diag_gaussian", enc, PREDICTOR)
            batches[(b, p)] = make_batch(b, enc)

        class _Multi:  # one "runner" per config, each stepping on its own batch
            def __init__(self, key):
                self.key = key

            def step(self, _):
                return runs[self.key].step(batches[self.key])

        print(f"scaling: {len(configs)} configurations, 2 + {args.scaling_steps} interleaved steps each")
        t = interleaved_times({k: _Multi(k) for k in configs}, None, args.scaling_steps, 2)
        mem = {k: None if args.no_memory else peak_memory_mb(runs[k], batches[k]) for k in configs}
        for sweep, b, p in sweeps:
            row = {
                "sweep": sweep,
                "batch": b,
                "tokens": (ENCODER["img_size"] // p) ** 2,
                "ms": med_ms(t[(b, p)]),
                "peak_mb": mem[(b, p)],
            }
            scaling.append(row)
        del runs

    res = {
        "config": {
            "encoder": ENCODER,
            "predictor": PREDICTOR,
            "batch_size": args.batch_size,
            "tokens": (ENCODER["img_size"] // ENCODER["patch_size"]) ** 2,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads",
        },
        "variants": variants,
        "ema": ema,
        "lightning": lightning,
        "scaling": scaling,
        "all_targets_met": all(v["met"] for k, v in variants.items() if k in TARGETS and "," not in k)
        and ema["met"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=float))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"written {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    main()
