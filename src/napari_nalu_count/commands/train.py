"""Train a counting or segmentation model and save it as a user model.

``nalu-count train --task count --data DATA [--arch ARCH --unit UNIT --activation ACT
--widths 16,32,64 | --from MODEL] [--epochs N --steps N --lr LR --patch PX --batch N]
[--fre-b B --fre-x X] [--name NAME] [--seed S] [--device DEV]``

DATA is ``bbbc039:ROOT`` (train/val splits), ``vgg:ROOT`` (32 random training images of
001-100, validation on 101-200), ``synthetic`` or ``synthetic:N`` (generated cells), or a folder
of images with ``NAME.csv`` points and/or ``NAME_labels.tif`` label images (a quarter of the
images, or a strip of a single image, is held out for validation). ``--from MODEL`` continues
training a bundled or user model instead of building a new network. The best epoch on the
validation data is saved (atomically) with a card holding its metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_nalu_count.errors import InputError
from napari_nalu_count.events import EpochEnd, Event

ARCH_BY_TASK = {"count": "unet_count", "segment": "se_unet"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``tune`` (task, data, network, schedule)."""
    parser.add_argument(
        "--task",
        choices=("count", "segment"),
        default=None,
        help="count (density) or segment (3-class maps); default from --from, else count",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="bbbc039:ROOT | vgg:ROOT | synthetic[:N] | a folder of images with "
        "NAME.csv points or NAME_labels.tif",
    )
    parser.add_argument(
        "--arch",
        choices=("fcrn_a", "unet_count", "se_unet"),
        default=None,
        help="architecture (default unet_count for count, se_unet for segment)",
    )
    parser.add_argument(
        "--unit",
        default=None,
        help="arithmetic residual unit: nac, nalu, nalu_tanh, nalu_hard_sigmoid, "
        "nau, nmu (default none)",
    )
    parser.add_argument("--activation", choices=("relu", "leaky_relu", "linear"), default=None)
    parser.add_argument(
        "--widths", default=None, help="comma-separated channel widths per scale, e.g. 16,32,64"
    )
    parser.add_argument(
        "--from",
        dest="from_model",
        metavar="MODEL",
        default=None,
        help="start from this bundled/user model (name or path)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch (default 50)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patch", type=int, default=128, help="patch size in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="density Gaussian sigma, px (default: the --from model's own, else 3)",
    )
    parser.add_argument("--dice", action="store_true", help="add a Dice loss (segmentation)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps or auto")


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--fre-b", type=int, default=None, help="FRE: channels enhanced (B)")
    parser.add_argument("--fre-x", type=float, default=None, help="FRE: enhancement factor (X)")
    parser.add_argument("--name", default=None, help="name of the saved model")
    parser.add_argument(
        "--out", default=None, help="save into this folder instead of the user model directory"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a model of that name")


# ---------------------------------------------------------------------------------------------


def load_data(
    spec: str, task: str, seed: int = 0, rule: dict | None = None, in_channels: int = 1
) -> tuple[list, list, str, str]:
    """``(train, val, train_description, val_description)`` for a ``--data`` spec.

    Multi-channel images of a folder are reduced to one plane by ``rule`` (the image -> plane
    rule inference applies, see ``infer.axes``; default max over RGB(A)), using the axes their
    files record."""
    from napari_nalu_count.data import readers

    if spec.startswith("bbbc039:"):
        root = spec.split(":", 1)[1]
        tr = readers.load_bbbc039(root, "train")
        va = readers.load_bbbc039(root, "val")
        return tr, va, f"BBBC039 train ({len(tr)} images)", f"BBBC039 val ({len(va)} images)"
    if spec.startswith("vgg:"):
        if task != "count":
            raise InputError("the VGG cells data has dots only: use --task count")
        import numpy as np

        root = spec.split(":", 1)[1]
        idx = sorted(int(i) for i in np.random.default_rng(seed).choice(100, 32, replace=False) + 1)
        tr = readers.load_vgg(root, idx)
        va = readers.load_vgg(root, range(101, 201))
        return tr, va, f"VGG cells, 32 images of 001-100 (seed {seed})", "VGG cells 101-200"
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from napari_nalu_count.data.synthetic import synthetic_dataset

        n = 8
        if ":" in spec:
            try:
                n = int(spec.split(":", 1)[1])
            except ValueError:
                raise InputError(
                    f"bad --data {spec!r}: use synthetic:N with N an integer"
                ) from None
        if n < 1:
            raise InputError("synthetic:N needs N >= 1")
        n_val = max(1, n // 4)
        tr = synthetic_dataset(n, (20, 60), shape=(128, 128), seed=seed)
        va = synthetic_dataset(n_val, (20, 60), shape=(128, 128), seed=seed + 10_000)
        return tr, va, f"synthetic cells ({n} images, seed {seed})", f"synthetic ({n_val} images)"
    path = Path(spec)
    if not path.is_dir():
        raise InputError(
            f"--data {spec!r} is neither bbbc039:ROOT, vgg:ROOT, synthetic nor a folder"
        )
    from napari_nalu_count.train.dataset import load_folder, reduce_samples
    from napari_nalu_count.train.finetune import split_holdout

    samples = reduce_samples(load_folder(path), rule, in_channels)
    tr, va, how = split_holdout(samples, 0.25, seed)
    return tr, va, f"{path} ({len(samples)} images)", how


def _widths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        widths = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise InputError(f"--widths must be comma-separated integers, got {text!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise InputError(f"--widths must be positive integers, got {text!r}")
    return widths


def build_start(args: argparse.Namespace) -> tuple[Any, str, dict | None]:
    """``(model_or_config, task, start_card)`` from --from / --arch / --unit / ... arguments."""
    from napari_nalu_count.errors import ModelFileError
    from napari_nalu_count.nn import registry

    if args.from_model:
        from napari_nalu_count.models import load_model

        if args.arch or args.unit or args.activation or args.widths:
            raise InputError("--from cannot be combined with --arch/--unit/--activation/--widths")
        loaded = load_model(args.from_model)
        if args.task and args.task != loaded.task:
            raise InputError(f"model {loaded.name!r} is a {loaded.task} model, not {args.task}")
        return loaded, loaded.task, loaded.card
    task = args.task or ("segment" if args.arch == "se_unet" else "count")
    arch = args.arch or ARCH_BY_TASK[task]
    config = registry.default_config(arch)
    if task == "count":
        config["widths"] = [16, 32, 64] if arch == "unet_count" else [16, 32, 64, 128]
    else:
        config["widths"] = [16, 32, 64, 128]
    if args.unit:
        config["unit"] = args.unit
    if args.activation:
        config["activation"] = args.activation
    widths = _widths(args.widths)
    if widths:
        config["widths"] = widths
    try:
        config = registry.validate_config(config)
        cfg_task = registry.task_of(config)
    except ModelFileError as exc:
        raise InputError(str(exc)) from None
    if cfg_task != task:
        raise InputError(f"--arch {arch} is a {cfg_task} network, not {task}")
    return config, task, None


def fre_from_args(args: argparse.Namespace, config: dict) -> dict | None:
    if args.fre_b is None and args.fre_x is None:
        return None
    widths = config.get("widths") or [4]
    b = args.fre_b if args.fre_b is not None else max(1, int(widths[-1]) // 4)
    x = args.fre_x if args.fre_x is not None else 2.0
    if not 0 <= b <= int(widths[-1]):
        raise InputError(f"--fre-b must be between 0 and the bottleneck width {widths[-1]}")
    return {"B": int(b), "X": float(x), "seed": int(args.seed)}


def train_config(args: argparse.Namespace, task: str, start_card: dict | None):
    from napari_nalu_count.train.loop import TrainConfig, start_model_sigma

    cfg = TrainConfig(
        epochs=args.epochs if args.epochs is not None else 30,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        patch_size=args.patch,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        sigma=args.sigma if args.sigma is not None else start_model_sigma(start_card),
        dice=bool(args.dice),
        max_minutes=args.minutes,
        device=_device(args.device),
    )
    if start_card is not None:
        cfg.normalization = dict(start_card["normalization"])
        if task == "count" and start_card.get("density_scale"):
            cfg.density_scale = float(start_card["density_scale"])
    cfg.check()
    return cfg


def _device(name: str) -> str:
    try:
        from napari_nalu_count.infer.device import resolve_device
    except ImportError:  # pragma: no cover
        return name
    try:
        return str(resolve_device(name))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unusable device is a bad argument
        raise InputError(f"--device {name!r}: {exc}") from None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def run(args: argparse.Namespace) -> int:
    from napari_nalu_count.infer.scale import native_diameter
    from napari_nalu_count.models import save_model
    from napari_nalu_count.train import train
    from napari_nalu_count.train.finetune import make_trained_card
    from napari_nalu_count.train.grid import measured_diameter

    start, task, start_card = build_start(args)
    config = dict(start.config) if start_card is not None else dict(start)
    cfg = train_config(args, task, start_card)
    cfg.fre = fre_from_args(args, config)
    name = args.name or (f"{start_card['name']}-trained" if start_card else f"my-{task}-model")
    from napari_nalu_count.models import check_name

    check_name(name)
    from napari_nalu_count.infer.axes import input_rule

    rule = input_rule(start_card)  # the start model's, else max over RGB(A)
    in_ch = int(config.get("in_channels", 1))
    tr, va, tr_desc, va_desc = load_data(args.data, task, args.seed, rule, in_ch)

    def progress(ev: Event) -> None:
        if isinstance(ev, EpochEnd):
            m = "  ".join(f"{k}={_fmt(v)}" for k, v in ev.metrics.items() if isinstance(v, float))
            star = " *" if ev.best else ""
            print(
                f"epoch {ev.epoch:3d}  loss={ev.loss:.4g}  {m}{star}", file=sys.stderr, flush=True
            )

    result = train(start, tr, va, task, cfg, callback=progress)
    diameter = measured_diameter(tr)
    if diameter is None and start_card is not None:
        # the start card's diameter is on its model grid (resampled by its input_scale); this
        # model is trained on the images as they are
        diameter = native_diameter(start_card)
    command = "nalu-count train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "train()"
    card = make_trained_card(
        result,
        name,
        task,
        normalization=cfg.normalization,
        density_scale=cfg.density_scale,
        diameter=diameter,
        training={
            "data": tr_desc,
            "start_model": start_card["name"] if start_card else None,
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "seed": cfg.seed,
            "minutes": round(result.seconds / 60, 2),
            "command": command,
            "settings": cfg.to_dict(),
        },
        metrics={"split": va_desc, **result.best_metrics},
        input=rule,
    )
    if args.out:
        path = save_model(result.net, card, Path(args.out) / name, overwrite=args.overwrite)
    else:
        path = save_model(result.net, card, name, overwrite=args.overwrite)
    print(f"{'metric':<16}value")
    for k, v in result.best_metrics.items():
        print(f"{k:<16}{_fmt(v)}")
    print(f"saved {name} (best epoch {result.best_epoch} of {len(result.history)}) to {path}")
    return 0
