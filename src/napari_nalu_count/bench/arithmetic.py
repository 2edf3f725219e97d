"""Arithmetic extrapolation benchmark: NALU paper static task and counting paper Table I.

Static task (Trask et al. 2018, Appendix B): ``x`` has ``dim`` inputs (100 in the paper); ``a`` and
``b`` are sums over two fixed contiguous, overlapping subsets (a quarter of the inputs each,
overlapping by half, start drawn per seed); targets ``a+b, a-b, a*b, a/b, a^2, sqrt(a)``.
Training and interpolation inputs are ``U[1, 2]``, extrapolation inputs ``U[10, 20]`` (10x).
Every model is ``dim -> 2 -> 1``: an MLP (``Linear, act, Linear``), two stacked NACs or NALUs,
``NAU -> NAU`` ("nau") or ``NAU -> NMU`` ("nmu", Madsen & Johansen's structure).

Counting paper Table I: ``y = a + b`` from two inputs, ``2 -> 3 -> 1`` models, training inputs
``U[0, 10]``, extrapolation inputs ``U[0, 100]`` (10x the training range).

Reported per task and model: MAE on both test sets, the MSE relative to the same model at its
random initialisation (100 = random, 0 = perfect, as in the NALU paper) and the success rate over
seeds (success: extrapolation MAE below ``SUCCESS_REL`` times the mean absolute target).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from napari_nalu_count.nn.arithmetic import NAC, NALU, NAU, NMU

SUCCESS_REL = 1e-3
"""A seed succeeds when extrapolation MAE < SUCCESS_REL * mean(|y|) on the extrapolation set."""

OPS: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "add": ("a + b", lambda a, b: a + b),
    "sub": ("a - b", lambda a, b: a - b),
    "mul": ("a * b", lambda a, b: a * b),
    "div": ("a / b", lambda a, b: a / b),
    "square": ("a^2", lambda a, b: a * a),
    "sqrt": ("sqrt(a)", lambda a, b: torch.sqrt(a)),
}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu6": nn.ReLU6,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "prelu": nn.PReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}
UNIT_MODELS = ("nac", "nalu", "nalu_tanh", "nalu_hard_sigmoid", "nau", "nmu")
ALL_MODELS = tuple(ACTIVATIONS) + UNIT_MODELS

STATIC_MODELS = (
    "relu6", "relu", "leaky_relu", "tanh", "sigmoid", "linear", "nac", "nalu", "nau", "nmu"
)  # fmt: skip
QUICK_STATIC_MODELS = ("relu6", "tanh", "sigmoid", "linear", "nac", "nalu", "nau", "nmu")
QUICK_OPS = ("add", "sub", "mul")
COUNTING_MODELS = ALL_MODELS
QUICK_COUNTING_MODELS = ("relu6", "tanh", "sigmoid", "linear", "nac", "nalu", "nau")


@dataclass(frozen=True)
class Settings:
    """Run settings; ``quick()`` and ``full()`` give the two presets."""

    seeds: int
    steps: int
    dim: int
    batch: int = 256
    n_train: int = 4096
    n_test: int = 4096
    lr: float = 0.1
    reg: float = 0.0  # off by default: with ~1000 steps it lowered NAU success (see docs)
    lbfgs_iter: int = 300
    ops: tuple[str, ...] = tuple(OPS)
    static_models: tuple[str, ...] = STATIC_MODELS
    counting_models: tuple[str, ...] = COUNTING_MODELS

    @staticmethod
    def quick(seeds: int = 1) -> Settings:
        return Settings(
            seeds=seeds,
            steps=800,
            dim=8,
            n_test=2048,
            lbfgs_iter=200,
            ops=QUICK_OPS,
            static_models=QUICK_STATIC_MODELS,
            counting_models=QUICK_COUNTING_MODELS,
        )

    @staticmethod
    def full(seeds: int = 3) -> Settings:
        return Settings(seeds=seeds, steps=1000, dim=100, n_train=8192, lbfgs_iter=300)


class TwoLayer(nn.Module):
    """``first -> (activation) -> second``; ``regularization()`` sums the units' regularisers."""

    def __init__(self, first: nn.Module, second: nn.Module, act: nn.Module | None = None) -> None:
        super().__init__()
        self.first = first
        self.act = act if act is not None else nn.Identity()
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.act(self.first(x)))

    def regularization(self) -> torch.Tensor:
        reg = torch.zeros((), dtype=torch.float64)
        for m in (self.first, self.second):
            if hasattr(m, "regularization"):
                reg = reg + m.regularization()
        return reg


def make_model(name: str, d_in: int, hidden: int) -> TwoLayer:
    """Model ``name`` (one of ``ALL_MODELS``) with structure ``d_in -> hidden -> 1``."""
    if name in ACTIVATIONS:
        return TwoLayer(nn.Linear(d_in, hidden), nn.Linear(hidden, 1), ACTIVATIONS[name]())
    if name == "nac":
        return TwoLayer(NAC(d_in, hidden), NAC(hidden, 1))
    if name.startswith("nalu"):
        gate = {"nalu": "sigmoid", "nalu_tanh": "tanh", "nalu_hard_sigmoid": "hard_sigmoid"}[name]
        return TwoLayer(NALU(d_in, hidden, gate=gate), NALU(hidden, 1, gate=gate))
    if name == "nau":
        return TwoLayer(NAU(d_in, hidden), NAU(hidden, 1))
    if name == "nmu":
        return TwoLayer(NAU(d_in, hidden), NMU(hidden, 1))
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(ALL_MODELS)}")


@dataclass(frozen=True)
class Task:
    """A regression task: ``sample(n, extrapolate, gen) -> (x, y)``, float64 (n, d) and (n, 1)."""

    name: str
    d_in: int
    hidden: int
    sample: Callable[[int, bool, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def static_task(op: str, dim: int, seed: int) -> Task:
    """The NALU paper's static task for ``op`` with subsets fixed by ``seed``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    k = max(1, round(0.25 * dim))
    shift = max(1, k // 2)  # b starts half a subset after a: the subsets overlap by half
    start = int(torch.randint(0, dim - k - shift + 1, (1,), generator=g))
    fn = OPS[op][1]

    def sample(
        n: int, extrapolate: bool, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = (10.0, 20.0) if extrapolate else (1.0, 2.0)
        x = lo + (hi - lo) * torch.rand(n, dim, generator=gen, dtype=torch.float64)
        a = x[:, start : start + k].sum(1, keepdim=True)
        b = x[:, start + shift : start + shift + k].sum(1, keepdim=True)
        return x, fn(a, b)

    return Task(op, dim, 2, sample)


def counting_task() -> Task:
    """Counting paper Table I: ``a + b``, inputs ``U[0, 10]``, extrapolation ``U[0, 100]``."""

    def sample(
        n: int, extrapolate: bool, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hi = 100.0 if extrapolate else 10.0
        x = hi * torch.rand(n, 2, generator=gen, dtype=torch.float64)
        return x, x.sum(1, keepdim=True)

    return Task("counting_add", 2, 3, sample)


def _fit(
    model: TwoLayer, x: torch.Tensor, y: torch.Tensor, s: Settings, gen: torch.Generator
) -> bool:
    """Adam (cosine lr decay, mini-batches) then L-BFGS on the full training set.

    With ``s.reg > 0`` the units' sparsity regulariser is ramped in over the second half of the
    Adam phase (``lam`` from 0 to ``s.reg``), as Madsen & Johansen switch it on late. Returns True
    when the loss became non-finite (training stopped there).
    """
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, s.steps))
    reg_from = s.steps // 2
    for step in range(s.steps):
        idx = torch.randint(0, x.shape[0], (s.batch,), generator=gen)
        loss = torch.mean((model(x[idx]) - y[idx]) ** 2)
        if step >= reg_from and s.reg > 0:
            lam = s.reg * min(1.0, (step - reg_from) / max(1, s.steps // 4))
            loss = loss + lam * model.regularization()
        if not torch.isfinite(loss):
            return True
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        sched.step()
    if s.lbfgs_iter <= 0:
        return False
    lbfgs = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=s.lbfgs_iter,
        history_size=50,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        lbfgs.zero_grad(set_to_none=True)
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        return loss

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        lbfgs.step(closure)
    except RuntimeError:  # pragma: no cover - defensive: keep the Adam result
        model.load_state_dict(state)
    with torch.no_grad():
        final = torch.mean((model(x) - y) ** 2)
    if not torch.isfinite(final):
        model.load_state_dict(state)
    return False


def _errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        p = model(x)
    err = (p - y).abs()
    if not torch.isfinite(err).all():
        return math.inf, math.inf
    return float(err.mean()), float((err * err).mean())


def train_one(task: Task, model_name: str, seed: int, s: Settings) -> dict:
    """Train one model on one task with one seed; returns its figures (float64 throughout)."""
    torch.manual_seed(seed)
    model = make_model(model_name, task.d_in, task.hidden).double()
    test_gen = torch.Generator().manual_seed(20_000 + seed)
    xi, yi = task.sample(s.n_test, False, test_gen)
    xe, ye = task.sample(s.n_test, True, test_gen)
    _, mse0_i = _errors(model, xi, yi)
    _, mse0_e = _errors(model, xe, ye)
    gen = torch.Generator().manual_seed(30_000 + seed)
    x_train, y_train = task.sample(s.n_train, False, gen)
    diverged = _fit(model, x_train, y_train, s, gen)
    mae_i, mse_i = _errors(model, xi, yi)
    mae_e, mse_e = _errors(model, xe, ye)
    scale = float(ye.abs().mean())
    return {
        "seed": seed,
        "mae_interp": mae_i,
        "mae_extrap": mae_e,
        "rel_interp": _rel(mse_i, mse0_i),
        "rel_extrap": _rel(mse_e, mse0_e),
        "success": bool(mae_e < SUCCESS_REL * scale),
        "target_scale_extrap": scale,
        "diverged": diverged,
    }


def _rel(mse: float, mse0: float) -> float:
    if not math.isfinite(mse):
        return math.inf
    if not math.isfinite(mse0) or mse0 == 0:
        return 0.0 if mse == 0 else math.inf
    return 100.0 * mse / mse0


def _summary(runs: list[dict]) -> dict:
    out = {
        key: statistics.median(r[key] for r in runs)
        for key in ("mae_interp", "mae_extrap", "rel_interp", "rel_extrap")
    }
    out["success_rate"] = sum(r["success"] for r in runs) / len(runs)
    out["runs"] = runs
    return out


def run_benchmark(
    seeds: int | None = None,
    quick: bool = False,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the static task and Table I; returns every figure (medians over seeds + per seed)."""
    if settings is None:
        settings = Settings.quick() if quick else Settings.full()
        if seeds is not None:
            settings = Settings(**{**settings.__dict__, "seeds": int(seeds)})
    s = settings
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        static: dict[str, dict[str, dict]] = {}
        for op in s.ops:
            static[op] = {}
            for m in s.static_models:
                runs = [train_one(static_task(op, s.dim, k), m, k, s) for k in range(s.seeds)]
                static[op][m] = _summary(runs)
                if progress:
                    progress(f"static {op} {m}: {time.perf_counter() - t0:.0f} s")
        counting: dict[str, dict] = {}
        task = counting_task()
        for m in s.counting_models:
            counting[m] = _summary([train_one(task, m, k, s) for k in range(s.seeds)])
            if progress:
                progress(f"counting {m}: {time.perf_counter() - t0:.0f} s")
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "arithmetic",
        "settings": {**s.__dict__, "ops": list(s.ops), "success_rel": SUCCESS_REL},
        "torch_version": torch.__version__,
        "seconds": time.perf_counter() - t0,
        "static": static,
        "counting": counting,
    }


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
        return f"{v:.1e}"
    return f"{v:.2f}"


def format_tables(result: dict) -> str:
    """Readable tables: static task (relative extrapolation error, successes) and Table I."""
    s = result["settings"]
    k = s["seeds"]
    lines = [
        f"Static arithmetic task (dim={s['dim']}, {s['steps']} steps, {k} seeds): "
        "median MSE relative to random init (100 = random, 0 = perfect), successes",
    ]
    ops = list(result["static"])
    models = list(next(iter(result["static"].values()))) if ops else []
    for label, key in (("interpolation", "rel_interp"), ("extrapolation", "rel_extrap")):
        lines.append(f"\n{label}")
        lines.append(f"{'model':<18}" + "".join(f"{OPS[o][0]:>16}" for o in ops))
        for m in models:
            cells = []
            for o in ops:
                r = result["static"][o][m]
                cell = _fmt(r[key])
                if key == "rel_extrap":
                    cell += f" ({round(r['success_rate'] * k)}/{k})"
                cells.append(f"{cell:>16}")
            lines.append(f"{m:<18}" + "".join(cells))
    lines.append("\nmedian extrapolation MAE")
    lines.append(f"{'model':<18}" + "".join(f"{OPS[o][0]:>16}" for o in ops))
    for m in models:
        lines.append(
            f"{m:<18}" + "".join(f"{_fmt(result['static'][o][m]['mae_extrap']):>16}" for o in ops)
        )
    lines.append(
        "\nCounting paper Table I: a + b, 2 -> 3 -> 1, train U[0, 10], extrapolation U[0, 100]"
    )
    lines.append(
        f"{'model':<18}{'MAE interp':>14}{'MAE extrap':>14}{'rel extrap':>14}{'success':>10}"
    )
    for m, r in result["counting"].items():
        lines.append(
            f"{m:<18}{_fmt(r['mae_interp']):>14}{_fmt(r['mae_extrap']):>14}"
            f"{_fmt(r['rel_extrap']):>14}{round(r['success_rate'] * k):>7}/{k}"
        )
    lines.append(
        f"\nsuccess: extrapolation MAE < {SUCCESS_REL:g} x mean |target|; "
        f"{result['seconds']:.0f} s, torch {result['torch_version']}"
    )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this benchmark's options (``--json`` is added by the dispatcher)."""
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (3; quick: 1)")
    parser.add_argument("--quick", action="store_true", help="small, fast run (< 2 min)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--dim", type=int, default=None, help="static task input size (100)")
    parser.add_argument("--reg", type=float, default=None, help="NAU/NMU regulariser weight (0)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point: run, print the tables, optionally write JSON."""
    import sys

    s = Settings.quick() if args.quick else Settings.full()
    over = {
        key: getattr(args, key)
        for key in ("seeds", "steps", "dim", "reg")
        if getattr(args, key, None) is not None
    }
    if min(over.get("seeds", 1), over.get("steps", 1)) < 1 or over.get("dim", 8) < 4:
        print("error: --seeds and --steps must be >= 1 and --dim >= 4", file=sys.stderr)
        return 2
    if over.get("reg", 0.0) < 0:
        print("error: --reg must be >= 0", file=sys.stderr)
        return 2
    s = Settings(**{**s.__dict__, **over})
    result = run_benchmark(settings=s, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_tables(result))
    if getattr(args, "json", None):
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0
