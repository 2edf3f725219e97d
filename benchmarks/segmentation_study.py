#!/usr/bin/env python
"""Segmentation study: SE U-Net vs + FRE vs + deep supervision, FRE at test time (BBBC039).

Variants (``--variants``):

- ``baseline``: SE U-Net (3 classes: background / interior / boundary);
- ``fre``: + Feature Random Enhancement at the bottleneck, ``B`` and ``X`` from a TPE search
  (``napari_nalu_count.train.tune``, learning rate fixed to ``--lr`` so only the module's
  parameters differ from the baseline);
- ``supervision``: + deep supervision at the bottleneck (the FRE paper's "SuperVision"
  baseline). The paper's loss is ``(1 - λ) L_main + λ L_aux``; the package trainer computes
  ``L_main + w L_aux`` (``TrainConfig.aux_weight``), so λ is searched by TPE (Optuna, 15
  trials as in the paper) and ``w = λ / (1 - λ)`` is used: the same loss up to the factor
  ``1 / (1 - λ)``, to which Adam is nearly invariant (gradient clipping at 10 is not).

The ``fre`` networks are evaluated twice: as trained (FRE is the identity in eval mode), and
with the random enhancement kept at test time (the FRE paper's Table 1): a forward hook on
every ``FeatureRandomEnhancement`` module multiplies ``B`` channels, re-drawn for every test
image from ``(10_000 + seed, image index)``, by ``X`` in eval mode too.

TPE trials train on the BBBC039 train split minus its last ``--tune-holdout`` fraction and are
scored on that held-out part (never on val), with ``--tune-fraction`` of the main budget each.
The final runs train on the whole train split for ``--budget`` and keep the last weights
(cosine schedule), then are evaluated once on val: pixel IoU per class and mIoU (confusion
matrix summed over images), instance F1 at IoU 0.5, 0.6, 0.7, 0.8, 0.9 (TP / FP / FN summed
over images; instances from the class map by ``infer.postprocess.classes_to_instances``) and
the count MAE of the instances. Objects under ``--min-size`` (40) px are dropped from the
targets and the truth, as for the bundled models.

Raw results go to ``--json`` (runs and TPE searches already there are skipped); the report
(``--out-doc`` + PNG plots beside it) is regenerated from it, or alone with ``--report-only``.

    python benchmarks/segmentation_study.py --device cuda --budget 3000 \
        --json benchmarks/results/segmentation.json --out-doc docs/benchmarks/segmentation.md
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

VARIANTS = ("baseline", "fre", "supervision")
VARIANT_NAMES = {
    "baseline": "SE U-Net (baseline)",
    "fre": "+ FRE",
    "fre@test": "+ FRE, enhancement kept at test time",
    "supervision": "+ deep supervision (SuperVision)",
}
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
CLASSES = ("background", "interior", "boundary")
PAPER_TABLE1 = {  # FRE paper, Table 1 (mIoU %), for reference only (other data sets)
    "Transgenic mouse cells": (59.50, 60.52, 61.62),
    "Drosophila": (73.98, 76.85, 76.95),
}


# ---------------------------------------------------------------------------------------------
# data


class Data:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._cache: dict[str, list] = {}

    def split(self, name: str) -> list:
        if name in self._cache:
            return self._cache[name]
        a = self.args
        if a.data == "synthetic":
            from napari_nalu_count.data.synthetic import synthetic_dataset

            n = {"train": 5, "val": 2}[name]
            out = synthetic_dataset(n, (8, 16), (64, 64), 8.0, seed=11 if name == "train" else 12)
        else:
            from napari_nalu_count.data.readers import load_bbbc039

            out = load_bbbc039(Path(a.data) / "bbbc039", name, min_size=a.min_size)
            if name == "val" and a.n_test:
                out = out[: a.n_test]
        self._cache[name] = out
        return out

    def inner(self) -> tuple[list, list]:
        """(inner train, inner held-out) parts of the train split, for the TPE searches."""
        tr = self.split("train")
        n_hold = max(1, int(round(len(tr) * self.args.tune_holdout)))
        return tr[:-n_hold], tr[-n_hold:]


# ---------------------------------------------------------------------------------------------
# model, training, evaluation


def model_config(args: argparse.Namespace, fre: dict | None = None, ds: bool = False) -> dict:
    from napari_nalu_count.nn.registry import default_config

    cfg = default_config("se_unet")
    cfg["widths"] = sc.scaled_widths(cfg["widths"], args.width_factor)
    cfg["fre"] = fre
    cfg["deep_supervision"] = ds
    return cfg


def train_config(args: argparse.Namespace, seed: int, device: str, budget: dict, **kw: Any):
    from napari_nalu_count.train import TrainConfig

    fields = sc.budget_fields(budget, args.steps_per_epoch)
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
        dice=True,
        class_weights=[1.0, 1.0, 2.0],
        device=device,
        monitor=args.tune_monitor,
        **kw,
    )


class TestTimeFRE:
    """Keep every FRE module's random enhancement active in eval mode (context manager).

    The package's ``FeatureRandomEnhancement`` is the identity in eval mode; this adds a forward
    hook that, in eval mode, multiplies ``B`` channels (re-drawn per forward call from
    ``(seed, call index)`` with the module's own ``selection``) by ``X``.
    """

    def __init__(self, net: Any, seed: int) -> None:
        from napari_nalu_count.nn.blocks import FeatureRandomEnhancement

        self.modules = [m for m in net.modules() if isinstance(m, FeatureRandomEnhancement)]
        self.seed = int(seed)
        self.calls = 0
        self.handles: list = []

    def _hook(self, module: Any, inputs: tuple, output: Any) -> Any:
        if module.training or module.B == 0:
            return output
        import torch

        idx = module.selection(module.channels, module.B, self.seed, self.calls)
        self.calls += 1
        scale = torch.ones(module.channels, dtype=output.dtype, device=output.device)
        scale[torch.from_numpy(idx).to(output.device)] = module.X
        return inputs[0] * scale[None, :, None, None]

    def __enter__(self) -> TestTimeFRE:
        if not self.modules:
            raise RuntimeError("the network has no FRE module")
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def seg_eval(net: Any, samples: list, device: str) -> dict[str, Any]:
    """mIoU (+ per class), instance F1 / precision / recall at ``THRESHOLDS``, count MAE."""
    import torch

    from napari_nalu_count.data import instances_to_classes
    from napari_nalu_count.train.dataset import prepare
    from napari_nalu_count.train.metrics import (
        classes_to_instances,
        confusion_matrix,
        count_metrics,
        instance_f1,
        mean_iou,
    )

    net.to(device)
    net.eval()
    cm = np.zeros((3, 3), np.int64)
    pairs, pc, tc = [], [], []
    with torch.no_grad():
        for it in prepare(samples, "segment"):
            x = torch.from_numpy(np.ascontiguousarray(it.image[None])).to(device)
            classes = net(x)[0].argmax(0).cpu().numpy().astype(np.uint8)
            cm += confusion_matrix(instances_to_classes(it.labels), classes, 3)
            inst = classes_to_instances(classes)
            pairs.append((it.labels, inst))
            pc.append(float(len(np.unique(inst[inst > 0]))))
            tc.append(it.count)
    net.to("cpu")
    miou, per_class = mean_iou(cm)
    matches = instance_f1(pairs, THRESHOLDS)
    out: dict[str, Any] = {"miou": miou}
    for name, v in zip(CLASSES, per_class, strict=True):
        out[f"iou_{name}"] = v
    for t in THRESHOLDS:
        m = matches[t]
        out[f"f1_{t:.1f}"] = m.f1
        out[f"precision_{t:.1f}"] = m.precision
        out[f"recall_{t:.1f}"] = m.recall
    out["f1_mean"] = float(np.mean([matches[t].f1 for t in THRESHOLDS]))
    c = count_metrics(pc, tc)
    out["count_mae"], out["count_bias"], out["n_images"] = c["mae"], c["bias"], len(pairs)
    return out


# ---------------------------------------------------------------------------------------------
# TPE searches


def search_fre(args, data: Data, device: str) -> dict[str, Any]:
    from napari_nalu_count.train.tune import tune

    tr, ho = data.inner()
    cfg = train_config(args, 0, device, sc.scaled_budget(args.budget, args.tune_fraction))
    base = model_config(args)
    t0 = time.perf_counter()
    res = tune(
        base,
        tr,
        ho,
        "segment",
        n_trials=args.fre_trials,
        cfg=cfg,
        b_range=(1, base["widths"][-1]),
        x_range=(1.0, 1000.0),
        lr_range=(args.lr, args.lr),
        seed=0,
    )
    out = res.to_dict()
    out.update(
        seconds=time.perf_counter() - t0,
        n_inner_train=len(tr),
        n_inner_holdout=len(ho),
        trial_budget=cfg.to_dict(),
        machine=sc.machine(device, args.threads),
        command=sc.command_line(),
    )
    return out


def search_lambda(args, data: Data, device: str) -> dict[str, Any]:
    import optuna

    from napari_nalu_count.train import train

    tr, ho = data.inner()
    budget = sc.scaled_budget(args.budget, args.tune_fraction)
    monitor = args.tune_monitor
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=0, n_startup_trials=min(10, max(1, args.lambda_trials // 3))
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        lam = trial.suggest_float("lambda", 0.01, 0.9)
        cfg = train_config(args, 0, device, budget, aux_weight=lam / (1 - lam))
        rec: dict[str, Any] = {"number": trial.number, "lambda": lam, "aux_weight": cfg.aux_weight}
        try:
            res = train(model_config(args, ds=True), tr, ho, "segment", cfg)
        except FloatingPointError as exc:
            rec.update(value=None, state="diverged")
            trials.append(rec)
            raise optuna.TrialPruned(str(exc)) from exc
        value = float(res.best_metrics.get(monitor, float("nan")))
        rec.update(value=value, state="complete")
        trials.append(rec)
        if not math.isfinite(value):
            raise optuna.TrialPruned("no metric")
        return value

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=args.lambda_trials)
    try:
        best = {"lambda": float(study.best_params["lambda"])}
        best_value = float(study.best_value)
    except ValueError:
        best, best_value = {"lambda": 0.3}, None
    return {
        "best_params": best,
        "best_value": best_value,
        "monitor": monitor,
        "direction": "maximize",
        "trials": trials,
        "seconds": time.perf_counter() - t0,
        "n_inner_train": len(tr),
        "n_inner_holdout": len(ho),
        "trial_budget": sc.budget_fields(budget, args.steps_per_epoch),
        "machine": sc.machine(device, args.threads),
        "command": sc.command_line(),
    }


# ---------------------------------------------------------------------------------------------
# runs


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = [dict(key=f"{v}/seed{s}", variant=v, seed=s) for s in args.seeds for v in args.variants]
    k, n = args.shard
    return [r for i, r in enumerate(runs) if i % n == k]


def do_run(run, data: Data, args, device: str, store: sc.Store) -> dict[str, Any]:
    from napari_nalu_count.train import train

    v, seed = run["variant"], run["seed"]
    extra: dict[str, Any] = {}
    fre, ds, kw = None, False, {}
    if v == "fre":
        best = store.data["extra"]["tune_fre"]["best_params"]
        fre = {"B": int(best["B"]), "X": float(best["X"]), "seed": int(seed)}
        extra["fre"] = fre
    elif v == "supervision":
        lam = float(store.data["extra"]["tune_lambda"]["best_params"]["lambda"])
        ds, kw = True, {"aux_weight": lam / (1 - lam)}
        extra.update(lam=lam, aux_weight=kw["aux_weight"])
    cfg = train_config(args, seed, device, args.budget, **kw)
    cfg.monitor = None
    t0 = time.perf_counter()
    res = train(model_config(args, fre, ds), data.split("train"), None, "segment", cfg)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = {"standard": seg_eval(res.net, data.split("val"), device)}
    if v == "fre":
        with TestTimeFRE(res.net, 10_000 + seed):
            results["fre_at_test"] = seg_eval(res.net, data.split("val"), device)
    return {
        "variant": v,
        "seed": seed,
        **extra,
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
        "min_size": args.min_size,
        "n_test": args.n_test,
        "tune_fraction": args.tune_fraction,
        "tune_holdout": args.tune_holdout,
        "tune_monitor": args.tune_monitor,
        "fre_trials": args.fre_trials,
        "lambda_trials": args.lambda_trials,
        "selection": "last weights (cosine schedule), no validation",
    }


# ---------------------------------------------------------------------------------------------
# report


def _rows(runs: list[dict]) -> dict[str, dict[int, dict]]:
    """{variant label: {seed: metrics}} with ``fre@test`` as its own row."""
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        out.setdefault(r["variant"], {})[r["seed"]] = r["results"]["standard"]
        if "fre_at_test" in r["results"]:
            out.setdefault("fre@test", {})[r["seed"]] = r["results"]["fre_at_test"]
    order = ["baseline", "fre", "fre@test", "supervision"]
    return {k: out[k] for k in order if k in out}


def _vals(by_seed: dict[int, dict], key: str) -> dict[int, float]:
    return {s: float(m[key]) for s, m in by_seed.items() if key in m}


def _plots(rows: dict[str, dict[int, dict]], out_doc: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return []
    md = []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, by_seed in rows.items():
        ms = [sc.mean_sd(_vals(by_seed, f"f1_{t:.1f}").values()) for t in THRESHOLDS]
        ax.errorbar(
            THRESHOLDS,
            [m[0] for m in ms],
            yerr=[0 if not math.isfinite(m[1]) else m[1] for m in ms],
            marker="o",
            capsize=3,
            label=VARIANT_NAMES[label],
        )
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("instance F1 (BBBC039 val)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p1 = out_doc.parent / f"{out_doc.stem}_f1.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    md.append(f"![instance F1 vs IoU threshold]({p1.name})")

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    keys = ["miou"] + [f"iou_{c}" for c in CLASSES]
    width = 0.8 / len(rows)
    for i, (label, by_seed) in enumerate(rows.items()):
        ms = [sc.mean_sd(_vals(by_seed, k).values()) for k in keys]
        ax.bar(
            np.arange(len(keys)) + i * width,
            [m[0] for m in ms],
            width,
            yerr=[0 if not math.isfinite(m[1]) else m[1] for m in ms],
            capsize=2,
            label=VARIANT_NAMES[label],
        )
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, ["mIoU", *CLASSES])
    ax.set_ylabel("IoU (BBBC039 val)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p2 = out_doc.parent / f"{out_doc.stem}_iou.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    md.append(f"![IoU per class]({p2.name})")
    return md


def _tpe_plot(extra: dict[str, Any], out_doc: Path) -> list[str]:
    """Scatter of the FRE search's trials (B, X coloured by the held-out score), as the FRE
    paper's Figs. 7-8, plus the λ trials; shows how flat or peaked the searched surface is."""
    fre = [t for t in extra.get("tune_fre", {}).get("trials", []) if t.get("value") is not None]
    lam = [t for t in extra.get("tune_lambda", {}).get("trials", []) if t.get("value") is not None]
    if not fre and not lam:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    monitor = extra.get("tune_fre", extra.get("tune_lambda", {})).get("monitor", "score")
    if fre:
        sc_ = axes[0].scatter(
            [t["B"] for t in fre], [t["X"] for t in fre], c=[t["value"] for t in fre],
            cmap="coolwarm", s=40, edgecolors="k",
        )  # fmt: skip
        axes[0].set_yscale("log")
        fig.colorbar(sc_, ax=axes[0], label=f"held-out {monitor}")
    axes[0].set_xlabel("B (enhanced channels)")
    axes[0].set_ylabel("X (factor)")
    axes[0].set_title("FRE search (TPE trials)", fontsize=9)
    if lam:
        axes[1].scatter([t["lambda"] for t in lam], [t["value"] for t in lam], edgecolors="k")
    axes[1].set_xlabel("λ")
    axes[1].set_ylabel(f"held-out {monitor}")
    axes[1].set_title("deep supervision search (TPE trials)", fontsize=9)
    fig.tight_layout()
    path = out_doc.parent / f"{out_doc.stem}_tpe.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [f"![TPE trials]({path.name})", ""]


def _tuning_md(extra: dict[str, Any]) -> list[str]:
    out = []
    rows = []
    for key, name in (("tune_fre", "FRE: B, X"), ("tune_lambda", "deep supervision: λ")):
        t = extra.get(key)
        if not t:
            continue
        best = ", ".join(
            f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
            for k, v in t["best_params"].items()
        )
        bv = "–" if t["best_value"] is None else f"{t['best_value']:.4f}"
        budget = t["trial_budget"]
        if isinstance(budget, dict):
            n = budget["epochs"] * budget["steps_per_epoch"]
            budget = f"{budget['max_minutes']:.3g} min" if budget["max_minutes"] else f"{n} steps"
        rows.append(
            [
                name,
                len(t["trials"]),
                budget,
                f"{t['n_inner_train']} / {t['n_inner_holdout']}",
                best,
                f"{t['monitor']} {bv}",
                f"{t['seconds'] / 60:.1f}",
            ]
        )
    if rows:
        out += [
            "## TPE searches",
            "",
            "Optuna TPE (seed 0), each trial a fresh network trained on the inner part of "
            "BBBC039 train and scored (best epoch) on the held-out part of train; val is never "
            "seen. Learning rate fixed. Commands: "
            + "; ".join(
                sorted({f"`{extra[k]['command']}`" for k in extra if "command" in extra[k]})
            ),
            "",
            sc.md_table(
                [
                    "search",
                    "trials",
                    "budget per trial",
                    "inner train / held-out images",
                    "best",
                    "best value",
                    "minutes",
                ],
                rows,
            ),
            "",
        ]
    return out


def report(
    data: dict[str, Any], out_doc: Path, report_cmd: str, notes: str | Path | None = None
) -> None:
    runs = list(data["runs"].values())
    s = data["settings"]
    rows = _rows(runs)
    out_doc.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Segmentation study: FRE and deep supervision on the SE U-Net (BBBC039)",
        "",
        "Generated by `benchmarks/segmentation_study.py` from the raw results in the JSON; do "
        "not edit by hand. Trained on BBBC039 train, evaluated on val (whole images); mean ± "
        "sd over seeds. IoU: pixel IoU per class of the confusion matrix summed over the val "
        "images (classes background / interior / 1-px boundary), mIoU their mean. F1@t: "
        "instance F1 at IoU threshold t (a predicted nucleus matches a true one when their IoU "
        "exceeds t; TP / FP / FN summed over images). Mean F1 averages t = 0.5 ... 0.9. "
        f"Objects under {s['min_size']} px are dropped from targets and truth.",
        "",
        f"Data: **{s['data']}**. Budget per final run: **{sc.budget_text(s, runs)}** "
        f"(batch {s['batch']}, "
        f"{s['patch']} px patches, Adam lr {s['lr']}, cross-entropy 1/1/2 + soft Dice, width "
        f"factor {s['width_factor']}); TPE trials {s['tune_fraction']:g} x that budget.",
        "",
    ]
    parts += sc.notes_block(notes)
    parts += [
        sc.provenance(data, report_cmd),
        "",
    ]
    if rows:
        header = ["variant", "mIoU", *[f"IoU {c}" for c in CLASSES]]
        header += [f"F1@{t:.1f}" for t in THRESHOLDS] + ["mean F1", "count MAE", "seeds"]
        body = []
        for label, by_seed in rows.items():
            r = [VARIANT_NAMES[label]]
            for k in ["miou", *[f"iou_{c}" for c in CLASSES]]:
                r.append(sc.fmt_ms(_vals(by_seed, k).values(), 3))
            for t in THRESHOLDS:
                r.append(sc.fmt_ms(_vals(by_seed, f"f1_{t:.1f}").values(), 3))
            r.append(sc.fmt_ms(_vals(by_seed, "f1_mean").values(), 3))
            r.append(sc.fmt_ms(_vals(by_seed, "count_mae").values(), 1))
            r.append(",".join(str(k) for k in sorted(by_seed)))
            body.append(r)
        parts += ["## Main comparison (BBBC039 val)", "", sc.md_table(header, body), ""]
        fre_runs = [r for r in runs if r["variant"] == "fre"]
        ds_runs = [r for r in runs if r["variant"] == "supervision"]
        if fre_runs:
            f = fre_runs[0]["fre"]
            parts.append(
                f"FRE: B = {f['B']} of {fre_runs[0]['config']['widths'][-1]}, X = {f['X']:.4g}."
            )
        if ds_runs:
            parts.append(
                f"Deep supervision: λ = {ds_runs[0]['lam']:.4f} (trainer weight w = "
                f"{ds_runs[0]['aux_weight']:.4f})."
            )
        parts.append("")
        if "baseline" in rows:
            base = rows["baseline"]
            cmp_rows = []
            for label, by_seed in rows.items():
                if label == "baseline":
                    continue
                r = [VARIANT_NAMES[label]]
                for k in ("miou", "f1_0.5", "f1_0.7", "f1_mean"):
                    r.append(sc.fmt_paired(sc.paired(_vals(by_seed, k), _vals(base, k)), 3))
                cmp_rows.append(r)
            if cmp_rows:
                parts += [
                    "### Differences from the baseline",
                    "",
                    "Mean ± sd of the paired differences (same seed); **yes** = larger than the "
                    "seed spread (the larger of the two variants' seed-to-seed sds); p = paired "
                    "t-test.",
                    "",
                    sc.md_table(
                        ["variant", "Δ mIoU", "Δ F1@0.5", "Δ F1@0.7", "Δ mean F1"], cmp_rows
                    ),
                    "",
                ]
        if "fre" in rows:
            t1 = []
            for label in ("baseline", "fre@test", "fre"):
                if label in rows:
                    t1.append(
                        [VARIANT_NAMES[label], sc.fmt_ms(_vals(rows[label], "miou").values(), 3)]
                    )
            paper = "; ".join(
                f"{k}: baseline {a:.2f}, with enhancement at test {b:.2f}, without {c:.2f}"
                for k, (a, b, c) in PAPER_TABLE1.items()
            )
            parts += [
                "## FRE at test time (the FRE paper's Table 1)",
                "",
                sc.md_table(["", "mIoU"], t1),
                "",
                f"The paper's Table 1 (mIoU %, other data sets, for reference): {paper}.",
                "",
            ]
    parts += _tuning_md(data.get("extra", {}))
    parts += _tpe_plot(data.get("extra", {}), out_doc)
    parts += _plots(rows, out_doc)
    out_doc.write_text("\n".join(parts).rstrip() + "\n")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sc.add_common_args(p, "benchmarks/results/segmentation.json", "docs/benchmarks/segmentation.md")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--min-size", type=int, default=40)
    p.add_argument("--n-test", type=int, default=0, help="limit val images (0 = all 38)")
    p.add_argument("--fre-trials", type=int, default=20)
    p.add_argument("--lambda-trials", type=int, default=15)
    p.add_argument("--tune-fraction", type=float, default=0.25, help="trial budget / budget")
    p.add_argument("--tune-holdout", type=float, default=0.2, help="part of train held out")
    p.add_argument("--tune-monitor", default="miou", choices=("miou", "f1"))
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; allowed {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_cmd = sc.report_command("segmentation_study.py", args)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        device = sc.resolve_device(args.device)
        if len(args.json) != 1:
            raise SystemExit("give one --json file when running (several only with --report-only)")
        store = sc.Store(args.json[0], "segmentation", settings_of(args))
        data = Data(args)
        clock = sc.Clock(args.time_limit)
        todo = [r for r in plan(args) if not store.has(r["key"])]
        searches = [
            (key, fn)
            for key, fn, v in (
                ("tune_fre", search_fre, "fre"),
                ("tune_lambda", search_lambda, "supervision"),
            )
            if any(r["variant"] == v for r in todo) and key not in store.data["extra"]
        ]
        sc.log(args.quiet, f"{len(searches)} search(es) and {len(todo)} run(s) to do on {device}")
        stopped = False
        for key, fn in searches:
            if not clock.may_start():
                stopped = True
                break
            store.put_extra(key, fn(args, data, device))
            sc.log(args.quiet, f"{key}: best {store.data['extra'][key]['best_params']}")
        done = 0
        for run in todo:
            needs = {"fre": "tune_fre", "supervision": "tune_lambda"}.get(run["variant"])
            if needs and needs not in store.data["extra"]:
                continue
            if (
                stopped
                or not clock.may_start()
                or (args.limit_runs is not None and done >= args.limit_runs)
            ):
                stopped = True
                break
            t0 = time.perf_counter()
            rec = do_run(run, data, args, device, store)
            store.put(run["key"], rec)
            clock.ran(time.perf_counter() - t0)
            done += 1
            m = rec["results"]["standard"]
            sc.log(
                args.quiet,
                f"[{done}/{len(todo)}] {run['key']}: {rec['steps']} steps {rec['seconds']:.0f}s, "
                f"mIoU {m['miou']:.3f} F1@0.5 {m['f1_0.5']:.3f}",
            )
        if stopped:
            sc.log(args.quiet, "stopped early (time or run limit): call again to resume")
    if args.no_report:
        return 0
    report(sc.load_merged(args.json, "segmentation"), Path(args.out_doc), report_cmd, args.notes)
    sc.log(args.quiet, f"wrote {args.out_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
