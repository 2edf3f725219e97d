"""Round 13: a slimmer counter (widths 12-96 instead of 16-128), timed against the shipped one.

    python benchmarks/notes/r13_slim_counter.py speed --model DIR/nuclei-count [--rounds 3]
    python benchmarks/notes/r13_slim_counter.py ensemble A.json B.json [C.json ...]
    python benchmarks/notes/r13_slim_counter.py grid-card --grid 16 --out DIR
    python benchmarks/notes/r13_slim_counter.py size-check --model FT [--n 4] [--diameter 28.2]

In one process, alternating the two counters round after round (the VM's speed drifts by
10-30 % within minutes, so only same-run ratios mean anything): ``count`` and ``segment`` (its
count-guided seeds from the counter being timed, the bundled segmenter) of the 2048 px
``bench speed`` image, and the 64 small images of 256 px one ``count`` call each, size
estimated, 2 torch threads. Prints the best time of each and the ratios as one JSON line
per round and a summary (docs/benchmarks/r13/).

``ensemble``: from the per-image rows of ``nalu-count bench accuracy`` JSON files (the
``counter`` method, size estimated), the relative MAE per set and scale of the first file's
counts and of the mean of the first two and of all files' counts, on the images every file
holds (a count is the density's integral, so the mean count is the count of the mean density:
is the remaining error per-network noise that averaging removes, or shared by the networks?).

``grid-card``: a copy of the bundled counter whose card puts nuclei at ``--grid`` px on its
model grid instead of 12 (same weights; the size head's check then runs on that grid too),
written as ``DIR/ncGRID.json`` for ``nalu-count bench accuracy --count-model``.

``size-check``: the first ``--n`` BBBC039 val images counted by a (fine-tuned) counter ``FT``
with ``count()`` defaults, with ``--diameter`` given, with the size head's check off, and by
the bundled counter: does a bad count come from the size check or from the density?
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _images():
    from napari_nalu_count.bench.speed import small_images, speed_image

    return speed_image(2048), small_images(64, 256)


def speed(args: argparse.Namespace) -> None:
    from napari_nalu_count.infer import count, segment
    from napari_nalu_count.models.store import load_model

    torch.set_num_threads(args.threads)
    big, small = _images()
    models = {"shipped": load_model("nuclei-count"), "slim": load_model(args.model)}
    for m in models.values():  # warm-up: prepared copies, allocator, oneDNN primitives
        count(big, m)
        segment(big, count_model=m)
        [count(im, m) for im in small[:4]]

    def timed(f) -> float:
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    best: dict[str, dict[str, float]] = {k: {} for k in models}
    values: dict[str, dict[str, float]] = {k: {} for k in models}
    for r in range(args.rounds):
        row = {"round": r}
        for name, m in models.items() if r % 2 == 0 else reversed(models.items()):
            t = {
                "count": timed(lambda m=m, v=values[name]: v.update(count=count(big, m).count)),
                "segment": timed(
                    lambda m=m, v=values[name]: v.update(segment=segment(big, count_model=m).count)
                ),
                "small": timed(lambda m=m: [count(im, m) for im in small]),
            }
            for k, v in t.items():
                best[name][k] = min(best[name].get(k, float("inf")), v)
            row[name] = {k: round(v, 3) for k, v in t.items()}
        print(json.dumps(row), flush=True)
    mpx = {"count": 2048 * 2048 / 1e6, "segment": 2048 * 2048 / 1e6, "small": 64 * 256 * 256 / 1e6}
    summary = {
        "threads": args.threads,
        "rounds": args.rounds,
        "best_seconds": best,
        "mpx_per_s": {n: {k: mpx[k] / v for k, v in b.items()} for n, b in best.items()},
        "speedup_slim": {k: best["shipped"][k] / best["slim"][k] for k in mpx},
        "values": values,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)


def ensemble(args: argparse.Namespace) -> None:
    from collections import defaultdict

    runs = []
    for path in args.files:
        with open(path) as fh:
            rows = json.load(fh)["images"]
        runs.append({(r["set"], r["scale"], r["name"]): r for r in rows})
    common = set(runs[0]).intersection(*runs[1:])
    agg: dict = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0])
    for key in common:
        truth = runs[0][key]["true_count"]
        counts = [run[key]["methods"]["counter"]["count"] for run in runs]
        g = agg[key[:2]]
        g[0] += abs(counts[0] - truth)
        g[1] += abs(sum(counts[:2]) / 2 - truth)
        g[2] += abs(sum(counts) / len(counts) - truth)
        g[3] += truth
        g[4] += 1
    print(f"| set | scale | images | first | mean of 2 | mean of {len(runs)} |")
    print("|---|---|---|---|---|---|")
    for (name, scale), g in sorted(agg.items()):
        print(
            f"| {name} | {scale:g}x | {g[4]} | {100 * g[0] / g[3]:.1f} % | "
            f"{100 * g[1] / g[3]:.1f} % | {100 * g[2] / g[3]:.1f} % |"
        )


def grid_card(args: argparse.Namespace) -> None:
    import copy
    from pathlib import Path

    from napari_nalu_count.models import load_model, save_model

    start = load_model("nuclei-count")
    card = copy.deepcopy(start.card)
    card["diameter"] = float(args.grid)
    name = f"nc{int(args.grid)}"
    print(save_model(start.net, card, name, directory=Path(args.out), overwrite=True))


def size_check(args: argparse.Namespace) -> None:
    import napari_nalu_count.data as D
    from napari_nalu_count import count
    from napari_nalu_count.infer import engine
    from napari_nalu_count.models.store import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    for s in D.load_bbbc039(args.data, "val", min_size=0)[: args.n]:
        est = count(s.image, model)
        given = count(s.image, model, diameter=args.diameter)
        engine.OPTIONS["size_check"] = False
        try:
            nocheck = count(s.image, model)
        finally:
            engine.OPTIONS["size_check"] = True
        start = count(s.image)
        print(
            f"{s.name[:16]} true {len(s.dots)} | defaults {est.count:.1f} (d {est.diameter:.1f})"
            f" | d {args.diameter:g} given {given.count:.1f} | check off {nocheck.count:.1f}"
            f" (d {nocheck.diameter:.1f}) | bundled {start.count:.1f} (d {start.diameter:.1f})"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--model", required=True, help="the slim counter (card path or name)")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--json")
    e = sub.add_parser("ensemble")
    e.add_argument("files", nargs="+", help="bench accuracy JSON files (at least 2)")
    g = sub.add_parser("grid-card")
    g.add_argument("--grid", type=float, required=True, help="nucleus diameter on the grid (px)")
    g.add_argument("--out", required=True)
    c = sub.add_parser("size-check")
    c.add_argument("--model", required=True, help="the fine-tuned counter (card path or name)")
    c.add_argument("--data", default="../shared/data")
    c.add_argument("--n", type=int, default=4)
    c.add_argument("--diameter", type=float, default=28.2, help="BBBC039's median (px)")
    c.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    cmds = {"speed": speed, "ensemble": ensemble, "grid-card": grid_card, "size-check": size_check}
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
