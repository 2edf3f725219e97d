#!/usr/bin/env python
"""Counting study: FCRN-A and the counting U-Net with activation / arithmetic-unit variants.

Variants (``--variants``, per architecture ``--archs fcrn_a,unet_count``):

- ``relu``, ``leaky_relu``, ``linear``: the plain networks with that activation (no unit);
- ``nac``, ``nalu``, ``nalu_tanh``, ``nau``: the counting paper's residual concatenation of that
  per-pixel arithmetic unit at every decoder level, on the ``--unit-activation`` network
  (default ReLU, so that the relative improvement over ReLU isolates the unit).

Experiments (``--experiments``):

- ``vgg``: the standard protocol on VGG cells: train on N = ``--n-train`` (32) images drawn at
  random from 001-100, ``--draws`` (5) draws (draw d uses image draw ``default_rng(d)`` and
  training seed d), test on 101-200. The same trained networks are also tested on the counting
  paper's high-count images: every test image tiled 4 x 4 with random flips (``tiled_full``,
  1024 x 1024, 16x the cells at the same size) and the same tiles resized back to 256 x 256 by
  4 x 4 block averaging (``tiled_256``, 16x the cells, 4x smaller).
- ``synthetic``: extrapolation on generated nuclei (``data.synthetic``): train on images with
  5-20 cells, test on images of the same range (``synth_1x``) and on 5x (25-100) and 10x
  (50-200) the training counts (``synth_5x``, ``synth_10x``); ``--seeds``.
- ``bbbc039``: train on BBBC039 train (110 images), test on val (38); objects under
  ``--min-size`` (40) px are dropped from targets and truth, as for the bundled models;
  ``--seeds``.

Every run trains with ``napari_nalu_count.train.train`` for the same ``--budget`` (steps, or
minutes of wall clock) under a cosine schedule and keeps the *last* weights (no model selection
on test data). Raw per-run results (per-image predicted and true counts of every test set) go
to ``--json``; runs already there are skipped, so an interrupted study resumes. The report
(``--out-doc``, markdown + PNG plots beside it) is regenerated from the JSON after the runs or
alone with ``--report-only``.

    python benchmarks/counting_study.py --device cuda --budget 3000 \
        --json benchmarks/results/counting.json --out-doc docs/benchmarks/counting.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _study_common as sc  # noqa: E402

ARCHS = ("fcrn_a", "unet_count")
ARCH_NAMES = {"fcrn_a": "FCRN-A", "unet_count": "U-Net"}
VARIANTS = ("relu", "leaky_relu", "linear", "nac", "nalu", "nalu_tanh", "nau")
VARIANT_NAMES = {
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
    "linear": "linear",
    "nac": "NAC",
    "nalu": "NALU",
    "nalu_tanh": "NALU-tanh",
    "nau": "NAU",
}
EXPERIMENTS = ("vgg", "synthetic", "bbbc039")
TEST_SETS = {
    "vgg": ("test", "tiled_256", "tiled_full"),
    "synthetic": ("synth_1x", "synth_5x", "synth_10x"),
    "bbbc039": ("val",),
}
SET_NAMES = {
    "test": "VGG 101-200",
    "tiled_256": "VGG 4x4 tiles resized to 256 px",
    "tiled_full": "VGG 4x4 tiles at full size (1024 px)",
    "synth_1x": "synthetic, training range (5-20 cells)",
    "synth_5x": "synthetic, 5x (25-100 cells)",
    "synth_10x": "synthetic, 10x (50-200 cells)",
    "val": "BBBC039 val",
}
PUBLISHED_VGG_N32 = (
    ("Lempitsky & Zisserman 2010", "3.5", ""),
    ("Fiaschi et al. 2012", "3.2", ""),
    ("FCRN-A (Xie et al. 2016)", "2.9 ± 0.2", ""),
    ("Count-ception (Cohen et al. 2017)", "2.4 ± 0.4", ""),
)
# The counting paper's Table II (VGG-style synthetic cells, "interpolation") and Table III (its
# high-count extrapolation set, ~1200 cells per 256 px image) MAEs. Its public code computes the
# FCRN's unit branches and then overwrites them, never builds a NALU, and divides its MAE by the
# wrong number, so these figures are quoted for their ordering (RIP), not as comparable MAEs.
PAPER_TABLE = {
    "II": {
        "fcrn_a": {"relu": 3.43, "leaky_relu": 3.39, "linear": 3.34, "nac": 3.23, "nalu": 3.17,
                   "nalu_tanh": 3.21},
        "unet_count": {"relu": 1.78, "leaky_relu": 1.74, "linear": 1.73, "nac": 1.63,
                       "nalu": 1.42, "nalu_tanh": 1.56},
    },
    "III": {
        "fcrn_a": {"relu": 3.04, "leaky_relu": 2.99, "linear": 2.85, "nac": 2.40, "nalu": 2.27,
                   "nalu_tanh": 2.32},
        "unet_count": {"relu": 2.87, "leaky_relu": 2.62, "linear": 2.47, "nac": 1.92,
                       "nalu": 1.87, "nalu_tanh": 1.95},
    },
}  # fmt: skip
SYNTH_LOW = (5, 20)


# ---------------------------------------------------------------------------------------------
# data


def _synthetic_tiny(n: int, count_range: tuple[int, int], seed: int, shape=(64, 64)) -> list:
    from napari_nalu_count.data.synthetic import synthetic_dataset

    return synthetic_dataset(n, count_range, shape, 6.0, seed)


class Data:
    """Loads (and caches) the images of every experiment; ``synthetic`` = tiny stand-ins."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.synthetic = args.data == "synthetic"
        self._cache: dict[str, Any] = {}

    def _root(self, name: str) -> Path:
        return Path(self.args.data) / name

    def vgg(self, indices: list[int]) -> list:
        if self.synthetic:  # stand-in: one tiny image per index
            from napari_nalu_count.data.synthetic import synthetic_cells

            return [synthetic_cells((64, 64), 10 + i % 10, 6.0, seed=i) for i in indices]
        from napari_nalu_count.data.readers import load_vgg

        missing = [i for i in indices if ("vgg", i) not in self._cache]
        if missing:
            for s in load_vgg(self._root("vgg_cells"), missing):
                self._cache[("vgg", int(s.name))] = s
        return [self._cache[("vgg", i)] for i in indices]

    def vgg_test_indices(self) -> list[int]:
        idx = list(range(101, 201))
        return idx[: self.args.n_test] if self.args.n_test else idx

    def tiled(self, kind: str) -> list:
        key = ("tiled", kind)
        if key not in self._cache:
            base = self.vgg(self.vgg_test_indices())[: self.args.n_tiled]
            full = [tile_4x4(s, seed=i) for i, s in enumerate(base)]
            self._cache[("tiled", "tiled_full")] = full
            self._cache[("tiled", "tiled_256")] = [downscale_4(s) for s in full]
        return self._cache[key]

    def synth(self, which: str) -> list:
        key = ("synth", which)
        if key in self._cache:
            return self._cache[key]
        from napari_nalu_count.data.synthetic import synthetic_dataset

        factor = {"train": 1, "synth_1x": 1, "synth_5x": 5, "synth_10x": 10}[which]
        rng = (SYNTH_LOW[0] * factor, SYNTH_LOW[1] * factor)
        seed = {"train": 100, "synth_1x": 101, "synth_5x": 105, "synth_10x": 110}[which]
        n = self.args.n_train if which == "train" else (self.args.n_test or 50)
        if self.synthetic:
            out = _synthetic_tiny(n, (rng[0] // 2, rng[1] // 2), seed)
        else:
            out = synthetic_dataset(n, rng, (256, 256), 12.0, seed)
        self._cache[key] = out
        return out

    def bbbc039(self, split: str) -> list:
        key = ("bbbc039", split)
        if key in self._cache:
            return self._cache[key]
        if self.synthetic:
            out = _synthetic_tiny(
                3 if split == "train" else 2, (8, 16), 7 if split == "train" else 8
            )
        else:
            from napari_nalu_count.data.readers import load_bbbc039

            out = load_bbbc039(self._root("bbbc039"), split, min_size=self.args.min_size)
            if split == "val" and self.args.n_test:
                out = out[: self.args.n_test]
        self._cache[key] = out
        return out


def tile_4x4(sample: Any, seed: int) -> Any:
    """The counting paper's high-count image: ``sample`` tiled 4 x 4, each tile randomly flipped
    vertically and/or horizontally (``default_rng([7, seed])``); dots follow."""
    from napari_nalu_count.data.readers import Sample

    img = np.asarray(sample.image, dtype=np.float32)
    h, w = img.shape[:2]
    rng = np.random.default_rng([7, int(seed)])
    rows, dots = [], []
    for ty in range(4):
        row = []
        for tx in range(4):
            fy, fx = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            t = img[::-1] if fy else img
            t = t[:, ::-1] if fx else t
            row.append(t)
            d = np.asarray(sample.dots, dtype=np.float64).reshape(-1, 2).copy()
            if fy:
                d[:, 0] = (h - 1) - d[:, 0]
            if fx:
                d[:, 1] = (w - 1) - d[:, 1]
            dots.append(d + np.array([ty * h, tx * w]))
        rows.append(np.concatenate(row, axis=1))
    return Sample(
        image=np.ascontiguousarray(np.concatenate(rows, axis=0)),
        dots=np.concatenate(dots),
        name=f"{sample.name}-tiled",
    )


def downscale_4(sample: Any) -> Any:
    """4 x 4 block average (anti-aliased resize by 1/4); dots mapped to the new pixel grid."""
    from napari_nalu_count.data.readers import Sample

    img = np.asarray(sample.image, dtype=np.float32)
    h, w = img.shape[0] // 4 * 4, img.shape[1] // 4 * 4
    small = img[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    dots = (np.asarray(sample.dots, dtype=np.float64) + 0.5) / 4.0 - 0.5
    dots = np.clip(dots, 0, [h // 4 - 1, w // 4 - 1])
    return Sample(image=small, dots=dots, name=f"{sample.name}-256")


def vgg_draw(draw: int, n_train: int) -> list[int]:
    """Training images of draw ``draw``: ``n_train`` of 001-100 (``default_rng(draw)``)."""
    rng = np.random.default_rng(draw)
    return sorted(int(i) for i in rng.choice(np.arange(1, 101), size=n_train, replace=False))


# ---------------------------------------------------------------------------------------------
# runs


def model_config(arch: str, variant: str, args: argparse.Namespace) -> dict:
    from napari_nalu_count.nn.registry import default_config

    cfg = default_config(arch)
    cfg["widths"] = sc.scaled_widths(cfg["widths"], args.width_factor)
    if variant in ("relu", "leaky_relu", "linear"):
        cfg["activation"], cfg["unit"] = variant, None
    else:
        cfg["activation"], cfg["unit"] = args.unit_activation, variant
    return cfg


def train_config(args: argparse.Namespace, seed: int, device: str):
    from napari_nalu_count.train import TrainConfig

    fields = sc.budget_fields(args.budget, args.steps_per_epoch)
    total = fields["epochs"] * fields["steps_per_epoch"]
    return TrainConfig(
        **fields,
        batch_size=args.batch,
        patch_size=args.patch,
        lr=args.lr,
        min_lr=args.lr / 100,
        warmup_steps=min(100, total // 10),
        patience=10**9,
        seed=seed,
        sigma=args.sigma,
        density_scale=100.0,
        reg_weight=1e-3,
        device=device,
        bn_recalibrate=args.bn_recalibrate,
    )


def predict_counts(net: Any, samples: list, device: str, density_scale: float) -> list[float]:
    import torch

    from napari_nalu_count.train.dataset import prepare

    net.to(device)
    net.eval()
    out = []
    with torch.no_grad():
        for it in prepare(samples, "count"):
            x = torch.from_numpy(np.ascontiguousarray(it.image[None])).to(device)
            out.append(float(net(x).sum()) / density_scale)
    net.to("cpu")
    return out


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for exp in args.experiments:
        reps = (
            [("draw", d) for d in range(args.draws)]
            if exp == "vgg"
            else [("seed", s) for s in args.seeds]
        )
        for rep_kind, rep in reps:
            for arch in args.archs:
                for variant in args.variants:
                    key = f"{exp}/{arch}/{variant}/{rep_kind}{rep}"
                    runs.append(dict(key=key, exp=exp, arch=arch, variant=variant, rep=rep))
    k, n = args.shard
    return [r for i, r in enumerate(runs) if i % n == k]


def do_run(run: dict[str, Any], data: Data, args: argparse.Namespace, device: str) -> dict:
    from napari_nalu_count.train import train
    from napari_nalu_count.train.metrics import count_metrics

    exp, rep = run["exp"], run["rep"]
    test_sets: dict[str, list] = {}
    train_info: dict[str, Any] = {}
    if exp == "vgg":
        idx = vgg_draw(rep, args.n_train)
        tr = data.vgg(idx)
        train_info = {"images": idx, "draw": rep}
        test_sets["test"] = data.vgg(data.vgg_test_indices())
        if args.n_tiled:
            test_sets["tiled_256"] = data.tiled("tiled_256")
            test_sets["tiled_full"] = data.tiled("tiled_full")
        seed = rep
    elif exp == "synthetic":
        tr = data.synth("train")
        for name in TEST_SETS["synthetic"]:
            test_sets[name] = data.synth(name)
        seed = rep
        train_info = {"count_range": list(SYNTH_LOW), "n_images": len(tr)}
    else:
        tr = data.bbbc039("train")
        test_sets["val"] = data.bbbc039("val")
        seed = rep
        train_info = {"split": "train", "n_images": len(tr), "min_size": args.min_size}
    config = model_config(run["arch"], run["variant"], args)
    cfg = train_config(args, seed, device)
    t0 = time.perf_counter()
    res = train(config, tr, None, "count", cfg)
    seconds = time.perf_counter() - t0
    results: dict[str, Any] = {}
    t1 = time.perf_counter()
    for name, samples in test_sets.items():
        pred = predict_counts(res.net, samples, device, cfg.density_scale)
        true = [float(len(s.dots)) for s in samples]
        m = count_metrics(pred, true)
        m["pred"] = [round(p, 3) for p in pred]
        m["true"] = true
        results[name] = m
    return {
        **{k: run[k] for k in ("exp", "arch", "variant", "rep")},
        "seed": seed,
        "train": train_info,
        "config": res.config,
        "steps": res.steps,
        "final_loss": float(np.mean(res.losses[-50:])) if res.losses else None,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
        "results": results,
        "device": device,
        "machine": sc.machine(device, args.threads),
        "command": sc.command_line(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": "synthetic" if args.data == "synthetic" else "real",
        "budget": args.budget["text"],
        "steps_per_epoch": args.steps_per_epoch,
        "batch": args.batch,
        "patch": args.patch,
        "lr": args.lr,
        "width_factor": args.width_factor,
        "sigma": args.sigma,
        "unit_activation": args.unit_activation,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "n_tiled": args.n_tiled,
        "min_size": args.min_size,
        "bn_recalibrate": args.bn_recalibrate,
        "selection": "last weights (cosine schedule), no validation",
    }


# ---------------------------------------------------------------------------------------------
# report


def _per_rep(runs: list[dict], exp: str, arch: str, variant: str, test: str, key: str) -> dict:
    out = {}
    for r in runs:
        if (r["exp"], r["arch"], r["variant"]) == (exp, arch, variant) and test in r["results"]:
            out[r["rep"]] = float(r["results"][test][key])
    return out


def _rip(m_relu: float, m_i: float) -> str:
    if not (math.isfinite(m_relu) and math.isfinite(m_i)) or m_relu == 0:
        return "–"
    return f"{(m_relu - m_i) / m_relu * 100:+.1f}"


def _table(runs: list[dict], exp: str, test: str, archs: list, variants: list) -> str:
    header = [
        "architecture",
        "variant",
        "MAE (mean ± sd)",
        "relative error %",
        "RIP % vs ReLU",
        "Δ MAE vs ReLU (paired) > seed spread?",
        "runs",
    ]
    rows = []
    for arch in archs:
        relu = _per_rep(runs, exp, arch, "relu", test, "mae")
        m_relu = sc.mean_sd(relu.values())[0]
        for v in variants:
            mae = _per_rep(runs, exp, arch, v, test, "mae")
            if not mae:
                continue
            mre = _per_rep(runs, exp, arch, v, test, "mre")
            m = sc.mean_sd(mae.values())[0]
            cmp = "(reference)" if v == "relu" else sc.fmt_paired(sc.paired(mae, relu))
            rows.append(
                [
                    ARCH_NAMES[arch],
                    VARIANT_NAMES[v],
                    sc.fmt_ms(mae.values()),
                    sc.fmt_ms(mre.values(), 1, 100.0),
                    "–" if v == "relu" else _rip(m_relu, m),
                    cmp,
                    len(mae),
                ]
            )
    return sc.md_table(header, rows) if rows else "_no runs yet_"


def _paper_table(runs: list[dict], archs: list, variants: list) -> str:
    """Our RIP next to the counting paper's (Tables II and III), per architecture and variant."""
    header = [
        "architecture",
        "variant",
        "paper MAE (II)",
        "paper RIP % (II)",
        "our RIP % (VGG 101-200)",
        "paper MAE (III)",
        "paper RIP % (III)",
        "our RIP % (tiles -> 256 px)",
        "our RIP % (tiles, 1024 px)",
        "our RIP % (synthetic 10x)",
    ]
    rows = []

    def ours(arch: str, v: str, exp: str, test: str) -> str:
        m_relu = sc.mean_sd(_per_rep(runs, exp, arch, "relu", test, "mae").values())[0]
        m_i, _, n = sc.mean_sd(_per_rep(runs, exp, arch, v, test, "mae").values())
        return "–" if v == "relu" or n == 0 else _rip(m_relu, m_i)

    for arch in archs:
        for v in variants:
            row = [ARCH_NAMES[arch], VARIANT_NAMES[v]]
            for table, tests in (("II", ("test",)), ("III", ("tiled_256", "tiled_full"))):
                paper = PAPER_TABLE[table][arch]
                if v in paper:
                    rip = "–" if v == "relu" else _rip(paper["relu"], paper[v])
                    row += [f"{paper[v]:.2f}", rip]
                else:
                    row += ["not studied", "–"]
                row += [ours(arch, v, "vgg", t) for t in tests]
            row.append(ours(arch, v, "synthetic", "synth_10x"))
            rows.append(row)
    return sc.md_table(header, rows)


def _bar_plot(path: Path, runs, exp, tests, archs, variants, ylabel, rip=False) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(a, t) for t in tests for a in archs]
    if not any(_per_rep(runs, exp, a, v, t, "mae") for a, t in panels for v in variants):
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (arch, test) in zip(axes[0], panels, strict=True):
        m_relu = sc.mean_sd(_per_rep(runs, exp, arch, "relu", test, "mae").values())[0]
        xs, ms, ss, labels = [], [], [], []
        for i, v in enumerate(variants):
            vals = _per_rep(runs, exp, arch, v, test, "mae").values()
            m, s, n = sc.mean_sd(vals)
            if n == 0:
                continue
            if rip:
                m = (m_relu - m) / m_relu * 100 if m_relu else float("nan")
                s = s / m_relu * 100 if m_relu else float("nan")
            xs.append(i)
            ms.append(m)
            ss.append(0.0 if not math.isfinite(s) else s)
            labels.append(VARIANT_NAMES[v])
        if rip:  # better than ReLU in green, worse in red
            colors = ["tab:green" if m >= 0 else "tab:red" for m in ms]
        else:
            colors = ["tab:blue"] * len(ms)
        ax.bar(xs, ms, yerr=ss, capsize=3, color=colors)
        ax.set_xticks(xs, labels, rotation=45, ha="right")
        ax.set_title(f"{ARCH_NAMES[arch]}: {SET_NAMES[test]}", fontsize=8)
        ax.set_ylabel(ylabel)
        if rip:
            ax.axhline(0, color="k", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(
    data: dict[str, Any], out_doc: Path, report_cmd: str, notes: str | Path | None = None
) -> None:
    runs = list(data["runs"].values())
    archs = [a for a in ARCHS if any(r["arch"] == a for r in runs)]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    s = data["settings"]
    out_doc.parent.mkdir(parents=True, exist_ok=True)
    stem = out_doc.stem
    parts = [
        "# Counting study: activations and arithmetic residual units",
        "",
        "Generated by `benchmarks/counting_study.py` from the raw results in the JSON; do not edit "
        "by hand. MAE = mean over test images of |predicted - true count| (predicted = sum of "
        "the density / density scale); relative error = MAE / mean true count; RIP % = (M_relu "
        "- M_i) / M_relu x 100 on the mean MAEs (positive = better than ReLU). "
        "Δ vs ReLU is the mean ± sd of the paired differences (same draw / seed); **yes** "
        "marks a difference larger than the larger of the two variants' run-to-run sds, p is "
        "the paired t-test. Unit variants use the "
        f"{s['unit_activation']} network plus the unit's residual branches. Every run keeps "
        "its last weights (cosine schedule, no validation-based selection).",
        "",
        f"Data: **{s['data']}**. Budget per run: **{sc.budget_text(s, runs)}** "
        f"(batch {s['batch']}, "
        f"{s['patch']} px patches, Adam lr {s['lr']}, width factor {s['width_factor']}).",
        "",
    ]
    parts += sc.notes_block(notes)
    parts += [
        sc.provenance(data, report_cmd),
        "",
    ]
    plots = out_doc.parent
    if any(r["exp"] == "vgg" for r in runs):
        seeds = sorted({r["rep"] for r in runs if r["exp"] == "vgg"})
        parts += [
            f"## VGG cells, N = {s['n_train']} training images from 001-100, test 101-200",
            "",
            f"Draws: {seeds} (draw d: images `default_rng(d).choice(1..100, N)`, training seed d).",
            "",
            _table(runs, "vgg", "test", archs, variants),
            "",
            "Published MAE at N = 32 (5 draws): "
            + "; ".join(f"{n} {v}" for n, v, _ in PUBLISHED_VGG_N32)
            + ".",
            "",
        ]
        png = plots / f"{stem}_vgg_mae.png"
        if _bar_plot(png, runs, "vgg", ["test"], archs, variants, "MAE (cells / image)"):
            parts += [
                f"![VGG MAE]({png.name})",
                "",
                "Bars: mean MAE over draws; error bars: sd.",
                "",
            ]
    if runs:
        parts += [
            "## Relative improvement over ReLU: the counting paper's figures and ours",
            "",
            "The counting paper's Tables II (its test set) and III (its high-count set: 4 x 4 "
            "tiles resized to 256 px, about 1200 cells per image) give one "
            "MAE per variant with no spread; its public code never trains a NALU and overwrites "
            "the FCRN's NAC branches, and its MAE divisor is off, so only the direction and size "
            "of the RIP are comparable. The paper did not study the NAU. Ours are the means of "
            "the runs below (spread and significance in the per-experiment tables).",
            "",
            _paper_table(runs, archs, variants),
            "",
        ]
    ext = [t for t in ("tiled_256", "tiled_full") if any(t in r["results"] for r in runs)]
    has_synth = any(r["exp"] == "synthetic" for r in runs)
    if ext or has_synth:
        intro = []
        if ext:
            intro.append(
                "Tiled sets: every VGG test image (first "
                f"{s['n_tiled']}) tiled 4 x 4 with random flips (16x the cells), at full size "
                "and resized to 256 x 256; tested with the networks of the VGG runs above."
            )
        if has_synth:
            intro.append(
                "Synthetic: separate runs trained on generated images with 5-20 cells "
                "(`data.synthetic`, diameter 12 px)."
            )
        parts += ["## Extrapolation to higher counts", "", " ".join(intro), ""]
        for t in ext:
            parts += [f"### {SET_NAMES[t]}", "", _table(runs, "vgg", t, archs, variants), ""]
        for t in TEST_SETS["synthetic"]:
            if has_synth:
                parts += [
                    f"### {SET_NAMES[t]}",
                    "",
                    _table(runs, "synthetic", t, archs, variants),
                    "",
                ]
        png = plots / f"{stem}_extrapolation_rip.png"
        ok = False
        if ext:
            ok = _bar_plot(png, runs, "vgg", ext, archs, variants, "RIP % vs ReLU", rip=True)
        png2 = plots / f"{stem}_synthetic_rip.png"
        ok2 = has_synth and _bar_plot(
            png2, runs, "synthetic", ["synth_5x", "synth_10x"], archs, variants, "RIP %", rip=True
        )
        if ok or ok2:
            parts += [
                "RIP plots: bar = RIP of the variant's mean MAE (green: better than ReLU, red:"
                " worse); error bar = the variant's run-to-run sd of MAE as a % of ReLU's mean.",
                "",
            ]
        if ok:
            parts += [f"![RIP on tiled VGG]({png.name})", ""]
        if ok2:
            parts += [f"![RIP on synthetic]({png2.name})", ""]
    if any(r["exp"] == "bbbc039" for r in runs):
        seeds = sorted({r["rep"] for r in runs if r["exp"] == "bbbc039"})
        parts += [
            "## BBBC039: trained on train, tested on val",
            "",
            f"Seeds {seeds}; objects under {s['min_size']} px dropped from targets and truth.",
            "",
            _table(runs, "bbbc039", "val", archs, variants),
            "",
        ]
        png = plots / f"{stem}_bbbc039_mae.png"
        if _bar_plot(png, runs, "bbbc039", ["val"], archs, variants, "MAE (nuclei / image)"):
            parts += [
                f"![BBBC039 MAE]({png.name})",
                "",
                "Bars: mean MAE over seeds; error bars: sd.",
                "",
            ]
    out_doc.write_text("\n".join(parts).rstrip() + "\n")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sc.add_common_args(p, "benchmarks/results/counting.json", "docs/benchmarks/counting.md")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--draws", type=int, default=5, help="VGG random draws of the training set")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synthetic, bbbc039")
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-test", type=int, default=0, help="limit test images (0 = all)")
    p.add_argument("--n-tiled", type=int, default=100, help="tiled test images (0 = none)")
    p.add_argument("--sigma", type=float, default=2.0, help="density Gaussian sigma (px)")
    p.add_argument("--unit-activation", default="relu", choices=("relu", "leaky_relu", "linear"))
    p.add_argument("--min-size", type=int, default=40, help="BBBC039: drop smaller objects")
    p.add_argument("--bn-recalibrate", type=int, default=0, help="see TrainConfig")
    args = p.parse_args(argv)
    args.experiments = [e for e in args.experiments.split(",") if e]
    args.archs = [a for a in args.archs.split(",") if a]
    args.variants = [v for v in args.variants.split(",") if v]
    for name, allowed in (
        ("experiments", EXPERIMENTS),
        ("archs", ARCHS),
        ("variants", VARIANTS),
    ):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; allowed {', '.join(allowed)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_of(args)
    report_cmd = sc.report_command("counting_study.py", args)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        device = sc.resolve_device(args.device)
        if len(args.json) != 1:
            raise SystemExit("give one --json file when running (several only with --report-only)")
        store = sc.Store(args.json[0], "counting", settings)
        data = Data(args)
        clock = sc.Clock(args.time_limit)
        todo = [r for r in plan(args) if not store.has(r["key"])]
        sc.log(args.quiet, f"{len(todo)} run(s) to do on {device}")
        done = 0
        for run in todo:
            if not clock.may_start() or (args.limit_runs is not None and done >= args.limit_runs):
                sc.log(args.quiet, f"stopping: {len(todo) - done} run(s) left for a later call")
                break
            t0 = time.perf_counter()
            record = do_run(run, data, args, device)
            store.put(run["key"], record)
            clock.ran(time.perf_counter() - t0)
            done += 1
            first = next(iter(record["results"].values()))
            sc.log(
                args.quiet,
                f"[{done}/{len(todo)}] {run['key']}: {record['steps']} steps "
                f"{record['seconds']:.0f}s, MAE {first['mae']:.2f}",
            )
    if args.no_report:
        return 0
    merged = sc.load_merged(args.json, "counting")
    report(merged, Path(args.out_doc), report_cmd, args.notes)
    sc.log(args.quiet, f"wrote {args.out_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
