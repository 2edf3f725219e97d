"""Shared plumbing of ``counting_study.py`` and ``segmentation_study.py``.

- a resumable JSON store of raw per-run results (written atomically after every run; shards of
  one study can be merged at report time),
- the ``--budget`` syntax (``2000`` = training steps per run, ``5min`` = wall-clock minutes per
  run), the machine description, a wall-clock limit per invocation and run sharding,
- statistics for the reports (mean ± sd, paired comparisons against a reference variant).

Not part of the package: these are benchmark scripts (run from the repository root).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# budget, machine, command


def parse_budget(text: str) -> dict[str, Any]:
    """``"2000"`` / ``"2000steps"`` -> fixed steps per run; ``"5min"`` / ``"90s"`` -> minutes.

    Steps are the default and the fair choice (every variant gets the same number of updates,
    independent of its speed and of the machine's load); minutes reproduce the bundled models'
    wall-clock protocol.
    """
    t = str(text).strip().lower().replace(" ", "")
    try:
        if t.endswith("min"):
            v = float(t[:-3])
            return {"kind": "minutes", "value": v, "text": f"{v:g} min"}
        if t.endswith("s") and not t.endswith("steps"):
            v = float(t[:-1]) / 60.0
            return {"kind": "minutes", "value": v, "text": f"{v:g} min"}
        if t.endswith("steps"):
            t = t[:-5]
        steps = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad --budget {text!r}: use a number of steps (e.g. 2000) or minutes (e.g. 5min)"
        ) from None
    if steps < 1:
        raise argparse.ArgumentTypeError("--budget must be at least 1 step")
    return {"kind": "steps", "value": steps, "text": f"{steps} steps"}


def budget_fields(budget: dict[str, Any], steps_per_epoch: int) -> dict[str, Any]:
    """``TrainConfig`` fields (epochs, steps_per_epoch, max_minutes) for a budget."""
    if budget["kind"] == "steps":
        # whole epochs of at most ``steps_per_epoch`` steps that add up to the budget (exactly
        # when it divides evenly, otherwise at most epochs - 1 steps more)
        n = int(budget["value"])
        epochs = max(1, math.ceil(n / max(1, steps_per_epoch)))
        spe = max(1, math.ceil(n / epochs))
        return {"epochs": epochs, "steps_per_epoch": spe, "max_minutes": None}
    return {"epochs": 100_000, "steps_per_epoch": steps_per_epoch, "max_minutes": budget["value"]}


def scaled_budget(budget: dict[str, Any], fraction: float) -> dict[str, Any]:
    """``fraction`` of a budget (for TPE trials)."""
    out = dict(budget)
    if budget["kind"] == "steps":
        out["value"] = max(1, int(round(budget["value"] * fraction)))
    else:
        out["value"] = budget["value"] * fraction
    out["text"] = f"{fraction:g} x {budget['text']}"
    return out


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return name


def machine(device: str, threads: int) -> str:
    """One line: CPU / GPU, threads."""
    import torch

    text = f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores"
    text += f", torch {torch.__version__}, {threads} torch thread(s)"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    else:
        text += f", device {device}"
    return text


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


# ---------------------------------------------------------------------------------------------
# the JSON store


class Store:
    """Raw results ``{"study", "settings", "runs": {key: record}, "extra": {...}}`` on disk.

    ``settings`` are the options that change what a run measures (data, budget, widths, ...);
    resuming with different settings is refused, so one file never mixes protocols.
    """

    def __init__(self, path: str | Path, study: str, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = {"study": study, "settings": settings, "runs": {}, "extra": {}}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("study") != study:
                raise SystemExit(f"{self.path} holds a {old.get('study')!r} study, not {study!r}")
            if old.get("settings") != settings:
                diff = {
                    k: (old.get("settings", {}).get(k), settings.get(k))
                    for k in set(settings) | set(old.get("settings", {}))
                    if old.get("settings", {}).get(k) != settings.get(k)
                }
                raise SystemExit(
                    f"{self.path} was made with other settings {diff} (old, new); use another "
                    "--json file or the same options"
                )
            self.data = old
            self.data.setdefault("extra", {})

    @property
    def runs(self) -> dict[str, Any]:
        return self.data["runs"]

    def has(self, key: str) -> bool:
        return key in self.data["runs"]

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.data["runs"][key] = record
        self.save()

    def put_extra(self, key: str, value: Any) -> None:
        self.data["extra"][key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default, allow_nan=True))
        os.replace(tmp, self.path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_merged(paths: Sequence[str | Path], study: str) -> dict[str, Any]:
    """Merge several JSON files (shards) of one study; settings must agree."""
    merged: dict[str, Any] | None = None
    for p in paths:
        d = json.loads(Path(p).read_text())
        if d.get("study") != study:
            raise SystemExit(f"{p} holds a {d.get('study')!r} study, not {study!r}")
        if merged is None:
            merged = {"study": study, "settings": d["settings"], "runs": {}, "extra": {}}
        elif d["settings"] != merged["settings"]:
            raise SystemExit(f"{p} was made with other settings than {paths[0]}")
        merged["runs"].update(d.get("runs", {}))
        merged["extra"].update(d.get("extra", {}))
    if merged is None:
        raise SystemExit("no --json file given")
    return merged


# ---------------------------------------------------------------------------------------------
# scheduling


class Clock:
    """Wall-clock limit of one invocation: start a run only if it is expected to finish."""

    def __init__(self, limit_minutes: float | None) -> None:
        self.t0 = time.perf_counter()
        self.limit = None if limit_minutes is None else limit_minutes * 60.0
        self.longest = 0.0

    def may_start(self) -> bool:
        if self.limit is None:
            return True
        return time.perf_counter() - self.t0 + self.longest * 1.1 < self.limit

    def ran(self, seconds: float) -> None:
        self.longest = max(self.longest, seconds)


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard must be K/N, e.g. 0/4") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError("--shard K/N needs 0 <= K < N")
    return k, n


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def add_common_args(p: argparse.ArgumentParser, default_json: str, default_doc: str) -> None:
    p.add_argument(
        "--data",
        default="../shared/data",
        help="folder holding vgg_cells/ and bbbc039/ (default ../shared/data), or 'synthetic' "
        "for tiny generated stand-ins (smoke tests)",
    )
    p.add_argument("--json", nargs="+", default=[default_json], help="raw results (resumable)")
    p.add_argument("--out-doc", default=default_doc, help="markdown report (+ PNG plots beside)")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report")
    p.add_argument(
        "--notes",
        default=None,
        type=_existing_file,
        help="hand-written markdown (the findings, written after reading the tables) placed "
        "under a 'Findings' heading at the top of the report",
    )
    p.add_argument("--no-report", action="store_true", help="only run, do not write the report")
    p.add_argument(
        "--budget",
        type=parse_budget,
        default=parse_budget("2000"),
        help="per training run: N steps (default 2000) or Xmin minutes; identical for all variants",
    )
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--width-factor",
        type=float,
        default=1.0,
        help="scale every architecture's default widths (1.0 = the papers' widths; 0.25 for CPU)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop starting new runs after this many minutes (resume later: runs in the JSON "
        "are skipped)",
    )
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="K/N: do every N-th run")
    p.add_argument("--limit-runs", type=int, default=None, help="do at most this many new runs")
    p.add_argument("--quiet", action="store_true")


def scaled_widths(default: Sequence[int], factor: float) -> list[int]:
    return [max(4, int(round(w * factor))) for w in default]


# ---------------------------------------------------------------------------------------------
# statistics


def finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_sd(values: Iterable[float | None]) -> tuple[float, float, int]:
    v = finite(values)
    if not v:
        return float("nan"), float("nan"), 0
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return float(np.mean(v)), sd, len(v)


def fmt_ms(values: Iterable[float | None], digits: int = 2, scale: float = 1.0) -> str:
    m, s, n = mean_sd(values)
    if n == 0:
        return "–"
    if n == 1 or not math.isfinite(s):
        return f"{m * scale:.{digits}f} (n=1)"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def paired(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """Compare variant ``a`` with reference ``b`` over the seeds/draws both have.

    Returns the mean paired difference ``a - b``, its sd, n, the two-sided paired t-test p-value
    and ``beyond_spread``: whether |mean difference| exceeds the larger of the two variants'
    run-to-run sds (the criterion the reports use for "larger than the seed spread").
    """
    keys = sorted(k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k]))
    out: dict[str, Any] = {"n": len(keys), "diff": float("nan"), "sd": float("nan")}
    out.update(p=float("nan"), beyond_spread=None)
    if not keys:
        return out
    d = np.array([a[k] - b[k] for k in keys])
    out["diff"] = float(d.mean())
    if len(keys) > 1:
        out["sd"] = float(d.std(ddof=1))
        sa = float(np.std([a[k] for k in keys], ddof=1))
        sb = float(np.std([b[k] for k in keys], ddof=1))
        out["beyond_spread"] = bool(abs(out["diff"]) > max(sa, sb))
        if out["sd"] > 0:
            from scipy import stats

            out["p"] = float(stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys]).pvalue)
    return out


def fmt_paired(c: dict[str, Any], digits: int = 2) -> str:
    if c["n"] == 0:
        return "–"
    text = f"{c['diff']:+.{digits}f}"
    if c["n"] > 1 and math.isfinite(c["sd"]):
        text += f" ± {c['sd']:.{digits}f}"
    if c["beyond_spread"] is None:
        return text + " (n=1)"
    text += " **yes**" if c["beyond_spread"] else " no"
    if math.isfinite(c["p"]):
        text += f" (p={c['p']:.2g})"
    return text


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def provenance(data: dict[str, Any], report_command: str) -> str:
    """Markdown block: commands, machines, budget, seeds of the runs in ``data``."""
    runs = list(data["runs"].values())
    cmds = sorted({r.get("command", "?") for r in runs})
    machines = sorted({r.get("machine", "?") for r in runs})
    s = data["settings"]
    lines = ["Runs produced by:", ""]
    lines += [f"    {c}" for c in cmds] or ["    (no runs yet)"]
    lines += ["", f"Report: `{report_command}`", "", "Machine(s): " + "; ".join(machines)]
    lines.append(f"Settings: `{json.dumps(s, sort_keys=True)}`")
    steps = sorted({int(r["steps"]) for r in runs if r.get("steps")})
    if steps:
        lines.append(
            "Steps trained per run (from the run records): " + ", ".join(map(str, steps)) + "."
        )
    secs = finite(r.get("seconds") for r in runs)
    if secs:
        lines.append(
            f"Training time per run: median {np.median(secs):.0f} s (min {min(secs):.0f}, max "
            f"{max(secs):.0f}), {len(runs)} runs, {sum(secs) / 3600:.2f} h in all."
        )
    return "\n".join(lines)


def report_command(script: str, args: argparse.Namespace) -> str:
    """The command line that regenerates the report alone from the JSON (and the notes)."""
    cmd = f"python benchmarks/{script} --report-only --json {' '.join(args.json)}"
    if args.notes:
        cmd += f" --notes {args.notes}"
    return cmd + f" --out-doc {args.out_doc}"


def budget_text(settings: dict[str, Any], runs: Iterable[dict[str, Any]]) -> str:
    """The budget as requested, plus the steps actually trained when the records disagree."""
    text = str(settings["budget"])
    steps = sorted({int(r["steps"]) for r in runs if r.get("steps")})
    if text.endswith(" steps") and steps and steps != [int(text.split()[0])]:
        return f"{text} requested, {', '.join(map(str, steps))} steps trained"
    return text


def notes_block(path: str | Path | None) -> list[str]:
    """The hand-written findings as markdown lines ('' when no notes are given).

    Raises ``SystemExit`` with the path when the notes file is missing, so a report is never
    silently written without the findings it was asked to carry.
    """
    if not path:
        return []
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--notes {p}: no such file")
    text = p.read_text().strip()
    return ["## Findings", "", text, ""] if text else []


def log(quiet: bool, *parts: Any) -> None:
    if not quiet:
        print(*parts, flush=True)
