"""When does the counter's size check help, and can the regressor's own spread tell?

For the first ``--limit`` val images of BBBC039 and DSB and all of Aitslab, and for the first
``--textured`` BBBC039 / Aitslab val images enlarged to ~90 px nuclei with a chromatin texture
(mottled 0.3 / 0.6, spots 0.5 / 0.8, as ``r16_textured_large.py``): the bundled regressor's
estimate, the standard deviation of its ensemble members' log estimates, and the diameter
after ``count()``'s size-head check, each against the true diameter. Prints the images where
the check moved the estimate closer to the truth ("helps") or farther ("hurts") by more than
5 % in log terms, and the spread's quantiles for plain and textured images.

    python benchmarks/notes/r17_size_check_spread.py --data ../shared/data \
        --json docs/benchmarks/r17/size_check_spread.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from r16_textured_large import textured_copies  # noqa: E402
from train_size_estimator import profiles  # noqa: E402

from napari_nalu_count.bench.accuracy import load_set  # noqa: E402
from napari_nalu_count.infer import count  # noqa: E402
from napari_nalu_count.infer import size as size_mod  # noqa: E402
from napari_nalu_count.models import load_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=25)
    p.add_argument("--textured", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    reg = size_mod.load_regressor()
    model = load_model("nuclei-count")

    def measure(img):
        # the estimator's window and profile, as train_size_estimator.py computes them
        profile = profiles([(img,)], reg.profile_options)[0][0]
        logs = np.array([m(profile) for m in reg.members] or [reg(profile)])
        refined = count(img, model).size_estimate["refined"]
        return float(np.exp(logs.mean())), float(logs.std()), float(refined)

    rows = []
    for set_ in ("bbbc039", "dsb", "aitslab"):
        for s in load_set(args.data, set_, None if set_ == "aitslab" else args.limit):
            est, sd, ref = measure(s.image)
            rows.append({"kind": set_, "d": s.meta["diameter"], "reg": est, "sd": sd, "ref": ref})
    for set_, scale in (("bbbc039", 3.12), ("aitslab", 2.01)):
        samples = load_set(args.data, set_, args.textured)
        for _i, _s0, _s, d, variants in textured_copies(samples, scale):
            for kind, amp, img in variants:
                est, sd, ref = measure(img)
                rows.append(
                    {"kind": f"{set_} {kind}{amp}", "d": d, "reg": est, "sd": sd, "ref": ref}
                )
    for r in rows:
        before, after = abs(np.log(r["reg"] / r["d"])), abs(np.log(r["ref"] / r["d"]))
        r["effect"] = "helps" if after < before - 0.05 else "hurts" if after > before + 0.05 else ""
        if r["effect"]:
            print(
                f"{r['kind']:<22} estimate {r['reg'] / r['d']:.2f} checked {r['ref'] / r['d']:.2f}"
                f" spread {r['sd']:.3f} {r['effect']}"
            )
    plain = [r["sd"] for r in rows if " " not in r["kind"]]
    textured = [r["sd"] for r in rows if " " in r["kind"]]
    print("spread quantiles 10/50/90 %: plain", np.percentile(plain, [10, 50, 90]).round(3))
    print("spread quantiles 10/50/90 %: textured", np.percentile(textured, [10, 50, 90]).round(3))
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
